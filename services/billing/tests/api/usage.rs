//! The AI usage ledger: decimal costs, idempotency on request_id, the quotas
//! it feeds, and the reports over it.

use mesh_proto::mesh::billing::v1::{self as pb, Feature as F, TaskType};
use tonic::Code;
use uuid::Uuid;

use crate::harness::*;

fn call(
    user: &str,
    request_id: &str,
    model: &str,
    tokens: (i64, i64),
    cost: Option<&str>,
) -> pb::RecordAiUsageRequest {
    pb::RecordAiUsageRequest {
        request_id: request_id.into(),
        user_id: user.into(),
        conversation_id: Uuid::now_v7().to_string(),
        provider: "openai".into(),
        model: model.into(),
        task_type: TaskType::Chat as i32,
        input_tokens: tokens.0,
        output_tokens: tokens.1,
        latency: Some(prost_types::Duration {
            seconds: 1,
            nanos: 250_000_000,
        }),
        cost_usd: cost.map(Into::into),
    }
}

async fn record(
    app: &mut TestApp,
    request: pb::RecordAiUsageRequest,
) -> Result<pb::RecordAiUsageResponse, tonic::Status> {
    app.client
        .record_ai_usage(request)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn cost_is_computed_from_the_price_table_in_decimal() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    // gpt-4o-mini: $0.15 in, $0.60 out per million tokens.
    let answer = record(
        &mut app,
        call(&user, "r1", "gpt-4o-mini", (1234, 567), None),
    )
    .await
    .unwrap();
    let usage = answer.usage.unwrap();
    assert_eq!(usage.cost_usd, "0.0005253");
    assert_eq!(usage.cost_source, "price_table");
    assert_eq!(usage.latency.unwrap().nanos, 250_000_000);
    // Ten calls of a tenth of a cent sum to exactly one cent: no float drift.
    for i in 0..10 {
        record(
            &mut app,
            call(
                &user,
                &format!("given-{i}"),
                "gpt-4o",
                (1, 1),
                Some("0.001"),
            ),
        )
        .await
        .unwrap();
    }
    let totals = app
        .client
        .get_usage_totals(pb::GetUsageTotalsRequest {
            user_id: user.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(totals.cost_usd, "0.0105253");
    assert_eq!(
        (
            totals.ai_calls,
            totals.input_tokens,
            totals.output_tokens,
            totals.users
        ),
        (11, 1244, 577, 1)
    );
    assert_eq!(app.quota(&user, F::AiCostUsd).await.used, "0.0105253");
}

#[tokio::test]
async fn an_unknown_model_needs_a_cost() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    let refused = record(&mut app, call(&user, "r1", "gpt-9-turbo", (10, 10), None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&refused), ["model"]);
    assert!(
        refused.message().contains("BILLING_PRICES_FILE"),
        "{}",
        refused.message()
    );
    let given = record(
        &mut app,
        call(&user, "r1", "gpt-9-turbo", (10, 10), Some("0.5")),
    )
    .await
    .unwrap();
    assert_eq!(given.usage.unwrap().cost_source, "given");
    assert_eq!(app.db.count("billing", "ai_usage").await, 1);
}

#[tokio::test]
async fn a_usage_is_recorded_once_per_request_id() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    let request = call(&user, "turn-7", "gpt-4o-mini", (100, 50), None);
    // Eight deliveries of the same call at once: one is recorded, all get it.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut client = app.client.clone();
            let request = request.clone();
            tokio::spawn(async move { client.record_ai_usage(request).await })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().unwrap().into_inner().usage.unwrap());
    }
    assert!(answers.iter().all(|usage| *usage == answers[0]));
    assert_eq!(app.db.count("billing", "ai_usage").await, 1);
    assert_eq!(app.quota(&user, F::AiTokens).await.used, "150");
    let changed = record(
        &mut app,
        call(&user, "turn-7", "gpt-4o-mini", (100, 51), None),
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&changed), ["request_id"]);
    let missing = record(&mut app, call(&user, "", "gpt-4o-mini", (1, 1), None))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&missing), ["request_id"]);
}

#[tokio::test]
async fn usage_past_the_quota_is_recorded_and_says_so() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    // Free: 1000 tokens a day, $0.01 a month.
    let under = record(&mut app, call(&user, "a", "gpt-4o-mini", (400, 100), None))
        .await
        .unwrap();
    assert!(!under.over_quota);
    let over = record(&mut app, call(&user, "b", "gpt-4o-mini", (600, 100), None))
        .await
        .unwrap();
    assert!(over.over_quota, "recorded even though over");
    let tokens = over
        .quotas
        .iter()
        .find(|q| q.feature == F::AiTokens as i32)
        .unwrap();
    assert_eq!(
        (tokens.used.as_str(), tokens.remaining.as_str()),
        ("1200", "0")
    );
    assert_eq!(
        app.consume(&user, F::AiTokens, 1, "")
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
}

#[tokio::test]
async fn bad_usages_name_every_field() {
    let mut app = spawn_app().await;
    let refused = record(
        &mut app,
        pb::RecordAiUsageRequest {
            request_id: "x".into(),
            user_id: "u".into(),
            conversation_id: "c".into(),
            provider: "a/b".into(),
            model: String::new(),
            task_type: 0,
            input_tokens: -1,
            output_tokens: 0,
            latency: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            cost_usd: Some("-0.1".into()),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        bad_fields(&refused),
        [
            "user_id",
            "conversation_id",
            "provider",
            "model",
            "task_type",
            "input_tokens",
            "latency",
            "cost_usd"
        ]
    );
}

#[tokio::test]
async fn reports_by_day_by_model_and_in_total_page_through() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/Bogota").await;
    app.consume(&user, F::InboundMessages, 2, "").await.unwrap();
    for (i, model) in ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]
        .into_iter()
        .enumerate()
    {
        record(
            &mut app,
            call(&user, &format!("m{i}"), model, (10, 20), None),
        )
        .await
        .unwrap();
    }
    let other = app.new_user("UTC").await;
    let mut claude = call(&other, "c1", "claude-3-5-haiku", (1000, 0), None);
    claude.provider = "anthropic".into();
    record(&mut app, claude).await.unwrap();

    let days = app
        .client
        .list_daily_usage(pb::ListDailyUsageRequest {
            user_id: user.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .days;
    assert_eq!(days.len(), 1);
    let today = &days[0];
    assert_eq!(
        (
            today.inbound_messages,
            today.ai_calls,
            today.input_tokens,
            today.output_tokens
        ),
        (2, 3, 30, 60)
    );
    // 2 x (10 x 0.15 + 20 x 0.60) / 1e6 + (10 x 2.50 + 20 x 10.00) / 1e6
    assert_eq!(today.cost_usd, "0.000252");

    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let mut models = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_model_usage(pb::ListModelUsageRequest {
                month: month.clone(),
                page_size: 1,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        models.extend(page.models);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let names: Vec<_> = models
        .iter()
        .map(|m| format!("{}/{} x{}", m.provider, m.model, m.calls))
        .collect();
    assert_eq!(
        names,
        [
            "anthropic/claude-3-5-haiku x1",
            "openai/gpt-4o x1",
            "openai/gpt-4o-mini x2"
        ]
    );
    assert_eq!(models[0].cost_usd, "0.0008");

    let everyone = app
        .client
        .get_usage_totals(pb::GetUsageTotalsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((everyone.ai_calls, everyone.users), (4, 2));
    let bad = app
        .client
        .list_model_usage(pb::ListModelUsageRequest {
            month: "2026-13".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad), ["month"]);
    let bad = app
        .client
        .list_daily_usage(pb::ListDailyUsageRequest {
            user_id: user,
            start_day: "yesterday".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad), ["start_day"]);
}

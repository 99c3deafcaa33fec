//! PurgeUser: usage goes, the audit log keeps only what accounting needs.

use mesh_proto::mesh::billing::v1::{self as pb, Feature as F, TaskType};
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn purge_erases_usage_and_strips_the_audit_log() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    let survivor = app.new_user("UTC").await;
    for who in [&user, &survivor] {
        app.consume(who, F::InboundMessages, 2, &format!("c-{who}"))
            .await
            .unwrap();
        app.client
            .record_ai_usage(pb::RecordAiUsageRequest {
                request_id: format!("u-{who}"),
                user_id: who.to_string(),
                provider: "openai".into(),
                model: "gpt-4o-mini".into(),
                task_type: TaskType::Chat as i32,
                input_tokens: 10,
                output_tokens: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        app.client
            .check_rate_limit(pb::CheckRateLimitRequest {
                key: who.to_string(),
                endpoint: "agent.reply".into(),
                limit: 10,
                window: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            })
            .await
            .unwrap();
    }
    // The first payment came before the subscription: not linked to the user.
    app.apply(&payment_event(
        "subscription_payment_success",
        11,
        4,
        "2026-12-07T09:59:00Z",
    ))
    .await
    .unwrap();
    let event = subscription_event(
        "subscription_created",
        11,
        json!({"user_id": user}),
        "active",
        42,
        "2026-12-07T10:00:00Z",
    );
    app.apply(&event).await.unwrap();
    app.apply(&payment_event(
        "subscription_payment_success",
        11,
        5,
        "2026-12-07T10:01:00Z",
    ))
    .await
    .unwrap();

    let purge = pb::PurgeUserRequest {
        user_id: user.clone(),
        request_id: "erase-1".into(),
    };
    let deleted = app
        .client
        .purge_user(purge.clone())
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted["ai_usage"], 1);
    assert_eq!(
        deleted["usage_counters"], 3,
        "inbound messages, AI tokens, AI cost"
    );
    assert_eq!(deleted["subscriptions"], 1);
    assert_eq!(deleted["subscription_events"], 3, "stripped, not deleted");
    assert_eq!(deleted["rate_limit_windows"], 1);
    assert_eq!(
        deleted["idempotency_keys"], 2,
        "ConsumeQuota and RecordAiUsage answers"
    );
    // A retry answers the same.
    let again = app
        .client
        .purge_user(purge)
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(again, deleted);

    // Nothing of the user is left but the stripped accounting records.
    assert_eq!(app.entitlements(&user).await.plan.unwrap().id, "free");
    assert_eq!(app.quota(&user, F::InboundMessages).await.used, "0");
    let totals = app
        .client
        .get_usage_totals(pb::GetUsageTotalsRequest {
            user_id: user.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(totals.ai_calls, 0);
    let events = app
        .client
        .list_subscription_events(pb::ListSubscriptionEventsRequest {
            subscription_id: "11".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 3);
    for event in &events {
        assert_eq!(
            event.owner.as_ref().unwrap().kind,
            None,
            "unlinked from the user"
        );
        let text = format!("{:?}", event.payload);
        for personal in ["ana@example.com", "Ana P", "4242", "signature=", &user] {
            assert!(!text.contains(personal), "{personal} kept in {text}");
        }
        for kept in ["total", "currency", "tax", "created_at"] {
            if event.event_name.contains("payment") {
                assert!(text.contains(kept), "{kept} lost from {text}");
            }
        }
    }
    // A renewal naming the erased user is kept for accounting only, and
    // brings back nothing.
    let renewal = subscription_event(
        "subscription_updated",
        11,
        json!({"user_id": user}),
        "active",
        42,
        "2027-01-07T10:00:00Z",
    );
    let answer = app.apply(&renewal).await.unwrap();
    let recorded = answer.event.unwrap();
    assert_eq!(recorded.outcome, "erased");
    assert!(answer.subscription.is_none());
    assert!(!format!("{:?}", recorded.payload).contains("ana@example.com"));
    assert_eq!(app.entitlements(&user).await.plan.unwrap().id, "free");
    assert_eq!(app.db.count("billing", "subscriptions").await, 0);
    // A later payment names only the subscription: kept stripped too.
    let payment = payment_event(
        "subscription_payment_success",
        11,
        6,
        "2027-01-07T10:00:00Z",
    );
    let recorded = app.apply(&payment).await.unwrap().event.unwrap();
    assert_eq!(recorded.outcome, "erased");
    let text = format!("{:?}", recorded.payload);
    assert!(
        !text.contains("ana@example.com") && !text.contains("4242"),
        "{text}"
    );

    // The other user is untouched.
    assert_eq!(app.quota(&survivor, F::InboundMessages).await.used, "2");
    assert_eq!(app.db.count("billing", "ai_usage").await, 1);
}

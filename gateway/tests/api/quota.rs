//! The inbound-message quota: every message a user sends consumes one of
//! their plan's daily inbound messages (the free plan has 50) in billing
//! before it is stored. Over the quota it is stored all the same, flagged
//! `over_quota` in its metadata for the agent; a redelivery consumes nothing
//! more; billing away or failing costs the flag, never the message.

use mesh_proto::mesh::{
    billing::v1::{self as billing, Feature, Owner, owner},
    users::v1 as users,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    harness::{TestApp, metadata, ok_json, spawn_app, spawn_app_with_faults},
    payloads::{
        delivery, messages_value, sender, single, telegram_from, telegram_id, telegram_message,
        text, wamid,
    },
    telegram::user_by_telegram_id,
};

/// The free plan's daily inbound messages (billing's built-in plans).
const FREE_DAILY_MESSAGES: i64 = 50;

/// What the user used of today's inbound messages, as billing counts it.
async fn used_today(app: &mut TestApp, user_id: &str) -> String {
    let quotas = app
        .billing
        .get_entitlements(billing::GetEntitlementsRequest {
            owner: Some(Owner {
                kind: Some(owner::Kind::UserId(user_id.into())),
            }),
        })
        .await
        .expect("entitlements")
        .into_inner()
        .quotas;
    quotas
        .into_iter()
        .find(|q| q.feature() == Feature::InboundMessages)
        .expect("an inbound-message quota")
        .used
}

/// Uses up `amount` of the user's inbound messages for today, as other
/// messages would have.
async fn consume(app: &mut TestApp, user_id: &str, amount: i64) -> billing::Quota {
    app.billing
        .consume_quota(billing::ConsumeQuotaRequest {
            user_id: user_id.into(),
            feature: Feature::InboundMessages.into(),
            amount,
            request_id: String::new(),
        })
        .await
        .expect("within the quota")
        .into_inner()
        .quota
        .expect("the quota")
}

async fn upsert(app: &mut TestApp, phone: &str) -> users::User {
    app.users
        .upsert_user_by_phone(users::UpsertUserByPhoneRequest {
            phone: phone.into(),
            profile_name: "Bea".into(),
        })
        .await
        .expect("a user")
        .into_inner()
        .user
        .expect("a user")
}

/// The metadata of the only message of the user with this phone.
async fn only_message_metadata(app: &mut TestApp, phone: &str) -> Value {
    let messages = app.messages_from(phone).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    metadata(&messages[0])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_the_daily_quota_is_stored_and_flagged() {
    let mut app = spawn_app().await;

    // Ana is well within her quota: her message is stored as it came.
    let (ana, ana_phone) = sender();
    let answer = ok_json(
        app.post_whatsapp(&single(&ana, "Ana", text(&ana, &wamid(), "hola")))
            .await,
    )
    .await;
    assert_eq!(answer["stored"], 1, "{answer}");
    let within = only_message_metadata(&mut app, &ana_phone).await;
    assert!(within.get("over_quota").is_none(), "{within}");
    assert!(within.get("quota_reset_time").is_none(), "{within}");
    let ana_id = app.user_by_phone(&ana_phone).await.id;
    assert_eq!(used_today(&mut app, &ana_id).await, "1");

    // Bea has sent her 50 messages today.
    let (bea, bea_phone) = sender();
    let bea_id = upsert(&mut app, &bea_phone).await.id;
    let quota = consume(&mut app, &bea_id, FREE_DAILY_MESSAGES).await;
    assert_eq!(
        (quota.limit.as_str(), quota.remaining.as_str()),
        ("50", "0")
    );
    let reset = quota.reset_time.expect("a daily quota resets");

    let answer = ok_json(
        app.post_whatsapp(&single(&bea, "Bea", text(&bea, &wamid(), "¿sigues ahí?")))
            .await,
    )
    .await;
    assert_eq!(answer["stored"], 1, "stored all the same: {answer}");
    let over = only_message_metadata(&mut app, &bea_phone).await;
    assert_eq!(over["over_quota"], true, "{over}");
    assert_eq!(
        over["whatsapp"]["type"], "text",
        "the provider's metadata stays: {over}"
    );
    let said = over["quota_reset_time"].as_str().expect("a reset time");
    let said = chrono::DateTime::parse_from_rfc3339(said).expect("RFC 3339");
    assert!(
        (said.timestamp() - reset.seconds).abs() <= 1,
        "{said} is billing's reset time ({reset:?})"
    );
    assert_eq!(
        used_today(&mut app, &bea_id).await,
        "50",
        "a refused quota consumes nothing"
    );
    assert_eq!(app.texts_from(&bea_phone).await, ["¿sigues ahí?"]);

    let metrics = app.get("/metrics").await.text().await.unwrap();
    for line in [
        r#"gateway_inbound_quota_checks_total{source="whatsapp",result="within"} 1"#,
        r#"gateway_inbound_quota_checks_total{source="whatsapp",result="over"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    assert!(
        !metrics.contains(r#"method="ConsumeQuota""#),
        "over quota is an answer, not a downstream error:\n{metrics}"
    );
}

/// The first delivery consumes the message's quota, then fails to store it
/// (503: WhatsApp retries); the retry and a later repeat consume nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_message_consumes_its_quota_once() {
    let (mut app, faults) = spawn_app_with_faults().await;
    let (wa_id, phone) = sender();
    let body = single(&wa_id, "Ana", text(&wa_id, &wamid(), "una vez"));
    faults.inject("RecordInboundMessage", Code::Unavailable, 1);
    assert_eq!(app.post_whatsapp(&body).await.status(), 503);
    let user_id = app.user_by_phone(&phone).await.id;
    assert_eq!(used_today(&mut app, &user_id).await, "1");

    let answer = ok_json(app.post_whatsapp(&body).await).await;
    assert_eq!(answer["stored"], 1, "{answer}");
    let answer = ok_json(app.post_whatsapp(&body).await).await;
    assert_eq!(answer["duplicates"], 1, "{answer}");
    assert_eq!(used_today(&mut app, &user_id).await, "1");
    assert_eq!(app.texts_from(&phone).await, ["una vez"]);
}

/// Telegram messages and button presses count, each once however often the
/// update comes; an edit is not another message. Over the quota, a message
/// is flagged like a WhatsApp one.
#[tokio::test(flavor = "multi_thread")]
async fn telegram_messages_count_once_and_edits_not_at_all() {
    let mut app = spawn_app().await;
    let id = telegram_id();
    let from = telegram_from(id, "Ana", "ana_b");
    let update = telegram_message(9001, 10, &from, json!({"text": "hola"}));
    ok_json(app.post_telegram(&update).await).await;
    ok_json(app.post_telegram(&update).await).await;
    let user_id = user_by_telegram_id(&mut app, id).await.id;
    assert_eq!(used_today(&mut app, &user_id).await, "1");

    let mut edit = telegram_message(9002, 10, &from, json!({"text": "hola!"}));
    edit["edited_message"] = edit["message"].take();
    edit.as_object_mut().unwrap().remove("message");
    let answer = ok_json(app.post_telegram(&edit).await).await;
    assert_eq!(answer["stored"], 1, "{answer}");
    assert_eq!(used_today(&mut app, &user_id).await, "1", "an edit is free");

    let press = json!({"update_id": 9003, "callback_query": {
        "id": "4382bfdwdsb323b2d9", "from": from, "chat_instance": "-9001",
        "data": "plan:pro",
        "message": {"message_id": 11, "date": 1_732_270_000,
            "chat": {"id": id, "type": "private"}, "text": "¿Qué plan?"}}});
    ok_json(app.post_telegram(&press).await).await;
    ok_json(app.post_telegram(&press).await).await;
    assert_eq!(used_today(&mut app, &user_id).await, "2");

    consume(&mut app, &user_id, FREE_DAILY_MESSAGES - 2).await;
    let over = telegram_message(9004, 12, &from, json!({"text": "¿y ahora?"}));
    ok_json(app.post_telegram(&over).await).await;
    let messages = app.messages_of(&user_id).await;
    let flagged: Vec<(&str, bool)> = messages
        .iter()
        .map(|m| {
            let json = metadata(m);
            (
                m.provider_message_id.as_str(),
                json.get("over_quota") == Some(&json!(true)),
            )
        })
        .collect();
    let last = format!("{id}:12");
    let only_flagged: Vec<&str> = flagged
        .iter()
        .filter(|(_, is_flagged)| *is_flagged)
        .map(|(provider_id, _)| *provider_id)
        .collect();
    assert_eq!(only_flagged, [last.as_str()], "{flagged:?}");
    assert_eq!(used_today(&mut app, &user_id).await, "50");
}

/// Billing failing (an injected INTERNAL) or stopped: the messages are
/// stored without the flag and the webhook answered 200; the metrics count
/// them as unchecked. Ana's quota is used up, so a billing that answered
/// would have flagged them; after one failure in a delivery the rest of it
/// does not ask billing again.
#[tokio::test(flavor = "multi_thread")]
async fn billing_away_or_failing_stores_messages_unflagged() {
    let (mut app, faults) = spawn_app_with_faults().await;
    let (wa_id, phone) = sender();
    let ana = upsert(&mut app, &phone).await.id;
    consume(&mut app, &ana, FREE_DAILY_MESSAGES).await;
    faults.inject("ConsumeQuota", Code::Internal, 1);
    let two = delivery(vec![vec![messages_value(
        &[(&wa_id, "Ana")],
        vec![
            text(&wa_id, &wamid(), "uno"),
            text(&wa_id, &wamid(), "y dos"),
        ],
    )]]);
    let answer = ok_json(app.post_whatsapp(two.to_string().as_bytes()).await).await;
    assert_eq!(answer["stored"], 2, "{answer}");

    app.stop_billing().await;
    let answer = ok_json(
        app.post_whatsapp(&single(&wa_id, "Ana", text(&wa_id, &wamid(), "dos")))
            .await,
    )
    .await;
    assert_eq!(answer["stored"], 1, "{answer}");

    let messages = app.messages_from(&phone).await;
    assert_eq!(messages.len(), 3);
    for m in &messages {
        let json = metadata(m);
        assert!(json.get("over_quota").is_none(), "{json}");
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for line in [
        r#"gateway_inbound_quota_checks_total{source="whatsapp",result="unchecked"} 3"#,
        r#"gateway_downstream_errors_total{service="billing",method="ConsumeQuota",code="Internal"} 1"#,
        r#"gateway_downstream_errors_total{service="billing",method="ConsumeQuota",code="Unavailable"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

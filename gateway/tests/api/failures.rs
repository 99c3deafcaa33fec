//! What the gateway does when a service says no (errors injected between
//! the gateway and the services): look again, dead-letter, or answer 5xx so
//! the provider retries; and what that retry then stores.

use serde_json::json;
use tonic::Code;

use crate::{
    harness::{ok_json, spawn_app_with_faults},
    payloads::{
        delivery, messages_value, sender, single, status, statuses_value, telegram_from,
        telegram_id, telegram_message, text, wamid,
    },
    telegram::user_by_telegram_id,
};

/// RecordInboundMessage says FAILED_PRECONDITION (closed) or NOT_FOUND
/// (purged) when the conversation went away after GetOrCreate found it: the
/// gateway looks for the active one again, twice at most, then answers 502.
#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_gone_between_the_two_calls_is_looked_up_again() {
    let (mut app, faults) = spawn_app_with_faults().await;
    let (wa_id, phone) = sender();
    faults.inject("RecordInboundMessage", Code::FailedPrecondition, 1);
    faults.inject("RecordInboundMessage", Code::NotFound, 1);
    let answer = ok_json(
        app.post_whatsapp(&single(&wa_id, "Ana", text(&wa_id, &wamid(), "uno")))
            .await,
    )
    .await;
    assert_eq!(answer["stored"], 1, "{answer}");

    faults.inject("RecordInboundMessage", Code::FailedPrecondition, 3);
    let body = single(&wa_id, "Ana", text(&wa_id, &wamid(), "dos"));
    let refused = app.post_whatsapp(&body).await;
    assert_eq!(refused.status(), 502, "not transient, still retried");
    let answer = ok_json(app.post_whatsapp(&body).await).await;
    assert_eq!(answer["stored"], 1, "{answer}");

    assert_eq!(app.texts_from(&phone).await, ["uno", "dos"]);
}

/// INVALID_ARGUMENT means no retry can succeed: the item is dead-lettered
/// with the service's reason, and the delivery answered 200.
#[tokio::test(flavor = "multi_thread")]
async fn what_a_service_refuses_is_dead_lettered_with_its_reason() {
    let (mut app, faults) = spawn_app_with_faults().await;
    let (wa_id, phone) = sender();
    let id = wamid();
    faults.inject("RecordInboundMessage", Code::InvalidArgument, 1);
    faults.inject("UpdateDeliveryStatus", Code::InvalidArgument, 1);
    let body = delivery(vec![vec![
        messages_value(&[(&wa_id, "Ana")], vec![text(&wa_id, &id, "Hola")]),
        statuses_value(vec![status(&wamid(), "read", 1_700_000_000, &wa_id)]),
    ]])
    .to_string();
    let answer = ok_json(app.post_whatsapp(body.as_bytes()).await).await;
    assert_eq!(
        (
            answer["stored"].as_u64(),
            answer["statuses"].as_u64(),
            answer["dead_lettered"].as_u64()
        ),
        (Some(0), Some(0), Some(2)),
        "{answer}"
    );
    let failures = app.webhook_failures().await;
    let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
    assert_eq!(
        errors,
        [
            "conversations RecordInboundMessage refused it: injected by the test",
            "conversations UpdateDeliveryStatus refused it: injected by the test",
        ]
    );
    assert_eq!(
        (
            failures[0].provider_message_id.as_str(),
            failures[0].phone.as_str()
        ),
        (id.as_str(), phone.as_str())
    );
    assert!(app.messages_from(&phone).await.is_empty());
}

/// A dead letter is only as good as its filing: when RecordWebhookFailure
/// fails for now, the delivery is 5xx, and the retry files it once.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_that_cannot_be_filed_yet_is_retried() {
    let (mut app, faults) = spawn_app_with_faults().await;
    faults.inject("RecordWebhookFailure", Code::Unavailable, 1);
    let body = single("0123", "?", text("0123", &wamid(), "hi"));
    assert_eq!(app.post_whatsapp(&body).await.status(), 503);
    assert!(app.webhook_failures().await.is_empty());

    let answer = ok_json(app.post_whatsapp(&body).await).await;
    assert_eq!(answer["dead_lettered"], 1, "{answer}");
    assert_eq!(app.webhook_failures().await.len(), 1);
}

/// Another delivery made the Telegram user between GetUserByTelegramId and
/// CreateUser (ALREADY_EXISTS): that user is looked up and used.
#[tokio::test(flavor = "multi_thread")]
async fn a_telegram_user_made_meanwhile_is_found() {
    let (mut app, faults) = spawn_app_with_faults().await;
    let id = telegram_id();
    let from = telegram_from(id, "Ana", "ana_b");
    ok_json(
        app.post_telegram(&telegram_message(1, 1, &from, json!({"text": "uno"})))
            .await,
    )
    .await;
    faults.inject("GetUserByTelegramId", Code::NotFound, 1);
    faults.inject("CreateUser", Code::AlreadyExists, 1);
    let answer = ok_json(
        app.post_telegram(&telegram_message(2, 2, &from, json!({"text": "dos"})))
            .await,
    )
    .await;
    assert_eq!(answer["stored"], 1, "{answer}");

    let user = user_by_telegram_id(&mut app, id).await;
    assert_eq!(app.messages_of(&user.id).await.len(), 2);
    assert_eq!(app.db.count("users", "users").await, 1);
}

/// A link token that cannot be redeemed for now (the users service is
/// away) is not taken for a bad one: the update is 5xx and retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_redemption_that_fails_for_now_is_retried() {
    let (mut app, faults) = spawn_app_with_faults().await;
    faults.inject("RedeemLinkToken", Code::Unavailable, 1);
    let from = telegram_from(telegram_id(), "Ben", "ben");
    let update = telegram_message(3, 3, &from, json!({"text": "/start someToken123"}));
    assert_eq!(app.post_telegram(&update).await.status(), 503);
    assert_eq!(app.stored_messages().await, 0);

    let answer = ok_json(app.post_telegram(&update).await).await;
    assert_eq!(answer["stored"], 1, "{answer}");
    assert!(app.webhook_failures().await.is_empty());
}

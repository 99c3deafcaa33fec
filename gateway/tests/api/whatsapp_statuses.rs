//! Delivery statuses of the messages we sent: out of order, failed with the
//! provider's error, and about messages we never sent.

use mesh_proto::mesh::conversations::v1::{self as conv, DeliveryStatus};

use crate::{
    harness::{TestApp, ok_json, spawn_app},
    payloads::{chrono_now, delivery, sender, single, status, statuses_value, text, wamid},
};

/// A user who wrote to us, and a message we sent them (with its wamid).
async fn sent_message(app: &mut TestApp) -> (String, conv::Message) {
    let (wa_id, phone) = sender();
    ok_json(
        app.post_whatsapp(&single(&wa_id, "Ana", text(&wa_id, &wamid(), "Hola")))
            .await,
    )
    .await;
    let user = app.user_by_phone(&phone).await;
    let sent = app.send_text(&user.id, "¡Hola, Ana!").await;
    assert!(!sent.provider_message_id.is_empty());
    (wa_id, sent)
}

fn statuses_body(statuses: Vec<serde_json::Value>) -> Vec<u8> {
    delivery(vec![vec![statuses_value(statuses)]])
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn statuses_out_of_order_end_at_the_furthest_one() {
    let mut app = spawn_app().await;
    let (wa_id, sent) = sent_message(&mut app).await;
    let wamid = sent.provider_message_id.clone();
    let t = chrono_now();
    // read arrives first, then sent; delivered in a later delivery.
    let answer = ok_json(
        app.post_whatsapp(&statuses_body(vec![
            status(&wamid, "read", t + 2, &wa_id),
            status(&wamid, "sent", t, &wa_id),
        ]))
        .await,
    )
    .await;
    assert_eq!(answer["statuses"], 2, "{answer}");
    ok_json(
        app.post_whatsapp(&statuses_body(vec![status(
            &wamid,
            "delivered",
            t + 1,
            &wa_id,
        )]))
        .await,
    )
    .await;

    let m = app.message(&sent.id).await;
    assert_eq!(
        m.delivery_status(),
        DeliveryStatus::Read,
        "never moved back"
    );
    assert_eq!(m.read_time.map(|t| t.seconds), Some(t + 2));
    // An older status changes nothing, its time included.
    assert_eq!(m.sent_time, None);
    assert!(app.webhook_failures().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_status_keeps_the_provider_error() {
    let mut app = spawn_app().await;
    let (wa_id, sent) = sent_message(&mut app).await;
    let mut failed = status(&sent.provider_message_id, "failed", chrono_now(), &wa_id);
    failed["errors"] = serde_json::json!([{"code": 131047, "title": "Re-engagement message",
        "message": "Re-engagement message",
        "error_data": {"details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."}}]);
    ok_json(app.post_whatsapp(&statuses_body(vec![failed])).await).await;
    let m = app.message(&sent.id).await;
    assert_eq!(m.delivery_status(), DeliveryStatus::Failed);
    assert_eq!(
        (m.error_code.as_str(), m.error_title.as_str()),
        ("131047", "Re-engagement message")
    );
    assert!(m.failed_time.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_for_a_message_we_never_sent_is_dead_lettered_once() {
    let mut app = spawn_app().await;
    let stranger = wamid();
    let body = statuses_body(vec![status(
        &stranger,
        "delivered",
        chrono_now(),
        "573001112233",
    )]);
    let answer = ok_json(app.post_whatsapp(&body).await).await;
    assert_eq!(answer["dead_lettered"], 1, "{answer}");
    ok_json(app.post_whatsapp(&body).await).await;

    let failures = app.webhook_failures().await;
    assert_eq!(failures.len(), 1, "the retry files nothing twice");
    assert_eq!(failures[0].provider_message_id, stranger);
    assert!(
        failures[0].error.contains("no stored message"),
        "{}",
        failures[0].error
    );
    assert_eq!(failures[0].raw_payload, body);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_status_is_dead_lettered_and_the_rest_applied() {
    let mut app = spawn_app().await;
    let (wa_id, sent) = sent_message(&mut app).await;
    let t = chrono_now();
    let body = statuses_body(vec![
        status(&sent.provider_message_id, "teleported", t, &wa_id),
        status(&sent.provider_message_id, "delivered", t, &wa_id),
    ]);
    let answer = ok_json(app.post_whatsapp(&body).await).await;
    assert_eq!(
        (
            answer["statuses"].as_u64(),
            answer["dead_lettered"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(
        app.message(&sent.id).await.delivery_status(),
        DeliveryStatus::Delivered
    );
    let failures = app.webhook_failures().await;
    assert!(
        failures[0].error.contains("teleported"),
        "{}",
        failures[0].error
    );
}

//! UpdateDeliveryStatus: statuses only move forward, failed is final, a status
//! for a provider id no message has yet is deferred, events only for a move.
//!
//! Outbound messages are stored as the superuser the way SendMessage stores
//! them once the provider took them (`accepted`, with the provider's id).

use chrono::{DateTime, Duration, Utc};
use futures::future::join_all;
use mesh_proto::mesh::conversations::v1::{self as pb};
use pb::send_message_request::{Content, Target};
use prost::Message as _;
use tonic::Status;

use mesh_fake_providers::{Providers, WaReply};

use crate::harness::{
    Outbound, TestApp, fresh_user, micros_ago, sorted_bad_fields, spawn_app, spawn_with, time_of,
    ts, wamid,
};

use pb::DeliveryStatus as D;

fn status(
    provider_message_id: &str,
    status: D,
    time: Option<DateTime<Utc>>,
) -> pb::UpdateDeliveryStatusRequest {
    pb::UpdateDeliveryStatusRequest {
        channel: pb::Channel::Whatsapp as i32,
        provider_message_id: provider_message_id.into(),
        status: status as i32,
        status_time: time.map(ts),
        ..Default::default()
    }
}

async fn update(
    app: &mut TestApp,
    request: pb::UpdateDeliveryStatusRequest,
) -> Result<pb::UpdateDeliveryStatusResponse, Status> {
    app.client
        .update_delivery_status(request)
        .await
        .map(|r| r.into_inner())
}

async fn get_message(app: &mut TestApp, id: &str) -> pb::Message {
    app.client
        .get_message(pb::GetMessageRequest {
            message_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap()
}

/// An outbound WhatsApp message the provider accepted with a fresh id;
/// returns (message id, provider id).
async fn accepted(app: &mut TestApp) -> (String, String) {
    let conversation = app.conversation(&fresh_user(), pb::Channel::Whatsapp).await;
    let provider_id = wamid();
    let id = app
        .insert_outbound(
            &conversation.id,
            Outbound {
                provider_message_id: Some(&provider_id),
                ..Default::default()
            },
        )
        .await;
    (id, provider_id)
}

/// The stored delivery columns of a message.
#[derive(sqlx::FromRow, Debug, PartialEq)]
struct Delivery {
    delivery_status: Option<String>,
    sent_time: Option<DateTime<Utc>>,
    delivered_time: Option<DateTime<Utc>>,
    read_time: Option<DateTime<Utc>>,
    played_time: Option<DateTime<Utc>>,
    failed_time: Option<DateTime<Utc>>,
    error_code: Option<String>,
    error_title: Option<String>,
    error_message: Option<String>,
    pricing_category: Option<String>,
}

async fn stored(app: &TestApp, id: &str) -> Delivery {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_as(
        "SELECT delivery_status, sent_time, delivered_time, read_time, played_time, failed_time,
                error_code, error_title, error_message, pricing_category
         FROM conversations.messages WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// A row of deferred_statuses: (channel, provider_message_id, status,
/// status_time, error_code, pricing_category).
type Deferred = (
    String,
    String,
    String,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
);

/// The messages carried by the delivery_status_changed events, oldest first.
async fn delivery_events(app: &TestApp) -> Vec<pb::Message> {
    let mut conn = app.db.admin_connection().await;
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT payload FROM conversations.events WHERE type = 'delivery_status_changed' ORDER BY seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    payloads
        .iter()
        .map(|p| {
            pb::Event::decode(p.as_slice())
                .unwrap()
                .message
                .expect("a message event")
        })
        .collect()
}

#[tokio::test]
async fn forward_moves_apply_with_their_timestamps() {
    let mut app = spawn_app().await;
    let (id, provider_id) = accepted(&mut app).await;
    let sent = micros_ago(Duration::minutes(3));
    let delivered = micros_ago(Duration::minutes(2));
    let read = micros_ago(Duration::minutes(1));
    let played = micros_ago(Duration::seconds(30));

    let answer = update(
        &mut app,
        pb::UpdateDeliveryStatusRequest {
            pricing_category: "service".into(),
            ..status(&provider_id, D::Sent, Some(sent))
        },
    )
    .await
    .unwrap();
    assert!(answer.applied && !answer.deferred);
    let message = answer.message.unwrap();
    assert_eq!(message.id, id);
    assert_eq!(message.delivery_status(), D::Sent);
    assert_eq!(message.sent_time, Some(ts(sent)));
    assert!(message.delivered_time.is_none() && message.read_time.is_none());

    let answer = update(
        &mut app,
        status(&provider_id, D::Delivered, Some(delivered)),
    )
    .await
    .unwrap();
    assert!(answer.applied);
    let message = answer.message.unwrap();
    assert_eq!(message.delivery_status(), D::Delivered);
    assert_eq!(
        (message.sent_time, message.delivered_time),
        (Some(ts(sent)), Some(ts(delivered)))
    );

    let answer = update(&mut app, status(&provider_id, D::Read, Some(read)))
        .await
        .unwrap();
    assert!(answer.applied);
    assert_eq!(answer.message.as_ref().unwrap().read_time, Some(ts(read)));

    let answer = update(&mut app, status(&provider_id, D::Played, Some(played)))
        .await
        .unwrap();
    assert!(answer.applied);
    let message = answer.message.unwrap();
    assert_eq!(message.delivery_status(), D::Played);
    assert_eq!(message, get_message(&mut app, &id).await);

    assert_eq!(
        stored(&app, &id).await,
        Delivery {
            delivery_status: Some("played".into()),
            sent_time: Some(sent),
            delivered_time: Some(delivered),
            read_time: Some(read),
            played_time: Some(played),
            failed_time: None,
            error_code: None,
            error_title: None,
            error_message: None,
            pricing_category: Some("service".into()),
        }
    );
    let events = delivery_events(&app).await;
    assert_eq!(
        events
            .iter()
            .map(|m| m.delivery_status())
            .collect::<Vec<_>>(),
        [D::Sent, D::Delivered, D::Read, D::Played]
    );
    assert!(events.iter().all(|m| m.id == id));
}

#[tokio::test]
async fn an_older_or_repeated_status_changes_nothing() {
    let mut app = spawn_app().await;
    let (id, provider_id) = accepted(&mut app).await;
    let read = micros_ago(Duration::minutes(1));
    let answer = update(&mut app, status(&provider_id, D::Read, Some(read)))
        .await
        .unwrap();
    assert!(answer.applied);
    let after_read = answer.message.unwrap();
    let before = stored(&app, &id).await;

    // A late delivered, a late sent, the same read again (even at another time).
    for (late, time) in [
        (D::Delivered, micros_ago(Duration::minutes(2))),
        (D::Sent, micros_ago(Duration::minutes(3))),
        (D::Read, micros_ago(Duration::seconds(1))),
    ] {
        let answer = update(&mut app, status(&provider_id, late, Some(time)))
            .await
            .unwrap();
        assert!(!answer.applied, "{late:?} after read");
        assert!(!answer.deferred);
        assert_eq!(answer.message.unwrap(), after_read, "the message as it is");
    }
    assert_eq!(stored(&app, &id).await, before);
    assert!(
        before.delivered_time.is_none(),
        "a late delivered is not recorded"
    );
    assert_eq!(
        delivery_events(&app).await.len(),
        1,
        "only the move emitted an event"
    );
}

#[tokio::test]
async fn read_without_delivered_is_fine() {
    let mut app = spawn_app().await;
    let (id, provider_id) = accepted(&mut app).await;
    let read = micros_ago(Duration::seconds(10));
    let answer = update(&mut app, status(&provider_id, D::Read, Some(read)))
        .await
        .unwrap();
    assert!(answer.applied);
    let message = answer.message.unwrap();
    assert_eq!(message.delivery_status(), D::Read);
    assert_eq!(message.read_time, Some(ts(read)));
    assert!(message.sent_time.is_none() && message.delivered_time.is_none());
    assert_eq!(
        stored(&app, &id).await.delivery_status.as_deref(),
        Some("read")
    );
}

#[tokio::test]
async fn a_status_without_a_time_is_stamped_now() {
    let mut app = spawn_app().await;
    let (_, provider_id) = accepted(&mut app).await;
    let before = Utc::now() - Duration::seconds(1);
    let message = update(&mut app, status(&provider_id, D::Delivered, None))
        .await
        .unwrap()
        .message
        .unwrap();
    let delivered = time_of(message.delivered_time.as_ref().expect("a delivered time"));
    assert!(delivered >= before && delivered <= Utc::now() + Duration::seconds(1));
}

#[tokio::test]
async fn failed_keeps_its_error_and_is_final() {
    let mut app = spawn_app().await;
    let (id, provider_id) = accepted(&mut app).await;
    update(
        &mut app,
        status(
            &provider_id,
            D::Sent,
            Some(micros_ago(Duration::minutes(2))),
        ),
    )
    .await
    .unwrap();
    let failed_at = micros_ago(Duration::minutes(1));
    let answer = update(
        &mut app,
        pb::UpdateDeliveryStatusRequest {
            error_code: "131047".into(),
            error_title: "Re-engagement message".into(),
            error_message: "More than 24 hours have passed since the recipient last replied".into(),
            ..status(&provider_id, D::Failed, Some(failed_at))
        },
    )
    .await
    .unwrap();
    assert!(answer.applied);
    let failed = answer.message.unwrap();
    assert_eq!(failed.delivery_status(), D::Failed);
    assert_eq!(failed.failed_time, Some(ts(failed_at)));
    assert_eq!(failed.error_code, "131047");
    assert_eq!(failed.error_title, "Re-engagement message");
    let after_failure = stored(&app, &id).await;
    assert_eq!(
        after_failure.error_message.as_deref(),
        Some("More than 24 hours have passed since the recipient last replied")
    );

    // Nothing moves after it: not a later status, not another failure.
    for later in [D::Sent, D::Delivered, D::Read, D::Played] {
        let answer = update(&mut app, status(&provider_id, later, None))
            .await
            .unwrap();
        assert!(!answer.applied, "{later:?} after failed");
    }
    let again = update(
        &mut app,
        pb::UpdateDeliveryStatusRequest {
            error_code: "131026".into(),
            error_title: "Message undeliverable".into(),
            ..status(&provider_id, D::Failed, None)
        },
    )
    .await
    .unwrap();
    assert!(!again.applied);
    assert_eq!(again.message.unwrap(), failed);
    assert_eq!(stored(&app, &id).await, after_failure);
    assert_eq!(get_message(&mut app, &id).await, failed);
    assert_eq!(
        delivery_events(&app)
            .await
            .iter()
            .map(|m| m.delivery_status())
            .collect::<Vec<_>>(),
        [D::Sent, D::Failed]
    );
    assert_eq!(delivery_events(&app).await[1].error_code, "131047");
}

#[tokio::test]
async fn a_status_for_an_unknown_provider_id_is_deferred_once() {
    let mut app = spawn_app().await;
    let provider_id = wamid();
    let delivered_at = micros_ago(Duration::minutes(5));

    let answer = update(
        &mut app,
        pb::UpdateDeliveryStatusRequest {
            pricing_category: "marketing".into(),
            ..status(&provider_id, D::Delivered, Some(delivered_at))
        },
    )
    .await
    .expect("never NOT_FOUND");
    assert!(answer.deferred);
    assert!(!answer.applied);
    assert!(answer.message.is_none());

    // A repeat (even with another time) keeps the first report.
    let repeat = update(
        &mut app,
        status(
            &provider_id,
            D::Delivered,
            Some(micros_ago(Duration::minutes(1))),
        ),
    )
    .await
    .unwrap();
    assert!(repeat.deferred && !repeat.applied);
    // Another status for the same id is remembered too.
    let failed = update(
        &mut app,
        pb::UpdateDeliveryStatusRequest {
            error_code: "131049".into(),
            error_title: "Not delivered to maintain ecosystem health".into(),
            ..status(&provider_id, D::Failed, Some(delivered_at))
        },
    )
    .await
    .unwrap();
    assert!(failed.deferred);

    let mut conn = app.db.admin_connection().await;
    let rows: Vec<Deferred> = sqlx::query_as(
        "SELECT channel, provider_message_id, status, status_time, error_code, pricing_category
         FROM conversations.deferred_statuses ORDER BY status",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (
                "whatsapp".to_owned(),
                provider_id.clone(),
                "delivered".to_owned(),
                delivered_at,
                None,
                Some("marketing".to_owned())
            ),
            (
                "whatsapp".to_owned(),
                provider_id.clone(),
                "failed".to_owned(),
                delivered_at,
                Some("131049".to_owned()),
                None
            ),
        ]
    );
    assert_eq!(
        app.count("events").await,
        0,
        "nothing applied, nothing emitted"
    );
    assert_eq!(app.count("messages").await, 0);
}

#[tokio::test]
async fn deferral_is_per_channel() {
    let mut app = spawn_app().await;
    let (id, provider_id) = accepted(&mut app).await;
    // The same provider id on Telegram is another message, not yet stored.
    let answer = update(
        &mut app,
        pb::UpdateDeliveryStatusRequest {
            channel: pb::Channel::Telegram as i32,
            ..status(&provider_id, D::Read, None)
        },
    )
    .await
    .unwrap();
    assert!(answer.deferred && !answer.applied);
    assert_eq!(
        stored(&app, &id).await.delivery_status.as_deref(),
        Some("accepted")
    );
    assert_eq!(app.count("deferred_statuses").await, 1);
}

#[tokio::test]
async fn a_status_for_an_inbound_message_changes_nothing() {
    let mut app = spawn_app().await;
    let conversation = app.conversation(&fresh_user(), pb::Channel::Whatsapp).await;
    let provider_id = wamid();
    let inbound = app
        .inbound(&conversation.id, "hola", &provider_id)
        .await
        .message
        .unwrap();
    let answer = update(&mut app, status(&provider_id, D::Read, None))
        .await
        .unwrap();
    assert!(!answer.applied && !answer.deferred);
    assert_eq!(answer.message.unwrap(), inbound);
    assert_eq!(stored(&app, &inbound.id).await.delivery_status, None);
    assert_eq!(app.count("deferred_statuses").await, 0);
    assert!(delivery_events(&app).await.is_empty());
}

#[tokio::test]
async fn concurrent_statuses_end_at_the_furthest_one() {
    let mut app = spawn_app().await;
    let (id, provider_id) = accepted(&mut app).await;
    let calls = [
        D::Sent,
        D::Delivered,
        D::Read,
        D::Sent,
        D::Delivered,
        D::Read,
    ]
    .map(|s| {
        let mut client = app.client.clone();
        let request = status(&provider_id, s, None);
        async move {
            client
                .update_delivery_status(request)
                .await
                .unwrap()
                .into_inner()
        }
    });
    let answers = join_all(calls).await;
    let applied = answers.iter().filter(|a| a.applied).count();
    assert!((1..=3).contains(&applied), "{applied} moves");
    assert_eq!(
        stored(&app, &id).await.delivery_status.as_deref(),
        Some("read")
    );
    assert_eq!(
        delivery_events(&app).await.len(),
        applied,
        "one event per move"
    );
}

#[tokio::test]
async fn pending_and_accepted_are_refused_and_every_bad_field_named() {
    let mut app = spawn_app().await;
    let (id, provider_id) = accepted(&mut app).await;
    let before = stored(&app, &id).await;
    let good = status(&provider_id, D::Delivered, None);
    let cases: Vec<(pb::UpdateDeliveryStatusRequest, &[&str])> = vec![
        (
            pb::UpdateDeliveryStatusRequest {
                status: D::Pending as i32,
                ..good.clone()
            },
            &["status"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                status: D::Accepted as i32,
                ..good.clone()
            },
            &["status"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                status: D::Unspecified as i32,
                ..good.clone()
            },
            &["status"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                status: 99,
                ..good.clone()
            },
            &["status"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                channel: 0,
                ..good.clone()
            },
            &["channel"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                channel: 77,
                ..good.clone()
            },
            &["channel"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                provider_message_id: "".into(),
                ..good.clone()
            },
            &["provider_message_id"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                provider_message_id: "w".repeat(257),
                ..good.clone()
            },
            &["provider_message_id"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                status_time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -5,
                }),
                ..good.clone()
            },
            &["status_time"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                error_code: "e".repeat(65),
                ..good.clone()
            },
            &["error_code"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                error_title: "t".repeat(1025),
                ..good.clone()
            },
            &["error_title"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                error_message: "m".repeat(4097),
                ..good.clone()
            },
            &["error_message"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                pricing_category: "p".repeat(65),
                ..good.clone()
            },
            &["pricing_category"],
        ),
        (
            pb::UpdateDeliveryStatusRequest {
                channel: 0,
                provider_message_id: String::new(),
                status: D::Accepted as i32,
                status_time: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                error_code: "e".repeat(65),
                ..Default::default()
            },
            &[
                "channel",
                "error_code",
                "provider_message_id",
                "status",
                "status_time",
            ],
        ),
    ];
    for (request, expected) in cases {
        let status = update(&mut app, request.clone()).await.unwrap_err();
        assert_eq!(sorted_bad_fields(&status), expected, "{request:?}");
    }
    // Refused for an unknown id too: nothing is deferred.
    let unknown = update(&mut app, status(&wamid(), D::Pending, None))
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&unknown), ["status"]);

    assert_eq!(stored(&app, &id).await, before);
    assert_eq!(app.count("deferred_statuses").await, 0);
    assert!(delivery_events(&app).await.is_empty());
}

// ---- Deferred statuses applied when a sent message gets its provider id ----
// (SendMessage against the fake WhatsApp API: the send path calls
// delivery::apply_deferred when it stores the provider's id.)

/// The app with fake providers, and a user whose customer service window is open.
async fn with_provider() -> (TestApp, Providers, String) {
    let providers = Providers::start().await;
    let mut app = spawn_with(|config| crate::harness::use_fakes(&providers, config)).await;
    let user = app.new_user().await;
    let conversation = app.conversation(&user.id, pb::Channel::Whatsapp).await;
    app.inbound(&conversation.id, "hola", &wamid()).await;
    (app, providers, user.id)
}

/// Sends a text that the fake WhatsApp API accepts as `provider_id`; returns the message id.
async fn send_as(
    app: &mut TestApp,
    providers: &Providers,
    user_id: &str,
    provider_id: &str,
) -> String {
    providers
        .whatsapp
        .script([WaReply::AcceptAs(provider_id.to_owned())]);
    let sent = app
        .client
        .send_message(pb::SendMessageRequest {
            target: Some(Target::UserId(user_id.into())),
            channel: pb::Channel::Whatsapp as i32,
            content: Some(Content::Text("¿cómo dormiste?".into())),
            ..Default::default()
        })
        .await
        .expect("the send goes through")
        .into_inner();
    assert_eq!(sent.provider_message_id, provider_id);
    sent.message.unwrap().id
}

#[tokio::test]
async fn deferred_statuses_apply_in_order_when_the_message_gets_its_id() {
    let (mut app, providers, user) = with_provider().await;
    let provider_id = wamid();
    let sent = micros_ago(Duration::minutes(3));
    let delivered = micros_ago(Duration::minutes(2));
    let read = micros_ago(Duration::minutes(1));
    // Out of order, all before the message has the id.
    for (s, time) in [(D::Read, read), (D::Sent, sent), (D::Delivered, delivered)] {
        let answer = update(&mut app, status(&provider_id, s, Some(time)))
            .await
            .unwrap();
        assert!(answer.deferred, "{s:?}");
    }
    assert_eq!(app.count("deferred_statuses").await, 3);

    let id = send_as(&mut app, &providers, &user, &provider_id).await;
    let message = get_message(&mut app, &id).await;
    assert_eq!(message.delivery_status(), D::Read);
    assert_eq!(
        (message.sent_time, message.delivered_time, message.read_time),
        (Some(ts(sent)), Some(ts(delivered)), Some(ts(read)))
    );
    assert_eq!(
        app.count("deferred_statuses").await,
        0,
        "applied statuses are forgotten"
    );
    let moves: Vec<D> = delivery_events(&app)
        .await
        .iter()
        .filter(|m| m.id == id)
        .map(|m| m.delivery_status())
        .collect();
    assert!(
        moves.ends_with(&[D::Sent, D::Delivered, D::Read]),
        "{moves:?}"
    );

    // From now on the message is found: a late status changes nothing.
    let late = update(&mut app, status(&provider_id, D::Delivered, None))
        .await
        .unwrap();
    assert!(!late.applied && !late.deferred);
    assert_eq!(late.message.unwrap().delivery_status(), D::Read);
}

#[tokio::test]
async fn a_deferred_failure_is_applied_with_its_error_and_stays_final() {
    let (mut app, providers, user) = with_provider().await;
    let provider_id = wamid();
    let failed_at = micros_ago(Duration::minutes(1));
    update(
        &mut app,
        pb::UpdateDeliveryStatusRequest {
            error_code: "131026".into(),
            error_title: "Message undeliverable".into(),
            ..status(&provider_id, D::Failed, Some(failed_at))
        },
    )
    .await
    .unwrap();
    let id = send_as(&mut app, &providers, &user, &provider_id).await;
    let message = get_message(&mut app, &id).await;
    assert_eq!(message.delivery_status(), D::Failed);
    assert_eq!(message.failed_time, Some(ts(failed_at)));
    assert_eq!(
        (message.error_code.as_str(), message.error_title.as_str()),
        ("131026", "Message undeliverable")
    );
    let after = update(&mut app, status(&provider_id, D::Read, None))
        .await
        .unwrap();
    assert!(!after.applied);
    assert_eq!(
        stored(&app, &id).await.delivery_status.as_deref(),
        Some("failed")
    );
}

#[tokio::test]
async fn a_status_deferred_on_another_channel_is_not_applied() {
    let (mut app, providers, user) = with_provider().await;
    let provider_id = wamid();
    update(
        &mut app,
        pb::UpdateDeliveryStatusRequest {
            channel: pb::Channel::Telegram as i32,
            ..status(&provider_id, D::Read, None)
        },
    )
    .await
    .unwrap();
    let id = send_as(&mut app, &providers, &user, &provider_id).await;
    assert_eq!(
        stored(&app, &id).await.delivery_status.as_deref(),
        Some("accepted")
    );
    assert_eq!(
        app.count("deferred_statuses").await,
        1,
        "the Telegram one still waits"
    );
}

// ---- Dead letters of deferred statuses, resolved when the message appears ----

/// Records what the gateway records when UpdateDeliveryStatus answers
/// `deferred`: a failure of `source` naming `provider_id`; returns its id.
async fn record_failure(
    app: &mut TestApp,
    request_id: &str,
    source: pb::WebhookSource,
    provider_id: &str,
) -> String {
    app.client
        .record_webhook_failure(pb::RecordWebhookFailureRequest {
            failure: Some(pb::WebhookFailure {
                request_id: request_id.into(),
                source: source as i32,
                provider_message_id: provider_id.into(),
                raw_payload: format!(r#"{{"statuses":[{{"id":"{provider_id}"}}]}}"#).into_bytes(),
                error: "a status for a message we never sent".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("record a webhook failure")
        .into_inner()
        .failure
        .unwrap()
        .id
}

async fn move_failure(app: &mut TestApp, id: &str, to: pb::WebhookFailureStatus, resolution: &str) {
    app.client
        .resolve_webhook_failure(pb::ResolveWebhookFailureRequest {
            id: id.into(),
            status: to as i32,
            resolution: resolution.into(),
        })
        .await
        .expect("move a webhook failure");
}

/// Every webhook failure as ListWebhookFailures shows it, by id.
async fn failures(app: &mut TestApp) -> std::collections::HashMap<String, pb::WebhookFailure> {
    let listed = app
        .client
        .list_webhook_failures(pb::ListWebhookFailuresRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.next_page_token.is_empty());
    listed
        .failures
        .into_iter()
        .map(|f| (f.id.clone(), f))
        .collect()
}

const LATE_MESSAGE: &str = "the message was stored later and its deferred status applied";

#[tokio::test]
async fn a_deferred_status_recorded_as_a_failure_is_resolved_when_its_message_appears() {
    use pb::{WebhookFailureStatus as F, WebhookSource as S};
    let (mut app, providers, user) = with_provider().await;
    let provider_id = wamid();
    let other_id = wamid();
    // The gateway: a status for a message we never sent is deferred, and it
    // records the delivery as a dead letter (a re-delivery as another one).
    for id in [&provider_id, &other_id] {
        let answer = update(&mut app, status(id, D::Delivered, None))
            .await
            .unwrap();
        assert!(answer.deferred);
    }
    let pending = record_failure(&mut app, "status-1", S::Whatsapp, &provider_id).await;
    let retrying = record_failure(&mut app, "status-2", S::Whatsapp, &provider_id).await;
    move_failure(&mut app, &retrying, F::Retrying, "").await;
    let abandoned = record_failure(&mut app, "status-3", S::Whatsapp, &provider_id).await;
    move_failure(&mut app, &abandoned, F::Abandoned, "gave up").await;
    let other = record_failure(&mut app, "status-4", S::Whatsapp, &other_id).await;
    let telegram = record_failure(&mut app, "status-5", S::Telegram, &provider_id).await;
    let before = failures(&mut app).await;

    let id = send_as(&mut app, &providers, &user, &provider_id).await;
    assert_eq!(
        get_message(&mut app, &id).await.delivery_status(),
        D::Delivered
    );

    let after = failures(&mut app).await;
    for resolved in [&pending, &retrying] {
        let failure = &after[resolved];
        assert_eq!(failure.status(), F::Resolved, "{failure:?}");
        assert_eq!(failure.resolution, LATE_MESSAGE);
        assert_eq!(failure.retry_count, before[resolved].retry_count);
        assert_eq!(failure.raw_payload, before[resolved].raw_payload);
    }
    // Final ones, other ids and other sources are not touched.
    for untouched in [&abandoned, &other, &telegram] {
        assert_eq!(after[untouched], before[untouched]);
    }
    assert_eq!(after[&abandoned].status(), F::Abandoned);
    assert_eq!(after[&other].status(), F::Pending);
    assert_eq!(after[&telegram].status(), F::Pending);

    // Listed as resolved, and resolving it again the same way is a retry.
    let resolved = app
        .client
        .list_webhook_failures(pb::ListWebhookFailuresRequest {
            status: F::Resolved as i32,
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .failures;
    assert_eq!(
        resolved.iter().map(|f| &f.id).collect::<Vec<_>>(),
        [&pending, &retrying]
    );
    move_failure(&mut app, &pending, F::Resolved, "").await;
    assert_eq!(failures(&mut app).await[&pending], after[&pending]);
}

#[tokio::test]
async fn a_failure_with_no_deferred_status_waiting_stays_open_when_the_message_appears() {
    use pb::{WebhookFailureStatus as F, WebhookSource as S};
    let (mut app, providers, user) = with_provider().await;
    let provider_id = wamid();
    // Recorded for some other reason, with no status deferred for the id.
    let failure = record_failure(&mut app, "other-1", S::Whatsapp, &provider_id).await;
    send_as(&mut app, &providers, &user, &provider_id).await;
    let after = failures(&mut app).await;
    assert_eq!(after[&failure].status(), F::Pending);
    assert_eq!(after[&failure].resolution, "");
}

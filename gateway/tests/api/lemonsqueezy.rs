//! Lemon Squeezy subscription webhooks: signed events reach billing and are
//! applied once; anything unsigned or mis-signed is refused and records
//! nothing; a signed body that is not an event is refused and kept as a dead
//! letter; billing away is a 5xx that Lemon Squeezy retries.

use mesh_proto::mesh::{
    billing::v1::{
        self as billing, GetSubscriptionRequest, ListSubscriptionEventsRequest, Owner,
        SubscriptionStatus, owner,
    },
    conversations::v1 as conv,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    harness::{LEMONSQUEEZY_SECRET, TestApp, ok_json, spawn_app, spawn_app_with_faults},
    payloads::sender,
};

/// A subscription event as Lemon Squeezy sends it (JSON:API), for the user
/// whose id the checkout put in `custom_data`.
pub fn subscription_event(
    event_name: &str,
    user_id: &str,
    subscription_id: u64,
    status: &str,
    updated_at: &str,
) -> Value {
    let ends_at = match status {
        "cancelled" | "expired" => json!("2031-02-01T09:30:00.000000Z"),
        _ => Value::Null,
    };
    json!({
        "meta": {
            "test_mode": true,
            "event_name": event_name,
            "webhook_id": "7a6b0d4e-2c1f-4f0b-9d3a-5e8c1b2a4f60",
            "custom_data": {"user_id": user_id}
        },
        "data": {
            "type": "subscriptions",
            "id": subscription_id.to_string(),
            "attributes": {
                "store_id": 48811,
                "customer_id": 3551293,
                "order_id": 3810944,
                "order_item_id": 3754571,
                "product_id": 291357,
                "variant_id": 431872,
                "product_name": "Mesh Pro",
                "variant_name": "Monthly",
                "user_name": "Ana Gómez",
                "user_email": "ana@example.com",
                "status": status,
                "status_formatted": status,
                "card_brand": "visa",
                "card_last_four": "4242",
                "pause": null,
                "cancelled": status == "cancelled",
                "trial_ends_at": null,
                "billing_anchor": 14,
                "first_subscription_item": {
                    "id": 2807135,
                    "subscription_id": subscription_id,
                    "price_id": 560125,
                    "quantity": 1,
                    "is_usage_based": false,
                    "created_at": "2031-01-14T09:30:05.000000Z",
                    "updated_at": updated_at
                },
                "urls": {
                    "update_payment_method": "https://mesh.lemonsqueezy.com/subscription/1/payment-details?expires=1924941005&signature=9f1c",
                    "customer_portal": "https://mesh.lemonsqueezy.com/billing?expires=1924941005&user=2170318&signature=a3e9",
                    "customer_portal_update_subscription": "https://mesh.lemonsqueezy.com/billing/1/update?expires=1924941005&signature=c0d2"
                },
                "renews_at": "2031-02-14T09:30:00.000000Z",
                "ends_at": ends_at,
                "created_at": "2031-01-14T09:30:05.000000Z",
                "updated_at": updated_at,
                "test_mode": true
            },
            "relationships": {
                "store": {"links": {"related": "https://api.lemonsqueezy.com/v1/subscriptions/1/store"}},
                "customer": {"links": {"related": "https://api.lemonsqueezy.com/v1/subscriptions/1/customer"}}
            },
            "links": {"self": format!("https://api.lemonsqueezy.com/v1/subscriptions/{subscription_id}")}
        }
    })
}

/// A user of the mesh, as the checkout's `custom_data` names them.
async fn new_user(app: &mut TestApp) -> String {
    let (_, phone) = sender();
    app.users
        .upsert_user_by_phone(mesh_proto::mesh::users::v1::UpsertUserByPhoneRequest {
            phone,
            profile_name: "Ana".into(),
        })
        .await
        .expect("a user")
        .into_inner()
        .user
        .expect("a user")
        .id
}

fn user(id: &str) -> Option<Owner> {
    Some(Owner {
        kind: Some(owner::Kind::UserId(id.into())),
    })
}

/// The user's subscription in billing, or the status that says why not.
async fn subscription_of(
    app: &mut TestApp,
    user_id: &str,
) -> Result<billing::Subscription, tonic::Status> {
    app.billing
        .get_subscription(GetSubscriptionRequest {
            owner: user(user_id),
        })
        .await
        .map(|answer| answer.into_inner().subscription.expect("a subscription"))
}

async fn events_of(app: &mut TestApp, user_id: &str) -> Vec<billing::SubscriptionEvent> {
    app.billing
        .list_subscription_events(ListSubscriptionEventsRequest {
            owner: user(user_id),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list events")
        .into_inner()
        .events
}

/// The text of an answer that must have `status`.
async fn text_with(response: reqwest::Response, status: u16) -> String {
    let got = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_subscription_event_is_applied_once() {
    let mut app = spawn_app().await;
    let user_id = new_user(&mut app).await;
    let created = subscription_event(
        "subscription_created",
        &user_id,
        1_024_881,
        "active",
        "2031-01-14T09:30:06.000000Z",
    )
    .to_string();

    let answer = ok_json(
        app.post_lemonsqueezy("subscription_created", created.as_bytes())
            .await,
    )
    .await;
    assert_eq!(answer, json!({"outcome": "applied", "recorded": true}));
    let subscription = subscription_of(&mut app, &user_id).await.expect("stored");
    assert_eq!(subscription.subscription_id, "1024881");
    assert_eq!(subscription.customer_id, "3551293");
    assert_eq!(subscription.variant_id, "431872");
    assert_eq!(subscription.status(), SubscriptionStatus::Active);
    assert!(subscription.in_force);
    assert_eq!(subscription.plan_id, "pro");
    assert!(subscription.test_mode);
    assert_eq!(
        subscription.customer_portal_url,
        "https://mesh.lemonsqueezy.com/billing?expires=1924941005&user=2170318&signature=a3e9"
    );
    let renews_at = subscription.renews_at.expect("renews_at");
    assert_eq!(
        chrono::DateTime::from_timestamp(renews_at.seconds, 0).unwrap(),
        "2031-02-14T09:30:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    );
    assert!(subscription.ends_at.is_none());

    // Lemon Squeezy delivers the same body again (a retry of a lost 200):
    // answered 200, and nothing changes.
    let again = ok_json(
        app.post_lemonsqueezy("subscription_created", created.as_bytes())
            .await,
    )
    .await;
    assert_eq!(again, json!({"outcome": "applied", "recorded": false}));
    assert_eq!(
        subscription_of(&mut app, &user_id).await.unwrap(),
        subscription
    );
    assert_eq!(events_of(&mut app, &user_id).await.len(), 1);
    assert_eq!(app.db.count("billing", "subscription_events").await, 1);

    // X-Event-Name is optional: meta.event_name names the event.
    let cancelled = subscription_event(
        "subscription_cancelled",
        &user_id,
        1_024_881,
        "cancelled",
        "2031-01-20T12:00:00.000000Z",
    )
    .to_string();
    let signature = mesh_gateway::signature::sign_lemonsqueezy(
        LEMONSQUEEZY_SECRET.as_bytes(),
        cancelled.as_bytes(),
    );
    let answer = ok_json(
        app.post_lemonsqueezy_signed(None, cancelled.as_bytes(), Some(&signature))
            .await,
    )
    .await;
    assert_eq!(answer, json!({"outcome": "applied", "recorded": true}));
    let now = subscription_of(&mut app, &user_id).await.unwrap();
    assert_eq!(now.status(), SubscriptionStatus::Cancelled);
    assert!(now.ends_at.is_some());
    assert!(now.in_force, "cancelled, but in force until ends_at");
    let events = events_of(&mut app, &user_id).await;
    let names: Vec<&str> = events.iter().map(|e| e.event_name.as_str()).collect();
    assert_eq!(names, ["subscription_cancelled", "subscription_created"]);

    let metrics = app.get("/metrics").await.text().await.unwrap();
    for line in [
        r#"gateway_http_requests_total{route="/webhooks/lemonsqueezy",outcome="recorded"} 2"#,
        r#"gateway_http_requests_total{route="/webhooks/lemonsqueezy",outcome="duplicate"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsigned_or_mis_signed_event_is_401_and_records_nothing() {
    let mut app = spawn_app().await;
    let user_id = new_user(&mut app).await;
    let body = subscription_event(
        "subscription_created",
        &user_id,
        77,
        "active",
        "2031-01-14T09:30:06.000000Z",
    )
    .to_string();
    let body = body.as_bytes();
    let good = mesh_gateway::signature::sign_lemonsqueezy(LEMONSQUEEZY_SECRET.as_bytes(), body);
    let other_secret = mesh_gateway::signature::sign_lemonsqueezy(b"not-our-secret", body);
    let of_another_body = mesh_gateway::signature::sign_lemonsqueezy(
        LEMONSQUEEZY_SECRET.as_bytes(),
        &[body, b" "].concat(),
    );
    for (signature, reason) in [
        (None, "signature header missing"),
        (Some(other_secret.as_str()), "signature does not match"),
        (Some(of_another_body.as_str()), "signature does not match"),
        (Some(&good[..63]), "signature header malformed"),
        (Some(&good[..62]), "signature header malformed"),
        (Some(&*format!("{good}ab")), "signature header malformed"),
        (Some(&*"g".repeat(64)), "signature header malformed"),
        (
            Some(&*format!("sha256={good}")),
            "signature header malformed",
        ),
        (Some(""), "signature header malformed"),
    ] {
        let answer = app
            .post_lemonsqueezy_signed(Some("subscription_created"), body, signature)
            .await;
        let text = text_with(answer, 401).await;
        assert!(text.contains(reason), "{signature:?}: {text}");
    }
    assert_eq!(app.db.count("billing", "subscription_events").await, 0);
    assert_eq!(
        subscription_of(&mut app, &user_id)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // Uppercase hex is the same digest.
    let upper = good.to_uppercase();
    ok_json(
        app.post_lemonsqueezy_signed(Some("subscription_created"), body, Some(&upper))
            .await,
    )
    .await;
    assert_eq!(app.db.count("billing", "subscription_events").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_body_that_is_not_an_event_is_400_and_dead_lettered() {
    let mut app = spawn_app().await;
    let user_id = new_user(&mut app).await;
    let mut no_meta = subscription_event(
        "subscription_created",
        &user_id,
        78,
        "active",
        "2031-01-14T09:30:06.000000Z",
    );
    no_meta.as_object_mut().unwrap().remove("meta");
    let mut bad_status = subscription_event(
        "subscription_created",
        &user_id,
        78,
        "active",
        "2031-01-14T09:30:06.000000Z",
    );
    bad_status["data"]["attributes"]["status"] = json!("thriving");
    let mut no_updated_at = bad_status.clone();
    no_updated_at["data"]["attributes"]["status"] = json!("active");
    no_updated_at["data"]["attributes"]
        .as_object_mut()
        .unwrap()
        .remove("updated_at");
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            b"event=subscription_created".to_vec(),
            "subscription_created",
            "body is not JSON",
        ),
        (
            b"\xff\xfe{}".to_vec(),
            "subscription_created",
            "body is not JSON",
        ),
        (
            no_meta.to_string().into_bytes(),
            "subscription_created",
            "meta: must be an object",
        ),
        (
            bad_status.to_string().into_bytes(),
            "subscription_created",
            "payload.data.attributes.status",
        ),
        (
            no_updated_at.to_string().into_bytes(),
            "subscription_created",
            "payload.data.attributes.updated_at",
        ),
        // The header and the body disagree on what happened.
        (
            subscription_event(
                "subscription_created",
                &user_id,
                78,
                "active",
                "2031-01-14T09:30:06Z",
            )
            .to_string()
            .into_bytes(),
            "subscription_expired",
            "event_name",
        ),
    ];
    let refused = cases.len();
    for (body, event_name, reason) in &cases {
        // Lemon Squeezy retries a 400: the same body files one letter.
        for _ in 0..2 {
            let answer = app.post_lemonsqueezy(event_name, body).await;
            let text = text_with(answer, 400).await;
            assert!(text.contains(reason), "{reason} in {text}");
        }
    }
    assert_eq!(app.db.count("billing", "subscription_events").await, 0);
    // What Lemon Squeezy signed is not lost: each body is a dead letter.
    let letters = app.webhook_failures().await;
    assert_eq!(letters.len(), refused);
    for (letter, (body, _, reason)) in letters.iter().zip(&cases) {
        assert_eq!(letter.source(), conv::WebhookSource::Lemonsqueezy);
        assert_eq!(&letter.raw_payload, body);
        assert!(
            letter.error.contains(reason),
            "{reason} in {}",
            letter.error
        );
    }
    let none = subscription_of(&mut app, &user_id).await.unwrap_err();
    assert_eq!(none.code(), Code::NotFound);

    let too_large = vec![b' '; mesh_gateway::MAX_LEMONSQUEEZY_BODY + 1];
    let answer = app
        .post_lemonsqueezy("subscription_created", &too_large)
        .await;
    assert_eq!(answer.status(), 413);
}

/// Billing stops: the event is answered 503 (Lemon Squeezy retries it) and
/// /readyz says billing is away (and stays 200: messages are still stored);
/// once billing is back, the retry applies it.
#[tokio::test(flavor = "multi_thread")]
async fn billing_away_is_503_and_the_retry_applies_the_event() {
    let mut app = spawn_app().await;
    let user_id = new_user(&mut app).await;
    let body = subscription_event(
        "subscription_created",
        &user_id,
        79,
        "on_trial",
        "2031-01-14T09:30:06.000000Z",
    )
    .to_string();

    app.stop_billing().await;
    let refused = app
        .post_lemonsqueezy("subscription_created", body.as_bytes())
        .await;
    assert_eq!(refused.status(), 503);
    let still_ready = app.get("/readyz").await;
    assert_eq!(still_ready.status(), 200);
    let ready: Value = still_ready.json().await.unwrap();
    assert_eq!(ready["users"], "SERVING");
    assert_ne!(ready["billing"], "SERVING", "{ready}");

    app.start_billing().await;
    let answer = ok_json(
        app.post_lemonsqueezy("subscription_created", body.as_bytes())
            .await,
    )
    .await;
    assert_eq!(answer["recorded"], true, "{answer}");
    let subscription = subscription_of(&mut app, &user_id).await.unwrap();
    assert_eq!(subscription.status(), SubscriptionStatus::OnTrial);
    assert_eq!(app.get("/readyz").await.status(), 200);
}

/// Billing answers something other than "unavailable" or "invalid": still a
/// 5xx (502), so Lemon Squeezy retries, and the retry applies it once.
#[tokio::test(flavor = "multi_thread")]
async fn a_billing_failure_is_502_and_retried() {
    let (mut app, faults) = spawn_app_with_faults().await;
    let user_id = new_user(&mut app).await;
    let body = subscription_event(
        "subscription_created",
        &user_id,
        80,
        "active",
        "2031-01-14T09:30:06.000000Z",
    )
    .to_string();
    faults.inject("ApplySubscriptionEvent", Code::Internal, 1);
    faults.inject("ApplySubscriptionEvent", Code::DeadlineExceeded, 1);
    let failed = app
        .post_lemonsqueezy("subscription_created", body.as_bytes())
        .await;
    assert_eq!(failed.status(), 502);
    let timed_out = app
        .post_lemonsqueezy("subscription_created", body.as_bytes())
        .await;
    assert_eq!(timed_out.status(), 503);
    assert_eq!(app.db.count("billing", "subscription_events").await, 0);
    let answer = ok_json(
        app.post_lemonsqueezy("subscription_created", body.as_bytes())
            .await,
    )
    .await;
    assert_eq!(answer, json!({"outcome": "applied", "recorded": true}));
    assert_eq!(app.db.count("billing", "subscription_events").await, 1);
}

/// A signed body that is not an event is answered 400 only once its dead
/// letter is filed: while RecordWebhookFailure fails it is 5xx (Lemon
/// Squeezy retries), and the retry files it once.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_event_whose_letter_cannot_be_filed_yet_is_retried() {
    let (mut app, faults) = spawn_app_with_faults().await;
    faults.inject("RecordWebhookFailure", Code::Unavailable, 1);
    let body = b"not json";
    let first = app.post_lemonsqueezy("subscription_created", body).await;
    assert_eq!(first.status(), 503);
    assert!(app.webhook_failures().await.is_empty());

    let text = text_with(
        app.post_lemonsqueezy("subscription_created", body).await,
        400,
    )
    .await;
    assert!(text.contains("body is not JSON"), "{text}");
    assert_eq!(app.webhook_failures().await.len(), 1);
}

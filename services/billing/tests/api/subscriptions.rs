//! Lemon Squeezy events: each type, repeats, out of order, payments through
//! the invoice's subscription_id, owners from custom_data.

use mesh_proto::mesh::billing::v1::{self as pb, SubscriptionStatus as S};
use serde_json::json;
use tonic::Code;
use uuid::Uuid;

use crate::harness::*;

fn at(minute: u32) -> String {
    format!("2026-12-07T10:{minute:02}:00.000000Z")
}

#[tokio::test]
async fn every_subscription_event_type_moves_the_subscription() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/Bogota").await;
    let owner = json!({"user_id": user});
    let steps: [(&str, &str, S, bool); 8] = [
        ("subscription_created", "on_trial", S::OnTrial, true),
        ("subscription_updated", "active", S::Active, true),
        ("subscription_updated", "past_due", S::PastDue, true),
        ("subscription_updated", "unpaid", S::Unpaid, false),
        ("subscription_resumed", "active", S::Active, true),
        ("subscription_paused", "paused", S::Paused, false),
        ("subscription_unpaused", "active", S::Active, true),
        ("subscription_cancelled", "cancelled", S::Cancelled, true),
    ];
    for (minute, (name, status, expected, in_force)) in (0u32..).zip(steps) {
        let mut event = subscription_event(name, 1, owner.clone(), status, 42, &at(minute));
        if status == "cancelled" {
            // Cancelled stays in force until ends_at.
            event["data"]["attributes"]["ends_at"] = json!("2099-01-01T00:00:00Z");
        }
        let answer = app.apply(&event).await.expect(name);
        assert!(answer.recorded);
        assert_eq!(answer.event.as_ref().unwrap().outcome, "applied", "{name}");
        let subscription = app.subscription(user_owner(&user)).await.unwrap();
        assert_eq!(subscription.status(), expected, "{name} -> {status}");
        assert_eq!(subscription.in_force, in_force, "{name} -> {status}");
        let plan = app.entitlements(&user).await.plan.unwrap().id;
        assert_eq!(
            plan,
            if in_force { "pro" } else { "free" },
            "{name} -> {status}"
        );
    }
    // Expired: back on free.
    let expired = subscription_event(
        "subscription_expired",
        1,
        owner.clone(),
        "expired",
        42,
        &at(30),
    );
    app.apply(&expired).await.unwrap();
    let subscription = app.subscription(user_owner(&user)).await.unwrap();
    assert_eq!(subscription.status(), S::Expired);
    assert!(!subscription.in_force);
    assert_eq!(app.entitlements(&user).await.plan.unwrap().id, "free");
    // What the subscription carries.
    assert_eq!(subscription.subscription_id, "1");
    assert_eq!(subscription.customer_id, "555");
    assert_eq!(subscription.variant_id, "42");
    assert_eq!(subscription.plan_id, "pro");
    assert_eq!(
        subscription.customer_portal_url,
        "https://store.example/billing?signature=abc"
    );
    assert!(subscription.renews_at.is_some() && subscription.ends_at.is_some());

    // The payment events find the subscription through the invoice.
    for (minute, (name, status)) in (40u32..).zip([
        ("subscription_payment_success", "success"),
        ("subscription_payment_failed", "failed"),
        ("subscription_payment_recovered", "recovered"),
        ("subscription_payment_refunded", "refunded"),
    ]) {
        let answer = app
            .apply(&payment_event(
                name,
                1,
                900 + u64::from(minute),
                &at(minute),
            ))
            .await
            .unwrap();
        let event = answer.event.unwrap();
        assert_eq!(event.outcome, "applied", "{name}");
        assert_eq!(event.subscription_id, "1");
        assert_eq!(
            event.owner,
            Some(user_owner(&user)),
            "the owner comes from the subscription"
        );
        assert_eq!(answer.subscription.unwrap().last_payment_status, status);
    }
    // Orders are recorded, and change no subscription.
    for name in ["order_created", "order_refunded"] {
        let answer = app
            .apply(&order_event(name, 777, owner.clone()))
            .await
            .unwrap();
        assert_eq!(answer.event.unwrap().outcome, "recorded");
        assert!(answer.subscription.is_none());
    }
    let events = app
        .client
        .list_subscription_events(pb::ListSubscriptionEventsRequest {
            owner: Some(user_owner(&user)),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(
        events.len(),
        8 + 1 + 4 + 2,
        "every event is in the audit log"
    );
    assert_eq!(events[0].event_name, "order_refunded", "newest first");
}

#[tokio::test]
async fn a_repeat_delivery_changes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    let event = subscription_event(
        "subscription_created",
        2,
        json!({"user_id": user}),
        "active",
        42,
        &at(0),
    );
    let first = app.apply(&event).await.unwrap();
    let before = app.subscription(user_owner(&user)).await.unwrap();
    let again = app.apply(&event).await.unwrap();
    assert!(first.recorded && !again.recorded);
    assert_eq!(first.event.unwrap().id, again.event.unwrap().id);
    assert_eq!(app.subscription(user_owner(&user)).await.unwrap(), before);
    assert_eq!(app.db.count("billing", "subscription_events").await, 1);
    // Concurrent repeats: still one record.
    let event = subscription_event(
        "subscription_updated",
        2,
        json!({"user_id": user}),
        "past_due",
        42,
        &at(1),
    );
    let calls = (0..10).map(|_| {
        let mut client = app.client.clone();
        let payload = event.to_string();
        tokio::spawn(async move {
            client
                .apply_subscription_event(pb::ApplySubscriptionEventRequest {
                    event_name: "subscription_updated".into(),
                    payload,
                })
                .await
                .map(|r| r.into_inner().recorded)
        })
    });
    let mut recorded = 0;
    for call in calls.collect::<Vec<_>>() {
        recorded += usize::from(call.await.unwrap().unwrap());
    }
    assert_eq!(recorded, 1);
    assert_eq!(app.db.count("billing", "subscription_events").await, 2);
}

#[tokio::test]
async fn an_older_event_does_not_roll_the_state_back() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    let owner = json!({"user_id": user});
    let mut cancelled = subscription_event(
        "subscription_cancelled",
        3,
        owner.clone(),
        "cancelled",
        42,
        &at(20),
    );
    cancelled["data"]["attributes"]["ends_at"] = json!("2099-01-01T00:00:00Z");
    // The cancellation arrives before the creation and the update it follows.
    assert_eq!(
        app.apply(&cancelled).await.unwrap().event.unwrap().outcome,
        "applied"
    );
    for (name, status, minute) in [
        ("subscription_created", "on_trial", 0),
        ("subscription_updated", "active", 10),
    ] {
        let stale = app
            .apply(&subscription_event(
                name,
                3,
                owner.clone(),
                status,
                42,
                &at(minute),
            ))
            .await
            .unwrap();
        assert!(stale.recorded, "stored in the audit log");
        assert_eq!(stale.event.unwrap().outcome, "stale");
        assert_eq!(stale.subscription.unwrap().status(), S::Cancelled);
    }
    // A newer one applies.
    let resumed = subscription_event(
        "subscription_resumed",
        3,
        owner.clone(),
        "active",
        42,
        &at(30),
    );
    assert_eq!(
        app.apply(&resumed)
            .await
            .unwrap()
            .subscription
            .unwrap()
            .status(),
        S::Active
    );
    // An older payment does not overwrite a newer one.
    app.apply(&payment_event("subscription_payment_failed", 3, 1, &at(40)))
        .await
        .unwrap();
    let old = app
        .apply(&payment_event(
            "subscription_payment_success",
            3,
            2,
            &at(35),
        ))
        .await
        .unwrap();
    assert_eq!(old.event.unwrap().outcome, "stale");
    assert_eq!(old.subscription.unwrap().last_payment_status, "failed");
}

#[tokio::test]
async fn events_that_come_before_their_subscription_apply_once_it_exists() {
    let mut app = spawn_app().await;
    // Lemon Squeezy sends the first payment with the creation: it may come first.
    let early = app
        .apply(&payment_event("subscription_payment_success", 4, 1, &at(0)))
        .await
        .unwrap();
    assert_eq!(early.event.unwrap().outcome, "no_subscription");
    // Updates without a usable owner (custom_data from another app, or none).
    let older = subscription_event(
        "subscription_updated",
        4,
        json!({"user_id": "nope"}),
        "active",
        99,
        &at(1),
    );
    let newer = subscription_event(
        "subscription_updated",
        4,
        serde_json::Value::Null,
        "past_due",
        99,
        &at(5),
    );
    for orphan in [&older, &newer] {
        assert_eq!(
            app.apply(orphan).await.unwrap().event.unwrap().outcome,
            "no_owner"
        );
    }
    // The creation stores the subscription, then replays what waited for it.
    let workspace = Uuid::now_v7().to_string();
    let created = subscription_event(
        "subscription_created",
        4,
        json!({"workspace_id": workspace}),
        "active",
        99,
        &at(2),
    );
    let answer = app.apply(&created).await.unwrap();
    let subscription = answer.subscription.unwrap();
    assert_eq!(
        subscription.status(),
        S::PastDue,
        "the newer update applied"
    );
    assert_eq!(
        subscription.last_payment_status, "success",
        "the early payment applied"
    );
    assert_eq!(subscription.plan_id, "team", "variant 99 is the team plan");
    let events = app
        .client
        .list_subscription_events(pb::ListSubscriptionEventsRequest {
            subscription_id: "4".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let outcomes: Vec<_> = events.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["applied", "applied", "stale", "applied"],
        "newest first"
    );
    assert!(
        events
            .iter()
            .all(|e| e.owner == Some(workspace_owner(&workspace)))
    );
    // A later update without custom_data applies to the stored owner.
    let later = subscription_event(
        "subscription_updated",
        4,
        serde_json::Value::Null,
        "active",
        99,
        &at(6),
    );
    let answer = app.apply(&later).await.unwrap();
    assert_eq!(
        answer.event.unwrap().owner,
        Some(workspace_owner(&workspace))
    );
    assert_eq!(
        app.subscription(workspace_owner(&workspace))
            .await
            .unwrap()
            .status(),
        S::Active
    );
    assert_eq!(app.db.count("billing", "subscription_events").await, 5);
}

#[tokio::test]
async fn a_past_cancellation_ends_the_plan_and_a_free_pause_keeps_it() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    let owner = json!({"user_id": user});
    let mut over = subscription_event(
        "subscription_cancelled",
        12,
        owner.clone(),
        "cancelled",
        42,
        &at(0),
    );
    over["data"]["attributes"]["ends_at"] = json!("2020-01-01T00:00:00Z");
    app.apply(&over).await.unwrap();
    assert!(!app.subscription(user_owner(&user)).await.unwrap().in_force);
    assert_eq!(app.entitlements(&user).await.plan.unwrap().id, "free");
    for (minute, mode, in_force) in [(1, "void", false), (2, "free", true)] {
        let mut paused = subscription_event(
            "subscription_paused",
            12,
            owner.clone(),
            "paused",
            42,
            &at(minute),
        );
        paused["data"]["attributes"]["pause"] = json!({"mode": mode, "resumes_at": null});
        app.apply(&paused).await.unwrap();
        let subscription = app.subscription(user_owner(&user)).await.unwrap();
        assert_eq!(
            (subscription.pause_mode.as_str(), subscription.in_force),
            (mode, in_force)
        );
        let plan = app.entitlements(&user).await.plan.unwrap().id;
        assert_eq!(plan, if in_force { "pro" } else { "free" }, "{mode}");
    }
}

#[tokio::test]
async fn a_user_enjoys_the_plan_of_a_workspace_they_own() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    let workspace = app
        .users
        .create_workspace(mesh_proto::mesh::users::v1::CreateWorkspaceRequest {
            workspace: Some(mesh_proto::mesh::users::v1::Workspace {
                owner_user_id: user.clone(),
                name: "Casa".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap()
        .id;
    let event = subscription_event(
        "subscription_created",
        5,
        json!({"workspace_id": workspace}),
        "active",
        99,
        &at(0),
    );
    app.apply(&event).await.unwrap();
    let team = app.entitlements(&user).await;
    assert_eq!(team.plan.unwrap().id, "team");
    assert_eq!(team.subscription.unwrap().subscription_id, "5");
    let workspace_view = app
        .client
        .get_entitlements(pb::GetEntitlementsRequest {
            owner: Some(workspace_owner(&workspace)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(workspace_view.plan.unwrap().id, "team");
    let inbound = &workspace_view.quotas[0];
    assert_eq!(
        (inbound.limit.as_str(), inbound.used.as_str()),
        ("1000", "")
    );
    assert!(
        app.subscription(user_owner(&user))
            .await
            .unwrap_err()
            .code()
            == Code::NotFound
    );
}

#[tokio::test]
async fn bodies_that_are_not_events_are_refused_by_field_and_not_recorded() {
    let mut app = spawn_app().await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("", "not json".into(), "payload"),
        ("", r#"{"data": {}}"#.into(), "payload.meta"),
        (
            "",
            r#"{"meta": {"event_name": "order_created"}, "data": {"x": "\u0000"}}"#.into(),
            "payload",
        ),
        (
            "",
            r#"{"meta": {"event_name": "subscription_created"}}"#.into(),
            "payload.data",
        ),
        (
            "subscription_updated",
            subscription_event("subscription_created", 1, json!({}), "active", 42, &at(0))
                .to_string(),
            "event_name",
        ),
        (
            "subscription_created",
            subscription_event("subscription_created", 1, json!({}), "dormant", 42, "soon")
                .to_string(),
            "payload.data.attributes.status",
        ),
    ];
    for (event_name, payload, field) in cases {
        let refused = app
            .client
            .apply_subscription_event(pb::ApplySubscriptionEventRequest {
                event_name: event_name.into(),
                payload: payload.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{payload}");
        assert!(
            bad_fields(&refused).contains(&field.to_owned()),
            "{field}: {:?}",
            bad_fields(&refused)
        );
    }
    assert_eq!(app.db.count("billing", "subscription_events").await, 0);
}

#[tokio::test]
async fn the_audit_log_pages_and_filters() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    for minute in 0..5 {
        let event = subscription_event(
            "subscription_updated",
            6,
            json!({"user_id": user}),
            "active",
            42,
            &at(minute),
        );
        app.apply(&event).await.unwrap();
    }
    app.apply(&subscription_event(
        "subscription_created",
        7,
        json!({"user_id": Uuid::now_v7().to_string()}),
        "active",
        42,
        &at(0),
    ))
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_subscription_events(pb::ListSubscriptionEventsRequest {
                subscription_id: "6".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 2);
        seen.extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 5);
    let bad = app
        .client
        .list_subscription_events(pb::ListSubscriptionEventsRequest {
            page_token: "garbage".into(),
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad), ["page_size", "page_token"]);
}

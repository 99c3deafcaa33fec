//! Quotas: the free plan for strangers, atomic consumption under 50
//! concurrent callers, refusals with the reset time, a plan change mid-day,
//! and days in the user's time zone.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use mesh_proto::mesh::billing::v1::{self as pb, Feature as F};
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::harness::*;

fn reset_of(quota: &pb::Quota) -> DateTime<Utc> {
    let ts = quota.reset_time.as_ref().expect("a reset time");
    DateTime::from_timestamp(ts.seconds, ts.nanos as u32).unwrap()
}

/// The next local midnight in `zone`.
fn next_midnight(zone: &str) -> DateTime<Utc> {
    let zone: Tz = zone.parse().unwrap();
    let tomorrow = Utc::now()
        .with_timezone(&zone)
        .date_naive()
        .succ_opt()
        .unwrap();
    tomorrow
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_local_timezone(zone)
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn a_user_never_seen_is_on_the_free_plan_in_utc() {
    let mut app = spawn_app().await;
    let stranger = Uuid::now_v7().to_string();
    let entitlements = app.entitlements(&stranger).await;
    assert_eq!(entitlements.plan.unwrap().id, "free");
    assert!(entitlements.subscription.is_none());
    assert_eq!(entitlements.time_zone, "UTC");
    let by_feature = |f: F| {
        entitlements
            .quotas
            .iter()
            .find(|q| q.feature == f as i32)
            .unwrap()
    };
    let inbound = by_feature(F::InboundMessages);
    assert_eq!(
        (
            inbound.limit.as_str(),
            inbound.used.as_str(),
            inbound.remaining.as_str()
        ),
        ("5", "0", "5")
    );
    assert_eq!(reset_of(inbound), next_midnight("UTC"));
    assert_eq!(by_feature(F::AiCostUsd).limit, "0.01");
    assert!(
        by_feature(F::Memories).reset_time.is_none(),
        "stored items never reset"
    );
    assert_eq!(entitlements.quotas.len(), 5);
}

#[tokio::test]
async fn days_follow_the_users_time_zone() {
    let mut app = spawn_app().await;
    for zone in ["Asia/Tokyo", "America/Bogota", "Pacific/Kiritimati"] {
        let user = app.new_user(zone).await;
        let quota = app.consume(&user, F::InboundMessages, 1, "").await.unwrap();
        assert_eq!(reset_of(&quota), next_midnight(zone), "{zone}");
        assert_eq!(app.entitlements(&user).await.time_zone, zone);
    }
}

#[tokio::test]
async fn consumption_past_the_limit_is_refused_with_when_it_resets() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/Bogota").await;
    let quota = app.consume(&user, F::InboundMessages, 3, "").await.unwrap();
    assert_eq!((quota.used.as_str(), quota.remaining.as_str()), ("3", "2"));
    // 3 more do not fit in 5: none of them is consumed.
    let refused = app
        .consume(&user, F::InboundMessages, 3, "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("INBOUND_MESSAGES"),
        "{}",
        refused.message()
    );
    let delay = refused
        .get_details_retry_info()
        .expect("RetryInfo")
        .retry_delay
        .expect("a delay");
    let until_midnight = next_midnight("America/Bogota") - Utc::now();
    assert!(
        (delay.as_secs() as i64 - until_midnight.num_seconds()).abs() <= 5,
        "{delay:?} vs {until_midnight}"
    );
    assert_eq!(app.quota(&user, F::InboundMessages).await.used, "3");
    // 2 still fit, then nothing.
    assert_eq!(
        app.consume(&user, F::InboundMessages, 2, "")
            .await
            .unwrap()
            .remaining,
        "0"
    );
    assert_eq!(
        app.consume(&user, F::InboundMessages, 1, "")
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
    // Stored items never reset: no retry time.
    app.consume(&user, F::Documents, 1, "").await.unwrap();
    let full = app.consume(&user, F::Documents, 1, "").await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(
        full.get_details_retry_info()
            .is_none_or(|r| r.retry_delay.is_none())
    );
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_consumes_nothing_more() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    let first = app
        .consume(&user, F::AiTokens, 400, "turn-1")
        .await
        .unwrap();
    let again = app
        .consume(&user, F::AiTokens, 400, "turn-1")
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(app.quota(&user, F::AiTokens).await.used, "400");
    let other = app
        .consume(&user, F::AiTokens, 401, "turn-1")
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&other), ["request_id"]);
}

#[tokio::test]
async fn fifty_concurrent_consumers_never_pass_the_limit() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    // Pro: 100 inbound messages a day.
    let event = subscription_event(
        "subscription_created",
        1,
        json!({"user_id": user}),
        "active",
        42,
        "2026-12-07T10:00:00Z",
    );
    app.apply(&event).await.unwrap();
    for (round, amount) in [(0, 3), (1, 1)] {
        let before: i64 = app
            .quota(&user, F::InboundMessages)
            .await
            .used
            .parse()
            .unwrap();
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let mut client = app.client.clone();
                let user = user.clone();
                tokio::spawn(async move {
                    client
                        .consume_quota(pb::ConsumeQuotaRequest {
                            user_id: user,
                            feature: F::InboundMessages as i32,
                            amount,
                            request_id: format!("race-{round}-{i}"),
                        })
                        .await
                })
            })
            .collect();
        let mut granted = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => granted += 1,
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
            }
        }
        let used: i64 = app
            .quota(&user, F::InboundMessages)
            .await
            .used
            .parse()
            .unwrap();
        assert_eq!(
            used,
            before + granted * amount,
            "round {round}: every grant counted once"
        );
        assert!(used <= 100, "round {round}: {used} > 100");
        // As many as fit were granted: the remainder is smaller than one call.
        assert!(
            100 - used < amount || granted == 50,
            "round {round}: {used}"
        );
    }
    assert_eq!(app.quota(&user, F::InboundMessages).await.used, "100");
}

#[tokio::test]
async fn a_plan_change_mid_day_keeps_the_days_usage_and_changes_the_limit() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    app.consume(&user, F::InboundMessages, 5, "").await.unwrap();
    let refused = app
        .consume(&user, F::InboundMessages, 1, "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("free"));
    // Upgrade to pro: the day's 5 still count, against 100 now.
    let owner = json!({"user_id": user});
    let created = subscription_event(
        "subscription_created",
        8,
        owner.clone(),
        "active",
        42,
        "2026-12-07T10:00:00Z",
    );
    app.apply(&created).await.unwrap();
    let quota = app.consume(&user, F::InboundMessages, 1, "").await.unwrap();
    assert_eq!(
        (
            quota.used.as_str(),
            quota.limit.as_str(),
            quota.remaining.as_str()
        ),
        ("6", "100", "94")
    );
    // Expired: back to free's 5, already passed: nothing remains.
    let expired = subscription_event(
        "subscription_expired",
        8,
        owner,
        "expired",
        42,
        "2026-12-07T11:00:00Z",
    );
    app.apply(&expired).await.unwrap();
    let quota = app.quota(&user, F::InboundMessages).await;
    assert_eq!(
        (
            quota.used.as_str(),
            quota.limit.as_str(),
            quota.remaining.as_str()
        ),
        ("6", "5", "0")
    );
    assert_eq!(
        app.consume(&user, F::InboundMessages, 1, "")
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
}

#[tokio::test]
async fn unlimited_features_are_consumed_and_reported_as_unlimited() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    // Pro has no documents limit.
    let created = subscription_event(
        "subscription_created",
        9,
        json!({"user_id": user}),
        "active",
        42,
        "2026-12-07T10:00:00Z",
    );
    app.apply(&created).await.unwrap();
    let quota = app
        .consume(&user, F::Documents, 1_000_000, "")
        .await
        .unwrap();
    assert!(quota.unlimited);
    assert_eq!(
        (
            quota.limit.as_str(),
            quota.used.as_str(),
            quota.remaining.as_str()
        ),
        ("", "1000000", "")
    );
}

#[tokio::test]
async fn bad_consumptions_name_every_field() {
    let mut app = spawn_app().await;
    let refused = app
        .client
        .consume_quota(pb::ConsumeQuotaRequest {
            user_id: "nope".into(),
            feature: 0,
            amount: 0,
            request_id: "x".repeat(200),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        bad_fields(&refused),
        ["user_id", "feature", "amount", "request_id"]
    );
    let user = Uuid::now_v7().to_string();
    let huge = app
        .consume(&user, F::Documents, 1_000_000_001, "")
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&huge), ["amount"]);
    let cost = app.consume(&user, F::AiCostUsd, 1, "").await.unwrap_err();
    assert_eq!(bad_fields(&cost), ["feature"]);
    let owner = app
        .client
        .get_entitlements(pb::GetEntitlementsRequest { owner: None })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&owner), ["owner"]);
}

#[tokio::test]
async fn a_users_service_that_does_not_answer_is_unavailable_and_consumes_nothing() {
    let mut app = spawn_with(|config| config.users_url = "http://127.0.0.1:9".into()).await;
    let stranger = Uuid::now_v7().to_string();
    let refused = app
        .consume(&stranger, F::InboundMessages, 1, "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(app.db.count("billing", "usage_counters").await, 0);
}

//! Rate limits over a sliding window, shared through Postgres.

use std::time::Duration;

use mesh_proto::mesh::billing::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::*;

fn request(
    key: &str,
    endpoint: &str,
    limit: i64,
    window_seconds: i64,
) -> pb::CheckRateLimitRequest {
    pb::CheckRateLimitRequest {
        key: key.into(),
        endpoint: endpoint.into(),
        limit,
        window: Some(prost_types::Duration {
            seconds: window_seconds,
            nanos: 0,
        }),
    }
}

#[tokio::test]
async fn calls_past_the_limit_wait_for_the_window_and_are_not_counted() {
    let mut app = spawn_app().await;
    let limit = |key: &str| request(key, "agent.reply", 3, 2);
    for remaining in [2, 1, 0] {
        let answer = app
            .client
            .check_rate_limit(limit("+573001234567"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.remaining, remaining);
        assert!(answer.reset_time.is_some());
    }
    let refused = app
        .client
        .check_rate_limit(limit("+573001234567"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let delay = refused
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(4),
        "{delay:?}"
    );
    // Other keys and other endpoints have their own counts.
    app.client
        .check_rate_limit(limit("10.0.0.7"))
        .await
        .unwrap();
    app.client
        .check_rate_limit(request("+573001234567", "other", 3, 2))
        .await
        .unwrap();
    // After the advised wait, a call goes through.
    tokio::time::sleep(delay).await;
    app.client
        .check_rate_limit(limit("+573001234567"))
        .await
        .expect("allowed after the wait");
    // Refusals were not counted: two windows later the key starts afresh.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fresh = app
        .client
        .check_rate_limit(limit("+573001234567"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.remaining, 2);
}

#[tokio::test]
async fn concurrent_callers_get_exactly_the_limit() {
    let app = spawn_app().await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                client
                    .check_rate_limit(request("user-1", "memory.search", 10, 3600))
                    .await
            })
        })
        .collect();
    let mut allowed = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => allowed += 1,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
        }
    }
    assert_eq!(allowed, 10);
}

/// Sleeps until `reset_time` (and a little past it).
async fn sleep_until(reset: &prost_types::Timestamp) {
    let at = chrono::DateTime::from_timestamp(reset.seconds, reset.nanos as u32).unwrap();
    let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
}

#[tokio::test]
async fn the_previous_window_still_weighs_at_the_boundary() {
    let mut app = spawn_app().await;
    let call = |key: &str| request(key, "gateway", 5, 2);
    // Start at the beginning of a 2 s window, fill it, and call again just
    // after it ends: a fixed window would let 5 more through at once; the
    // sliding one still counts nearly all of the last 5.
    let probe = app
        .client
        .check_rate_limit(call("probe"))
        .await
        .unwrap()
        .into_inner();
    sleep_until(probe.reset_time.as_ref().unwrap()).await;
    let mut last = None;
    for _ in 0..5 {
        last = Some(
            app.client
                .check_rate_limit(call("ip-1"))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let last = last.unwrap();
    assert_eq!(last.remaining, 0);
    sleep_until(last.reset_time.as_ref().unwrap()).await;
    let mut burst = 0;
    for _ in 0..10 {
        if app.client.check_rate_limit(call("ip-1")).await.is_ok() {
            burst += 1;
        }
    }
    assert!(burst <= 1, "{burst} calls passed right after a full window");
}

#[tokio::test]
async fn bad_limits_name_every_field() {
    let mut app = spawn_app().await;
    let refused = app
        .client
        .check_rate_limit(pb::CheckRateLimitRequest {
            key: String::new(),
            endpoint: "x".repeat(200),
            limit: 0,
            window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&refused), ["key", "endpoint", "limit", "window"]);
    let too_long = app
        .client
        .check_rate_limit(request("k", "e", 1, 86_401))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&too_long), ["window"]);
}

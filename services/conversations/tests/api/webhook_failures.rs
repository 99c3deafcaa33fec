//! RecordWebhookFailure, ListWebhookFailures and ResolveWebhookFailure.

use mesh_proto::mesh::conversations::v1::*;
use tonic::Code;

use crate::harness::{TestApp, bad_fields, spawn_app};

fn failure(request_id: &str, payload: &[u8]) -> WebhookFailure {
    WebhookFailure {
        request_id: request_id.into(),
        source: WebhookSource::Whatsapp as i32,
        raw_payload: payload.to_vec(),
        error: "conversations unavailable".into(),
        ..Default::default()
    }
}

async fn record(
    app: &mut TestApp,
    failure: WebhookFailure,
) -> Result<RecordWebhookFailureResponse, tonic::Status> {
    app.client
        .record_webhook_failure(RecordWebhookFailureRequest {
            failure: Some(failure),
        })
        .await
        .map(|r| r.into_inner())
}

async fn list(
    app: &mut TestApp,
    status: WebhookFailureStatus,
    page_size: i32,
    page_token: &str,
) -> Result<ListWebhookFailuresResponse, tonic::Status> {
    app.client
        .list_webhook_failures(ListWebhookFailuresRequest {
            status: status as i32,
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Every failure listed with `status`, page by page: (ids, page sizes).
async fn list_all(
    app: &mut TestApp,
    status: WebhookFailureStatus,
    page_size: i32,
) -> (Vec<String>, Vec<usize>) {
    let (mut ids, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = list(app, status, page_size, &token).await.unwrap();
        sizes.push(page.failures.len());
        ids.extend(page.failures.into_iter().map(|f| f.id));
        if page.next_page_token.is_empty() {
            return (ids, sizes);
        }
        token = page.next_page_token;
        assert!(sizes.len() < 20, "pagination does not end");
    }
}

async fn resolve(
    app: &mut TestApp,
    id: &str,
    status: WebhookFailureStatus,
    resolution: &str,
) -> Result<WebhookFailure, tonic::Status> {
    app.client
        .resolve_webhook_failure(ResolveWebhookFailureRequest {
            id: id.into(),
            status: status as i32,
            resolution: resolution.into(),
        })
        .await
        .map(|r| r.into_inner().failure.unwrap())
}

/// The stored (status, retry_count, resolution) of a failure.
async fn stored(app: &TestApp, id: &str) -> (String, i32, String) {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_as(
        "SELECT status, retry_count, resolution FROM conversations.webhook_failures WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_failure_keeps_the_payload_byte_for_byte() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    // Not UTF-8, with NUL: stored as bytes, not text.
    let payload = [b'{', 0x00, 0xff, 0xfe, b'}'];
    let recorded = record(
        &mut app,
        WebhookFailure {
            phone: "+573001234567".into(),
            user_id: user.clone(),
            provider_message_id: "wamid.X".into(),
            source: WebhookSource::Telegram as i32,
            // Output only: ignored.
            status: WebhookFailureStatus::Resolved as i32,
            retry_count: 7,
            ..failure("delivery-1", &payload)
        },
    )
    .await
    .unwrap();
    assert!(recorded.created);
    let stored_failure = recorded.failure.unwrap();
    assert_eq!(stored_failure.raw_payload, payload);
    assert_eq!(stored_failure.request_id, "delivery-1");
    assert_eq!(stored_failure.source(), WebhookSource::Telegram);
    assert_eq!(stored_failure.phone, "+573001234567");
    assert_eq!(stored_failure.user_id, user);
    assert_eq!(stored_failure.provider_message_id, "wamid.X");
    assert_eq!(stored_failure.error, "conversations unavailable");
    assert_eq!(stored_failure.status(), WebhookFailureStatus::Pending);
    assert_eq!(stored_failure.retry_count, 0);
    assert_eq!(stored_failure.resolution, "");
    assert!(stored_failure.create_time.is_some() && stored_failure.update_time.is_some());

    let listed = list(&mut app, WebhookFailureStatus::Unspecified, 0, "")
        .await
        .unwrap();
    assert_eq!(listed.failures, [stored_failure]);
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_first_failure_and_changes_nothing() {
    let mut app = spawn_app().await;
    let first = record(&mut app, failure("delivery-1", b"{\"a\":1}"))
        .await
        .unwrap();
    assert!(first.created);
    let repeat = record(
        &mut app,
        WebhookFailure {
            error: "another error".into(),
            ..failure("delivery-1", b"{\"b\":2}")
        },
    )
    .await
    .unwrap();
    assert!(!repeat.created);
    assert_eq!(repeat.failure, first.failure, "the stored one, unchanged");
    assert_eq!(app.count("webhook_failures").await, 1);
}

#[tokio::test]
async fn racing_records_of_one_delivery_store_it_once() {
    let app = spawn_app().await;
    let mut a = app.client.clone();
    let mut b = app.client.clone();
    let request = || RecordWebhookFailureRequest {
        failure: Some(failure("delivery-race", b"{}")),
    };
    let (ra, rb) = tokio::join!(
        a.record_webhook_failure(request()),
        b.record_webhook_failure(request())
    );
    let (ra, rb) = (ra.unwrap().into_inner(), rb.unwrap().into_inner());
    assert_eq!(ra.failure, rb.failure);
    assert_eq!([ra.created, rb.created].iter().filter(|c| **c).count(), 1);
    assert_eq!(app.count("webhook_failures").await, 1);
}

#[tokio::test]
async fn record_names_each_bad_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .record_webhook_failure(RecordWebhookFailureRequest { failure: None })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["failure"]);
    let good = failure("d", b"{}");
    let mut cases: Vec<(WebhookFailure, &[&str])> = vec![
        (failure("", b"{}"), &["failure.request_id"]),
        (failure(&"r".repeat(129), b"{}"), &["failure.request_id"]),
        (
            WebhookFailure {
                source: 0,
                ..good.clone()
            },
            &["failure.source"],
        ),
        (
            WebhookFailure {
                source: 8,
                ..good.clone()
            },
            &["failure.source"],
        ),
        (
            WebhookFailure {
                user_id: "nope".into(),
                ..good.clone()
            },
            &["failure.user_id"],
        ),
        (
            WebhookFailure {
                provider_message_id: "w".repeat(257),
                ..good.clone()
            },
            &["failure.provider_message_id"],
        ),
        (failure("d", b""), &["failure.raw_payload"]),
        (
            WebhookFailure {
                error: String::new(),
                ..good.clone()
            },
            &["failure.error"],
        ),
        (
            WebhookFailure {
                error: "e".repeat(10_001),
                ..good.clone()
            },
            &["failure.error"],
        ),
        (
            WebhookFailure {
                source: 0,
                phone: "12".into(),
                error: String::new(),
                ..failure("", b"")
            },
            &[
                "failure.request_id",
                "failure.source",
                "failure.phone",
                "failure.raw_payload",
                "failure.error",
            ],
        ),
    ];
    for phone in [
        "573001234567",
        "+0573001234",
        "+1234567",
        "+1234567890123456",
        "+57 300 1234567",
        "+57300abc4567",
    ] {
        cases.push((
            WebhookFailure {
                phone: phone.into(),
                ..good.clone()
            },
            &["failure.phone"],
        ));
    }
    for (bad, fields) in cases {
        let status = record(&mut app, bad.clone()).await.unwrap_err();
        assert_eq!(
            bad_fields(&status),
            fields,
            "{:?}",
            (&bad.request_id, &bad.phone)
        );
    }
    assert_eq!(app.count("webhook_failures").await, 0);

    // The shortest and longest E.164 numbers pass.
    for (i, phone) in ["+12345678", "+123456789012345"].into_iter().enumerate() {
        record(
            &mut app,
            WebhookFailure {
                phone: phone.into(),
                ..failure(&format!("p{i}"), b"{}")
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(app.count("webhook_failures").await, 2);
}

#[tokio::test]
async fn a_payload_over_3_mib_is_refused() {
    let mut app = spawn_app().await;
    let status = record(&mut app, failure("big", &vec![b'x'; 3 * 1024 * 1024 + 1]))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["failure.raw_payload"]);
    assert_eq!(app.count("webhook_failures").await, 0);
    // At the limit: accepted, and the answer echoing it fits a default client.
    let recorded = record(&mut app, failure("big", &vec![b'x'; 3 * 1024 * 1024]))
        .await
        .unwrap();
    assert_eq!(recorded.failure.unwrap().raw_payload.len(), 3 * 1024 * 1024);
}

#[tokio::test]
async fn list_pages_oldest_first_optionally_of_one_status() {
    let mut app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let recorded = record(&mut app, failure(&format!("d{i}"), b"{}"))
            .await
            .unwrap();
        ids.push(recorded.failure.unwrap().id);
    }
    resolve(
        &mut app,
        &ids[1],
        WebhookFailureStatus::Resolved,
        "replayed",
    )
    .await
    .unwrap();
    resolve(&mut app, &ids[3], WebhookFailureStatus::Retrying, "")
        .await
        .unwrap();

    let (all, sizes) = list_all(&mut app, WebhookFailureStatus::Unspecified, 2).await;
    assert_eq!((all, sizes), (ids.clone(), vec![2, 2, 1]));
    let (pending, sizes) = list_all(&mut app, WebhookFailureStatus::Pending, 2).await;
    assert_eq!(pending, [ids[0].clone(), ids[2].clone(), ids[4].clone()]);
    assert_eq!(sizes, [2, 1]);
    let (resolved, _) = list_all(&mut app, WebhookFailureStatus::Resolved, 0).await;
    assert_eq!(resolved, [ids[1].clone()]);
    let (abandoned, _) = list_all(&mut app, WebhookFailureStatus::Abandoned, 0).await;
    assert!(abandoned.is_empty());

    let status = app
        .client
        .list_webhook_failures(ListWebhookFailuresRequest {
            status: 9,
            page_size: -1,
            page_token: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["status", "page_size", "page_token"]);
}

#[tokio::test]
async fn a_page_of_large_payloads_stops_early_to_fit_a_message() {
    let mut app = spawn_app().await;
    let mut ids = Vec::new();
    // About 1.5 MiB each: two fill a page's 3 MiB; one of 3 MiB is a page alone.
    for (i, size) in [1500, 1500, 1500, 3072, 1, 1].into_iter().enumerate() {
        let payload = vec![b'x'; size * 1024];
        ids.push(
            record(&mut app, failure(&format!("d{i}"), &payload))
                .await
                .unwrap()
                .failure
                .unwrap()
                .id,
        );
    }
    let (listed, sizes) = list_all(&mut app, WebhookFailureStatus::Unspecified, 0).await;
    assert_eq!(listed, ids, "every failure once, in order");
    assert_eq!(sizes, [2, 1, 1, 2]);
}

#[tokio::test]
async fn a_failure_is_retried_then_resolved_and_stays_resolved() {
    let mut app = spawn_app().await;
    let id = record(&mut app, failure("d", b"{}"))
        .await
        .unwrap()
        .failure
        .unwrap()
        .id;

    let retrying = resolve(&mut app, &id, WebhookFailureStatus::Retrying, "")
        .await
        .unwrap();
    assert_eq!(
        (retrying.status(), retrying.retry_count),
        (WebhookFailureStatus::Retrying, 1)
    );
    let again = resolve(&mut app, &id, WebhookFailureStatus::Retrying, "second try")
        .await
        .unwrap();
    assert_eq!(
        (again.retry_count, again.resolution.as_str()),
        (2, "second try")
    );
    let resolved = resolve(
        &mut app,
        &id,
        WebhookFailureStatus::Resolved,
        "replayed by ops",
    )
    .await
    .unwrap();
    assert_eq!(resolved.status(), WebhookFailureStatus::Resolved);
    assert_eq!(
        (resolved.retry_count, resolved.resolution.as_str()),
        (2, "replayed by ops")
    );
    assert_eq!(
        stored(&app, &id).await,
        ("resolved".into(), 2, "replayed by ops".into())
    );

    // A retry of the final move with nothing new gets the failure as it is.
    for resolution in ["replayed by ops", ""] {
        let repeat = resolve(&mut app, &id, WebhookFailureStatus::Resolved, resolution)
            .await
            .unwrap();
        assert_eq!(repeat, resolved);
    }
    for (to, resolution) in [
        (WebhookFailureStatus::Retrying, ""),
        (WebhookFailureStatus::Abandoned, "give up"),
        (WebhookFailureStatus::Resolved, "another reason"),
    ] {
        let status = resolve(&mut app, &id, to, resolution).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{to:?}: {status:?}"
        );
    }
    assert_eq!(
        stored(&app, &id).await,
        ("resolved".into(), 2, "replayed by ops".into())
    );
}

#[tokio::test]
async fn an_abandoned_failure_is_final_too() {
    let mut app = spawn_app().await;
    let id = record(&mut app, failure("d", b"{}"))
        .await
        .unwrap()
        .failure
        .unwrap()
        .id;
    let abandoned = resolve(
        &mut app,
        &id,
        WebhookFailureStatus::Abandoned,
        "user unknown",
    )
    .await
    .unwrap();
    assert_eq!(
        (abandoned.status(), abandoned.retry_count),
        (WebhookFailureStatus::Abandoned, 0)
    );
    for to in [
        WebhookFailureStatus::Retrying,
        WebhookFailureStatus::Resolved,
    ] {
        let status = resolve(&mut app, &id, to, "").await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{to:?}: {status:?}"
        );
    }
    assert_eq!(
        stored(&app, &id).await,
        ("abandoned".into(), 0, "user unknown".into())
    );
}

#[tokio::test]
async fn resolve_names_bad_fields_and_unknown_ids_are_not_found() {
    let mut app = spawn_app().await;
    let id = record(&mut app, failure("d", b"{}"))
        .await
        .unwrap()
        .failure
        .unwrap()
        .id;
    for to in [
        WebhookFailureStatus::Pending,
        WebhookFailureStatus::Unspecified,
    ] {
        let status = resolve(&mut app, &id, to, "").await.unwrap_err();
        assert_eq!(bad_fields(&status), ["status"], "{to:?}");
    }
    let status = resolve(
        &mut app,
        "nope",
        WebhookFailureStatus::Pending,
        &"r".repeat(10_001),
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["id", "status", "resolution"]);
    let status = resolve(
        &mut app,
        &uuid::Uuid::now_v7().to_string(),
        WebhookFailureStatus::Resolved,
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        stored(&app, &id).await,
        ("pending".into(), 0, String::new())
    );
}

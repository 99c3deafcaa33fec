//! CreateFlowSession, GetFlowSession and UpdateFlowSession.

use mesh_proto::mesh::conversations::v1::*;
use serde_json::json;
use tonic::Code;

use crate::harness::{TestApp, bad_fields, data, spawn_app};

fn session(user_id: &str, flow_token: &str) -> FlowSession {
    FlowSession {
        user_id: user_id.into(),
        flow_token: flow_token.into(),
        flow_id: "1234567890".into(),
        flow_type: FlowType::DataExchange as i32,
        ..Default::default()
    }
}

async fn create(
    app: &mut TestApp,
    session: FlowSession,
    request_id: &str,
) -> Result<FlowSession, tonic::Status> {
    app.client
        .create_flow_session(CreateFlowSessionRequest {
            session: Some(session),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().session.unwrap())
}

async fn get(app: &mut TestApp, flow_token: &str) -> Result<FlowSession, tonic::Status> {
    app.client
        .get_flow_session(GetFlowSessionRequest {
            flow_token: flow_token.into(),
        })
        .await
        .map(|r| r.into_inner().session.unwrap())
}

async fn update(
    app: &mut TestApp,
    flow_token: &str,
    status: FlowSessionStatus,
    response_data: serde_json::Value,
) -> Result<FlowSession, tonic::Status> {
    app.client
        .update_flow_session(UpdateFlowSessionRequest {
            flow_token: flow_token.into(),
            status: status as i32,
            response_data: data(response_data),
        })
        .await
        .map(|r| r.into_inner().session.unwrap())
}

/// A new pending session of a new user; returns its token.
async fn pending(app: &mut TestApp) -> String {
    let user = app.new_user().await.id;
    create(app, session(&user, ""), "")
        .await
        .unwrap()
        .flow_token
}

/// The stored (status, response_data) of a session.
async fn stored(app: &TestApp, flow_token: &str) -> (String, serde_json::Value) {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_as(
        "SELECT status, response_data FROM conversations.flow_sessions WHERE flow_token = $1",
    )
    .bind(flow_token)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Moves the session's expire_time into the past, as if 24 h went by.
async fn lapse(app: &TestApp, flow_token: &str) {
    let mut conn = app.db.admin_connection().await;
    sqlx::query(
        "UPDATE conversations.flow_sessions SET expire_time = now() - interval '1 minute'
         WHERE flow_token = $1",
    )
    .bind(flow_token)
    .execute(&mut conn)
    .await
    .unwrap();
}

#[tokio::test]
async fn create_generates_a_url_safe_token_and_a_24_hour_life() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let created = create(
        &mut app,
        FlowSession {
            session_data: data(json!({"step": "welcome", "ids": [1.0, 2.0]})),
            ..session(&user, "")
        },
        "",
    )
    .await
    .unwrap();
    assert_eq!(created.flow_token.len(), 43, "32 random bytes, base64url");
    assert!(
        created
            .flow_token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{}",
        created.flow_token
    );
    assert_eq!(created.user_id, user);
    assert_eq!(created.conversation_id, "");
    assert_eq!(created.flow_id, "1234567890");
    assert_eq!(created.flow_type(), FlowType::DataExchange);
    assert_eq!(created.status(), FlowSessionStatus::Pending);
    assert_eq!(
        created.session_data,
        data(json!({"step": "welcome", "ids": [1.0, 2.0]}))
    );
    assert_eq!(created.response_data, data(json!({})));
    let (create_time, expire_time) = (created.create_time.unwrap(), created.expire_time.unwrap());
    assert_eq!(expire_time.seconds - create_time.seconds, 24 * 60 * 60);
    assert_eq!(expire_time.nanos, create_time.nanos);

    assert_eq!(get(&mut app, &created.flow_token).await.unwrap(), created);
    let other = pending(&mut app).await;
    assert_ne!(other, created.flow_token, "tokens are random");
    assert_eq!(app.count("flow_sessions").await, 2);
}

#[tokio::test]
async fn create_keeps_a_given_token_and_refuses_a_taken_one() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let token = format!("Tok.en-_~{}", "x".repeat(247));
    assert_eq!(token.len(), 256);
    let created = create(&mut app, session(&user, &token), "").await.unwrap();
    assert_eq!(created.flow_token, token);

    let status = create(&mut app, session(&user, &token), "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("token"), "{status:?}");
    assert_eq!(app.count("flow_sessions").await, 1);
}

#[tokio::test]
async fn create_names_each_bad_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let status = app
        .client
        .create_flow_session(CreateFlowSessionRequest {
            session: None,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["session"]);

    let good = session(&user, "");
    let long_request_id = "r".repeat(129);
    let cases: Vec<(FlowSession, &str, &[&str])> = vec![
        (session(&user, "has space"), "", &["session.flow_token"]),
        (session(&user, "a/b"), "", &["session.flow_token"]),
        (session(&user, "ñandú"), "", &["session.flow_token"]),
        (
            session(&user, &"t".repeat(257)),
            "",
            &["session.flow_token"],
        ),
        (session("", ""), "", &["session.user_id"]),
        (session("nope", ""), "", &["session.user_id"]),
        (
            FlowSession {
                conversation_id: "nope".into(),
                ..good.clone()
            },
            "",
            &["session.conversation_id"],
        ),
        (
            FlowSession {
                flow_id: "f".repeat(257),
                ..good.clone()
            },
            "",
            &["session.flow_id"],
        ),
        (
            FlowSession {
                flow_type: 0,
                ..good.clone()
            },
            "",
            &["session.flow_type"],
        ),
        (
            FlowSession {
                flow_type: 42,
                ..good.clone()
            },
            "",
            &["session.flow_type"],
        ),
        (good.clone(), &long_request_id, &["request_id"]),
        (
            FlowSession {
                flow_token: "bad token".into(),
                user_id: "nope".into(),
                conversation_id: "nope".into(),
                flow_type: 0,
                ..Default::default()
            },
            "",
            &[
                "session.flow_token",
                "session.user_id",
                "session.conversation_id",
                "session.flow_type",
            ],
        ),
    ];
    for (bad, request_id, fields) in cases {
        let status = create(&mut app, bad.clone(), request_id).await.unwrap_err();
        assert_eq!(bad_fields(&status), fields, "{bad:?}");
    }
    assert_eq!(app.count("flow_sessions").await, 0);
}

#[tokio::test]
async fn create_in_a_conversation_needs_that_users_conversation() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let other = app.new_user().await.id;
    let conversation = app.conversation(&user, Channel::Whatsapp).await.id;

    let created = create(
        &mut app,
        FlowSession {
            conversation_id: conversation.clone(),
            ..session(&user, "")
        },
        "",
    )
    .await
    .unwrap();
    assert_eq!(created.conversation_id, conversation);

    let status = create(
        &mut app,
        FlowSession {
            conversation_id: uuid::Uuid::now_v7().to_string(),
            ..session(&user, "")
        },
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let status = create(
        &mut app,
        FlowSession {
            conversation_id: conversation,
            ..session(&other, "")
        },
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["session.conversation_id"]);
    assert_eq!(app.count("flow_sessions").await, 1);
}

#[tokio::test]
async fn a_create_retried_with_its_request_id_returns_the_first_session() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let first = create(&mut app, session(&user, ""), "req-1").await.unwrap();
    let again = create(&mut app, session(&user, ""), "req-1").await.unwrap();
    assert_eq!(again, first, "the same generated token, the same session");
    assert_eq!(app.count("flow_sessions").await, 1);

    let status = create(
        &mut app,
        FlowSession {
            flow_id: "another".into(),
            ..session(&user, "")
        },
        "req-1",
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["request_id"]);
    let second = create(&mut app, session(&user, ""), "req-2").await.unwrap();
    assert_ne!(second.flow_token, first.flow_token);
    assert_eq!(app.count("flow_sessions").await, 2);
}

#[tokio::test]
async fn get_of_an_unknown_or_malformed_token() {
    let mut app = spawn_app().await;
    let status = get(&mut app, "never-issued").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    for bad in ["", "a b", &"t".repeat(257)] {
        let status = get(&mut app, bad).await.unwrap_err();
        assert_eq!(bad_fields(&status), ["flow_token"], "{bad:?}");
    }
}

#[tokio::test]
async fn a_session_moves_to_in_progress_then_completed_collecting_response_data() {
    let mut app = spawn_app().await;
    let token = pending(&mut app).await;

    let started = update(
        &mut app,
        &token,
        FlowSessionStatus::InProgress,
        json!({"a": 1.0, "b": 1.0}),
    )
    .await
    .unwrap();
    assert_eq!(started.status(), FlowSessionStatus::InProgress);
    assert_eq!(started.response_data, data(json!({"a": 1.0, "b": 1.0})));

    // Staying in progress merges more answers: top-level keys are replaced.
    let more = update(
        &mut app,
        &token,
        FlowSessionStatus::InProgress,
        json!({"b": {"nested": true}, "c": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(
        more.response_data,
        data(json!({"a": 1.0, "b": {"nested": true}, "c": "x"}))
    );

    let done = update(
        &mut app,
        &token,
        FlowSessionStatus::Completed,
        json!({"d": null}),
    )
    .await
    .unwrap();
    assert_eq!(done.status(), FlowSessionStatus::Completed);
    let expected = json!({"a": 1.0, "b": {"nested": true}, "c": "x", "d": null});
    assert_eq!(done.response_data, data(expected.clone()));
    let seconds = |s: &FlowSession| s.update_time.unwrap().seconds;
    assert!(seconds(&done) >= seconds(&started));
    assert_eq!(done.create_time, started.create_time);
    assert_eq!(
        stored(&app, &token).await,
        ("completed".to_owned(), expected)
    );
    assert_eq!(get(&mut app, &token).await.unwrap(), done);
}

#[tokio::test]
async fn every_move_the_contract_names_is_allowed() {
    let mut app = spawn_app().await;
    use FlowSessionStatus::*;
    let moves = [
        (vec![InProgress], "in_progress"),
        (vec![Completed], "completed"),
        (vec![Expired], "expired"),
        (vec![Failed], "failed"),
        (vec![InProgress, Completed], "completed"),
        (vec![InProgress, Expired], "expired"),
        (vec![InProgress, Failed], "failed"),
    ];
    for (path, end) in moves {
        let token = pending(&mut app).await;
        for to in &path {
            let moved = update(&mut app, &token, *to, json!({})).await.unwrap();
            assert_eq!(moved.status(), *to, "{path:?}");
        }
        assert_eq!(stored(&app, &token).await.0, end, "{path:?}");
    }
}

#[tokio::test]
async fn moves_the_contract_does_not_name_are_refused_and_change_nothing() {
    let mut app = spawn_app().await;
    use FlowSessionStatus::*;
    let cases = [
        (vec![InProgress], Pending),
        (vec![Completed], Pending),
        (vec![Completed], InProgress),
        (vec![Completed], Failed),
        (vec![Completed], Expired),
        (vec![Failed], Completed),
        (vec![Failed], InProgress),
        (vec![Expired], Completed),
        (vec![Expired], InProgress),
        (vec![Expired], Pending),
        (vec![InProgress, Completed], InProgress),
    ];
    for (path, refused) in cases {
        let token = pending(&mut app).await;
        for to in &path {
            update(&mut app, &token, *to, json!({"kept": true}))
                .await
                .unwrap();
        }
        let before = stored(&app, &token).await;
        let status = update(&mut app, &token, refused, json!({"lost": true}))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{path:?} -> {refused:?}: {status:?}"
        );
        assert_eq!(
            stored(&app, &token).await,
            before,
            "{path:?} -> {refused:?}"
        );
    }
}

#[tokio::test]
async fn repeating_a_final_status_is_answered_unless_it_brings_new_data() {
    let mut app = spawn_app().await;
    let token = pending(&mut app).await;
    let done = update(
        &mut app,
        &token,
        FlowSessionStatus::Completed,
        json!({"answer": "yes"}),
    )
    .await
    .unwrap();

    // A retry of the same move, with the same data or none, gets the session as it is.
    for retry in [json!({"answer": "yes"}), json!({})] {
        let again = update(&mut app, &token, FlowSessionStatus::Completed, retry)
            .await
            .unwrap();
        assert_eq!(again, done);
    }
    let status = update(
        &mut app,
        &token,
        FlowSessionStatus::Completed,
        json!({"answer": "no"}),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        stored(&app, &token).await,
        ("completed".to_owned(), json!({"answer": "yes"}))
    );
}

#[tokio::test]
async fn a_live_session_past_its_expiry_reads_as_expired_and_stays_so() {
    let mut app = spawn_app().await;
    let pending_token = pending(&mut app).await;
    let started_token = pending(&mut app).await;
    update(
        &mut app,
        &started_token,
        FlowSessionStatus::InProgress,
        json!({}),
    )
    .await
    .unwrap();
    let done_token = pending(&mut app).await;
    update(
        &mut app,
        &done_token,
        FlowSessionStatus::Completed,
        json!({}),
    )
    .await
    .unwrap();
    for token in [&pending_token, &started_token, &done_token] {
        lapse(&app, token).await;
    }

    for token in [&pending_token, &started_token] {
        let read = get(&mut app, token).await.unwrap();
        assert_eq!(read.status(), FlowSessionStatus::Expired);
        assert_eq!(stored(&app, token).await.0, "expired", "persisted on read");
    }
    let done = get(&mut app, &done_token).await.unwrap();
    assert_eq!(
        done.status(),
        FlowSessionStatus::Completed,
        "a final status stays"
    );
}

#[tokio::test]
async fn moving_a_session_past_its_expiry_expires_it_and_is_refused() {
    let mut app = spawn_app().await;
    for from in [FlowSessionStatus::Pending, FlowSessionStatus::InProgress] {
        let token = pending(&mut app).await;
        if from == FlowSessionStatus::InProgress {
            update(&mut app, &token, from, json!({"a": 1}))
                .await
                .unwrap();
        }
        lapse(&app, &token).await;
        let status = update(
            &mut app,
            &token,
            FlowSessionStatus::Completed,
            json!({"late": true}),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let (status, response) = stored(&app, &token).await;
        assert_eq!(
            status, "expired",
            "the expiry is stored even though the move failed"
        );
        assert!(response.get("late").is_none(), "{response}");
        assert_eq!(
            get(&mut app, &token).await.unwrap().status(),
            FlowSessionStatus::Expired
        );
    }
}

#[tokio::test]
async fn a_session_past_its_expiry_may_still_be_moved_to_expired() {
    let mut app = spawn_app().await;
    let token = pending(&mut app).await;
    lapse(&app, &token).await;
    let expired = update(
        &mut app,
        &token,
        FlowSessionStatus::Expired,
        json!({"reason": "timeout"}),
    )
    .await
    .unwrap();
    assert_eq!(expired.status(), FlowSessionStatus::Expired);
    assert_eq!(expired.response_data, data(json!({"reason": "timeout"})));
    assert_eq!(
        stored(&app, &token).await,
        ("expired".to_owned(), json!({"reason": "timeout"}))
    );
}

#[tokio::test]
async fn update_names_bad_fields_and_unknown_tokens_are_not_found() {
    let mut app = spawn_app().await;
    let token = pending(&mut app).await;
    let status = update(&mut app, "", FlowSessionStatus::Unspecified, json!({}))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["flow_token", "status"]);
    let status = app
        .client
        .update_flow_session(UpdateFlowSessionRequest {
            flow_token: token.clone(),
            status: 42,
            response_data: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["status"]);
    let status = update(
        &mut app,
        "no-such-token",
        FlowSessionStatus::Completed,
        json!({}),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        stored(&app, &token).await,
        ("pending".to_owned(), json!({}))
    );
}

/// A Struct holding U+0000 deep inside: jsonb refuses it.
fn with_nul() -> serde_json::Value {
    json!({"screen": {"answers": ["ok", "a\u{0}b"]}})
}

/// A Struct of `bytes` bytes as compact JSON (`{"blob":"xx…"}`).
fn sized(bytes: usize) -> serde_json::Value {
    json!({"blob": "x".repeat(bytes - r#"{"blob":""}"#.len())})
}

#[tokio::test]
async fn create_refuses_session_data_with_nul_or_over_64_kib_and_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let good = session(&user, "");
    let with = |session_data: serde_json::Value, response_data: serde_json::Value| FlowSession {
        session_data: data(session_data),
        response_data: data(response_data),
        ..good.clone()
    };
    let cases: Vec<(FlowSession, &[&str])> = vec![
        (with(with_nul(), json!({})), &["session.session_data"]),
        (
            with(json!({"a\u{0}": 1.0}), json!({})),
            &["session.session_data"],
        ),
        (
            with(sized(64 * 1024 + 1), json!({})),
            &["session.session_data"],
        ),
        (with(json!({}), with_nul()), &["session.response_data"]),
        (
            with(json!({}), sized(64 * 1024 + 1)),
            &["session.response_data"],
        ),
        (
            FlowSession {
                user_id: "nope".into(),
                ..with(with_nul(), sized(64 * 1024 + 1))
            },
            &[
                "session.user_id",
                "session.session_data",
                "session.response_data",
            ],
        ),
    ];
    for (bad, fields) in cases {
        let status = create(&mut app, bad, "").await.unwrap_err();
        assert_eq!(bad_fields(&status), fields);
    }
    assert_eq!(app.count("flow_sessions").await, 0);

    // 64 KiB exactly is within bounds.
    let full = create(&mut app, with(sized(64 * 1024), json!({})), "")
        .await
        .unwrap();
    assert_eq!(full.session_data, data(sized(64 * 1024)));
    assert_eq!(app.count("flow_sessions").await, 1);
}

#[tokio::test]
async fn update_refuses_response_data_with_nul_or_over_64_kib_and_changes_nothing() {
    let mut app = spawn_app().await;
    let token = pending(&mut app).await;
    let cases: Vec<(FlowSessionStatus, serde_json::Value, &[&str])> = vec![
        (
            FlowSessionStatus::InProgress,
            with_nul(),
            &["response_data"],
        ),
        (
            FlowSessionStatus::InProgress,
            sized(64 * 1024 + 1),
            &["response_data"],
        ),
        (
            FlowSessionStatus::Unspecified,
            with_nul(),
            &["status", "response_data"],
        ),
    ];
    for (to, response_data, fields) in cases {
        let status = update(&mut app, &token, to, response_data)
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), fields);
    }
    assert_eq!(
        stored(&app, &token).await,
        ("pending".to_owned(), json!({}))
    );
}

#[tokio::test]
async fn merged_response_data_stays_within_64_kib() {
    let mut app = spawn_app().await;
    let token = pending(&mut app).await;
    let half = json!({"first": "x".repeat(40 * 1024)});
    update(
        &mut app,
        &token,
        FlowSessionStatus::InProgress,
        half.clone(),
    )
    .await
    .unwrap();
    // Each step is bounded, but together they would exceed the bound.
    let status = update(
        &mut app,
        &token,
        FlowSessionStatus::Completed,
        json!({"second": "y".repeat(40 * 1024)}),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("64 KiB"), "{status:?}");
    assert_eq!(stored(&app, &token).await, ("in_progress".to_owned(), half));
    // Replacing a key keeps the session within bounds and is applied.
    let done = update(
        &mut app,
        &token,
        FlowSessionStatus::Completed,
        json!({"first": "z"}),
    )
    .await
    .unwrap();
    assert_eq!(done.response_data, data(json!({"first": "z"})));
}

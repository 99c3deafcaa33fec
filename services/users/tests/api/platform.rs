//! What every service promises beyond its RPCs: auth, open health and
//! reflection that grpcurl can use, safe concurrent start-up, schema
//! isolation, health that follows the database, and a bounded drain.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use mesh_proto::mesh::users::v1::{users_service_client::UsersServiceClient, *};
use mesh_runtime::testing::{TestDatabase, grpcurl_path, run_ok, sh_with_grpcurl};
use sqlx::Connection;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::harness::{TOKEN, channel, config, create_user, spawn_app, wait_serving};

#[tokio::test]
async fn calls_without_the_right_token_are_refused_before_the_handler() {
    let app = spawn_app().await;
    let mut anonymous = UsersServiceClient::new(channel(app.addr).await);
    let create = || CreateUserRequest {
        user: Some(User {
            display_name: "Eve".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let missing = anonymous.create_user(create()).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);

    for header in [
        "Bearer wrong-token",
        TOKEN,
        "bearer test-token",
        "Bearer test-token ",
    ] {
        let mut request = tonic::Request::new(create());
        request
            .metadata_mut()
            .insert("authorization", header.parse().unwrap());
        let refused = anonymous.create_user(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{header:?}");
    }
    assert_eq!(app.count("users").await, 0, "the handler never ran");
}

#[tokio::test]
async fn health_answers_without_a_token() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(channel(app.addr).await);
    for service in ["", "mesh.users.v1.UsersService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
}

fn grpcurl() -> Command {
    Command::new(grpcurl_path())
}

/// grpcurl 1.8 is an independent client that speaks reflection v1alpha.
/// (Multi-threaded: the test blocks on grpcurl while the server answers it.)
#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_describes_and_decodes_errors() {
    let app = spawn_app().await;
    let addr = app.addr.to_string();
    let listed = run_ok(grpcurl().args(["-plaintext", &addr, "list"]));
    for service in [
        "mesh.users.v1.UsersService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|l| l == service),
            "{service} in:\n{listed}"
        );
    }
    let described = run_ok(grpcurl().args([
        "-plaintext",
        &addr,
        "describe",
        "mesh.users.v1.UsersService",
    ]));
    assert!(described.contains("rpc UpsertUserByPhone"), "{described}");
    let health = run_ok(grpcurl().args(["-plaintext", &addr, "describe", "grpc.health.v1.Health"]));
    assert!(health.contains("rpc Check"), "{health}");

    let auth = format!("authorization: Bearer {TOKEN}");
    // Error details decode through reflection too: the BadRequest names the field.
    let invalid = grpcurl()
        .args([
            "-plaintext",
            "-H",
            &auth,
            "-d",
            r#"{"user":{"timezone":"Mars/Base"}}"#,
            &addr,
            "mesh.users.v1.UsersService/CreateUser",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(
        stderr.contains(r#""field":"user.timezone""#),
        "BadRequest decoded: {stderr}"
    );

    let refused = grpcurl()
        .args([
            "-plaintext",
            "-d",
            "{}",
            &addr,
            "mesh.users.v1.UsersService/ListUsers",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"));
}

#[tokio::test]
async fn two_replicas_starting_at_once_both_come_up_and_migrate_once() {
    let db = TestDatabase::create().await;
    let config = config(&db);
    let (a, b) = tokio::join!(mesh_users::build(&config), mesh_users::build(&config));
    let (a, b) = (a.unwrap(), b.unwrap());
    let (addr_a, addr_b) = (a.local_addr(), b.local_addr());
    tokio::spawn(a.run_until(std::future::pending()));
    tokio::spawn(b.run_until(std::future::pending()));
    tokio::join!(async { wait_serving(channel(addr_a).await).await }, async {
        wait_serving(channel(addr_b).await).await
    });
    let mut admin = db.admin_connection().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM users._sqlx_migrations")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(applied as usize, mesh_users::MIGRATOR.iter().count());
}

#[tokio::test]
async fn the_users_role_cannot_touch_another_services_schema() {
    let db = TestDatabase::create().await;
    let mut conversations = sqlx::PgConnection::connect(&db.service_url("conversations"))
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE conversations.messages (body text); INSERT INTO conversations.messages VALUES ('secret')")
        .execute(&mut conversations)
        .await
        .unwrap();

    let mut users = sqlx::PgConnection::connect(&db.service_url("users"))
        .await
        .unwrap();
    for statement in [
        "SELECT * FROM conversations.messages",
        "CREATE TABLE conversations.intruder (x int)",
        "CREATE TABLE public.intruder (x int)",
        "CREATE TABLE memory.intruder (x int)",
    ] {
        let error = sqlx::raw_sql(statement)
            .execute(&mut users)
            .await
            .unwrap_err();
        let code = error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {error}");
    }
    // And its own schema is its own.
    sqlx::raw_sql("CREATE TABLE users.mine (x int)")
        .execute(&mut users)
        .await
        .unwrap();
}

#[tokio::test]
async fn health_is_not_serving_while_the_database_is_unreachable() {
    let db = TestDatabase::create().await;
    let mut config = config(&db);
    // Nothing listens on port 1.
    config.database_url = "postgres://mesh_users@127.0.0.1:1/nowhere".into();
    let app = mesh_users::build(&config).await.unwrap();
    let addr = app.local_addr();
    tokio::spawn(app.run_until(std::future::pending()));
    let mut health = HealthClient::new(channel(addr).await);
    for _ in 0..5 {
        let status = health
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::NotServing);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The process itself is alive: what a liveness probe asks.
    let alive = health
        .check(HealthCheckRequest {
            service: mesh_runtime::server::LIVENESS.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(alive, ServingStatus::Serving);
    let mut client = crate::harness::client(channel(addr).await);
    let status = client
        .get_user(GetUserRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

/// Holds a lock on the user's row, in an open transaction on the returned
/// connection, so that a write to that user stays in flight; ROLLBACK frees it.
async fn block_user_row(db: &TestDatabase, user_id: &str) -> sqlx::PgConnection {
    let mut conn = db.admin_connection().await;
    sqlx::raw_sql("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query("SELECT 1 FROM users.users WHERE id = $1::uuid FOR UPDATE")
        .bind(user_id)
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

#[tokio::test]
async fn stopping_lets_in_flight_requests_finish() {
    let mut app = spawn_app().await;
    let user = create_user(&mut app.client, User::default()).await;
    let mut lock = block_user_row(&app.db, &user.id).await;
    let mut client = app.client.clone();
    let id = user.id.clone();
    let in_flight = tokio::spawn(async move {
        client
            .deactivate_user(DeactivateUserRequest { user_id: id })
            .await
    });
    // Let the request reach the lock, then ask the server to stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!in_flight.is_finished(), "the request is still running");
    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();

    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completed");
    assert!(!answer.into_inner().user.unwrap().is_active);
    app.server.await.unwrap().expect("clean stop");
}

/// The service runs on a runtime of its own, dropped when `run_until`
/// returns, as a process would exit: the cut request must fail, not hang.
#[tokio::test]
async fn the_drain_stops_waiting_at_its_deadline() {
    let db = TestDatabase::create().await;
    let mut config = config(&db);
    config.drain_grace = Duration::from_millis(500);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let service = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let app = mesh_users::build(&config).await.unwrap();
            addr_tx.send(app.local_addr()).unwrap();
            app.run_until(async {
                let _ = stopped.await;
            })
            .await
        })
    });
    let addr = addr_rx.await.unwrap();
    wait_serving(channel(addr).await).await;
    let mut client = crate::harness::client(channel(addr).await);
    let user = create_user(&mut client, User::default()).await;
    let _lock = block_user_row(&db, &user.id).await;
    let in_flight = tokio::spawn(async move {
        client
            .deactivate_user(DeactivateUserRequest { user_id: user.id })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    // The lock is never released: the service must give up on the request.
    let stopped = tokio::task::spawn_blocking(move || service.join())
        .await
        .unwrap();
    stopped
        .unwrap()
        .expect("run_until returns Ok after cutting requests");
    let cut = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the cut request ends")
        .unwrap();
    assert!(cut.is_err(), "the cut request failed: {cut:?}");
}

/// The grpcurl lines of README.md's "Trying it with grpcurl" block, with line
/// continuations joined.
fn readme_grpcurl_lines() -> Vec<String> {
    mesh_runtime::testing::readme_sh_lines(
        include_str!("../../../../README.md"),
        "## Trying it with grpcurl",
    )
    .into_iter()
    .filter(|line| line.starts_with("grpcurl "))
    .collect()
}

/// What a newcomer pastes from the README works as written, against a server
/// at the README's address and token (here swapped for the test's own), the
/// create line as often as they paste it.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_grpcurl_lines_work_as_written() {
    let app = spawn_app().await;
    let lines = readme_grpcurl_lines();
    assert!(lines.len() >= 5, "{lines:?}");

    let mut created_id = None;
    for line in lines {
        let line = line
            .replace("127.0.0.1:50051", &app.addr.to_string())
            .replace("Bearer dev-token", &format!("Bearer {TOKEN}"))
            .replace(
                "<id from the answer above>",
                created_id.as_deref().unwrap_or("missing"),
            );
        let repeats = if line.contains("/CreateUser") { 2 } else { 1 };
        for _ in 0..repeats {
            let output = sh_with_grpcurl(&line);
            assert!(
                output.status.success(),
                "{line}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            if line.contains("/CreateUser") || line.contains("/GetUser") {
                let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
                let id = answer["user"]["id"].as_str().unwrap().to_owned();
                assert_eq!(answer["user"]["phone"], "+573001234567");
                if let Some(first) = &created_id {
                    assert_eq!(&id, first, "every line answers the same user");
                }
                created_id = Some(id);
            }
        }
    }
    assert!(created_id.is_some());
    assert_eq!(app.count("users").await, 1);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn users_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_users"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

/// The users binary over `db`, with `env` added, once it is SERVING.
async fn start_binary(db: &TestDatabase, env: &[(&str, &str)]) -> (std::process::Child, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = users_binary()
        .env("USERS_ADDR", &addr)
        .env("USERS_DATABASE_URL", db.service_url("users"))
        .env("MESH_AUTH_TOKEN", TOKEN)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            wait_serving(channel).await;
            return (child, addr);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the binary never listened on {addr}");
}

/// Sends SIGTERM to `child`.
fn sigterm(child: &std::process::Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// Waits up to 15 s for `child` to exit with status 0.
async fn wait_clean_exit(mut child: std::process::Child) {
    for _ in 0..150 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    panic!("the service did not exit within 15 s of SIGTERM");
}

/// Sends SIGTERM and waits up to 15 s for a clean exit.
async fn terminate(child: std::process::Child) {
    sigterm(&child);
    wait_clean_exit(child).await;
}

/// SIGTERM with a call in flight: the binary keeps running until the call
/// completes, answers it, and exits with status 0.
#[tokio::test]
async fn the_binary_drains_and_exits_cleanly_on_sigterm() {
    let db = TestDatabase::create().await;
    let (mut child, addr) = start_binary(&db, &[]).await;
    let mut client = crate::harness::client(channel(addr.parse().unwrap()).await);
    let user = create_user(&mut client, User::default()).await;
    let mut lock = block_user_row(&db, &user.id).await;
    let id = user.id.clone();
    let in_flight = tokio::spawn(async move {
        client
            .deactivate_user(DeactivateUserRequest { user_id: id })
            .await
    });
    // Let the call reach the lock, then ask the binary to stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!in_flight.is_finished(), "the call is still in flight");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the binary waits for the call in flight"
    );
    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();

    let answer = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the in-flight call ends")
        .unwrap()
        .expect("the in-flight call completed");
    assert!(!answer.into_inner().user.unwrap().is_active);
    wait_clean_exit(child).await;
}

/// With OTEL_EXPORTER_OTLP_ENDPOINT set, the binary exports its spans (named
/// by OTEL_SERVICE_NAME), and a call that came with a traceparent continues
/// the caller's trace.
#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_otlp_in_the_callers_trace() {
    use mesh_runtime::testing::otlp::{Collector, hex};
    let (collector, endpoint) = Collector::start().await;

    let db = TestDatabase::create().await;
    let (child, addr) = start_binary(
        &db,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "users-eu"),
        ],
    )
    .await;
    let mut client = crate::harness::client(channel(addr.parse().unwrap()).await);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(GetUserRequest {
        user_id: uuid::Uuid::now_v7().to_string(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let status = client.get_user(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // SIGTERM flushes the spans still batched.
    terminate(child).await;

    let spans = collector.spans();
    let request_span = spans
        .iter()
        .find(|s| s.name == "grpc.request" && hex(&s.trace_id) == trace_id)
        .unwrap_or_else(|| panic!("no grpc.request span in the caller's trace among {spans:#?}"));
    assert_eq!(hex(&request_span.parent_span_id), caller_span);
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == request_span.span_id)
        .map(|s| s.name.as_str())
        .collect();
    assert!(!children.is_empty(), "the database work is a child span");
    let names = collector.service_names();
    assert!(
        !names.is_empty() && names.iter().all(|n| n == "users-eu"),
        "{names:?}"
    );
}

#[test]
fn bad_configuration_stops_start_up_naming_the_variable() {
    let base = [
        ("MESH_AUTH_TOKEN", "t"),
        ("USERS_DATABASE_URL", "postgres://u@h/db"),
    ];
    for (name, value) in [
        ("RUST_LOG", "info,[[["),
        ("LOG_FORMAT", "xml"),
        ("USERS_DATABASE_URL", "postgres://u@h:notaport/db"),
        ("USERS_DB_MAX_CONNECTIONS", "0"),
        ("MESH_DRAIN_SECONDS", "soon"),
        ("MESH_TLS_CA_FILE", "/nonexistent/ca.pem"),
        ("MESH_TLS_CA_FILE", "/proc/version"),
        ("USERS_BILLING_URL", "billing:50055"),
        ("USERS_MEMORY_URL", "https://memory:50053"),
        ("USERS_ERASURE_RETRY_MAX_SECONDS", "0"),
        ("USERS_ERASURE_SETTLE_SECONDS", "-1"),
        ("USERS_PURGE_TIMEOUT_SECONDS", "soon"),
    ] {
        let output = users_binary().envs(base).env(name, value).output().unwrap();
        assert!(!output.status.success(), "{name}={value} should not start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(name), "{name} not named in: {stderr}");
    }
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("USERS_DATABASE_URL", "postgres://u@h/db")],
            "MESH_AUTH_TOKEN",
        ),
        (&[("MESH_AUTH_TOKEN", "t")], "USERS_DATABASE_URL"),
        (
            &[
                ("MESH_AUTH_TOKEN", "t"),
                ("USERS_DATABASE_URL", "postgres://u@h/db"),
                ("USERS_ADDR", "not-an-address"),
            ],
            "USERS_ADDR",
        ),
        (
            &[
                ("MESH_AUTH_TOKEN", "t"),
                ("USERS_DATABASE_URL", "mysql://u@h/db"),
            ],
            "USERS_DATABASE_URL",
        ),
    ];
    for (env, variable) in cases {
        let output = users_binary().envs(env.iter().copied()).output().unwrap();
        assert!(!output.status.success(), "{variable}: should not start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(variable),
            "{variable} not named in: {stderr}"
        );
    }
}

/// A self-signed certificate for localhost and 127.0.0.1, made with the
/// openssl command line; returns (cert path, key path, cert PEM).
fn self_signed_certificate() -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("mesh-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // An end-entity certificate: rustls refuses a CA used as a server certificate.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    let pem = std::fs::read(&cert).unwrap();
    (cert, key, pem)
}

#[tokio::test]
async fn with_tls_configured_the_service_speaks_only_tls() {
    let (cert, key, pem) = self_signed_certificate();
    let db = TestDatabase::create().await;
    let mut config = config(&db);
    config.tls = Some(mesh_runtime::config::TlsFiles {
        cert_path: cert.to_string_lossy().into_owned(),
        key_path: key.to_string_lossy().into_owned(),
    });
    let app = mesh_users::build(&config).await.unwrap();
    let port = app.local_addr().port();
    tokio::spawn(app.run_until(std::future::pending()));

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pem))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a TLS connection");
    wait_serving(channel.clone()).await;
    let mut client = crate::harness::client(channel);
    // An authenticated call over TLS.
    let user = create_user(&mut client, User::default()).await;
    assert!(!user.id.is_empty());

    // A plaintext client gets nowhere.
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await;
        assert!(status.is_err(), "plaintext must not be answered");
    }

    // Another service calls it as the mesh does: an https:// URL and the CA
    // of MESH_TLS_CA_FILE (here the certificate itself).
    let ca = mesh_runtime::config::Pem(pem);
    let url = format!("https://localhost:{port}");
    let downstream = mesh_runtime::client::Downstream::new(
        "X_USERS_URL",
        &url,
        TOKEN,
        Some(&ca),
        Duration::from_secs(5),
    )
    .unwrap();
    let found = UsersServiceClient::new(downstream.channel())
        .get_user(GetUserRequest { user_id: user.id })
        .await
        .expect("an authenticated call over TLS from the mesh's client");
    assert!(found.into_inner().user.is_some());
    // Without a CA an https:// URL is refused at start, naming both variables.
    let refused = mesh_runtime::client::Downstream::new(
        "X_USERS_URL",
        &url,
        TOKEN,
        None,
        Duration::from_secs(5),
    )
    .err()
    .expect("https without a CA is a configuration error")
    .to_string();
    assert!(
        refused.contains("X_USERS_URL") && refused.contains("MESH_TLS_CA_FILE"),
        "{refused}"
    );
    std::fs::remove_dir_all(cert.parent().unwrap()).unwrap();
}

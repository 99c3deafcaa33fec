//! The service as a newcomer meets it: grpcurl against reflection, the
//! README's lines as written, and the binary's start-up errors.

use std::process::{Command, Stdio};

use mesh_runtime::testing::{grpcurl_path, run_ok, sh_with_grpcurl};

use crate::harness::{TOKEN, spawn_app};

/// grpcurl 1.8 speaks reflection v1alpha: it lists and describes the service
/// with no .proto files at hand.
#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_and_describes_the_service() {
    let app = spawn_app().await;
    let addr = app.addr.to_string();
    let listed = run_ok(Command::new(grpcurl_path()).args(["-plaintext", &addr, "list"]));
    for service in [
        "mesh.conversations.v1.ConversationsService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|l| l == service),
            "{service} in:\n{listed}"
        );
    }
    let described = run_ok(Command::new(grpcurl_path()).args([
        "-plaintext",
        &addr,
        "describe",
        "mesh.conversations.v1.ConversationsService",
    ]));
    for rpc in [
        "GetOrCreateActiveConversation",
        "RecordInboundMessage",
        "ListMessages",
        "UpdateDeliveryStatus",
        "GetMessagingWindow",
        "SendMessage",
        "WatchEvents",
        "PurgeUser",
    ] {
        assert!(
            described.contains(&format!("rpc {rpc} (")),
            "{rpc} in:\n{described}"
        );
    }
    assert!(described.contains("returns ( stream .mesh.conversations.v1.WatchEventsResponse )"));
}

/// The grpcurl lines of README.md's conversations block, with line
/// continuations joined.
fn readme_conversations_lines() -> Vec<String> {
    mesh_runtime::testing::readme_sh_lines(
        include_str!("../../../../README.md"),
        "## The conversations service",
    )
    .into_iter()
    .filter(|line| line.starts_with("grpcurl "))
    .collect()
}

/// The README's lines work as written against a service at the README's
/// address and token (here swapped for the test's own).
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_lines_work_as_written() {
    let app = spawn_app().await;
    let lines = readme_conversations_lines();
    assert!(lines.len() >= 6, "{lines:?}");
    let mut conversation_id: Option<String> = None;
    for line in lines {
        let line = line
            .replace("127.0.0.1:50052", &app.addr.to_string())
            .replace("Bearer dev-token", &format!("Bearer {TOKEN}"))
            .replace(
                "<conversation id from the answer above>",
                conversation_id.as_deref().unwrap_or("missing"),
            );
        let output = sh_with_grpcurl(&line);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if line.contains("/WatchEvents") {
            // It streams until -max-time ends it: what matters is what it printed.
            assert!(
                stdout.contains("EVENT_TYPE_MESSAGE_RECEIVED") && stdout.contains("\"cursor\""),
                "{line}\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            continue;
        }
        assert!(
            output.status.success(),
            "{line}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        if line.contains("/GetOrCreateActiveConversation") {
            let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            conversation_id = Some(answer["conversation"]["id"].as_str().unwrap().to_owned());
        }
        if line.contains("/GetHistory") {
            assert!(stdout.contains("\"hola\""), "{stdout}");
        }
        if line.contains("/GetMessagingWindow") {
            assert!(stdout.contains("\"freeFormAllowed\": true"), "{stdout}");
        }
    }
    assert_eq!(app.count("messages").await, 1);
}

/// A bad variable stops the binary at start with a message naming it.
#[test]
fn the_binary_names_a_bad_variable() {
    for (name, value) in [
        ("CONVERSATIONS_IDLE_GAP_SECONDS", "soon"),
        ("CONVERSATIONS_IDLE_GAP_SECONDS", "0"),
        ("CONVERSATIONS_EVENT_RETENTION_HOURS", "-1"),
        ("CONVERSATIONS_USERS_URL", "users:50051"),
        ("WHATSAPP_API_BASE", "graph.facebook.com"),
        ("CONVERSATIONS_PROVIDER_TIMEOUT_SECONDS", "ten"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_conversations"))
            .env_clear()
            .env("CONVERSATIONS_ADDR", "127.0.0.1:0")
            .env(
                "CONVERSATIONS_DATABASE_URL",
                "postgres://mesh_conversations@127.0.0.1:1/none",
            )
            .env("MESH_AUTH_TOKEN", TOKEN)
            .env(name, value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{name}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }
}

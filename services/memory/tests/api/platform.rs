//! What a newcomer sees with grpcurl: reflection, health, and README's lines
//! working as written.

use std::process::Command;

use mesh_runtime::testing::{grpcurl_path, readme_sh_lines, run_ok, sh_with_grpcurl};

use crate::harness::{TOKEN, WordsEmbedder, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_and_describes_the_service_through_reflection() {
    let app = spawn_app_with(WordsEmbedder::new("words-v1", 64), |_| {}).await;
    let addr = app.addr.to_string();
    let grpcurl = grpcurl_path();
    let list = run_ok(Command::new(&grpcurl).args(["-plaintext", &addr, "list"]));
    assert!(list.contains("mesh.memory.v1.MemoryService"), "{list}");
    assert!(list.contains("grpc.health.v1.Health"), "{list}");
    let described = run_ok(Command::new(&grpcurl).args([
        "-plaintext",
        &addr,
        "describe",
        "mesh.memory.v1.MemoryService",
    ]));
    assert!(described.contains("rpc SearchMemories"), "{described}");
    let health =
        run_ok(Command::new(&grpcurl).args(["-plaintext", &addr, "grpc.health.v1.Health/Check"]));
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_memory_lines_work_as_written() {
    // The real model, as under `cargo xtask up`.
    let app = spawn_app().await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let lines = readme_sh_lines(&readme, "## The memory service");
    assert_eq!(lines.len(), 3, "{lines:?}");
    let mut answers = Vec::new();
    for line in &lines {
        let line = line
            .replace("127.0.0.1:50053", &app.addr.to_string())
            .replace("Bearer dev-token", &format!("Bearer {TOKEN}"));
        // CreateMemory twice: the request_id makes the repeat answer the same.
        let repeats = if line.contains("/CreateMemory") { 2 } else { 1 };
        for _ in 0..repeats {
            let output = sh_with_grpcurl(&line);
            assert!(
                output.status.success(),
                "{line}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            answers.push(serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap());
        }
    }
    assert_eq!(answers[0], answers[1]);
    let id = answers[0]["memory"]["id"].as_str().unwrap();
    assert_eq!(answers[2]["hits"][0]["memory"]["id"], id);
    assert!(
        answers[3]["context"]
            .as_str()
            .unwrap()
            .contains("Is allergic to peanuts")
    );
    assert_eq!(app.count("memories").await, 1);
}

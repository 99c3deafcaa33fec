//! What a newcomer sees with grpcurl: reflection, health, the bearer token,
//! and README's lines working as written.

use std::process::Command;

use mesh_proto::mesh::scheduler::v1 as pb;
use mesh_runtime::testing::{grpcurl_path, readme_sh_lines, run_ok, sh_with_grpcurl};
use tonic::Code;

use crate::harness::{TOKEN, channel, spawn_app};

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_and_describes_the_service_through_reflection() {
    let app = spawn_app().await;
    let addr = app.scheduler.addr.to_string();
    let grpcurl = grpcurl_path();
    let list = run_ok(Command::new(&grpcurl).args(["-plaintext", &addr, "list"]));
    assert!(
        list.contains("mesh.scheduler.v1.SchedulerService"),
        "{list}"
    );
    assert!(list.contains("grpc.health.v1.Health"), "{list}");
    let described = run_ok(Command::new(&grpcurl).args([
        "-plaintext",
        &addr,
        "describe",
        "mesh.scheduler.v1.SchedulerService",
    ]));
    assert!(described.contains("rpc CreateReminder"), "{described}");
    let health =
        run_ok(Command::new(&grpcurl).args(["-plaintext", &addr, "grpc.health.v1.Health/Check"]));
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test]
async fn a_call_without_the_token_is_unauthenticated_and_changes_nothing() {
    let app = spawn_app().await;
    let mut anonymous = pb::scheduler_service_client::SchedulerServiceClient::new(
        channel(app.scheduler.addr).await,
    );
    let status = anonymous
        .create_reminder(pb::CreateReminderRequest {
            reminder: Some(pb::Reminder {
                user_id: uuid::Uuid::now_v7().to_string(),
                title: "Nobody may".into(),
                time_zone: "UTC".into(),
                ..Default::default()
            }),
            local_time: "2030-01-01T09:00".into(),
            ..Default::default()
        })
        .await
        .expect_err("no token, no reminder");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(app.count("reminders").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_scheduler_lines_work_as_written() {
    let app = spawn_app().await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let lines = readme_sh_lines(&readme, "## The scheduler service");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let mut answers = Vec::new();
    for line in &lines {
        let line = line
            .replace("127.0.0.1:50054", &app.scheduler.addr.to_string())
            .replace("Bearer dev-token", &format!("Bearer {TOKEN}"));
        // CreateReminder twice: the request_id makes the repeat answer the same.
        let repeats = if line.contains("/CreateReminder") {
            2
        } else {
            1
        };
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
    let reminder = &answers[0]["reminder"];
    // 09:00 in Bogota (UTC-5, no DST) is 14:00 UTC.
    assert_eq!(reminder["scheduledTime"], "2030-01-15T14:00:00Z");
    assert_eq!(reminder["status"], "REMINDER_STATUS_PENDING");
    assert_eq!(answers[2]["reminders"][0]["id"], reminder["id"]);
    assert_eq!(app.count("reminders").await, 1);
}

#[tokio::test]
async fn metrics_are_served_in_the_openmetrics_text_format() {
    let app = spawn_app().await;
    // 200 asserted by the scrape.
    let answer = crate::dispatch::scrape(app.scheduler.metrics_addr).await;
    assert!(
        answer.contains("scheduler_dispatch_lateness_seconds"),
        "{answer}"
    );
}

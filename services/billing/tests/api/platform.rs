//! What a newcomer sees with grpcurl: reflection, health, the bearer token,
//! and README's lines working as written.

use std::process::Command;

use mesh_proto::mesh::billing::v1 as pb;
use mesh_runtime::testing::{grpcurl_path, readme_sh_lines, run_ok, sh_with_grpcurl};
use tonic::Code;

use crate::harness::{TOKEN, channel, spawn_app};

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_and_describes_the_service_through_reflection() {
    let app = spawn_app().await;
    let addr = app.addr.to_string();
    let grpcurl = grpcurl_path();
    let list = run_ok(Command::new(&grpcurl).args(["-plaintext", &addr, "list"]));
    assert!(list.contains("mesh.billing.v1.BillingService"), "{list}");
    assert!(list.contains("grpc.health.v1.Health"), "{list}");
    let described = run_ok(Command::new(&grpcurl).args([
        "-plaintext",
        &addr,
        "describe",
        "mesh.billing.v1.BillingService",
    ]));
    for rpc in [
        "GetEntitlements",
        "ConsumeQuota",
        "RecordAiUsage",
        "GetSubscription",
        "ListSubscriptionEvents",
        "ApplySubscriptionEvent",
        "PurgeUser",
    ] {
        assert!(described.contains(&format!("rpc {rpc}")), "{described}");
    }
}

#[tokio::test]
async fn a_call_without_the_token_is_unauthenticated_and_changes_nothing() {
    let app = spawn_app().await;
    let mut anonymous =
        pb::billing_service_client::BillingServiceClient::new(channel(app.addr).await);
    let status = anonymous
        .consume_quota(pb::ConsumeQuotaRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
            feature: pb::Feature::InboundMessages as i32,
            amount: 1,
            request_id: String::new(),
        })
        .await
        .expect_err("no token, no consumption");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(app.db.count("billing", "usage_counters").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_billing_lines_work_as_written() {
    let app = spawn_app().await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let lines = readme_sh_lines(&readme, "## The billing service");
    assert_eq!(lines.len(), 3, "{lines:?}");
    let mut answers = Vec::new();
    for line in &lines {
        let line = line
            .replace("127.0.0.1:50055", &app.addr.to_string())
            .replace("Bearer dev-token", &format!("Bearer {TOKEN}"));
        // ConsumeQuota twice: the request_id makes the repeat answer the same.
        let repeats = if line.contains("/ConsumeQuota") { 2 } else { 1 };
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
    // GetEntitlements, ConsumeQuota (twice), CheckRateLimit.
    assert_eq!(answers[0]["plan"]["id"], "free");
    assert_eq!(answers[1], answers[2]);
    assert_eq!(answers[1]["quota"]["used"], "1");
    assert_eq!(answers[3]["remaining"], "59");
}

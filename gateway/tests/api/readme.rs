//! README.md's gateway lines, run as written (with the test's address and
//! secrets in place of `cargo xtask up`'s): curl and openssl, as a newcomer
//! would run them.

use std::process::{Command, Stdio};

use mesh_proto::mesh::billing::v1::{self as billing, SubscriptionStatus};

use crate::harness::{APP_SECRET, LEMONSQUEEZY_SECRET, TELEGRAM_SECRET, VERIFY_TOKEN, spawn_app};

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_gateway_lines_work_as_written() {
    let mut app = spawn_app().await;
    let lines = mesh_runtime::testing::readme_sh_lines(
        include_str!("../../../README.md"),
        "## The gateway",
    );
    assert!(lines.len() >= 6, "{lines:?}");
    let addr = app.url.trim_start_matches("http://").to_owned();
    let script = lines
        .join("\n")
        .replace("127.0.0.1:8080", &addr)
        .replace("dev-app-secret", APP_SECRET)
        .replace("dev-verify-token", VERIFY_TOKEN)
        .replace("dev-telegram-secret", TELEGRAM_SECRET)
        .replace("dev-lemonsqueezy-secret", LEMONSQUEEZY_SECRET);
    let run = || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .stdin(Stdio::null())
            .output()
            .expect("bash runs")
    };
    let output = run();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("1158201444"), "{stdout}");
    assert_eq!(stdout.matches(r#""stored":1"#).count(), 2, "{stdout}");
    assert!(
        stdout.contains(r#""users":"SERVING""#)
            && stdout.contains(r#""conversations":"SERVING""#)
            && stdout.contains(r#""billing":"SERVING""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"{"outcome":"applied","recorded":true}"#),
        "{stdout}"
    );

    // What the README says then: the message is there, and a repeat is a duplicate.
    let messages = app.messages_from("+573001234567").await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].content, "Hola");
    let again = String::from_utf8_lossy(&run().stdout).into_owned();
    assert_eq!(again.matches(r#""duplicates":1"#).count(), 2, "{again}");
    assert!(again.contains(r#""recorded":false"#), "{again}");
    assert_eq!(app.messages_from("+573001234567").await.len(), 1);
    let subscription = app
        .billing
        .get_subscription(billing::GetSubscriptionRequest {
            owner: Some(billing::Owner {
                kind: Some(billing::owner::Kind::UserId(
                    "0190b2a4-7c1e-7d3a-9b5f-2e4c6a8d0f13".into(),
                )),
            }),
        })
        .await
        .expect("the README's subscription")
        .into_inner()
        .subscription
        .unwrap();
    assert_eq!(subscription.subscription_id, "1024881");
    assert_eq!(subscription.status(), SubscriptionStatus::Active);
}

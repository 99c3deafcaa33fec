//! README.md's gateway lines, run as written (with the test's address and
//! secrets in place of `cargo xtask up`'s): curl and openssl, as a newcomer
//! would run them.

use std::process::{Command, Stdio};

use crate::harness::{APP_SECRET, TELEGRAM_SECRET, VERIFY_TOKEN, spawn_app};

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
        .replace("dev-telegram-secret", TELEGRAM_SECRET);
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
        stdout.contains(r#""users":"SERVING""#) && stdout.contains(r#""conversations":"SERVING""#),
        "{stdout}"
    );

    // What the README says then: the message is there, and a repeat is a duplicate.
    let messages = app.messages_from("+573001234567").await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].content, "Hola");
    let again = String::from_utf8_lossy(&run().stdout).into_owned();
    assert_eq!(again.matches(r#""duplicates":1"#).count(), 2, "{again}");
    assert_eq!(app.messages_from("+573001234567").await.len(), 1);
}

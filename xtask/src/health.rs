//! Whether a mesh service is up: its gRPC health (open, no token needed), or
//! for the gateway its HTTP readiness; and the wait for either after a start.

use std::{
    future::Future,
    path::Path,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use tonic::transport::Channel;
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::process::tail;

/// How long a freshly started process gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often it is asked meanwhile.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A channel to `addr` (`host:port`) if the server there reports SERVING.
pub async fn serving_channel(addr: &str) -> Option<Channel> {
    let (channel, status) = check(addr).await?;
    (status == ServingStatus::Serving).then_some(channel)
}

/// What the server at `addr` reports on gRPC health (None: no answer, as
/// from a process that is down).
pub async fn status(addr: &str) -> Option<ServingStatus> {
    check(addr).await.map(|(_, status)| status)
}

async fn check(addr: &str) -> Option<(Channel, ServingStatus)> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    request.set_timeout(Duration::from_secs(2));
    let status = HealthClient::new(channel.clone())
        .check(request)
        .await
        .ok()?
        .into_inner()
        .status();
    Some((channel, status))
}

/// Whether `GET url` answers 200 within two seconds (the gateway's /readyz:
/// 200 once users and conversations both report SERVING).
pub async fn http_ok(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|answer| answer.status() == reqwest::StatusCode::OK)
}

/// Polls `probe` until it gives a value, for at most a minute, failing early
/// when `child` exits. `name` and `what` ("report SERVING") word the errors,
/// which end with the last lines of `log`, the child's output.
pub async fn wait_ready<T, F, Fut>(
    child: &mut Child,
    name: &str,
    log: &Path,
    what: &str,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{name} exited during start-up ({status}); its log ({}) ends with:\n{}",
                log.display(),
                tail(log, 30)
            );
        }
        if let Some(ready) = probe().await {
            return Ok(ready);
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "{name} did not {what} within {}s; its log ({}) ends with:\n{}",
                READY_TIMEOUT.as_secs(),
                log.display(),
                tail(log, 30)
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs")
    }

    #[tokio::test]
    async fn a_ready_probe_answers_at_once() {
        let mut child = sleeper();
        let mut calls = 0;
        let ready = wait_ready(
            &mut child,
            "svc",
            Path::new("/nonexistent"),
            "be up",
            || {
                calls += 1;
                std::future::ready((calls == 3).then_some(calls))
            },
        )
        .await
        .unwrap();
        assert_eq!(ready, 3);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn a_child_that_exits_fails_the_wait_with_its_log() {
        let log = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(log.path(), "starting\nUSERS_DATABASE_URL is not set\n").unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let error = wait_ready(&mut child, "users", log.path(), "report SERVING", || {
            std::future::ready(None::<()>)
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("users exited during start-up"), "{error}");
        assert!(error.ends_with("USERS_DATABASE_URL is not set"), "{error}");
    }
}

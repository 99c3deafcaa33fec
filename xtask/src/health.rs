//! Whether a mesh service is up: its gRPC health (open, no token needed).

use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A channel to `addr` (`host:port`) if the server there reports SERVING.
pub async fn serving_channel(addr: &str) -> Option<Channel> {
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
    (status == ServingStatus::Serving).then_some(channel)
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

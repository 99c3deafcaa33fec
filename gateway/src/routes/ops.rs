//! For operators and orchestrators: liveness, readiness, metrics.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde_json::{Map, Value};

use super::AppState;

/// The process is up and serving HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Services the gateway can work without: with billing away, messages are
/// still stored (unflagged) and only Lemon Squeezy deliveries fail (and are
/// retried), so a billing outage must not take every gateway out of service.
const OPTIONAL: &[&str] = &["billing"];

/// 200 when every downstream service the gateway needs reports SERVING on
/// gRPC health, else 503; the body says which is which, billing included.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let checks = state.inner.mesh.readiness().await;
    let ready = checks
        .iter()
        .all(|(name, state)| state.is_ok() || OPTIONAL.contains(name));
    let body: Map<String, Value> = checks
        .into_iter()
        .map(|(name, state)| {
            let said = match state {
                Ok(()) => "SERVING".to_owned(),
                Err(why) => why,
            };
            (name.to_owned(), Value::from(said))
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    crate::answer::json_line(status, &body)
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.inner.metrics.encode(),
    )
}

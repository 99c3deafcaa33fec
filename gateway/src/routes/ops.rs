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

/// 200 when every downstream service's gRPC health is SERVING, else 503;
/// the body says which is which.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let checks = state.inner.mesh.readiness().await;
    let ready = checks.iter().all(|(_, state)| state.is_ok());
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

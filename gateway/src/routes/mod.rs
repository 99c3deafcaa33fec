//! The HTTP routes, and the layer that gives every request its span and its
//! line in the metrics.

mod lemonsqueezy;
mod ops;
mod telegram;
mod whatsapp;

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, MatchedPath, Request, State, rejection::BytesRejection},
    http::StatusCode,
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use tracing::Instrument;

use crate::{
    MAX_LEMONSQUEEZY_BODY, MAX_WHATSAPP_BODY,
    answer::{Answer, Outcome},
    config::Config,
    mesh::Mesh,
    metrics::Metrics,
};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    mesh: Mesh,
    metrics: Arc<Metrics>,
    whatsapp_verify_token: Option<String>,
    whatsapp_app_secret: Option<String>,
    telegram_secret_token: Option<String>,
    lemonsqueezy_signing_secret: Option<String>,
}

impl AppState {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        Ok(Self {
            inner: Arc::new(Inner {
                mesh: Mesh::new(config, metrics.clone())?,
                metrics,
                whatsapp_verify_token: config.whatsapp_verify_token.clone(),
                whatsapp_app_secret: config.whatsapp_app_secret.clone(),
                telegram_secret_token: config.telegram_secret_token.clone(),
                lemonsqueezy_signing_secret: config.lemonsqueezy_signing_secret.clone(),
            }),
        })
    }

    /// A delivery of `raw` (verified and parsed) about to be handed on.
    pub(crate) fn delivery<'a>(
        &'a self,
        raw: &'a [u8],
        source: mesh_proto::mesh::conversations::v1::WebhookSource,
    ) -> crate::inbound::Delivery<'a> {
        crate::inbound::Delivery {
            mesh: &self.inner.mesh,
            metrics: &self.inner.metrics,
            raw,
            source,
            summary: Default::default(),
            billing_away: Default::default(),
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/webhooks/whatsapp",
            get(whatsapp::verify).post(whatsapp::receive),
        )
        .route("/webhooks/telegram", post(telegram::receive))
        // Its own, smaller limit (this inner layer overrides the one below).
        .route(
            "/webhooks/lemonsqueezy",
            post(lemonsqueezy::receive).layer(DefaultBodyLimit::max(MAX_LEMONSQUEEZY_BODY)),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        // WhatsApp's documented maximum; Telegram's updates are far smaller.
        .layer(DefaultBodyLimit::max(MAX_WHATSAPP_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// One span per request (continuing a `traceparent` when one came, and
/// naming its trace id in every log line inside), and the request's route,
/// outcome and latency in the metrics.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    mesh_runtime::telemetry::continue_trace(&span, request.headers());
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    let outcome = response
        .extensions()
        .get::<Outcome>()
        .map_or_else(|| status_outcome(response.status()), |o| o.0);
    state
        .inner
        .metrics
        .request(&route, outcome, started.elapsed());
    response
}

fn status_outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        404 | 405 => "not_found",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

/// The body, or the answer to a body that could not be read: 413 over the
/// route's `limit`, 400 otherwise.
fn body(read: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, Answer> {
    read.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Answer::TooLarge(limit)
        } else {
            Answer::BadRequest(rejection.body_text())
        }
    })
}

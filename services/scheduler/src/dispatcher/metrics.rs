//! What `/metrics` serves for the dispatcher (OpenMetrics text): how late
//! items are sent, and what became of each attempt, by kind.

use std::sync::Arc;

use axum::{Router, extract::State as Extract, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio_util::sync::CancellationToken;

use super::Kind;
use crate::State;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The outcomes the dispatcher reports (see `outcome::record`).
const OUTCOMES: [&str; 5] = ["sent", "deferred", "retried", "failed", "dead_lettered"];

pub struct Metrics {
    registry: Registry,
    lateness: Family<KindLabels, Histogram>,
    outcomes: Family<OutcomeLabels, Counter>,
}

/// 10 ms to about 1.5 h, doubling: a send on time and one held an hour by
/// quiet hours or retries both land in a meaningful bucket.
fn lateness_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("scheduler");
        let lateness =
            Family::<KindLabels, Histogram>::new_with_constructor(lateness_histogram as fn() -> _);
        registry.register(
            "dispatch_lateness_seconds",
            "Time from an item's scheduled time to its send, by kind",
            lateness.clone(),
        );
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "dispatch_outcomes",
            "Dispatch attempts by kind and outcome (sent, deferred, retried, failed, dead_lettered)",
            outcomes.clone(),
        );
        // Every series exists from the start, at zero: a dashboard (and a
        // rate()) sees "nothing sent yet" rather than a missing metric.
        for kind in [Kind::Reminder, Kind::CheckIn].map(Kind::label) {
            let _ = lateness.get_or_create(&KindLabels { kind });
            for outcome in OUTCOMES {
                let _ = outcomes.get_or_create(&OutcomeLabels { kind, outcome });
            }
        }
        Self {
            registry,
            lateness,
            outcomes,
        }
    }
}

impl Metrics {
    /// One item of `kind` sent `lateness` seconds after its scheduled time.
    pub(crate) fn sent(&self, kind: &'static str, lateness: f64) {
        self.lateness
            .get_or_create(&KindLabels { kind })
            .observe(lateness.max(0.0));
        self.outcome(kind, "sent");
    }

    pub(crate) fn outcome(&self, kind: &'static str, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { kind, outcome })
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(%error, "the metrics endpoint stopped");
    }
}

async fn metrics(Extract(state): Extract<Arc<State>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

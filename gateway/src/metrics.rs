//! What `/metrics` serves (OpenMetrics text, which Prometheus scrapes):
//! requests by route and outcome, their latency, downstream call errors,
//! what became of the messages and statuses the webhooks carried, and how
//! their senders stood against the inbound-message quota.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DownstreamLabels {
    service: &'static str,
    method: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    source: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemLabels {
    source: &'static str,
    kind: &'static str,
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    downstream_errors: Family<DownstreamLabels, Counter>,
    items: Family<ItemLabels, Counter>,
    quota: Family<QuotaLabels, Counter>,
}

/// Latency buckets from 1 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and outcome",
            requests.clone(),
        );
        let latency =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "http_request_duration_seconds",
            "Time from request to answer, by route",
            latency.clone(),
        );
        let downstream_errors = Family::<DownstreamLabels, Counter>::default();
        registry.register(
            "downstream_errors",
            "Downstream gRPC calls that did not answer OK, by service, method and code",
            downstream_errors.clone(),
        );
        let items = Family::<ItemLabels, Counter>::default();
        registry.register(
            "webhook_items",
            "Messages and statuses carried by webhooks, by what became of them",
            items.clone(),
        );
        let quota = Family::<QuotaLabels, Counter>::default();
        registry.register(
            "inbound_quota_checks",
            "Inbound messages counted against their sender's daily quota, by result \
             (within, over, unchecked: billing did not answer and the message went unflagged)",
            quota.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            downstream_errors,
            items,
            quota,
        }
    }
}

impl Metrics {
    pub fn request(&self, route: &str, outcome: &'static str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                outcome,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn downstream_error(&self, service: &'static str, method: &'static str, code: tonic::Code) {
        self.downstream_errors
            .get_or_create(&DownstreamLabels {
                service,
                method,
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// One message or status (`kind`) from `source`, and what became of it
    /// (stored, duplicate, applied, unchanged, deferred, dead_lettered, skipped).
    pub fn item(&self, source: &'static str, kind: &'static str, result: &'static str) {
        self.items
            .get_or_create(&ItemLabels {
                source,
                kind,
                result,
            })
            .inc();
    }

    /// One inbound message from `source` checked against its sender's quota:
    /// within, over (stored flagged) or unchecked (stored unflagged).
    pub fn quota(&self, source: &'static str, result: &'static str) {
        self.quota
            .get_or_create(&QuotaLabels { source, result })
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

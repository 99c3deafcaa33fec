//! Logs, traces, and the W3C `traceparent` that ties them across services.
//!
//! Every process gets an OpenTelemetry tracer so spans always have trace ids
//! (logs and internal errors quote them); spans leave the process over OTLP
//! only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. `RUST_LOG` filters logs
//! (default `info`); `LOG_FORMAT=json` switches to JSON lines.

use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::{invalid, optional};

/// Flushes spans still buffered for export when dropped at shutdown.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {error}");
        }
    }
}

/// Installs the global subscriber for `service`. Call once, first thing in main.
pub fn init(service: &'static str) -> anyhow::Result<TelemetryGuard> {
    // The variables first: a bad one stops start-up before anything is set up.
    // RUST_LOG filters what is logged, not what is traced: spans at INFO and
    // above always reach the OpenTelemetry layer, so a quiet log level never
    // breaks a trace that runs through this service.
    let log_filter = match optional("RUST_LOG") {
        None => EnvFilter::new("info"),
        Some(value) => {
            EnvFilter::try_new(&value).map_err(|e| invalid("RUST_LOG", &value, &e.to_string()))?
        }
    };
    let json = match optional("LOG_FORMAT").as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => return Err(invalid("LOG_FORMAT", other, "expected text or json").into()),
    };

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    if optional("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other
        // standard OTEL_EXPORTER_OTLP_* variables) itself.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let tracer = provider.tracer(service);

    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(LevelFilter::INFO);
    let registry = tracing_subscriber::registry().with(otel);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_filter(log_filter),
            )
            .try_init()?;
    } else {
        // Colours only on a terminal: log files and collectors get plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_filter(log_filter),
            )
            .try_init()?;
    }
    Ok(TelemetryGuard { provider })
}

/// The trace id of the current span, or zeros outside any traced span.
pub fn current_trace_id() -> String {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string()
}

/// The span of one incoming gRPC request, continuing the caller's trace when
/// its `traceparent` header came along.
pub fn request_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc.request",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %request.uri().path(),
    );
    continue_trace(&span, request.headers());
    span
}

/// Makes `span` a child of the trace named by the `traceparent` header in
/// `headers`, when there is a valid one (HTTP requests and gRPC calls alike).
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    if parent.span().span_context().is_valid() {
        // Only fails when the span is disabled by the filter: nothing to attach to then.
        let _ = span.set_parent(parent);
    }
}

/// A client interceptor that sends the current span's context as
/// `traceparent`, so the callee's spans join this trace.
pub fn inject_trace_context(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
    });
    Ok(request)
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    /// A subscriber like the one `init` installs, scoped to this thread.
    fn with_tracing(test: impl FnOnce()) {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, test);
    }

    #[test]
    fn a_request_span_continues_the_callers_trace_and_passes_it_on() {
        with_tracing(|| {
            let request = http::Request::builder()
                .uri("/mesh.users.v1.UsersService/GetUser")
                .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
                .body(())
                .unwrap();
            let span = request_span(&request);
            let _entered = span.enter();
            assert_eq!(current_trace_id(), TRACE_ID);

            // An outgoing call made while serving carries the same trace.
            let outgoing = inject_trace_context(tonic::Request::new(())).unwrap();
            let traceparent = outgoing
                .metadata()
                .get("traceparent")
                .expect("traceparent sent")
                .to_str()
                .unwrap();
            assert!(
                traceparent.starts_with(&format!("00-{TRACE_ID}-")),
                "{traceparent}"
            );
            assert!(
                !traceparent.contains("00f067aa0ba902b7"),
                "a new parent span id"
            );
        });
    }

    #[test]
    fn without_a_traceparent_a_request_starts_a_new_trace() {
        with_tracing(|| {
            let request = http::Request::builder().uri("/x").body(()).unwrap();
            let span = request_span(&request);
            let _entered = span.enter();
            let trace_id = current_trace_id();
            assert_ne!(trace_id, TRACE_ID);
            assert_ne!(trace_id, "00000000000000000000000000000000");
        });
    }
}

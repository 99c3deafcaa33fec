//! Logs, traces, and the W3C `traceparent` that ties them across services.
//!
//! Every process gets an OpenTelemetry tracer so spans always have trace ids:
//! each request span (gRPC here, HTTP in the gateway) records its trace id as
//! the field `trace_id`, so every log line inside a request names its trace,
//! and internal errors quote it to the caller. Spans leave the process over
//! OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (or an endpoint is
//! given, as tests do); then every SQL statement run inside a traced request
//! is a span too ([`statements`]). `RUST_LOG` filters logs (default `info`);
//! `LOG_FORMAT=json` switches to JSON lines.

mod statements;

use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{SdkTracer, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::{invalid, optional};

/// Flushes spans still buffered for export when dropped at shutdown.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Exports every span ended so far, waiting for the exporter to finish.
    /// Blocks the thread: async code calls it through `block_in_place` or
    /// `spawn_blocking`.
    pub fn flush(&self) -> anyhow::Result<()> {
        Ok(self.provider.force_flush()?)
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {error}");
        }
    }
}

/// Where spans go.
enum SpanExport {
    /// Nowhere: they still give logs and callees their trace ids.
    None,
    /// Over OTLP/gRPC where the standard `OTEL_EXPORTER_OTLP_*` variables say
    /// (the exporter reads them itself, the per-signal ones first).
    OtlpFromEnvironment,
    /// Over OTLP/gRPC to this endpoint, whatever the environment says.
    Otlp(String),
}

/// How a process logs and traces: [`TelemetryConfig::from_env`], then
/// [`TelemetryConfig::init`]. [`init`] does both.
pub struct TelemetryConfig {
    log_filter: EnvFilter,
    json: bool,
    export: SpanExport,
    /// `OTEL_SERVICE_NAME`, which names the process in traces instead of
    /// the service's own name (replicas of one service in several regions).
    service_name: Option<String>,
}

impl TelemetryConfig {
    /// Reads `RUST_LOG`, `LOG_FORMAT`, `OTEL_SERVICE_NAME` and
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; a bad
    /// value is an error that names its variable.
    pub fn from_env() -> anyhow::Result<Self> {
        // RUST_LOG filters what is logged, not what is traced: spans at INFO and
        // above always reach the OpenTelemetry layer, so a quiet log level never
        // breaks a trace that runs through this service.
        let log_filter = match optional("RUST_LOG") {
            None => EnvFilter::new("info"),
            Some(value) => EnvFilter::try_new(&value)
                .map_err(|e| invalid("RUST_LOG", &value, &e.to_string()))?,
        };
        let json = match optional("LOG_FORMAT").as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(invalid("LOG_FORMAT", other, "expected text or json").into());
            }
        };
        let export = if optional("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
            SpanExport::OtlpFromEnvironment
        } else {
            SpanExport::None
        };
        Ok(Self {
            log_filter,
            json,
            export,
            service_name: optional("OTEL_SERVICE_NAME"),
        })
    }

    /// Exports spans to `endpoint` (`http://host:port`) over OTLP/gRPC: for
    /// a process that runs its own collector, such as a test.
    #[must_use]
    pub fn with_otlp_endpoint(self, endpoint: impl Into<String>) -> Self {
        Self {
            export: SpanExport::Otlp(endpoint.into()),
            ..self
        }
    }

    /// Installs the global subscriber for `service`. Once per process.
    pub fn init(self, service: &'static str) -> anyhow::Result<TelemetryGuard> {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let exporter = match self.export {
            SpanExport::None => None,
            SpanExport::OtlpFromEnvironment => Some(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .build()?,
            ),
            SpanExport::Otlp(endpoint) => Some(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()?,
            ),
        };
        let exporting = exporter.is_some();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(self.service_name.unwrap_or_else(|| service.to_owned()))
            .build();
        let mut provider = SdkTracerProvider::builder().with_resource(resource);
        if let Some(exporter) = exporter {
            provider = provider.with_batch_exporter(exporter);
        }
        let provider = provider.build();
        // Colours only on a terminal: log files and collectors get plain text.
        let ansi = !self.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
        let logs = Logs {
            filter: self.log_filter,
            json: self.json,
            ansi,
        };
        subscriber(provider.tracer(service), exporting, logs, std::io::stdout).try_init()?;
        Ok(TelemetryGuard { provider })
    }
}

/// Installs the global subscriber for `service`, configured from the
/// environment. Call once, first thing in main.
pub fn init(service: &'static str) -> anyhow::Result<TelemetryGuard> {
    TelemetryConfig::from_env()?.init(service)
}

/// How log lines are filtered and written.
struct Logs {
    filter: EnvFilter,
    json: bool,
    ansi: bool,
}

/// The subscriber [`TelemetryConfig::init`] installs (kept apart so tests
/// can read what it writes): log lines to `writer`, spans to `tracer`, and
/// statement spans when `statements` (they are worth making only when
/// exported).
fn subscriber<W>(
    tracer: SdkTracer,
    statements: bool,
    logs: Logs,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(logs.ansi)
        .with_writer(writer);
    let fmt = if logs.json {
        fmt.json().with_filter(logs.filter).boxed()
    } else {
        fmt.with_filter(logs.filter).boxed()
    };
    // sqlx's statement events stay out: they become statement spans (the
    // statements layer), and as span events they would export a slow
    // statement's SQL text, which sqlx logs at WARN.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer.clone())
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            *metadata.level() <= tracing::Level::INFO && metadata.target() != statements::TARGET
        }));
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .with(statements.then(|| statements::layer(tracer)))
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
        trace_id = tracing::field::Empty,
    );
    continue_trace(&span, request.headers());
    span
}

/// Makes `span` a child of the trace named by the `traceparent` header in
/// `headers`, when there is a valid one (HTTP requests and gRPC calls alike),
/// then records the trace id in the span's `trace_id` field (which the
/// caller declares `tracing::field::Empty`), so that every log line written
/// inside the request names its trace. It can only be recorded now: the id
/// is the parent's, known once the parent is set.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    if parent.span().span_context().is_valid() {
        // Only fails when the span is disabled by the filter: nothing to attach to then.
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

/// Records `span`'s trace id in its `trace_id` field (declared
/// `tracing::field::Empty`), so every log line written inside it names its
/// trace: for spans that start work of their own, such as a dispatcher job.
pub fn record_trace_id(span: &tracing::Span) {
    let context = span.context();
    let traced = context.span().span_context().clone();
    if traced.is_valid() {
        span.record("trace_id", tracing::field::display(traced.trace_id()));
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

    /// What the subscriber writes, kept for the test to read.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `test` under the subscriber `init` installs (logs at INFO, as
    /// JSON lines or text), scoped to this thread; returns what it logged.
    fn with_tracing(json: bool, test: impl FnOnce()) -> String {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let captured = Captured::default();
        let writer = {
            let captured = captured.clone();
            move || captured.clone()
        };
        let logs = Logs {
            filter: EnvFilter::new("info"),
            json,
            ansi: false,
        };
        let subscriber = subscriber(provider.tracer("test"), false, logs, writer);
        tracing::subscriber::with_default(subscriber, test);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// A call from a caller in trace [`TRACE_ID`].
    fn traced_request() -> http::Request<()> {
        http::Request::builder()
            .uri("/mesh.users.v1.UsersService/GetUser")
            .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
            .body(())
            .unwrap()
    }

    #[test]
    fn every_log_line_inside_a_request_names_its_trace() {
        for json in [false, true] {
            let logs = with_tracing(json, || {
                let span = request_span(&traced_request());
                let _entered = span.enter();
                tracing::info!("handling");
                // An internal error is logged, and quotes the id to the caller.
                let status =
                    tonic::Status::from(crate::ApiError::internal(anyhow::anyhow!("boom")));
                assert!(status.message().contains(TRACE_ID), "{status:?}");
            });
            // Each event starts a line with its timestamp (the error's
            // backtrace, when RUST_BACKTRACE asks for one, follows on lines
            // of its own).
            let lines: Vec<&str> = logs
                .lines()
                .filter(|line| line.starts_with(|c: char| c.is_ascii_digit() || c == '{'))
                .collect();
            assert_eq!(lines.len(), 2, "the info and the error line: {logs}");
            for line in lines {
                if json {
                    let line: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert_eq!(line["span"]["trace_id"], TRACE_ID, "{line}");
                } else {
                    assert!(line.contains(&format!("trace_id={TRACE_ID}")), "{line}");
                }
            }
        }
    }

    #[test]
    fn a_request_span_continues_the_callers_trace_and_passes_it_on() {
        with_tracing(false, || {
            let span = request_span(&traced_request());
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
        with_tracing(false, || {
            let request = http::Request::builder().uri("/x").body(()).unwrap();
            let span = request_span(&request);
            let _entered = span.enter();
            let trace_id = current_trace_id();
            assert_ne!(trace_id, TRACE_ID);
            assert_ne!(trace_id, "00000000000000000000000000000000");
        });
    }
}

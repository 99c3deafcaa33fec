//! An OTLP/gRPC trace collector inside the test process, for tests that
//! check what a service exports: it keeps every span it is sent.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};

pub use opentelemetry_proto::tonic::trace::v1::Span;

#[derive(Clone, Default)]
pub struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    /// The `service.name` of every export's resources.
    service_names: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    /// Starts a collector on a free port; returns it and its endpoint
    /// (`http://127.0.0.1:<port>`), for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub async fn start() -> (Self, String) {
        let collector = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let endpoint = format!("http://{}", listener.local_addr().expect("an address"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, endpoint)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("collector lock").clone()
    }

    /// The `service.name` of every resource that exported spans, in order.
    pub fn service_names(&self) -> Vec<String> {
        self.service_names.lock().expect("collector lock").clone()
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let resource_spans = request.into_inner().resource_spans;
        let names = resource_spans.iter().filter_map(|r| {
            let resource = r.resource.as_ref()?;
            let name = resource
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")?;
            match name.value.as_ref()?.value.as_ref()? {
                Value::StringValue(name) => Some(name.clone()),
                _ => None,
            }
        });
        self.service_names
            .lock()
            .expect("collector lock")
            .extend(names);
        let spans = resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.spans.lock().expect("collector lock").extend(spans);
        Ok(tonic::Response::new(Default::default()))
    }
}

/// A trace or span id as W3C `traceparent` writes it (lowercase hex).
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The string value of the span's attribute `key`, if it has one.
pub fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|value| match value {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

//! The client span of every call one part of the mesh makes to another:
//! named `package.Service/Method` as OpenTelemetry's RPC conventions say,
//! entered while the call is handed to the interceptor (so the traceparent
//! it sends names this span, and the callee's server span hangs from it),
//! and ended with the call's gRPC status.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::Code;
use tracing::Instrument;

use super::did_not_answer;

/// Wraps a channel so every call gets a client span.
#[derive(Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S> Traced<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Traced<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let span = tracing::info_span!(
            "grpc.call",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let call = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let recorded = span.clone();
        Box::pin(
            async move {
                let answer = call.await;
                record(&recorded, answer.as_ref().ok().map(|r| r.headers()));
                answer
            }
            .instrument(span),
        )
    }
}

/// Records the call's status: from a trailers-only answer (how a server
/// answers an error before any message), OK for an answer with a body (its
/// status comes in the trailers, after the span), UNAVAILABLE when no answer
/// came. Calls the callee could not serve are errors in trace views;
/// refusals (INVALID_ARGUMENT, NOT_FOUND, a used-up quota) are answers.
fn record(span: &tracing::Span, headers: Option<&http::HeaderMap>) {
    let (code, failed) = outcome(headers);
    span.record("rpc.grpc.status_code", code as i32);
    if failed {
        span.record("otel.status_code", "ERROR");
    }
}

/// The call's code, and whether it is an error in trace views.
fn outcome(headers: Option<&http::HeaderMap>) -> (Code, bool) {
    let code = match headers {
        None => Code::Unavailable,
        Some(headers) => headers
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<i32>().ok())
            .map_or(Code::Ok, Code::from_i32),
    };
    let failed = matches!(code, Code::Internal | Code::DataLoss | Code::Unimplemented)
        || (did_not_answer(code) && code != Code::ResourceExhausted);
    (code, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: Option<&str>) -> (Code, bool) {
        let mut headers = http::HeaderMap::new();
        if let Some(status) = status {
            headers.insert("grpc-status", status.parse().unwrap());
        }
        outcome(Some(&headers))
    }

    #[test]
    fn failures_are_errors_and_refusals_are_answers() {
        assert_eq!(outcome(None), (Code::Unavailable, true), "no answer came");
        assert_eq!(
            answered(None),
            (Code::Ok, false),
            "a body: status in the trailers"
        );
        assert_eq!(answered(Some("0")), (Code::Ok, false));
        assert_eq!(answered(Some("5")), (Code::NotFound, false));
        assert_eq!(answered(Some("3")), (Code::InvalidArgument, false));
        assert_eq!(
            answered(Some("8")),
            (Code::ResourceExhausted, false),
            "a used-up quota"
        );
        assert_eq!(answered(Some("13")), (Code::Internal, true));
        assert_eq!(answered(Some("2")), (Code::Unknown, true));
        assert_eq!(answered(Some("14")), (Code::Unavailable, true));
        assert_eq!(answered(Some("4")), (Code::DeadlineExceeded, true));
    }
}

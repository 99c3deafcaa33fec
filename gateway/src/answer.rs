//! What a webhook is answered, in one place: the status code the provider
//! acts on (200 recorded, 4xx never retried usefully, 5xx retried), a short
//! JSON body for whoever is debugging with curl, and the outcome label the
//! metrics count.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tonic::Code;

use crate::{PayloadError, SignatureError, mesh::CallError};

/// What one delivery carried and what became of it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Messages stored now.
    pub stored: usize,
    /// Messages already stored by an earlier delivery.
    pub duplicates: usize,
    /// Statuses handed to the conversations service.
    pub statuses: usize,
    /// Items that can never be applied, kept as webhook failures.
    pub dead_lettered: usize,
    /// Changes or updates with nothing to store.
    pub skipped: usize,
}

/// The label the metrics count answers by.
#[derive(Clone, Copy, Debug)]
pub struct Outcome(pub &'static str);

/// What became of a Lemon Squeezy event in billing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventSummary {
    /// applied, stale, recorded, no_subscription or no_owner (billing's words).
    pub outcome: String,
    /// False for a repeat delivery: the first one's outcome is answered.
    pub recorded: bool,
}

#[derive(Debug)]
pub enum Answer {
    Recorded(Summary),
    /// A Lemon Squeezy event billing recorded (now or by an earlier delivery).
    Event(EventSummary),
    /// The WhatsApp verification handshake succeeded: echo the challenge.
    Challenge(String),
    BadRequest(String),
    Unauthorized(SignatureError),
    Forbidden(&'static str),
    /// Over the route's limit, in bytes.
    TooLarge(usize),
    Downstream(CallError),
}

impl From<PayloadError> for Answer {
    fn from(error: PayloadError) -> Self {
        Self::BadRequest(error.to_string())
    }
}

impl From<Result<Summary, CallError>> for Answer {
    fn from(handed_on: Result<Summary, CallError>) -> Self {
        match handed_on {
            Ok(summary) => Self::Recorded(summary),
            Err(error) => Self::Downstream(error),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// A JSON body on a line of its own, so curl's output ends the line.
pub fn json_line(status: StatusCode, body: &impl Serialize) -> Response {
    let mut text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn error(status: StatusCode, outcome: &'static str, message: &str) -> Response {
    let mut response = json_line(status, &ErrorBody { error: message });
    response.extensions_mut().insert(Outcome(outcome));
    response
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self {
            Self::Recorded(summary) => {
                let mut response = json_line(StatusCode::OK, &summary);
                response.extensions_mut().insert(Outcome("recorded"));
                response
            }
            Self::Event(event) => {
                let outcome = if event.recorded {
                    "recorded"
                } else {
                    "duplicate"
                };
                let mut response = json_line(StatusCode::OK, &event);
                response.extensions_mut().insert(Outcome(outcome));
                response
            }
            Self::Challenge(challenge) => {
                // Exactly the challenge: Meta compares it byte for byte.
                let mut response = (StatusCode::OK, challenge).into_response();
                response.extensions_mut().insert(Outcome("verified"));
                response
            }
            Self::BadRequest(reason) => error(StatusCode::BAD_REQUEST, "bad_request", &reason),
            Self::Unauthorized(why) => {
                error(StatusCode::UNAUTHORIZED, "unauthorized", &why.to_string())
            }
            Self::Forbidden(why) => error(StatusCode::FORBIDDEN, "forbidden", why),
            Self::TooLarge(limit) => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("body is over the {limit} byte limit"),
            ),
            Self::Downstream(failure) => {
                // The details stay in the log (the request span gives the line
                // the trace id that finds the failed call's spans): the
                // caller is a provider on the internet and only needs to retry.
                tracing::warn!(%failure, "delivery not recorded: the provider will retry");
                let (status, message) = match failure.code() {
                    Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Cancelled => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "a downstream service is unavailable; nothing was lost, retry",
                    ),
                    _ => (
                        StatusCode::BAD_GATEWAY,
                        "a downstream service failed; nothing was lost, retry",
                    ),
                };
                error(status, "downstream_error", message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Status;

    use super::*;

    fn downstream(code: Code) -> Response {
        Answer::Downstream(CallError {
            service: "conversations",
            method: "RecordInboundMessage",
            status: Status::new(code, "details that stay in the log"),
        })
        .into_response()
    }

    /// A service that is away or slow is 503, one that answered wrongly is
    /// 502: both are retried by the provider, and neither says why.
    #[tokio::test]
    async fn downstream_failures_are_503_when_transient_else_502() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Cancelled,
        ] {
            assert_eq!(
                downstream(code).status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{code:?}"
            );
        }
        for code in [
            Code::Internal,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unknown,
        ] {
            assert_eq!(
                downstream(code).status(),
                StatusCode::BAD_GATEWAY,
                "{code:?}"
            );
        }
        let response = downstream(Code::Internal);
        assert_eq!(
            response.extensions().get::<Outcome>().map(|o| o.0),
            Some("downstream_error")
        );
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(body.ends_with("retry\"}\n"), "{body}");
        assert!(!body.contains("details"), "{body}");
    }
}

//! What a provider did with one send, in the terms the send flow acts on.
//!
//! Both provider clients reduce every answer (and every way of not getting
//! one) to an [`Outcome`]. What matters is whether the provider has the
//! message: `Accepted` it does; `RateLimited`, `Outage` and `Refused` it
//! certainly does not (the first two may go through on a later try, the last
//! never will); `Unknown` it may, so the message must not be sent again.

use std::time::Duration;

/// The error code stored on a message whose send may or may not have reached
/// the provider.
pub const UNKNOWN_OUTCOME: &str = "unknown_outcome";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The provider took the message and gave it this id.
    Accepted { provider_message_id: String },
    /// A rate limit: the same send may go through after `retry_after`.
    RateLimited {
        code: String,
        title: String,
        retry_after: Duration,
    },
    /// The provider is down or failing (a 5xx with its own error body, a bare
    /// 503, a 408, its "service unavailable" codes, or it could not be
    /// reached): it did not take the message.
    Outage { code: String, title: String },
    /// The request went out but no usable answer came back (a timeout, a
    /// dropped connection, a 5xx from something in front of the provider):
    /// the message may have been sent.
    Unknown { reason: String },
    /// The provider will not send this message (outside the window, an
    /// invalid recipient, a blocked bot, bad credentials, ...).
    Refused { code: String, title: String },
}

impl Outcome {
    /// A send that failed in transport, as reqwest reports it. A failure to
    /// connect means nothing was sent; anything later may have been.
    pub fn from_transport(provider: &str, error: &reqwest::Error) -> Self {
        // Without the URL: Telegram's carries the bot token.
        let shown = strip_url(error);
        if error.is_connect() {
            Outcome::Outage {
                code: "unreachable".into(),
                title: format!("could not connect to {provider}: {shown}"),
            }
        } else if error.is_timeout() {
            Outcome::Unknown {
                reason: format!("{provider} did not answer in time"),
            }
        } else {
            Outcome::Unknown {
                reason: format!("the connection to {provider} failed mid-request: {shown}"),
            }
        }
    }
}

fn strip_url(error: &reqwest::Error) -> String {
    // `without_url` consumes; rebuild the text from the source chain instead.
    let mut text = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.is_empty() {
        "transport error".into()
    } else {
        text
    }
}

/// A `Retry-After` header in seconds (the HTTP-date form is not used by
/// these providers).
pub fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// What a failed send's row says, so that a retry with the same request_id
/// can answer as the first call did. Stored in `error_message` (not on the
/// wire): `rate limited; retry after N ms` or `outage`.
pub fn retryable_note(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::RateLimited { retry_after, .. } => Some(format!(
            "rate limited; retry after {} ms",
            retry_after.as_millis()
        )),
        Outcome::Outage { .. } => Some("outage".into()),
        _ => None,
    }
}

/// The inverse of [`retryable_note`] for a retryable failed row.
pub fn from_retryable_row(code: &str, title: &str, note: Option<&str>) -> Outcome {
    let delay = note
        .and_then(|n| n.strip_prefix("rate limited; retry after "))
        .and_then(|n| n.strip_suffix(" ms"))
        .and_then(|n| n.parse::<u64>().ok());
    match delay {
        Some(ms) => Outcome::RateLimited {
            code: code.into(),
            title: title.into(),
            retry_after: Duration::from_millis(ms),
        },
        None => Outcome::Outage {
            code: code.into(),
            title: title.into(),
        },
    }
}

/// "HTTP 503 Service Unavailable", for a provider's answer without a usable
/// error body.
pub fn status_text(status: reqwest::StatusCode) -> String {
    format!(
        "HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_rows_give_back_the_first_answer() {
        for outcome in [
            Outcome::RateLimited {
                code: "131056".into(),
                title: "pair rate limit".into(),
                retry_after: Duration::from_secs(6),
            },
            Outcome::Outage {
                code: "500".into(),
                title: "Internal Server Error".into(),
            },
        ] {
            let (code, title) = match &outcome {
                Outcome::RateLimited { code, title, .. } | Outcome::Outage { code, title } => {
                    (code.clone(), title.clone())
                }
                _ => unreachable!(),
            };
            let note = retryable_note(&outcome);
            assert_eq!(from_retryable_row(&code, &title, note.as_deref()), outcome);
        }
        assert_eq!(
            retryable_note(&Outcome::Refused {
                code: "131047".into(),
                title: "x".into()
            }),
            None
        );
    }
}

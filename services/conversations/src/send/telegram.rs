//! The Telegram Bot API send: `POST {base}/bot<token>/sendMessage`, and what
//! its answers mean. Our provider id of a Telegram message is
//! `<chat_id>:<message_id>` (message ids are only unique within a chat).

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::outcome::{Outcome, retry_after_header, status_text};
use crate::config::TelegramConfig;

pub struct Telegram {
    http: reqwest::Client,
    base: String,
    bot_token: Option<String>,
}

impl Telegram {
    pub fn new(http: reqwest::Client, config: &TelegramConfig) -> Self {
        Self {
            http,
            base: config.api_base.clone(),
            bot_token: config.bot_token.clone(),
        }
    }

    /// The variables that must be set before anything can be sent.
    pub fn missing_settings(&self) -> Vec<&'static str> {
        if self.bot_token.is_none() {
            vec!["TELEGRAM_BOT_TOKEN"]
        } else {
            Vec::new()
        }
    }

    /// Sends `text` to the private chat of Telegram user `chat_id`, as a
    /// reply to message `reply_to` of that chat when given.
    pub async fn send(&self, chat_id: i64, text: &str, reply_to: Option<i64>) -> Outcome {
        let Some(token) = &self.bot_token else {
            return Outcome::Refused {
                code: "not_configured".into(),
                title: "Telegram sending is not configured".into(),
            };
        };
        // Never log this URL: it carries the token.
        let url = format!("{}/bot{token}/sendMessage", self.base);
        let response = match self
            .http
            .post(url)
            .json(&request_body(chat_id, text, reply_to))
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => return Outcome::from_transport("Telegram", &error),
        };
        let status = response.status();
        let retry_after = retry_after_header(response.headers());
        match response.bytes().await {
            Ok(bytes) => classify(status, retry_after, &bytes),
            Err(_) if !status.is_success() => classify(status, retry_after, b""),
            Err(error) => Outcome::from_transport("Telegram", &error),
        }
    }
}

pub fn request_body(chat_id: i64, text: &str, reply_to: Option<i64>) -> Value {
    let mut body = json!({ "chat_id": chat_id, "text": text });
    if let Some(message_id) = reply_to {
        // Sent even when the replied-to message was deleted meanwhile.
        body["reply_parameters"] = json!({
            "message_id": message_id,
            "allow_sending_without_reply": true,
        });
    }
    body
}

/// `<chat_id>:<message_id>` -> (chat_id, message_id).
pub fn parse_provider_id(id: &str) -> Option<(i64, i64)> {
    let (chat, message) = id.split_once(':')?;
    Some((chat.parse().ok()?, message.parse().ok()?))
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    ok: bool,
    result: Option<SentMessage>,
    error_code: Option<i64>,
    #[serde(default)]
    description: String,
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct SentMessage {
    message_id: i64,
    chat: Chat,
}

#[derive(Deserialize)]
struct Chat {
    id: i64,
}

#[derive(Deserialize)]
struct Parameters {
    retry_after: Option<u64>,
}

/// What one HTTP answer of sendMessage means.
///
/// A 5xx says the message was not sent only when the Bot API itself says so,
/// with its error JSON (`{"ok": false, "error_code": ..}`), or as a bare 503.
/// Any other 5xx (a 502 or 504 from a proxy in front of the API, an HTML
/// page) may come after the API sent the message: its outcome is unknown.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    let answer = serde_json::from_slice::<Answer>(body).ok();
    if status.is_success() {
        return match answer {
            Some(Answer {
                ok: true,
                result: Some(message),
                ..
            }) => Outcome::Accepted {
                provider_message_id: format!("{}:{}", message.chat.id, message.message_id),
            },
            _ => Outcome::Unknown {
                reason: format!("Telegram answered {status} without the sent message"),
            },
        };
    }
    let error_code = answer.as_ref().filter(|a| !a.ok).and_then(|a| a.error_code);
    let status_text = status_text(status);
    if status.is_server_error() && error_code.is_none() && status != StatusCode::SERVICE_UNAVAILABLE
    {
        return Outcome::Unknown {
            reason: format!("Telegram answered {status_text} without its error body"),
        };
    }
    let code = error_code.unwrap_or_else(|| i64::from(status.as_u16()));
    let title = answer
        .as_ref()
        .map(|a| a.description.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or(status_text);
    if code == 429 || status == StatusCode::TOO_MANY_REQUESTS {
        let delay = answer
            .as_ref()
            .and_then(|a| a.parameters.as_ref())
            .and_then(|p| p.retry_after)
            .map(Duration::from_secs)
            .or(retry_after)
            .unwrap_or(Duration::from_secs(1));
        return Outcome::RateLimited {
            code: "429".into(),
            title,
            retry_after: delay,
        };
    }
    // A 408: the request did not reach the API in time, so it was not sent.
    if code >= 500 || status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return Outcome::Outage {
            code: code.to_string(),
            title,
        };
    }
    Outcome::Refused {
        code: code.to_string(),
        title,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_message_gives_chat_and_message_id() {
        let body = json!({"ok": true, "result": {"message_id": 4021, "date": 1_767_000_000,
            "from": {"id": 123456, "is_bot": true, "first_name": "Mesh"},
            "chat": {"id": 987654321, "first_name": "Ana", "type": "private"}, "text": "hola"}});
        assert_eq!(
            classify(StatusCode::OK, None, body.to_string().as_bytes()),
            Outcome::Accepted {
                provider_message_id: "987654321:4021".into()
            }
        );
        assert_eq!(parse_provider_id("987654321:4021"), Some((987654321, 4021)));
        assert_eq!(parse_provider_id("-100123:7"), Some((-100123, 7)));
        assert_eq!(parse_provider_id("wamid.X"), None);
        assert!(matches!(
            classify(StatusCode::OK, None, b"{\"ok\":true}"),
            Outcome::Unknown { .. }
        ));
    }

    #[test]
    fn too_many_requests_carries_retry_after() {
        let body = json!({"ok": false, "error_code": 429,
            "description": "Too Many Requests: retry after 17", "parameters": {"retry_after": 17}});
        assert_eq!(
            classify(
                StatusCode::TOO_MANY_REQUESTS,
                None,
                body.to_string().as_bytes()
            ),
            Outcome::RateLimited {
                code: "429".into(),
                title: "Too Many Requests: retry after 17".into(),
                retry_after: Duration::from_secs(17)
            }
        );
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(4)), b""),
            Outcome::RateLimited { retry_after, .. } if retry_after == Duration::from_secs(4)
        ));
    }

    #[test]
    fn server_errors_are_outages_and_the_rest_refusals() {
        let body = json!({"ok": false, "error_code": 502, "description": "Bad Gateway"});
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, None, body.to_string().as_bytes()),
            Outcome::Outage { code, .. } if code == "502"
        ));
        let body = json!({"ok": false, "error_code": 500,
            "description": "Internal Server Error: restart"});
        assert_eq!(
            classify(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                body.to_string().as_bytes()
            ),
            Outcome::Outage {
                code: "500".into(),
                title: "Internal Server Error: restart".into()
            }
        );
        // A bare 503 says the service is unavailable; a 408 never reached it.
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, None, b"<html>down</html>"),
            Outcome::Outage {
                code: "503".into(),
                title: "HTTP 503 Service Unavailable".into()
            }
        );
        assert_eq!(
            classify(StatusCode::REQUEST_TIMEOUT, None, b""),
            Outcome::Outage {
                code: "408".into(),
                title: "HTTP 408 Request Timeout".into()
            }
        );
        for (status, description) in [
            (
                StatusCode::FORBIDDEN,
                "Forbidden: bot was blocked by the user",
            ),
            (StatusCode::BAD_REQUEST, "Bad Request: chat not found"),
            (StatusCode::UNAUTHORIZED, "Unauthorized"),
        ] {
            let body =
                json!({"ok": false, "error_code": status.as_u16(), "description": description});
            assert_eq!(
                classify(status, None, body.to_string().as_bytes()),
                Outcome::Refused {
                    code: status.as_u16().to_string(),
                    title: description.into()
                }
            );
        }
    }

    #[test]
    fn other_server_errors_without_the_apis_error_body_are_unknown() {
        // A proxy's 502 or 504 may come after the API sent the message.
        for (status, body) in [
            (StatusCode::BAD_GATEWAY, &b"<html>bad gateway</html>"[..]),
            (StatusCode::GATEWAY_TIMEOUT, b""),
            (StatusCode::INTERNAL_SERVER_ERROR, b"oops"),
            (
                StatusCode::BAD_GATEWAY,
                b"{\"ok\": false, \"description\": \"no code\"}",
            ),
            (
                StatusCode::BAD_GATEWAY,
                b"{\"ok\": true, \"error_code\": 502}",
            ),
        ] {
            assert!(
                matches!(
                    classify(status, None, body),
                    Outcome::Unknown { reason } if reason.contains(&status.as_u16().to_string())
                ),
                "{status} {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn bodies_follow_the_bot_api() {
        assert_eq!(
            request_body(42, "hola", None),
            json!({"chat_id": 42, "text": "hola"})
        );
        assert_eq!(
            request_body(42, "hola", Some(7)),
            json!({"chat_id": 42, "text": "hola",
                "reply_parameters": {"message_id": 7, "allow_sending_without_reply": true}})
        );
    }
}

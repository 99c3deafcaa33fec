//! The WhatsApp Cloud API send: `POST {base}/{version}/{phone_number_id}/messages`
//! with `Authorization: Bearer <token>`, and what its answers mean.

use std::time::Duration;

use mesh_proto::mesh::conversations::v1 as pb;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::outcome::{Outcome, retry_after_header, status_text};
use crate::config::WhatsAppConfig;

pub struct WhatsApp {
    http: reqwest::Client,
    base: String,
    version: String,
    access_token: Option<String>,
    phone_number_id: Option<String>,
}

/// What to send.
pub enum Body<'a> {
    Text(&'a str),
    Template(&'a pb::Template),
}

impl WhatsApp {
    pub fn new(http: reqwest::Client, config: &WhatsAppConfig) -> Self {
        Self {
            http,
            base: config.api_base.clone(),
            version: config.api_version.clone(),
            access_token: config.access_token.clone(),
            phone_number_id: config.phone_number_id.clone(),
        }
    }

    /// The variables that must be set before anything can be sent.
    pub fn missing_settings(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.access_token.is_none() {
            missing.push("WHATSAPP_ACCESS_TOKEN");
        }
        if self.phone_number_id.is_none() {
            missing.push("WHATSAPP_PHONE_NUMBER_ID");
        }
        missing
    }

    /// Sends `body` to the E.164 `phone`, as a reply to the WhatsApp message
    /// `context` when given.
    pub async fn send(&self, phone: &str, body: Body<'_>, context: Option<&str>) -> Outcome {
        let (Some(token), Some(phone_number_id)) = (&self.access_token, &self.phone_number_id)
        else {
            // The send flow checks the settings first; never reached.
            return Outcome::Refused {
                code: "not_configured".into(),
                title: "WhatsApp sending is not configured".into(),
            };
        };
        let url = format!(
            "{}/{}/{}/messages",
            self.base, self.version, phone_number_id
        );
        let payload = request_body(phone, body, context);
        let response = match self
            .http
            .post(url)
            .bearer_auth(token)
            .json(&payload)
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => return Outcome::from_transport("WhatsApp", &error),
        };
        let status = response.status();
        let retry_after = retry_after_header(response.headers());
        match response.bytes().await {
            Ok(bytes) => classify(status, retry_after, &bytes),
            // An error status whose body broke: judged by the status alone
            // (a 5xx other than 503 is then an unknown outcome).
            Err(_) if !status.is_success() => classify(status, retry_after, b""),
            Err(error) => Outcome::from_transport("WhatsApp", &error),
        }
    }
}

/// The Cloud API's JSON for one message.
pub fn request_body(phone: &str, body: Body<'_>, context: Option<&str>) -> Value {
    let to: String = phone.chars().filter(char::is_ascii_digit).collect();
    let mut payload = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
    });
    match body {
        Body::Text(text) => {
            payload["type"] = json!("text");
            payload["text"] = json!({ "body": text, "preview_url": false });
        }
        Body::Template(template) => {
            let mut object = json!({
                "name": template.name,
                "language": { "code": template.language_code },
            });
            if !template.components.is_empty() {
                object["components"] = Value::Array(
                    template
                        .components
                        .iter()
                        .map(mesh_runtime::convert::struct_to_json)
                        .collect(),
                );
            }
            payload["type"] = json!("template");
            payload["template"] = object;
        }
    }
    if let Some(id) = context {
        payload["context"] = json!({ "message_id": id });
    }
    payload
}

#[derive(Deserialize)]
struct Accepted {
    #[serde(default)]
    messages: Vec<AcceptedMessage>,
}

#[derive(Deserialize)]
struct AcceptedMessage {
    id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: GraphError,
}

#[derive(Deserialize)]
struct GraphError {
    #[serde(default)]
    message: String,
    code: Option<i64>,
    #[serde(default)]
    error_data: Option<ErrorData>,
}

#[derive(Deserialize)]
struct ErrorData {
    #[serde(default)]
    details: String,
}

/// Rate limits, with how long to wait when the answer does not say:
/// 130429 throughput (80 messages/s per number), 131056 the pair limit (about
/// one message per 6 s to one user), 131048 spam rate limit, 80007 the
/// business account's limit, and the Graph API's own throttles (4, 17, 32, 613).
fn rate_limit_delay(code: i64) -> Option<Duration> {
    match code {
        130429 => Some(Duration::from_secs(1)),
        131056 => Some(Duration::from_secs(6)),
        131048 | 80007 | 4 | 17 | 32 | 613 => Some(Duration::from_secs(60)),
        _ => None,
    }
}

/// The provider failing on its side: 1 (API unknown), 2 (API service),
/// 131000 (something went wrong), 131016 (service unavailable).
fn is_outage_code(code: i64) -> bool {
    matches!(code, 1 | 2 | 131000 | 131016)
}

/// What one HTTP answer of the send API means.
///
/// A 5xx says the message was not taken only when the Cloud API itself says
/// so, with its error JSON (`{"error": {"code": ..}}`), or as a bare 503. Any
/// other 5xx (a 502 or 504 from a proxy in front of the API, an HTML page)
/// may come after the API took the message: its outcome is unknown.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    if status.is_success() {
        return match serde_json::from_slice::<Accepted>(body)
            .ok()
            .and_then(|a| a.messages.into_iter().next())
        {
            Some(message) if !message.id.is_empty() => Outcome::Accepted {
                provider_message_id: message.id,
            },
            _ => Outcome::Unknown {
                reason: format!("WhatsApp answered {status} without a message id"),
            },
        };
    }
    let error = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let code = error.as_ref().and_then(|e| e.code);
    if status.is_server_error() && code.is_none() && status != StatusCode::SERVICE_UNAVAILABLE {
        return Outcome::Unknown {
            reason: format!(
                "WhatsApp answered {} without its error body",
                status_text(status)
            ),
        };
    }
    let title = error
        .as_ref()
        .map(|e| {
            let details = e
                .error_data
                .as_ref()
                .map(|d| d.details.as_str())
                .unwrap_or("");
            match (e.message.is_empty(), details.is_empty()) {
                (false, false) => format!("{} ({details})", e.message),
                (false, true) => e.message.clone(),
                (true, _) => details.to_owned(),
            }
        })
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| status_text(status));
    let code_text = code.map_or_else(|| status.as_u16().to_string(), |c| c.to_string());
    if let Some(delay) = code.and_then(rate_limit_delay) {
        return Outcome::RateLimited {
            code: code_text,
            title,
            retry_after: retry_after.unwrap_or(delay),
        };
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Outcome::RateLimited {
            code: code_text,
            title,
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
        };
    }
    // A 408: the request did not reach the API in time, so it was not taken.
    if code.is_some_and(is_outage_code)
        || status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
    {
        return Outcome::Outage {
            code: code_text,
            title,
        };
    }
    Outcome::Refused {
        code: code_text,
        title,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: i64, message: &str) -> Vec<u8> {
        json!({"error": {"message": message, "type": "OAuthException", "code": code,
            "error_subcode": 2494055, "fbtrace_id": "AbCdEf"}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn an_accepted_send_gives_the_wamid() {
        let body = json!({"messaging_product": "whatsapp",
            "contacts": [{"input": "573001234567", "wa_id": "573001234567"}],
            "messages": [{"id": "wamid.HBgLNTczMDAxMjM0NTY3FQIAERgSQ", "message_status": "accepted"}]});
        assert_eq!(
            classify(StatusCode::OK, None, body.to_string().as_bytes()),
            Outcome::Accepted {
                provider_message_id: "wamid.HBgLNTczMDAxMjM0NTY3FQIAERgSQ".into()
            }
        );
        // 200 without an id: it was probably taken, but we cannot track it.
        assert!(matches!(
            classify(StatusCode::OK, None, b"{}"),
            Outcome::Unknown { .. }
        ));
    }

    #[test]
    fn rate_limits_carry_a_delay() {
        let limited = |status, code, header| match classify(status, header, &error(code, "limit")) {
            Outcome::RateLimited {
                code, retry_after, ..
            } => (code, retry_after),
            other => panic!("{code}: {other:?}"),
        };
        assert_eq!(
            limited(StatusCode::BAD_REQUEST, 131056, None),
            ("131056".into(), Duration::from_secs(6))
        );
        assert_eq!(
            limited(StatusCode::BAD_REQUEST, 130429, None),
            ("130429".into(), Duration::from_secs(1))
        );
        assert_eq!(limited(StatusCode::BAD_REQUEST, 131048, None).0, "131048");
        assert_eq!(limited(StatusCode::BAD_REQUEST, 80007, None).0, "80007");
        assert_eq!(limited(StatusCode::FORBIDDEN, 4, None).0, "4");
        // The provider's own Retry-After wins.
        assert_eq!(
            limited(
                StatusCode::TOO_MANY_REQUESTS,
                130429,
                Some(Duration::from_secs(3))
            )
            .1,
            Duration::from_secs(3)
        );
        // HTTP 429 with a code we do not know, or without a body.
        assert_eq!(limited(StatusCode::TOO_MANY_REQUESTS, 999, None).0, "999");
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, None, b""),
            Outcome::RateLimited { code, .. } if code == "429"
        ));
    }

    #[test]
    fn outages_are_told_from_refusals() {
        for (status, code) in [
            (StatusCode::INTERNAL_SERVER_ERROR, 1),
            (StatusCode::INTERNAL_SERVER_ERROR, 2),
            (StatusCode::BAD_REQUEST, 131000),
            (StatusCode::SERVICE_UNAVAILABLE, 131016),
            (StatusCode::BAD_GATEWAY, 12345),
        ] {
            assert!(
                matches!(
                    classify(status, None, &error(code, "down")),
                    Outcome::Outage { .. }
                ),
                "{status} {code}"
            );
        }
        // A bare 503 says the service is unavailable: nothing was taken.
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, None, b"<html>down</html>"),
            Outcome::Outage {
                code: "503".into(),
                title: "HTTP 503 Service Unavailable".into()
            }
        );
        // A 408 never reached the API.
        assert_eq!(
            classify(StatusCode::REQUEST_TIMEOUT, None, b""),
            Outcome::Outage {
                code: "408".into(),
                title: "HTTP 408 Request Timeout".into()
            }
        );
    }

    #[test]
    fn other_server_errors_without_the_apis_error_body_are_unknown() {
        // A proxy's 502 or 504 may come after the API took the message.
        for (status, body) in [
            (StatusCode::BAD_GATEWAY, &b"<html>bad gateway</html>"[..]),
            (StatusCode::GATEWAY_TIMEOUT, b""),
            (StatusCode::INTERNAL_SERVER_ERROR, b"oops"),
            (
                StatusCode::BAD_GATEWAY,
                b"{\"error\": {\"message\": \"no code\"}}",
            ),
            (StatusCode::BAD_GATEWAY, b"{\"message\": \"upstream\"}"),
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
    fn everything_else_is_a_refusal_with_the_providers_code_and_title() {
        for (status, code) in [
            (StatusCode::BAD_REQUEST, 131047),
            (StatusCode::BAD_REQUEST, 131026),
            (StatusCode::BAD_REQUEST, 100),
            (StatusCode::UNAUTHORIZED, 190),
            (StatusCode::BAD_REQUEST, 132001),
        ] {
            assert_eq!(
                classify(
                    status,
                    None,
                    &error(code, "(#131047) Re-engagement message")
                ),
                Outcome::Refused {
                    code: code.to_string(),
                    title: "(#131047) Re-engagement message".into()
                }
            );
        }
        let with_details = json!({"error": {"message": "(#131026) Message undeliverable", "code": 131026,
            "error_data": {"messaging_product": "whatsapp", "details": "Recipient is not a WhatsApp user"}}});
        assert_eq!(
            classify(
                StatusCode::BAD_REQUEST,
                None,
                with_details.to_string().as_bytes()
            ),
            Outcome::Refused {
                code: "131026".into(),
                title: "(#131026) Message undeliverable (Recipient is not a WhatsApp user)".into()
            }
        );
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, None, b""),
            Outcome::Refused {
                code: "401".into(),
                title: "HTTP 401 Unauthorized".into()
            }
        );
    }

    #[test]
    fn bodies_follow_the_cloud_api() {
        assert_eq!(
            request_body("+573001234567", Body::Text("hola"), None),
            json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "to": "573001234567", "type": "text", "text": {"body": "hola", "preview_url": false}})
        );
        let template = pb::Template {
            name: "appointment_reminder".into(),
            language_code: "es".into(),
            components: vec![mesh_runtime::convert::json_to_struct(&json!({
                "type": "body", "parameters": [{"type": "text", "text": "Ana"}]
            }))],
        };
        assert_eq!(
            request_body("+573001234567", Body::Template(&template), Some("wamid.X")),
            json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "to": "573001234567", "type": "template",
                "template": {"name": "appointment_reminder", "language": {"code": "es"},
                    "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]},
                "context": {"message_id": "wamid.X"}})
        );
    }
}

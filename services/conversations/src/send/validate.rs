//! The request checks: every bad field is named at once, before anything
//! is looked up or written.

use mesh_proto::mesh::conversations::v1::{
    self as pb, send_message_request::Content as PbContent,
    send_message_request::Target as PbTarget,
};
use mesh_runtime::{ApiResult, Violations, convert::parse_uuid, idempotency::check_request_id};
use prost::Message as _;
use uuid::Uuid;

use crate::wire;

/// At most this many characters of text (both providers' limit).
const MAX_TEXT_CHARS: usize = 4096;
const MAX_TEMPLATE_NAME_CHARS: usize = 512;
const MAX_LANGUAGE_CODE_CHARS: usize = 16;
/// At most this many template components (WhatsApp has a header, a body,
/// a footer and up to ten buttons), and this much JSON in all.
const MAX_TEMPLATE_COMPONENTS: usize = 20;
const MAX_TEMPLATE_COMPONENTS_BYTES: usize = 64 * 1024;

/// The request, checked.
pub(super) struct Checked {
    pub(super) target: Target,
    pub(super) content: Content,
    pub(super) role: &'static str,
    pub(super) proactive: bool,
    pub(super) reply_to: Option<Uuid>,
    pub(super) metadata: serde_json::Value,
    pub(super) request_id: Option<String>,
    /// The encoded request: a retry must send the very same.
    pub(super) fingerprint: Vec<u8>,
}

#[derive(Clone, Copy)]
pub(super) enum Target {
    User { user: Uuid, channel: &'static str },
    Conversation(Uuid),
}

#[derive(Clone)]
pub(super) enum Content {
    Text(String),
    Template(pb::Template),
}

impl Content {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Content::Text(_) => "text",
            Content::Template(_) => "template",
        }
    }

    /// What the message's `content` column holds: the text, or the template's name.
    pub(super) fn stored(&self) -> String {
        match self {
            Content::Text(text) => text.clone(),
            Content::Template(template) => template.name.clone(),
        }
    }
}

pub(super) const TEMPLATE_ON_TELEGRAM: &str = "templates are WhatsApp only: send text on Telegram";

pub(super) fn validate(request: &pb::SendMessageRequest) -> ApiResult<Checked> {
    let mut violations = Violations::default();
    let target = match &request.target {
        Some(PbTarget::UserId(id)) => {
            let user = violations.check(parse_uuid("user_id", id));
            let channel = match pb::Channel::try_from(request.channel) {
                Ok(pb::Channel::Whatsapp) => Some("whatsapp"),
                Ok(pb::Channel::Telegram) => Some("telegram"),
                Ok(pb::Channel::Web | pb::Channel::App) => {
                    violations.push(
                        "channel",
                        "CHANNEL_WEB and CHANNEL_APP have no provider to send through: \
                         use CHANNEL_WHATSAPP or CHANNEL_TELEGRAM",
                    );
                    None
                }
                _ => {
                    violations.push(
                        "channel",
                        "is required with user_id: CHANNEL_WHATSAPP or CHANNEL_TELEGRAM",
                    );
                    None
                }
            };
            user.zip(channel)
                .map(|(user, channel)| Target::User { user, channel })
        }
        Some(PbTarget::ConversationId(id)) => violations
            .check(parse_uuid("conversation_id", id))
            .map(Target::Conversation),
        None => {
            violations.push("user_id", "one of user_id or conversation_id is required");
            None
        }
    };
    let content = match &request.content {
        Some(PbContent::Text(text)) => {
            let checked = violations.check(wire::required_text("text", text, MAX_TEXT_CHARS));
            if checked.is_some() && text.trim().is_empty() {
                violations.push("text", "must not be only whitespace");
            }
            Some(Content::Text(text.clone()))
        }
        Some(PbContent::Template(template)) => {
            violations.check(wire::required_text(
                "template.name",
                &template.name,
                MAX_TEMPLATE_NAME_CHARS,
            ));
            let code = &template.language_code;
            if code.is_empty() {
                violations.push(
                    "template.language_code",
                    "is required, e.g. \"es\" or \"en_US\"",
                );
            } else if code.chars().count() > MAX_LANGUAGE_CODE_CHARS
                || !code
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                violations.push(
                    "template.language_code",
                    "must be a language code such as \"es\" or \"en_US\"",
                );
            }
            check_components(&mut violations, &template.components);
            if matches!(
                target,
                Some(Target::User {
                    channel: "telegram",
                    ..
                })
            ) {
                violations.push("template", TEMPLATE_ON_TELEGRAM);
            }
            Some(Content::Template(template.clone()))
        }
        None => {
            violations.push("text", "one of text or template is required");
            None
        }
    };
    let role = match pb::MessageRole::try_from(request.role) {
        Ok(pb::MessageRole::Unspecified | pb::MessageRole::Assistant) => "assistant",
        Ok(pb::MessageRole::System) => "system",
        _ => {
            violations.push(
                "role",
                "must be MESSAGE_ROLE_ASSISTANT (the default) or MESSAGE_ROLE_SYSTEM: \
                 user messages are recorded with RecordInboundMessage",
            );
            "assistant"
        }
    };
    let reply_to = violations.check(wire::optional_uuid(
        "reply_to_message_id",
        &request.reply_to_message_id,
    ));
    let metadata = violations.check(wire::json_object("metadata", request.metadata.as_ref()));
    violations.check(check_request_id(&request.request_id));
    violations.into_result()?;
    Ok(Checked {
        target: target.expect("validated"),
        content: content.expect("validated"),
        role,
        proactive: request.proactive,
        reply_to: reply_to.expect("validated"),
        metadata: metadata.expect("validated"),
        request_id: wire::non_empty(&request.request_id).map(str::to_owned),
        fingerprint: request.encode_to_vec(),
    })
}

/// Each component is a JSON object without NUL (what goes to WhatsApp is
/// also what a retry compares), and all of them stay small.
fn check_components(violations: &mut Violations, components: &[prost_types::Struct]) {
    const FIELD: &str = "template.components";
    if components.len() > MAX_TEMPLATE_COMPONENTS {
        violations.push(
            FIELD,
            format!("must have at most {MAX_TEMPLATE_COMPONENTS} components"),
        );
        return;
    }
    let mut bytes = 0;
    let mut every_one_valid = true;
    for (i, component) in components.iter().enumerate() {
        match violations.check(wire::json_object(&format!("{FIELD}[{i}]"), Some(component))) {
            Some(json) => bytes += json.to_string().len(),
            None => every_one_valid = false,
        }
    }
    if every_one_valid && bytes > MAX_TEMPLATE_COMPONENTS_BYTES {
        violations.push(FIELD, "must be at most 64 KiB as JSON in all");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::SendMessageRequest {
        pb::SendMessageRequest {
            target: Some(PbTarget::UserId(Uuid::now_v7().to_string())),
            channel: pb::Channel::Whatsapp as i32,
            content: Some(PbContent::Text("hola".into())),
            ..Default::default()
        }
    }

    fn fields(result: ApiResult<Checked>) -> Vec<String> {
        let Err(error) = result else { panic!("valid") };
        mesh_runtime::testing::bad_fields(&error.into())
    }

    #[test]
    fn a_plain_text_send_is_valid_and_defaults_to_assistant() {
        let checked = validate(&request()).unwrap();
        assert_eq!(checked.role, "assistant");
        assert!(matches!(
            checked.target,
            Target::User {
                channel: "whatsapp",
                ..
            }
        ));
        assert_eq!(checked.request_id, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = pb::SendMessageRequest {
            target: Some(PbTarget::UserId("nope".into())),
            channel: pb::Channel::Web as i32,
            content: Some(PbContent::Text(String::new())),
            role: pb::MessageRole::User as i32,
            reply_to_message_id: "x".into(),
            request_id: "r".repeat(129),
            ..Default::default()
        };
        assert_eq!(
            fields(validate(&bad)),
            [
                "user_id",
                "channel",
                "text",
                "role",
                "reply_to_message_id",
                "request_id"
            ]
        );
        let empty = pb::SendMessageRequest::default();
        assert_eq!(fields(validate(&empty)), ["user_id", "text"]);
        let template = pb::SendMessageRequest {
            channel: pb::Channel::Telegram as i32,
            content: Some(PbContent::Template(pb::Template {
                name: String::new(),
                language_code: "en US".into(),
                components: vec![],
            })),
            ..request()
        };
        assert_eq!(
            fields(validate(&template)),
            ["template.name", "template.language_code", "template"]
        );
        let blank = pb::SendMessageRequest {
            content: Some(PbContent::Text(" \n ".into())),
            ..request()
        };
        assert_eq!(fields(validate(&blank)), ["text"]);
        let long = pb::SendMessageRequest {
            content: Some(PbContent::Text("é".repeat(MAX_TEXT_CHARS))),
            ..request()
        };
        assert!(validate(&long).is_ok(), "4096 characters, more bytes");
        let nul = pb::SendMessageRequest {
            metadata: Some(mesh_runtime::convert::json_to_struct(
                &serde_json::json!({"note": "a\u{0}b"}),
            )),
            ..request()
        };
        assert_eq!(fields(validate(&nul)), ["metadata"]);
    }

    fn with_components(components: Vec<serde_json::Value>) -> pb::SendMessageRequest {
        pb::SendMessageRequest {
            content: Some(PbContent::Template(pb::Template {
                name: "daily_checkin".into(),
                language_code: "es".into(),
                components: components
                    .iter()
                    .map(mesh_runtime::convert::json_to_struct)
                    .collect(),
            })),
            ..request()
        }
    }

    #[test]
    fn template_components_are_checked() {
        let body = |text: &str| serde_json::json!({"type": "body", "parameters": [{"type": "text", "text": text}]});
        assert!(validate(&with_components(vec![body("Ana"); MAX_TEMPLATE_COMPONENTS])).is_ok());
        assert_eq!(
            fields(validate(&with_components(vec![
                body("Ana"),
                body("a\u{0}b")
            ]))),
            ["template.components[1]"]
        );
        assert_eq!(
            fields(validate(&with_components(vec![
                body("Ana");
                MAX_TEMPLATE_COMPONENTS + 1
            ]))),
            ["template.components"]
        );
        // Each one small enough, too much in all.
        let big = "x".repeat(MAX_TEMPLATE_COMPONENTS_BYTES / 4);
        assert_eq!(
            fields(validate(&with_components(vec![body(&big); 4]))),
            ["template.components"]
        );
        // One too big on its own is named.
        let huge = "x".repeat(MAX_TEMPLATE_COMPONENTS_BYTES + 1);
        assert_eq!(
            fields(validate(&with_components(vec![body("Ana"), body(&huge)]))),
            ["template.components[1]"]
        );
    }
}

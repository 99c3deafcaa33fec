//! How a reminder or check-in is sent (`Delivery`): the channel, stored as
//! text (NULL: chosen from the user at send time), and the WhatsApp template
//! sent outside the customer service window, stored as JSON.

use mesh_proto::mesh::{conversations::v1 as conversations, scheduler::v1 as pb};
use mesh_runtime::{
    FieldViolation, Violations,
    convert::{json_to_struct, struct_to_json},
    wire::json_object,
};
use serde_json::{Value, json};

use crate::wire::channel;

/// A checked `Delivery`, as stored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stored {
    /// "whatsapp" or "telegram"; None: decided at send time.
    pub channel: Option<String>,
    pub whatsapp_template: Option<Value>,
}

/// Checks `delivery` (field names under `prefix`, e.g. "reminder.delivery").
pub fn check(prefix: &str, delivery: Option<&pb::Delivery>, violations: &mut Violations) -> Stored {
    let Some(delivery) = delivery else {
        return Stored::default();
    };
    let channel = violations
        .check(channel::optional(
            &format!("{prefix}.channel"),
            delivery.channel,
        ))
        .flatten()
        .map(str::to_owned);
    let whatsapp_template = delivery.whatsapp_template.as_ref().and_then(|template| {
        violations
            .check(check_template(
                &format!("{prefix}.whatsapp_template"),
                template,
            ))
            .map(|()| template_json(template))
    });
    if channel.as_deref() == Some("telegram") && whatsapp_template.is_some() {
        violations.push(
            &format!("{prefix}.whatsapp_template"),
            "is for WhatsApp; this item is sent on Telegram",
        );
    }
    Stored {
        channel,
        whatsapp_template,
    }
}

fn check_template(field: &str, template: &conversations::Template) -> Result<(), FieldViolation> {
    let name_ok = !template.name.is_empty()
        && template.name.len() <= 512
        && template
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name_ok {
        return Err(FieldViolation::new(
            format!("{field}.name"),
            "must be a template name: lower-case letters, digits and underscores",
        ));
    }
    if template.language_code.is_empty() || template.language_code.len() > 16 {
        return Err(FieldViolation::new(
            format!("{field}.language_code"),
            "must be a language code such as \"en_US\" or \"es\"",
        ));
    }
    // Stored as jsonb: no NUL, and each component within the JSON limit.
    for (i, component) in template.components.iter().enumerate() {
        json_object(&format!("{field}.components[{i}]"), Some(component))?;
    }
    Ok(())
}

/// A template as stored (and as a dead letter's payload shows it).
pub fn template_json(template: &conversations::Template) -> Value {
    json!({
        "name": template.name,
        "language_code": template.language_code,
        "components": template.components.iter().map(struct_to_json).collect::<Vec<_>>(),
    })
}

/// The stored template, as the conversations API takes it.
pub fn template_from_json(value: &Value) -> conversations::Template {
    conversations::Template {
        name: value["name"].as_str().unwrap_or_default().to_owned(),
        language_code: value["language_code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        components: value["components"]
            .as_array()
            .map(|components| components.iter().map(json_to_struct).collect())
            .unwrap_or_default(),
    }
}

/// The stored columns, back on the wire.
pub fn to_wire(channel_text: Option<&str>, template: Option<&Value>) -> Option<pb::Delivery> {
    if channel_text.is_none() && template.is_none() {
        return None;
    }
    Some(pb::Delivery {
        channel: channel_text.map_or(0, |text| channel::parse(text) as i32),
        whatsapp_template: template.map(template_from_json),
    })
}

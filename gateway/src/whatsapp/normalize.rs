//! From the wire types to the normalized [`Delivery`] values.

use serde::Deserialize;
use serde_json::Value;

use super::wire::{self, ChangeValue};
use super::{Delivery, InboundMessage, MessageKind, ProviderError, StatusKind, StatusUpdate};
use crate::PayloadError;

/// Appends one `field == "messages"` change to `out`; `path` names it in errors.
pub(super) fn change(path: &str, value: Value, out: &mut Delivery) -> Result<(), PayloadError> {
    let value = ChangeValue::deserialize(value).map_err(|e| PayloadError::shape(path, e))?;
    let phone_number_id = &value.metadata.phone_number_id;
    for (i, raw) in value.messages.into_iter().enumerate() {
        let path = format!("{path}.messages[{i}]");
        out.messages
            .push(message(&path, phone_number_id, &value.contacts, raw)?);
    }
    for (i, s) in value.statuses.into_iter().enumerate() {
        let path = format!("{path}.statuses[{i}]");
        out.statuses.push(StatusUpdate {
            timestamp: timestamp(&path, &s.timestamp)?,
            status: StatusKind::from_wire(&s.status),
            id: s.id,
            errors: errors(s.errors),
            pricing: s.pricing,
        });
    }
    out.errors.extend(errors(value.errors));
    Ok(())
}

fn message(
    path: &str,
    phone_number_id: &str,
    contacts: &[wire::Contact],
    raw: Value,
) -> Result<InboundMessage, PayloadError> {
    let m = wire::Message::deserialize(&raw).map_err(|e| PayloadError::shape(path, e))?;
    let kind = MessageKind::from_wire(&m.kind);
    let profile_name = contacts
        .iter()
        .find(|c| c.wa_id.as_deref() == Some(m.from.as_str()))
        .and_then(|c| c.profile.as_ref())
        .and_then(|p| p.name.clone());
    let media = match kind {
        MessageKind::Image => m.image.clone(),
        MessageKind::Audio => m.audio.clone(),
        MessageKind::Video => m.video.clone(),
        MessageKind::Document => m.document.clone(),
        MessageKind::Sticker => m.sticker.clone(),
        _ => None,
    };
    let location = match kind {
        MessageKind::Location => m.location.clone(),
        _ => None,
    };
    let text = text(kind, &m, media.as_ref());
    let reply_payload = match kind {
        MessageKind::Button => m.button.as_ref().and_then(|b| b.payload.clone()),
        MessageKind::Interactive => interactive_reply(&m).and_then(|r| r.id.clone()),
        _ => None,
    };
    Ok(InboundMessage {
        phone_number_id: phone_number_id.to_owned(),
        profile_name,
        timestamp: timestamp(path, &m.timestamp)?,
        kind,
        text,
        reply_payload,
        media,
        location,
        reply_to: m.context.and_then(|c| c.id),
        referral: m.referral,
        errors: errors(m.errors),
        wa_id: m.from,
        id: m.id,
        wire_type: m.kind,
        raw,
    })
}

fn interactive_reply(m: &wire::Message) -> Option<&wire::Reply> {
    let i = m.interactive.as_ref()?;
    i.button_reply.as_ref().or(i.list_reply.as_ref())
}

/// The one human-readable string a message of this kind carries, if any.
fn text(kind: MessageKind, m: &wire::Message, media: Option<&wire::Media>) -> Option<String> {
    match kind {
        MessageKind::Text => m.text.as_ref().map(|t| t.body.clone()),
        MessageKind::Image
        | MessageKind::Video
        | MessageKind::Document
        | MessageKind::Audio
        | MessageKind::Sticker => media.and_then(|x| x.caption.clone()),
        MessageKind::Location => m.location.as_ref().and_then(|l| l.name.clone()),
        MessageKind::Contacts => m
            .contacts
            .first()
            .and_then(|c| c.name.as_ref())
            .and_then(|n| n.formatted_name.clone()),
        MessageKind::Interactive => interactive_reply(m).and_then(|r| r.title.clone()),
        MessageKind::Button => m.button.as_ref().and_then(|b| b.text.clone()),
        MessageKind::Reaction => m.reaction.as_ref().and_then(|r| r.emoji.clone()),
        MessageKind::Order => m.order.as_ref().and_then(|o| o.text.clone()),
        MessageKind::System => m.system.as_ref().and_then(|s| s.body.clone()),
        MessageKind::Unknown => None,
    }
}

fn errors(list: Vec<wire::ErrorObject>) -> Vec<ProviderError> {
    list.into_iter()
        .map(|e| ProviderError {
            code: e.code,
            title: e.title,
            message: e.message,
            details: e.error_data.and_then(|d| d.details),
        })
        .collect()
}

/// Unix seconds from Meta's string form (or a plain non-negative integer).
fn timestamp(path: &str, v: &Value) -> Result<i64, PayloadError> {
    let parsed = match v {
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<i64>().ok()
        }
        Value::Number(n) => n.as_i64().filter(|t| *t >= 0),
        _ => None,
    };
    parsed.ok_or_else(|| PayloadError::BadTimestamp(crate::error::short(path)))
}

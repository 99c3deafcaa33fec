//! WhatsApp Cloud API webhook deliveries: [`parse`] turns a raw body (already
//! size-checked and signature-verified) into a normalized [`Delivery`].

mod normalize;
#[cfg(test)]
mod tests;
pub mod wire;

use serde::Deserialize;
use serde_json::Value;

use crate::PayloadError;
pub use wire::{Location, Media, Pricing, Referral};

/// The only `object` a WhatsApp Business webhook carries.
pub const OBJECT: &str = "whatsapp_business_account";

/// Everything one POST carried, flattened across entries and changes, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delivery {
    pub messages: Vec<InboundMessage>,
    pub statuses: Vec<StatusUpdate>,
    /// Errors not tied to one message (e.g. 130429 rate limit).
    pub errors: Vec<ProviderError>,
    /// Changes whose `field` is not "messages" (nothing to store, still 200).
    pub skipped: usize,
}

/// The message types the gateway tells apart; anything else is `Unknown` and
/// still stored, its raw object in [`InboundMessage::raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Text,
    Image,
    Audio,
    Video,
    Document,
    Sticker,
    Location,
    Contacts,
    Interactive,
    Button,
    Reaction,
    Order,
    System,
    /// `unsupported`, `group`, and any type added after this was written.
    Unknown,
}

impl MessageKind {
    fn from_wire(kind: &str) -> Self {
        match kind {
            "text" => Self::Text,
            "image" => Self::Image,
            "audio" => Self::Audio,
            "video" => Self::Video,
            "document" => Self::Document,
            "sticker" => Self::Sticker,
            "location" => Self::Location,
            "contacts" => Self::Contacts,
            "interactive" => Self::Interactive,
            "button" => Self::Button,
            "reaction" => Self::Reaction,
            "order" => Self::Order,
            "system" => Self::System,
            _ => Self::Unknown,
        }
    }

    /// The name to store (`unknown` for [`MessageKind::Unknown`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Image => "image",
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Document => "document",
            Self::Sticker => "sticker",
            Self::Location => "location",
            Self::Contacts => "contacts",
            Self::Interactive => "interactive",
            Self::Button => "button",
            Self::Reaction => "reaction",
            Self::Order => "order",
            Self::System => "system",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// Which of our numbers received it (`value.metadata.phone_number_id`).
    pub phone_number_id: String,
    /// The sender's WhatsApp id: digits, no `+` (`from`).
    pub wa_id: String,
    /// From the `contacts[]` entry with the same `wa_id`, when there is one.
    pub profile_name: Option<String>,
    /// The wamid: the idempotency key.
    pub id: String,
    /// Unix seconds.
    pub timestamp: i64,
    pub kind: MessageKind,
    /// The `type` string as sent (tells unknown types apart).
    pub wire_type: String,
    /// The readable text: body, caption, button/reply title, emoji, place name.
    pub text: Option<String>,
    /// Button payload or interactive reply id: what the user picked.
    pub reply_payload: Option<String>,
    pub media: Option<Media>,
    pub location: Option<Location>,
    /// `context.id`: the wamid this message replies to.
    pub reply_to: Option<String>,
    /// Present on click-to-WhatsApp ad messages (free entry point).
    pub referral: Option<Referral>,
    /// Errors attached to the message (type `unsupported` carries them).
    pub errors: Vec<ProviderError>,
    /// The whole message object as received.
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusKind {
    Sent,
    Delivered,
    Read,
    Failed,
    Played,
    /// Kept rather than refused, so it can be dead-lettered and looked at.
    Unknown(String),
}

impl StatusKind {
    fn from_wire(s: &str) -> Self {
        match s {
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "failed" => Self::Failed,
            "played" => Self::Played,
            other => Self::Unknown(other.to_owned()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// The wamid we sent.
    pub id: String,
    pub status: StatusKind,
    /// Unix seconds.
    pub timestamp: i64,
    pub errors: Vec<ProviderError>,
    pub pricing: Option<Pricing>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProviderError {
    pub code: Option<i64>,
    pub title: Option<String>,
    pub message: Option<String>,
    /// `error_data.details`.
    pub details: Option<String>,
}

/// Parses a webhook body. Any failure is a [`PayloadError`] (answer 400).
pub fn parse(raw: &[u8]) -> Result<Delivery, PayloadError> {
    // Two steps, so "not JSON" and "not the shape" get different reasons.
    // Each step takes the value over rather than copying it.
    let value: Value = serde_json::from_slice(raw).map_err(|e| PayloadError::not_json(&e))?;
    let envelope =
        wire::Envelope::deserialize(value).map_err(|e| PayloadError::shape("body", e))?;
    if envelope.object != OBJECT {
        return Err(PayloadError::wrong_object(&envelope.object));
    }
    let mut delivery = Delivery::default();
    for (e, entry) in envelope.entry.into_iter().enumerate() {
        for (c, change) in entry.changes.into_iter().enumerate() {
            if change.field != "messages" {
                delivery.skipped += 1;
                continue;
            }
            let path = format!("entry[{e}].changes[{c}].value");
            normalize::change(&path, change.value, &mut delivery)?;
        }
    }
    Ok(delivery)
}

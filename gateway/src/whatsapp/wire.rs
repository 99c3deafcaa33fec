//! The WhatsApp Cloud API webhook body as it arrives (serde types).
//!
//! Envelope fields the gateway cannot work without (object, metadata, a
//! message's from/id/timestamp) are required; the per-type sub-objects are
//! read leniently (see `crate::de`) and every message also keeps its raw JSON.

use serde::Deserialize;
use serde_json::Value;

use crate::de::{lenient, lenient_vec, null_as_empty};

#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    pub object: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub entry: Vec<Entry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    /// The WhatsApp Business Account id.
    pub id: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Change {
    pub field: String,
    /// Kept untyped: only `field == "messages"` has the [`ChangeValue`] shape,
    /// and other fields (account updates, templates...) must not fail a batch.
    #[serde(default)]
    pub value: Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChangeValue {
    pub metadata: Metadata,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub contacts: Vec<Contact>,
    /// Untyped so each message's raw object can be kept as it came.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub messages: Vec<Value>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub statuses: Vec<Status>,
    #[serde(default, deserialize_with = "lenient_vec")]
    pub errors: Vec<ErrorObject>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub phone_number_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Contact {
    #[serde(default, deserialize_with = "lenient")]
    pub profile: Option<Profile>,
    #[serde(default, deserialize_with = "lenient")]
    pub wa_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub name: Option<String>,
}

/// One element of `messages[]`, read from its raw `Value`.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub from: String,
    pub id: String,
    /// Unix seconds; Meta sends a string, a number is tolerated.
    pub timestamp: Value,
    /// Absent reads as "" and so as an unknown type, kept rather than refused.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default, deserialize_with = "lenient")]
    pub text: Option<Text>,
    #[serde(default, deserialize_with = "lenient")]
    pub image: Option<Media>,
    #[serde(default, deserialize_with = "lenient")]
    pub audio: Option<Media>,
    #[serde(default, deserialize_with = "lenient")]
    pub video: Option<Media>,
    #[serde(default, deserialize_with = "lenient")]
    pub document: Option<Media>,
    #[serde(default, deserialize_with = "lenient")]
    pub sticker: Option<Media>,
    #[serde(default, deserialize_with = "lenient")]
    pub location: Option<Location>,
    #[serde(default, deserialize_with = "lenient_vec")]
    pub contacts: Vec<SharedContact>,
    #[serde(default, deserialize_with = "lenient")]
    pub interactive: Option<Interactive>,
    #[serde(default, deserialize_with = "lenient")]
    pub button: Option<Button>,
    #[serde(default, deserialize_with = "lenient")]
    pub reaction: Option<Reaction>,
    #[serde(default, deserialize_with = "lenient")]
    pub order: Option<Order>,
    #[serde(default, deserialize_with = "lenient")]
    pub system: Option<System>,
    #[serde(default, deserialize_with = "lenient")]
    pub context: Option<Context>,
    #[serde(default, deserialize_with = "lenient")]
    pub referral: Option<Referral>,
    /// Type `unsupported` arrives with these.
    #[serde(default, deserialize_with = "lenient_vec")]
    pub errors: Vec<ErrorObject>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Text {
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Media {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub caption: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SharedContact {
    #[serde(default, deserialize_with = "lenient")]
    pub name: Option<SharedContactName>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SharedContactName {
    #[serde(default)]
    pub formatted_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Interactive {
    #[serde(default, deserialize_with = "lenient")]
    pub button_reply: Option<Reply>,
    #[serde(default, deserialize_with = "lenient")]
    pub list_reply: Option<Reply>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
}

/// A quick-reply button on a template.
#[derive(Debug, Clone, Deserialize)]
pub struct Button {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub payload: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Reaction {
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub emoji: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct System {
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Context {
    #[serde(default)]
    pub id: Option<String>,
}

/// Click-to-WhatsApp ad data; its presence opens the free entry point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Referral {
    #[serde(default)]
    pub source_url: Option<String>,
    #[serde(default)]
    pub source_id: Option<String>,
    #[serde(default)]
    pub source_type: Option<String>,
    #[serde(default)]
    pub headline: Option<String>,
    #[serde(default)]
    pub ctwa_clid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub id: String,
    pub status: String,
    pub timestamp: Value,
    #[serde(default, deserialize_with = "lenient")]
    pub pricing: Option<Pricing>,
    #[serde(default, deserialize_with = "lenient_vec")]
    pub errors: Vec<ErrorObject>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Pricing {
    #[serde(default)]
    pub billable: Option<bool>,
    /// regular, free_customer_service, free_entry_point.
    #[serde(rename = "type", default)]
    pub pricing_type: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorObject {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub error_data: Option<ErrorData>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorData {
    #[serde(default)]
    pub details: Option<String>,
}

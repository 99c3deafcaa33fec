//! Telegram Bot API webhook updates: [`parse`] turns a raw body (already
//! secret-token-checked) into an [`Update`]; [`start_payload`] reads deep links.
//!
//! Telegram ids can need 52 bits, so every id is an `i64`.

#[cfg(test)]
mod tests;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::PayloadError;
use crate::de::lenient;

#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// Sequential; the route drops repeats with it.
    pub update_id: i64,
    pub kind: UpdateKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpdateKind {
    Message(Message),
    EditedMessage(Message),
    CallbackQuery(CallbackQuery),
    /// Any other update (`my_chat_member`, `channel_post`...): the route
    /// answers 200 and skips it, so Telegram does not retry it.
    Other {
        kind: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    pub id: i64,
    #[serde(default)]
    pub is_bot: bool,
    pub first_name: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub language_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Chat {
    pub id: i64,
    /// private, group, supergroup, channel.
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
}

/// Which non-text content a message carries (Telegram sends it as a field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Photo,
    Voice,
    Audio,
    Video,
    Document,
    Sticker,
    Location,
    Contact,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub message_id: i64,
    /// Absent on channel posts.
    pub from: Option<User>,
    pub chat: Chat,
    /// Unix seconds.
    pub date: i64,
    pub text: Option<String>,
    pub caption: Option<String>,
    pub media: Option<MediaKind>,
    pub location: Option<Location>,
    /// The file of a photo (its largest size), voice, audio, video, document
    /// or sticker: what the bot API's `getFile` takes.
    pub file: Option<File>,
    pub reply_to_message_id: Option<i64>,
    /// The whole message object as received.
    pub raw: Value,
}

/// A file the bot can fetch later with `getFile`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct File {
    pub file_id: String,
    pub mime_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackQuery {
    /// Needed for `answerCallbackQuery`.
    pub id: String,
    pub from: User,
    pub data: Option<String>,
    /// Absent when the button was on an inline-mode message.
    pub chat_id: Option<i64>,
    pub message_id: Option<i64>,
}

/// The update as it arrives; `rest` names the kind of any other update.
#[derive(Deserialize)]
struct WireUpdate {
    update_id: i64,
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    edited_message: Option<WireMessage>,
    #[serde(default)]
    callback_query: Option<WireCallback>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
struct WireMessage {
    message_id: i64,
    #[serde(default)]
    from: Option<User>,
    chat: Chat,
    date: i64,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    caption: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    location: Option<Location>,
    #[serde(default, deserialize_with = "lenient")]
    reply_to_message: Option<MessageRef>,
    /// Only which media keys are present matters; their content stays out.
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
struct MessageRef {
    message_id: i64,
    #[serde(default, deserialize_with = "lenient")]
    chat: Option<ChatRef>,
}

#[derive(Deserialize)]
struct ChatRef {
    id: i64,
}

#[derive(Deserialize)]
struct WireCallback {
    id: String,
    from: User,
    #[serde(default)]
    data: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    message: Option<MessageRef>,
}

/// Parses an update. Any failure is a [`PayloadError`] (answer 400).
pub fn parse(raw: &[u8]) -> Result<Update, PayloadError> {
    let mut value: Value = serde_json::from_slice(raw).map_err(|e| PayloadError::not_json(&e))?;
    // Read from a borrow, so the message object can then be kept whole
    // (unknown content stays stored) without a copy.
    let u = WireUpdate::deserialize(&value).map_err(|e| PayloadError::shape("update", e))?;
    let mut raw_of = |key: &str| value.get_mut(key).map(Value::take).unwrap_or_default();
    let kind = if let Some(m) = u.message {
        UpdateKind::Message(message(m, raw_of("message")))
    } else if let Some(m) = u.edited_message {
        UpdateKind::EditedMessage(message(m, raw_of("edited_message")))
    } else if let Some(q) = u.callback_query {
        UpdateKind::CallbackQuery(CallbackQuery {
            id: q.id,
            from: q.from,
            data: q.data,
            chat_id: q
                .message
                .as_ref()
                .and_then(|m| m.chat.as_ref())
                .map(|c| c.id),
            message_id: q.message.map(|m| m.message_id),
        })
    } else {
        // An update always carries exactly one content field besides update_id.
        match u.rest.into_iter().find(|(_, v)| !v.is_null()) {
            Some((kind, _)) => UpdateKind::Other { kind },
            None => return Err(PayloadError::Shape("update carries no content".into())),
        }
    };
    Ok(Update {
        update_id: u.update_id,
        kind,
    })
}

fn message(m: WireMessage, raw: Value) -> Message {
    // Checked in this order: a sticker or animation also sets other keys
    // (thumbnails, `document` for animations), the specific one wins.
    const MEDIA: [(&str, MediaKind); 8] = [
        ("sticker", MediaKind::Sticker),
        ("photo", MediaKind::Photo),
        ("voice", MediaKind::Voice),
        ("audio", MediaKind::Audio),
        ("video", MediaKind::Video),
        ("document", MediaKind::Document),
        ("contact", MediaKind::Contact),
        ("location", MediaKind::Location),
    ];
    let mut media = MEDIA
        .iter()
        .find(|(key, _)| m.rest.get(*key).is_some_and(|v| !v.is_null()))
        .map(|(_, kind)| *kind);
    if media.is_none() && m.location.is_some() {
        media = Some(MediaKind::Location);
    }
    let file = media.and_then(|kind| file(kind, &m.rest));
    Message {
        message_id: m.message_id,
        from: m.from,
        chat: m.chat,
        date: m.date,
        text: m.text,
        caption: m.caption,
        media,
        location: m.location,
        file,
        reply_to_message_id: m.reply_to_message.map(|r| r.message_id),
        raw,
    }
}

/// The file behind a media message. A photo comes as several sizes, smallest
/// first: the last is the one worth keeping.
fn file(kind: MediaKind, fields: &Map<String, Value>) -> Option<File> {
    let object = match kind {
        MediaKind::Photo => fields.get("photo")?.as_array()?.last()?,
        MediaKind::Voice => fields.get("voice")?,
        MediaKind::Audio => fields.get("audio")?,
        MediaKind::Video => fields.get("video")?,
        MediaKind::Document => fields.get("document")?,
        MediaKind::Sticker => fields.get("sticker")?,
        MediaKind::Location | MediaKind::Contact => return None,
    };
    let file_id = object.get("file_id")?.as_str()?;
    if file_id.is_empty() {
        return None;
    }
    Some(File {
        file_id: file_id.to_owned(),
        mime_type: object
            .get("mime_type")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Longest deep-link payload Telegram passes through.
const START_PAYLOAD_MAX: usize = 64;

/// The payload of a deep-link start (`/start <payload>`, or
/// `/start@botname <payload>` in groups), if `text` is one and the payload is
/// 1-64 chars of `A-Z a-z 0-9 _ -`.
pub fn start_payload(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("/start")?;
    let rest = match rest.strip_prefix('@') {
        Some(after) => {
            let end = after.find(' ').unwrap_or(after.len());
            let bot = &after[..end];
            let valid =
                !bot.is_empty() && bot.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return None;
            }
            &after[end..]
        }
        None => rest,
    };
    // The command must end here: "/startx y" is not a start.
    let payload = rest.strip_prefix(' ')?.trim_matches(' ');
    let valid = (1..=START_PAYLOAD_MAX).contains(&payload.len())
        && payload
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then_some(payload)
}

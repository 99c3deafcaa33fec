//! From a verified, parsed delivery to calls on the mesh. A delivery is
//! answered 200 only when every item in it was stored or dead-lettered; the
//! first failure a retry may fix stops it, and the provider's retry redoes it
//! all, which the services' idempotency (on the provider message id, the
//! status order and the dead letter's request id) makes harmless.

mod quota;
pub mod telegram;
pub mod whatsapp;

use chrono::Utc;
use mesh_proto::mesh::conversations::v1 as conv;
use mesh_runtime::idempotency::MAX_REQUEST_ID_LEN;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::{
    answer::Summary,
    mesh::{CallError, Failure, Mesh},
    metrics::Metrics,
};

/// One delivery being handed on.
pub struct Delivery<'a> {
    pub mesh: &'a Mesh,
    pub metrics: &'a Metrics,
    /// The body as received, kept with every dead letter.
    pub raw: &'a [u8],
    pub source: conv::WebhookSource,
    pub summary: Summary,
    /// Set once billing failed to answer a quota check in this delivery: the
    /// rest of its messages are stored unchecked at once rather than each
    /// waiting for a billing that is away.
    pub billing_away: std::sync::atomic::AtomicBool,
}

/// Where a dead letter is filed and what it says.
pub struct DeadLetter<'a> {
    /// What makes it unique within the source: a repeat delivery files the
    /// same letter, which the conversations service keeps once.
    pub key: String,
    pub phone: Option<String>,
    pub provider_message_id: &'a str,
    pub reason: String,
}

/// The longest `error` the conversations service takes.
const MAX_ERROR_CHARS: usize = 10_000;

impl Delivery<'_> {
    fn source_name(&self) -> &'static str {
        match self.source {
            conv::WebhookSource::Telegram => "telegram",
            conv::WebhookSource::Lemonsqueezy => "lemonsqueezy",
            _ => "whatsapp",
        }
    }

    /// Counts a message as stored or duplicate.
    fn stored(&mut self, duplicate: bool) {
        if duplicate {
            self.summary.duplicates += 1;
        } else {
            self.summary.stored += 1;
        }
        let result = if duplicate { "duplicate" } else { "stored" };
        self.metrics.item(self.source_name(), "message", result);
    }

    /// Files an item that can never be applied where an operator can list it
    /// (ListWebhookFailures), with the whole body, so it is not retried for a
    /// week and not lost either.
    pub(crate) async fn dead_letter(
        &mut self,
        kind: &'static str,
        letter: DeadLetter<'_>,
    ) -> Result<(), CallError> {
        let source = self.source_name();
        tracing::warn!(
            source,
            kind,
            provider_message_id = letter.provider_message_id,
            reason = %letter.reason,
            "dead-lettered: it can never be applied"
        );
        let request_id = request_id(source, kind, &letter.key);
        self.mesh
            .record_webhook_failure(conv::WebhookFailure {
                request_id,
                source: self.source.into(),
                phone: letter.phone.unwrap_or_default(),
                provider_message_id: letter.provider_message_id.chars().take(256).collect(),
                raw_payload: self.raw.to_vec(),
                error: letter.reason.chars().take(MAX_ERROR_CHARS).collect(),
                ..Default::default()
            })
            .await?;
        self.summary.dead_lettered += 1;
        self.metrics.item(source, kind, "dead_lettered");
        Ok(())
    }
}

/// `<source>:<kind>:<key>`, or a digest of the key when that would be too
/// long (a wamid alone may take 128 characters).
pub(crate) fn request_id(source: &str, kind: &str, key: &str) -> String {
    let id = format!("{source}:{kind}:{key}");
    if id.len() <= MAX_REQUEST_ID_LEN {
        return id;
    }
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    format!("{source}:{kind}:sha256:{digest}")
}

/// Stores `message` in the user's active conversation on `channel` (made if
/// need be) and moves the user's last message time; says whether the message
/// was already stored.
pub async fn store(
    mesh: &Mesh,
    user_id: &str,
    channel: conv::Channel,
    message: conv::Message,
    referral: Option<conv::Referral>,
) -> Result<bool, Failure> {
    // A provider clock ahead of ours must not push the time into the future:
    // then none is sent, and the users service takes its own now.
    let now = Utc::now().timestamp();
    let touched_at = message.provider_time.filter(|t| t.seconds < now);
    let record = async {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conversation = mesh
                .active_conversation(user_id.to_owned(), channel)
                .await?;
            let answer = mesh
                .record_inbound(conv::RecordInboundMessageRequest {
                    conversation_id: conversation.id,
                    message: Some(message.clone()),
                    referral: referral.clone(),
                })
                .await;
            match answer {
                Ok(answer) => return Ok(answer.duplicate),
                // Closed (or purged) between the two calls: take the new active one.
                Err(e)
                    if attempt < 3
                        && matches!(e.code(), Code::FailedPrecondition | Code::NotFound) => {}
                Err(e) => return Err(Failure::from(e)),
            }
        }
    };
    let touch = mesh.touch_last_message(user_id.to_owned(), touched_at);
    let (recorded, touched) = tokio::join!(record, touch);
    let duplicate = recorded?;
    if let Err(e) = touched {
        match Failure::from(e) {
            // The message is stored; a refused time is not worth losing it over.
            Failure::Permanent(reason) => {
                tracing::warn!(%reason, "last message time not moved");
            }
            retry @ Failure::Retry(_) => return Err(retry),
        }
    }
    Ok(duplicate)
}

/// A JSON object as a protobuf Struct (metadata).
fn metadata(value: serde_json::Value) -> Option<prost_types::Struct> {
    Some(mesh_runtime::convert::json_to_struct(&value))
}

/// Unix seconds as a protobuf Timestamp.
fn unix_time(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_fit_the_limit_and_stay_stable() {
        assert_eq!(
            request_id("whatsapp", "message", "wamid.X"),
            "whatsapp:message:wamid.X"
        );
        let wamid = format!("wamid.{}", "A".repeat(128));
        let long = request_id("whatsapp", "status", &format!("{wamid}:delivered"));
        assert!(long.len() <= MAX_REQUEST_ID_LEN, "{long}");
        assert!(long.starts_with("whatsapp:status:sha256:"), "{long}");
        assert_eq!(
            long,
            request_id("whatsapp", "status", &format!("{wamid}:delivered")),
            "a repeat files the same letter"
        );
        assert_ne!(
            long,
            request_id("whatsapp", "status", &format!("{wamid}:read"))
        );
    }
}

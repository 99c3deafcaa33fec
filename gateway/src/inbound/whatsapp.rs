//! A WhatsApp delivery: every message to users.UpsertUserByPhone,
//! billing.ConsumeQuota, then conversations.GetOrCreateActiveConversation +
//! RecordInboundMessage (and users.TouchLastMessage); every status to
//! conversations.UpdateDeliveryStatus.

use mesh_proto::mesh::conversations::v1::{self as conv, Channel, DeliveryStatus, MessageType};
use mesh_runtime::validate::is_e164;
use serde_json::{Value, json};

use super::{DeadLetter, Delivery, metadata, quota, store, unix_time};
use crate::{
    answer::Summary,
    mesh::{CallError, Failure},
    whatsapp::{self as wa, InboundMessage, MessageKind, StatusKind, StatusUpdate},
};

pub async fn deliver(
    mut delivery: Delivery<'_>,
    parsed: wa::Delivery,
) -> Result<Summary, CallError> {
    delivery.summary.skipped = parsed.skipped;
    for message in parsed.messages {
        let phone = format!("+{}", message.wa_id);
        let phone = is_e164(&phone).then_some(phone);
        // Kept for a dead letter: the message itself is handed on.
        let id = message.id.clone();
        match store_message(&delivery, message, phone.clone()).await {
            Ok(duplicate) => delivery.stored(duplicate),
            Err(Failure::Permanent(reason)) => {
                let letter = DeadLetter {
                    key: id.clone(),
                    phone,
                    provider_message_id: &id,
                    reason,
                };
                delivery.dead_letter("message", letter).await?;
            }
            Err(Failure::Retry(error)) => return Err(error),
        }
    }
    for status in &parsed.statuses {
        match update_status(&delivery, status).await {
            Ok(result) => {
                delivery.summary.statuses += 1;
                delivery.metrics.item("whatsapp", "status", result);
            }
            Err(Failure::Permanent(reason)) => {
                let letter = DeadLetter {
                    key: format!("{}:{}", status.id, status_name(&status.status)),
                    phone: None,
                    provider_message_id: &status.id,
                    reason,
                };
                delivery.dead_letter("status", letter).await?;
            }
            Err(Failure::Retry(error)) => return Err(error),
        }
    }
    for error in &parsed.errors {
        tracing::warn!(
            code = error.code,
            title = error.title.as_deref().unwrap_or(""),
            message = error.message.as_deref().unwrap_or(""),
            "WhatsApp reported an error not tied to a message"
        );
    }
    Ok(delivery.summary)
}

async fn store_message(
    delivery: &Delivery<'_>,
    mut message: InboundMessage,
    phone: Option<String>,
) -> Result<bool, Failure> {
    let Some(phone) = phone else {
        return Err(Failure::Permanent(format!(
            "the sender's wa_id {:?} is not a phone number (E.164: 8 to 15 digits, not starting with 0)",
            message.wa_id
        )));
    };
    let user = delivery
        .mesh
        .upsert_user_by_phone(phone, message.profile_name.take().unwrap_or_default())
        .await?;
    let referral = message.referral.take().map(|r| conv::Referral {
        source_url: r.source_url.unwrap_or_default(),
        source_id: r.source_id.unwrap_or_default(),
        source_type: r.source_type.unwrap_or_default(),
        headline: r.headline.unwrap_or_default(),
        ctwa_clid: r.ctwa_clid.unwrap_or_default(),
    });
    let mut message = to_message(message);
    let wamid = message.provider_message_id.clone();
    quota::count(delivery, &user.id, &wamid, &mut message).await;
    store(
        delivery.mesh,
        &user.id,
        Channel::Whatsapp,
        message,
        referral,
    )
    .await
}

/// The message as the conversations service stores it. Everything but plain
/// text keeps the whole WhatsApp object in `metadata.whatsapp.message`, so a
/// type this gateway does not know (stored as UNKNOWN) loses nothing.
fn to_message(m: InboundMessage) -> conv::Message {
    // A reaction refers to the message reacted to, as a reply does.
    let reacted_to = (m.kind == MessageKind::Reaction)
        .then(|| {
            m.raw
                .pointer("/reaction/message_id")
                .and_then(Value::as_str)
        })
        .flatten()
        .map(str::to_owned);
    let mut whatsapp = json!({
        "phone_number_id": m.phone_number_id,
        "type": m.wire_type,
    });
    if m.kind != MessageKind::Text {
        whatsapp["message"] = m.raw;
    }
    if let Some(payload) = m.reply_payload {
        whatsapp["reply_payload"] = Value::from(payload);
    }
    if !m.errors.is_empty() {
        whatsapp["errors"] = m
            .errors
            .into_iter()
            .map(|e| json!({"code": e.code, "title": e.title, "message": e.message, "details": e.details}))
            .collect();
    }
    let media = m.media.and_then(|media| {
        let id = media.id.filter(|id| !id.is_empty())?;
        Some(conv::Media {
            provider_media_id: id,
            mime_type: media.mime_type.unwrap_or_default(),
            sha256: media.sha256.unwrap_or_default(),
            caption: media.caption.unwrap_or_default(),
            url: String::new(),
        })
    });
    conv::Message {
        r#type: message_type(m.kind).into(),
        content: m.text.unwrap_or_default(),
        media,
        provider_message_id: m.id,
        reply_to_provider_message_id: m.reply_to.or(reacted_to).unwrap_or_default(),
        metadata: metadata(json!({ "whatsapp": whatsapp })),
        provider_time: unix_time(m.timestamp),
        ..Default::default()
    }
}

fn message_type(kind: MessageKind) -> MessageType {
    match kind {
        MessageKind::Text => MessageType::Text,
        MessageKind::Image => MessageType::Image,
        MessageKind::Audio => MessageType::Audio,
        MessageKind::Video => MessageType::Video,
        MessageKind::Document => MessageType::Document,
        MessageKind::Sticker => MessageType::Sticker,
        MessageKind::Location => MessageType::Location,
        MessageKind::Contacts => MessageType::Contacts,
        MessageKind::Interactive => MessageType::Interactive,
        MessageKind::Button => MessageType::Button,
        MessageKind::Reaction => MessageType::Reaction,
        MessageKind::Order => MessageType::Order,
        MessageKind::System => MessageType::System,
        MessageKind::Unknown => MessageType::Unknown,
    }
}

fn status_name(status: &StatusKind) -> &str {
    match status {
        StatusKind::Sent => "sent",
        StatusKind::Delivered => "delivered",
        StatusKind::Read => "read",
        StatusKind::Failed => "failed",
        StatusKind::Played => "played",
        StatusKind::Unknown(other) => other,
    }
}

/// Hands one status on; says what became of it (applied, unchanged). A
/// status for a message id nothing stored has is kept by the conversations
/// service (and applied if the message appears), and dead-lettered here so
/// an operator sees it.
async fn update_status(
    delivery: &Delivery<'_>,
    status: &StatusUpdate,
) -> Result<&'static str, Failure> {
    let kind = match &status.status {
        StatusKind::Sent => DeliveryStatus::Sent,
        StatusKind::Delivered => DeliveryStatus::Delivered,
        StatusKind::Read => DeliveryStatus::Read,
        StatusKind::Failed => DeliveryStatus::Failed,
        StatusKind::Played => DeliveryStatus::Played,
        StatusKind::Unknown(other) => {
            return Err(Failure::Permanent(format!(
                "unknown WhatsApp status {other:?}"
            )));
        }
    };
    let error = status.errors.first().cloned().unwrap_or_default();
    let error_message = match (error.message, error.details) {
        (Some(message), Some(details)) => format!("{message}: {details}"),
        (message, details) => message.or(details).unwrap_or_default(),
    };
    let answer = delivery
        .mesh
        .update_delivery_status(conv::UpdateDeliveryStatusRequest {
            channel: Channel::Whatsapp.into(),
            provider_message_id: status.id.clone(),
            status: kind.into(),
            status_time: unix_time(status.timestamp),
            error_code: error.code.map(|c| c.to_string()).unwrap_or_default(),
            error_title: error.title.unwrap_or_default(),
            error_message,
            pricing_category: status
                .pricing
                .as_ref()
                .and_then(|p| p.category.clone())
                .unwrap_or_default(),
        })
        .await?;
    if answer.deferred {
        return Err(Failure::Permanent(format!(
            "status {:?} for {:?}, a message id no stored message has: kept for 7 days and \
             applied if a message with that id is stored (then this failure is resolved)",
            status_name(&status.status),
            status.id
        )));
    }
    Ok(if answer.applied {
        "applied"
    } else {
        "unchanged"
    })
}

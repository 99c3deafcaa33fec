//! A Telegram update: the sender is found by Telegram id (a `/start <token>`
//! deep link first redeems the link token, joining the Telegram account to an
//! existing user; an unknown sender gets a user of their own), then the
//! message is stored like a WhatsApp one. The provider message id makes a
//! repeated update_id harmless.

use mesh_proto::mesh::{
    conversations::v1::{self as conv, Channel, MessageType},
    users::v1 as users,
};
use serde_json::{Value, json};
use tonic::Code;

use super::{DeadLetter, Delivery, metadata, quota, store, unix_time};
use crate::{
    answer::Summary,
    mesh::{CallError, Failure, Mesh},
    telegram::{self as tg, CallbackQuery, MediaKind, UpdateKind, start_payload},
};

pub async fn deliver(mut delivery: Delivery<'_>, update: tg::Update) -> Result<Summary, CallError> {
    let update_id = update.update_id;
    let (outcome, provider_id) = match update.kind {
        UpdateKind::Message(m) => {
            let id = format!("{}:{}", m.chat.id, m.message_id);
            (message(&delivery, update_id, m, &id, None).await, id)
        }
        UpdateKind::EditedMessage(m) => {
            let original = format!("{}:{}", m.chat.id, m.message_id);
            let id = format!("{original}:edit:{update_id}");
            (
                message(&delivery, update_id, m, &id, Some(original)).await,
                id,
            )
        }
        UpdateKind::CallbackQuery(q) => {
            let id = format!("callback:{}", q.id);
            (callback(&delivery, update_id, q, &id).await, id)
        }
        UpdateKind::Other { kind } => {
            tracing::debug!(update_id, kind, "skipped: nothing to store");
            delivery.summary.skipped += 1;
            delivery.metrics.item("telegram", "update", "skipped");
            return Ok(delivery.summary);
        }
    };
    match outcome {
        Ok(duplicate) => delivery.stored(duplicate),
        Err(Failure::Permanent(reason)) => {
            let letter = DeadLetter {
                key: update_id.to_string(),
                phone: None,
                provider_message_id: &provider_id,
                reason,
            };
            delivery.dead_letter("message", letter).await?;
        }
        Err(Failure::Retry(error)) => return Err(error),
    }
    Ok(delivery.summary)
}

/// A message or an edit (`edit_of` names the original's provider id).
async fn message(
    delivery: &Delivery<'_>,
    update_id: i64,
    m: tg::Message,
    provider_message_id: &str,
    edit_of: Option<String>,
) -> Result<bool, Failure> {
    let Some(from) = &m.from else {
        return Err(Failure::Permanent(
            "a message without a sender (`from`): there is no user to store it for".into(),
        ));
    };
    let start = match (&edit_of, &m.text) {
        (None, Some(text)) => start_payload(text),
        _ => None,
    };
    let (user, link) = sender(delivery.mesh, from, start).await?;
    let is_edit = edit_of.is_some();
    let kind = message_type(&m);
    let tg::Message {
        chat,
        date,
        text,
        caption,
        file,
        reply_to_message_id,
        raw,
        ..
    } = m;
    let mut telegram = json!({
        "update_id": update_id,
        "chat": {"id": chat.id, "type": chat.kind},
    });
    if kind != MessageType::Text {
        telegram["message"] = raw;
    }
    if let Some(original) = edit_of {
        telegram["edit_of"] = Value::from(original);
    }
    if let Some(link) = link {
        telegram["link"] = link;
    }
    let media = file.map(|file| conv::Media {
        provider_media_id: file.file_id,
        mime_type: file.mime_type.unwrap_or_default(),
        caption: caption.clone().unwrap_or_default(),
        ..Default::default()
    });
    let mut message = conv::Message {
        r#type: kind.into(),
        content: text.or(caption).unwrap_or_default(),
        media,
        provider_message_id: provider_message_id.to_owned(),
        reply_to_provider_message_id: reply_to_message_id
            .map(|id| format!("{}:{id}", chat.id))
            .unwrap_or_default(),
        metadata: metadata(json!({ "telegram": telegram })),
        provider_time: unix_time(date),
        ..Default::default()
    };
    // An edit changes a message already counted; it is not another one.
    if !is_edit {
        quota::count(delivery, &user.id, provider_message_id, &mut message).await;
    }
    store(delivery.mesh, &user.id, Channel::Telegram, message, None).await
}

/// A press of an inline keyboard button, stored as an INTERACTIVE message
/// whose content is the button's data. (Answering it with
/// answerCallbackQuery is the agent's part: it knows what to say.)
async fn callback(
    delivery: &Delivery<'_>,
    update_id: i64,
    q: CallbackQuery,
    provider_message_id: &str,
) -> Result<bool, Failure> {
    let (user, _) = sender(delivery.mesh, &q.from, None).await?;
    let on_message = match (q.chat_id, q.message_id) {
        (Some(chat), Some(message)) => format!("{chat}:{message}"),
        _ => String::new(),
    };
    let mut message = conv::Message {
        r#type: MessageType::Interactive.into(),
        content: q.data.clone().unwrap_or_default(),
        provider_message_id: provider_message_id.to_owned(),
        reply_to_provider_message_id: on_message,
        metadata: metadata(json!({ "telegram": {
            "update_id": update_id,
            "callback_query_id": q.id,
            "data": q.data,
        }})),
        ..Default::default()
    };
    // A press asks the agent for an answer as a message does: it counts.
    quota::count(delivery, &user.id, provider_message_id, &mut message).await;
    store(delivery.mesh, &user.id, Channel::Telegram, message, None).await
}

fn message_type(m: &tg::Message) -> MessageType {
    match m.media {
        Some(MediaKind::Photo) => MessageType::Image,
        Some(MediaKind::Voice | MediaKind::Audio) => MessageType::Audio,
        Some(MediaKind::Video) => MessageType::Video,
        Some(MediaKind::Document) => MessageType::Document,
        Some(MediaKind::Sticker) => MessageType::Sticker,
        Some(MediaKind::Location) => MessageType::Location,
        Some(MediaKind::Contact) => MessageType::Contacts,
        None if m.text.is_some() => MessageType::Text,
        // A poll, a dice, a game...: kept whole in metadata.
        None => MessageType::Unknown,
    }
}

/// The user behind a Telegram account, and what became of a link token the
/// message carried (stored with it, so the agent can say "that link expired").
async fn sender(
    mesh: &Mesh,
    from: &tg::User,
    start_token: Option<&str>,
) -> Result<(users::User, Option<Value>), Failure> {
    let username = from.username.clone().unwrap_or_default();
    let mut link = None;
    if let Some(token) = start_token {
        match mesh
            .redeem_link_token(token, from.id, username.clone())
            .await
        {
            Ok(user) => return Ok((user, Some(json!({"redeemed": true})))),
            // A bad, used or expired token, or an account linked to someone
            // else: the message is still stored, for its sender.
            Err(e)
                if matches!(
                    e.code(),
                    Code::NotFound
                        | Code::FailedPrecondition
                        | Code::AlreadyExists
                        | Code::InvalidArgument
                ) =>
            {
                link = Some(json!({"redeemed": false, "reason": e.status.message()}));
            }
            Err(e) => return Err(Failure::Retry(e)),
        }
    }
    match mesh.get_user_by_telegram_id(from.id).await {
        Ok(user) => return Ok((user, link)),
        Err(e) if e.code() == Code::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let user = new_user(mesh, from, username).await?;
    Ok((user, link))
}

/// Creates the user of a Telegram account nobody has yet. The request id
/// makes concurrent first messages of one sender create one user; if the
/// profile fields are refused (an unknown language code), the account alone
/// is enough.
async fn new_user(mesh: &Mesh, from: &tg::User, username: String) -> Result<users::User, Failure> {
    let language = from
        .language_code
        .as_deref()
        .and_then(|code| code.split('-').next())
        .unwrap_or_default()
        .to_owned();
    let full = users::User {
        telegram_user_id: Some(from.id),
        telegram_username: username,
        display_name: from.first_name.chars().take(64).collect(),
        language,
        ..Default::default()
    };
    match mesh
        .create_user(full, format!("telegram-user:{}", from.id))
        .await
    {
        Ok(user) => return Ok(user),
        Err(e) if e.code() == Code::InvalidArgument => {
            tracing::info!(error = %e, "profile refused; creating the Telegram user without it");
        }
        Err(e) => return created_meanwhile(mesh, from.id, e).await,
    }
    let bare = users::User {
        telegram_user_id: Some(from.id),
        ..Default::default()
    };
    match mesh
        .create_user(bare, format!("telegram-user:{}:bare", from.id))
        .await
    {
        Ok(user) => Ok(user),
        Err(e) => created_meanwhile(mesh, from.id, e).await,
    }
}

/// After a failed CreateUser: ALREADY_EXISTS means another delivery made the
/// user first, so it is found; anything else is the failure.
async fn created_meanwhile(
    mesh: &Mesh,
    telegram_user_id: i64,
    error: CallError,
) -> Result<users::User, Failure> {
    if error.code() == Code::AlreadyExists {
        return mesh
            .get_user_by_telegram_id(telegram_user_id)
            .await
            .map_err(Into::into);
    }
    Err(error.into())
}

//! Resolving a checked request before anything is written: the
//! conversation, the recipient, whether the send is proactive, and the
//! provider's reference to the message replied to. Every refusal here
//! leaves no trace.

use chrono::Utc;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    Inner,
    recipients::Recipient,
    telegram,
    validate::{Checked, Content, TEMPLATE_ON_TELEGRAM, Target},
};
use crate::{conversations, messages, windows};

/// Everything resolved before anything is written.
pub(super) struct Plan {
    pub(super) user: Uuid,
    pub(super) channel: &'static str,
    /// With `conversation_id`; with `user_id` the active conversation is
    /// found or created in Tx1.
    pub(super) conversation: Option<Uuid>,
    pub(super) recipient: Recipient,
    pub(super) proactive: bool,
    /// The replied-to message's provider id.
    pub(super) reply_to_provider_id: Option<String>,
    pub(super) context: Option<Context>,
}

/// The provider's reference to the message replied to.
#[derive(Clone)]
pub(super) enum Context {
    WhatsApp(String),
    Telegram(i64),
}

impl Inner {
    pub(super) async fn plan(&self, pool: &PgPool, checked: &Checked) -> ApiResult<Plan> {
        let (user, channel, conversation) = match checked.target {
            Target::User { user, channel } => (user, channel, None),
            Target::Conversation(id) => {
                let conversation = conversations::find(&mut *pool.acquire().await?, id).await?;
                if conversation.status != "active" {
                    return Err(ApiError::FailedPrecondition(format!(
                        "conversation {id} is {}: send with user_id and channel to reach the \
                         user's active conversation",
                        conversation.status
                    )));
                }
                let channel = match conversation.channel.as_str() {
                    "whatsapp" => "whatsapp",
                    "telegram" => "telegram",
                    other => {
                        return Err(ApiError::FailedPrecondition(format!(
                            "conversation {id} is on {other}, which has no provider to send through"
                        )));
                    }
                };
                if channel == "telegram" && matches!(checked.content, Content::Template(_)) {
                    return Err(ApiError::invalid("template", TEMPLATE_ON_TELEGRAM));
                }
                (conversation.user_id, channel, Some(id))
            }
        };
        self.ensure_configured(channel)?;
        // No database connection is held while the users service answers.
        let recipient = self.recipients.lookup(user, channel).await?;

        let mut conn = pool.acquire().await?;
        let proactive = if channel == "whatsapp" {
            let now = Utc::now();
            let window = windows::state(&mut conn, user).await?;
            if matches!(checked.content, Content::Text(_)) && !window.free_form_open(now) {
                return Err(ApiError::FailedPrecondition(
                    "outside the 24-hour customer service window (and no free entry point window \
                     is open): only template messages may be sent to this user on WhatsApp until \
                     they write again"
                        .into(),
                ));
            }
            checked.proactive || !window.customer_service_open(now)
        } else {
            checked.proactive
        };
        let (reply_to_provider_id, context) = match checked.reply_to {
            None => (None, None),
            Some(id) => reply_context(&mut conn, id, user, channel, &recipient).await?,
        };
        Ok(Plan {
            user,
            channel,
            conversation,
            recipient,
            proactive,
            reply_to_provider_id,
            context,
        })
    }
}

/// The provider id of the replied-to message, and the provider's reference
/// to it when it is on the same channel (and, on Telegram, the same chat).
async fn reply_context(
    conn: &mut PgConnection,
    id: Uuid,
    user: Uuid,
    channel: &str,
    recipient: &Recipient,
) -> ApiResult<(Option<String>, Option<Context>)> {
    let (reply_channel, provider_id) =
        messages::message_of_user(conn, id, user, "reply_to_message_id").await?;
    if reply_channel != channel {
        return Ok((None, None));
    }
    let context = provider_context(provider_id.as_deref(), recipient);
    Ok((provider_id, context))
}

/// The provider's reference to the message with `provider_id`: the wamid on
/// WhatsApp; on Telegram the message id, when it is in the recipient's chat.
pub(super) fn provider_context(
    provider_id: Option<&str>,
    recipient: &Recipient,
) -> Option<Context> {
    let provider_id = provider_id?;
    match recipient {
        Recipient::WhatsApp { .. } => Some(Context::WhatsApp(provider_id.to_owned())),
        Recipient::Telegram { chat_id } => telegram::parse_provider_id(provider_id)
            .filter(|(chat, _)| chat == chat_id)
            .map(|(_, message)| Context::Telegram(message)),
    }
}

//! One attempt at a send: Tx1 records the message, the provider is called,
//! Tx2 records what it did. Runs on its own task (see [`super::Sender::send`]).

use std::sync::Arc;

use mesh_runtime::ApiResult;
use sqlx::PgPool;

use super::{
    Inner,
    outcome::Outcome,
    plan::Context,
    recipients::Recipient,
    record::{self, Record},
    validate::{Content, TEMPLATE_ON_TELEGRAM},
    whatsapp,
};
use crate::messages::MessageRow;

/// What goes to the provider.
pub(super) struct Delivery {
    pub(super) recipient: Recipient,
    pub(super) content: Content,
    pub(super) context: Option<Context>,
}

pub(super) enum Attempted {
    /// The provider was called (or could not be) and the outcome recorded.
    Done(Outcome, Box<MessageRow>),
    /// A concurrent call with the same request_id recorded the message first.
    Twin,
}

impl Inner {
    /// Tx1, the provider, Tx2.
    pub(super) async fn first_attempt(
        self: Arc<Self>,
        pool: &PgPool,
        record: Record,
        delivery: Delivery,
    ) -> ApiResult<Attempted> {
        let Some(row) = record::record_message(pool, &record).await? else {
            return Ok(Attempted::Twin);
        };
        let outcome = self.call_provider(&delivery).await;
        let (outcome, row) = record::finish(pool, row, outcome).await?;
        Ok(Attempted::Done(outcome, Box::new(row)))
    }

    pub(super) async fn call_provider(&self, delivery: &Delivery) -> Outcome {
        let outcome = match (&delivery.recipient, &delivery.content) {
            (Recipient::WhatsApp { phone }, content) => {
                let body = match content {
                    Content::Text(text) => whatsapp::Body::Text(text),
                    Content::Template(template) => whatsapp::Body::Template(template),
                };
                let context = match &delivery.context {
                    Some(Context::WhatsApp(id)) => Some(id.as_str()),
                    _ => None,
                };
                self.whatsapp.send(phone, body, context).await
            }
            (Recipient::Telegram { chat_id }, Content::Text(text)) => {
                let reply_to = match &delivery.context {
                    Some(Context::Telegram(id)) => Some(*id),
                    _ => None,
                };
                self.telegram.send(*chat_id, text, reply_to).await
            }
            (Recipient::Telegram { .. }, Content::Template(_)) => Outcome::Refused {
                code: "template_on_telegram".into(),
                title: TEMPLATE_ON_TELEGRAM.into(),
            },
        };
        match &outcome {
            Outcome::Accepted { .. } => tracing::info!(?outcome, "provider accepted the message"),
            _ => tracing::warn!(?outcome, "provider did not accept the message"),
        }
        outcome
    }
}

//! SendMessage: record an outbound message, send it through its channel's
//! provider, and record what the provider did.
//!
//! The flow, and why it is shaped so:
//!
//! 1. Validate (every bad field at once) and check the channel's provider
//!    settings. A `request_id` already stored on a message is a retry: it is
//!    answered from that message (see [`Inner::replay`]) and never sent twice.
//! 2. Resolve the conversation (`conversation_id`, which must be active, or
//!    the user's active conversation on `channel`, created when there is
//!    none) and the recipient (the users service; a deactivated user is
//!    FAILED_PRECONDITION). On WhatsApp, free-form text needs an open
//!    customer service or free entry point window. Nothing is written until
//!    here, so every refusal so far leaves no trace.
//! 3. Tx1, short: take the next sequence number, insert the message as
//!    `pending` with the request_id and the encoded request, emit
//!    MESSAGE_SENT, commit. A concurrent twin (same request_id) loses on the
//!    unique request_id and answers as a retry.
//! 4. Call the provider, then Tx2: `accepted` (Telegram: `sent`) with the
//!    provider's id, the deferred statuses that came first, the free entry
//!    point; or `failed` with the provider's code and title, retryable for a
//!    rate limit or an outage only. Steps 3 and 4 run on their own task: a
//!    caller that goes away does not leave the message pending.
//!
//! A provider that took the request but gave no answer (a timeout, a dropped
//! connection, a 5xx without the provider's own error body, as a proxy in
//! front of it gives) may have sent the message: it is stored failed with
//! error code [`outcome::UNKNOWN_OUTCOME`], not retryable, and answered
//! UNAVAILABLE. Should the provider's acceptance still be recorded (a sender
//! slower than a retry's patience), it corrects the row.
//!
//! Web and app conversations have no provider: a send there is
//! FAILED_PRECONDITION (with `user_id`, asking for CHANNEL_WEB or CHANNEL_APP
//! is INVALID_ARGUMENT, as the request alone is wrong). A closed or archived
//! `conversation_id` is FAILED_PRECONDITION: send with `user_id` to reach the
//! user's active conversation. On Telegram the `proactive` flag is the
//! caller's; on WhatsApp it is also set when no customer service window is
//! open.
//!
//! Where each part lives: step 1 in [`validate`] (and retries in [`replay`]),
//! step 2 in [`plan`] with [`recipients`], steps 3 and 4 in [`attempt`] over
//! the rows of [`record`], the provider clients in [`whatsapp`] and
//! [`telegram`] reducing every answer to an [`outcome::Outcome`]; the answer
//! to the caller is mapped here.

mod attempt;
mod outcome;
mod plan;
mod recipients;
mod record;
mod replay;
mod telegram;
mod validate;
mod whatsapp;

use std::{sync::Arc, time::Duration};

use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;
use tracing::Instrument as _;

use crate::{Config, messages::MessageRow};
use attempt::{Attempted, Delivery};
use outcome::{Outcome, UNKNOWN_OUTCOME};
use recipients::Recipients;
use record::{Record, find_by_request_id};
use telegram::Telegram;
use validate::validate;
use whatsapp::WhatsApp;

pub struct Sender {
    inner: Arc<Inner>,
}

struct Inner {
    whatsapp: WhatsApp,
    telegram: Telegram,
    recipients: Recipients,
    provider_timeout: Duration,
}

impl Sender {
    /// The provider clients and the users service client; nothing connects
    /// until the first send.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.provider_timeout)
            .connect_timeout(config.provider_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("mesh-conversations/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                whatsapp: WhatsApp::new(http.clone(), &config.whatsapp),
                telegram: Telegram::new(http, &config.telegram),
                recipients: Recipients::new(
                    &config.users_url,
                    &config.service.auth_token,
                    config.service.tls_ca.as_ref(),
                    config.provider_timeout,
                )?,
                provider_timeout: config.provider_timeout,
            }),
        })
    }

    #[tracing::instrument(skip_all)]
    pub async fn send(
        &self,
        pool: &PgPool,
        idle_gap: Duration,
        request: pb::SendMessageRequest,
    ) -> ApiResult<pb::SendMessageResponse> {
        let checked = validate(&request)?;
        if let Some(request_id) = &checked.request_id
            && let Some(stored) = find_by_request_id(pool, request_id).await?
        {
            return self.inner.clone().replay(pool, &checked, stored).await;
        }
        let plan = self.inner.plan(pool, &checked).await?;
        let inner = self.inner.clone();
        let task_pool = pool.clone();
        let record = Record::new(&checked, &plan, idle_gap);
        let delivery = Delivery {
            recipient: plan.recipient.clone(),
            content: checked.content.clone(),
            context: plan.context.clone(),
        };
        // From the first write on, the work runs to its end even when the
        // caller goes away.
        let first = tokio::spawn(
            async move { inner.first_attempt(&task_pool, record, delivery).await }
                .instrument(tracing::Span::current()),
        )
        .await
        .map_err(ApiError::internal)??;
        match first {
            Attempted::Done(outcome, row) => answer(&outcome, *row),
            Attempted::Twin => {
                let request_id = checked.request_id.as_deref().unwrap_or_default();
                let stored = find_by_request_id(pool, request_id).await?.ok_or_else(|| {
                    ApiError::Unavailable(
                        "a concurrent send with this request_id vanished; retry".into(),
                    )
                })?;
                self.inner.clone().replay(pool, &checked, stored).await
            }
        }
    }
}

impl Inner {
    fn ensure_configured(&self, channel: &str) -> ApiResult<()> {
        let (provider, missing) = match channel {
            "whatsapp" => ("WhatsApp", self.whatsapp.missing_settings()),
            "telegram" => ("Telegram", self.telegram.missing_settings()),
            other => {
                return Err(ApiError::FailedPrecondition(format!(
                    "{other} has no provider to send through"
                )));
            }
        };
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ApiError::FailedPrecondition(format!(
                "{provider} sending is not configured: set {}",
                missing.join(" and ")
            )))
        }
    }
}

fn success(row: MessageRow) -> ApiResult<pb::SendMessageResponse> {
    let message = row.into_proto();
    Ok(pb::SendMessageResponse {
        provider_message_id: message.provider_message_id.clone(),
        message: Some(message),
    })
}

/// The answer to the caller for `outcome`, recorded as `row`.
fn answer(outcome: &Outcome, row: MessageRow) -> ApiResult<pb::SendMessageResponse> {
    if row.provider_message_id.is_some() {
        return success(row);
    }
    let provider = match row.channel.as_str() {
        "whatsapp" => "WhatsApp",
        "telegram" => "Telegram",
        other => other,
    };
    let id = row.id;
    Err(match outcome {
        Outcome::RateLimited {
            code,
            title,
            retry_after,
        } => ApiError::ResourceExhausted {
            message: format!(
                "{provider} rate limit ({code}: {title}): message {id} was not sent; retry after \
                 {:.1} s with the same request_id",
                retry_after.as_secs_f64()
            ),
            retry_after: Some(*retry_after),
        },
        Outcome::Outage { code, title } => ApiError::Unavailable(format!(
            "{provider} is unavailable ({code}: {title}): message {id} was not sent; retry with \
             the same request_id"
        )),
        Outcome::Refused { code, title } => ApiError::FailedPrecondition(format!(
            "{provider} refused message {id} ({code}): {title}"
        )),
        Outcome::Unknown { reason } => ApiError::Unavailable(format!(
            "{reason}: message {id} may have been sent. It is recorded as failed with error code \
             {UNKNOWN_OUTCOME} and will not be sent again with this request_id"
        )),
        // Accepted always has a provider id.
        Outcome::Accepted { .. } => return success(row),
    })
}

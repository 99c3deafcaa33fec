//! Answering a call whose request_id is already on a message: the retry
//! never sends twice. A send in flight is waited for; only a send the
//! provider refused for a rate limit or an outage is tried again, by one
//! caller, on the same message.

use std::{sync::Arc, time::Duration};

use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;
use tracing::Instrument as _;
use uuid::Uuid;

use super::{
    Inner, answer,
    attempt::Delivery,
    outcome::Outcome,
    plan::provider_context,
    record::{claim, finish, finish_worst_case, load, mark_failed, stored_outcome},
    success,
    validate::Checked,
};
use crate::messages::MessageRow;

/// How soon a retry first looks again at a send still in flight; the pause
/// doubles after each look, up to [`POLL_MAX`], so that waiting retries add
/// little to the pool the sender needs.
const POLL_FIRST: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_millis(500);
/// Margin on top of the sender's worst case (scheduling, clocks).
const RECORD_GRACE: Duration = Duration::from_secs(3);

/// How long a send seen in flight may stay pending before a retry declares
/// it lost: comfortably more than the sender can take from the moment the
/// row is pending, which is the provider call (reqwest's `timeout`, set to
/// `provider_timeout`, spans connecting through reading the body) and then
/// Tx2 with all its tries ([`finish_worst_case`]).
fn lost_after(provider_timeout: Duration, pool: &PgPool) -> Duration {
    provider_timeout + finish_worst_case(pool) + RECORD_GRACE
}

impl Inner {
    /// Answers a call whose request_id is already on `stored`, without
    /// sending twice: a send in flight is waited for; only a send refused for
    /// a rate limit or an outage is tried again, by one caller, on the same
    /// message.
    pub(super) async fn replay(
        self: Arc<Self>,
        pool: &PgPool,
        checked: &Checked,
        mut stored: MessageRow,
    ) -> ApiResult<pb::SendMessageResponse> {
        if stored.send_request.as_deref() != Some(checked.fingerprint.as_slice()) {
            return Err(ApiError::invalid(
                "request_id",
                "was already used for a different request",
            ));
        }
        let mut waited = false;
        loop {
            if stored.provider_message_id.is_some() {
                return success(stored);
            }
            match stored.delivery_status.as_deref() {
                Some("pending") => {
                    stored = self.wait_while_pending(pool, stored.id).await?;
                    waited = true;
                }
                Some("failed") if stored.send_retryable && !waited => {
                    match self.clone().try_again(pool, checked, &stored).await? {
                        Some(answer) => return answer,
                        // Another caller claimed it: answer with its outcome.
                        None => {
                            stored = load(pool, stored.id).await?;
                            waited = true;
                        }
                    }
                }
                Some("failed") => return answer(&stored_outcome(&stored), stored),
                // Forward of pending without a provider id: not written by
                // this module, but a success as far as the caller can tell.
                _ => return success(stored),
            }
        }
    }

    /// Polls the message until it leaves `pending`. A send still pending
    /// [`lost_after`] after we first saw it was lost (its process died between the
    /// provider and Tx2): it is recorded as an unknown outcome, as it may
    /// have been sent. Should the sender still record the provider's
    /// acceptance, that corrects the row.
    async fn wait_while_pending(&self, pool: &PgPool, id: Uuid) -> ApiResult<MessageRow> {
        let deadline = tokio::time::Instant::now() + lost_after(self.provider_timeout, pool);
        let mut pause = POLL_FIRST;
        loop {
            let row = load(pool, id).await?;
            if row.delivery_status.as_deref() != Some("pending") {
                return Ok(row);
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(message_id = %id, "a send stayed pending past its deadline");
                let lost = Outcome::Unknown {
                    reason: "the send in flight never recorded its outcome".into(),
                };
                return Ok(mark_failed(pool, id, &lost).await?.0);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// Claims a retryable failed message and sends it again. `None` when
    /// another caller claimed it first.
    async fn try_again(
        self: Arc<Self>,
        pool: &PgPool,
        checked: &Checked,
        stored: &MessageRow,
    ) -> ApiResult<Option<ApiResult<pb::SendMessageResponse>>> {
        self.ensure_configured(&stored.channel)?;
        // The recipient first: a users service outage must not leave the
        // message claimed and never sent.
        let recipient = self
            .recipients
            .lookup(stored.user_id, &stored.channel)
            .await?;
        let context = provider_context(stored.reply_to_provider_message_id.as_deref(), &recipient);
        let delivery = Delivery {
            recipient,
            content: checked.content.clone(),
            context,
        };
        let inner = self.clone();
        let task_pool = pool.clone();
        let id = stored.id;
        let attempt = tokio::spawn(
            async move {
                let Some(row) = claim(&task_pool, id).await? else {
                    return Ok(None);
                };
                tracing::info!(message_id = %id, "sending again after a retryable failure");
                let outcome = inner.call_provider(&delivery).await;
                let (outcome, row) = finish(&task_pool, row, outcome).await?;
                Ok::<_, ApiError>(Some((outcome, row)))
            }
            .instrument(tracing::Span::current()),
        )
        .await
        .map_err(ApiError::internal)??;
        Ok(attempt.map(|(outcome, row)| answer(&outcome, row)))
    }
}

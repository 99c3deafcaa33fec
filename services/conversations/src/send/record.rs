//! The message's rows: Tx1 records it pending before the provider is
//! called, Tx2 records what the provider did; and the reads a retry of a
//! request_id answers from.

use std::time::Duration;

use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    outcome::{self, Outcome, UNKNOWN_OUTCOME},
    plan::Plan,
    validate::Checked,
};
use crate::{
    conversations::{self, ReusePolicy},
    delivery, events,
    messages::{self, MESSAGE_COLUMNS, MessageRow, NewMessage},
    windows,
};

/// What Tx1 writes.
pub(super) struct Record {
    user: Uuid,
    channel: &'static str,
    conversation: Option<Uuid>,
    policy: ReusePolicy,
    message: NewMessage,
}

impl Record {
    pub(super) fn new(checked: &Checked, plan: &Plan, idle_gap: Duration) -> Self {
        Self {
            user: plan.user,
            channel: plan.channel,
            conversation: plan.conversation,
            policy: ReusePolicy {
                idle_gap,
                daily_in: None,
            },
            message: NewMessage {
                direction: "outbound",
                role: checked.role,
                kind: checked.content.kind(),
                content: checked.content.stored(),
                reply_to_message_id: checked.reply_to,
                reply_to_provider_message_id: plan.reply_to_provider_id.clone(),
                metadata: checked.metadata.clone(),
                delivery_status: Some("pending"),
                proactive: plan.proactive,
                send_request_id: checked.request_id.clone(),
                send_request: Some(checked.fingerprint.clone()),
                ..Default::default()
            },
        }
    }
}

/// Tx1: the message, pending, with the next sequence number, and its
/// MESSAGE_SENT event. `None` when a concurrent call with the same
/// request_id recorded it first.
pub(super) async fn record_message(
    pool: &PgPool,
    record: &Record,
) -> ApiResult<Option<MessageRow>> {
    let mut tx = pool.begin().await?;
    let (conversation, mut pending) = match record.conversation {
        Some(id) => (id, Vec::new()),
        None => {
            let active =
                conversations::active(&mut tx, record.user, record.channel, record.policy, None)
                    .await?;
            (active.conversation.id, active.events)
        }
    };
    let conversation = conversations::lock_for_append(&mut tx, conversation).await?;
    let seq = conversation.message_count;
    let row = match messages::insert(&mut tx, &conversation, seq, &record.message).await {
        Ok(row) => row,
        Err(error) if messages::violates(&error, "messages_send_request_id_key") => {
            tx.rollback().await?;
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    // Last: the event head stays locked until commit.
    pending.push(events::message_event(pb::EventType::MessageSent, &row));
    events::emit_all(&mut tx, pending).await?;
    tx.commit().await?;
    Ok(Some(row))
}

pub(super) async fn find_by_request_id(
    pool: &PgPool,
    request_id: &str,
) -> ApiResult<Option<MessageRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM messages WHERE send_request_id = $1")
            .bind(request_id)
            .fetch_optional(pool)
            .await?,
    )
}

pub(super) async fn load(pool: &PgPool, id: Uuid) -> ApiResult<MessageRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("message {id} was erased while being sent")))
}

/// Takes a retryable failed message back to pending for one more attempt;
/// `None` when another caller took it first.
pub(super) async fn claim(pool: &PgPool, id: Uuid) -> ApiResult<Option<MessageRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE messages SET delivery_status = 'pending', send_retryable = false,
            failed_time = NULL, error_code = NULL, error_title = NULL, error_message = NULL
         WHERE id = $1 AND delivery_status = 'failed' AND send_retryable
         RETURNING {MESSAGE_COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// How many times [`finish`] tries Tx2.
const FINISH_ATTEMPTS: u32 = 4;
/// [`finish`]'s first pause between tries; it doubles after each.
const FINISH_FIRST_DELAY: Duration = Duration::from_millis(200);
/// What one try's statements may take once it has its connection (a lock
/// wait on the provider id or the row, a slow commit).
const FINISH_STATEMENTS: Duration = Duration::from_secs(1);

/// The longest [`finish`] may take to record an outcome on `pool`: every try
/// waiting the pool's whole acquire timeout for a connection, then its
/// statements, plus the pauses between tries.
pub(super) fn finish_worst_case(pool: &PgPool) -> Duration {
    let per_try = pool.options().get_acquire_timeout() + FINISH_STATEMENTS;
    let pauses: Duration = (0..FINISH_ATTEMPTS - 1)
        .map(|i| FINISH_FIRST_DELAY * 2u32.pow(i))
        .sum();
    per_try * FINISH_ATTEMPTS + pauses
}

/// Tx2, retried a few times when the database is briefly unavailable: the
/// provider's answer is not to be lost to a blip. Returns what to answer:
/// `outcome`, unless the message was no longer pending (a retry declared it
/// lost meanwhile), when it is what the row says. An acceptance still lands
/// on a message a retry declared lost (see [`mark_accepted`]).
pub(super) async fn finish(
    pool: &PgPool,
    row: MessageRow,
    outcome: Outcome,
) -> ApiResult<(Outcome, MessageRow)> {
    let mut delay = FINISH_FIRST_DELAY;
    for attempt in 1.. {
        let result = match &outcome {
            Outcome::Accepted {
                provider_message_id,
            } => mark_accepted(pool, &row, provider_message_id).await,
            _ => mark_failed(pool, row.id, &outcome).await,
        };
        match result {
            Err(ApiError::Unavailable(reason)) if attempt < FINISH_ATTEMPTS => {
                tracing::warn!(%reason, attempt, "recording the send's outcome failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(error) => {
                tracing::error!(message_id = %row.id, ?outcome, %error, "the send's outcome could not be recorded");
                // Not the caller's conflict: a provider id stored twice is ours.
                return Err(match error {
                    ApiError::AlreadyExists(message) => {
                        ApiError::internal(anyhow::anyhow!(message))
                    }
                    other => other,
                });
            }
            Ok((row, true)) => return Ok((outcome, row)),
            Ok((row, false)) => {
                let stored = stored_outcome(&row);
                return Ok((stored, row));
            }
        }
    }
    unreachable!("the loop returns")
}

async fn mark_accepted(
    pool: &PgPool,
    row: &MessageRow,
    provider_id: &str,
) -> ApiResult<(MessageRow, bool)> {
    let mut tx = pool.begin().await?;
    // Before the id is stored, so a status arriving now is either deferred
    // before us (and applied below) or finds the message.
    delivery::lock_provider_id(&mut tx, &row.channel, provider_id).await?;
    let status = if row.channel == "telegram" {
        "sent"
    } else {
        "accepted"
    };
    // A send declared lost by a retry's deadline (failed, unknown_outcome) is
    // corrected: the provider's answer is the truth.
    let updated: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE messages SET provider_message_id = $2, delivery_status = $3,
            sent_time = CASE WHEN $3 = 'sent' THEN now() ELSE sent_time END,
            failed_time = NULL, error_code = NULL, error_title = NULL, error_message = NULL,
            send_retryable = false
         WHERE id = $1 AND (delivery_status = 'pending'
            OR (delivery_status = 'failed' AND error_code = $4))
         RETURNING {MESSAGE_COLUMNS}"
    )))
    .bind(row.id)
    .bind(provider_id)
    .bind(status)
    .bind(UNKNOWN_OUTCOME)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(updated) = updated else {
        tx.rollback().await?;
        return Ok((load(pool, row.id).await?, false));
    };
    if row.channel == "whatsapp" {
        windows::note_outbound(&mut tx, updated.user_id).await?;
    }
    delivery::status_changed(&mut tx, &updated).await?;
    let updated = delivery::apply_deferred(&mut tx, updated).await?;
    tx.commit().await?;
    Ok((updated, true))
}

/// Records a send the provider did not take (or may have): failed, with the
/// provider's code and title; retryable for a rate limit or an outage.
pub(super) async fn mark_failed(
    pool: &PgPool,
    id: Uuid,
    outcome: &Outcome,
) -> ApiResult<(MessageRow, bool)> {
    let (code, title) = match outcome {
        Outcome::RateLimited { code, title, .. }
        | Outcome::Outage { code, title }
        | Outcome::Refused { code, title } => (code.clone(), title.clone()),
        Outcome::Unknown { reason } => (
            UNKNOWN_OUTCOME.to_owned(),
            format!("{reason}: the message may have been sent"),
        ),
        Outcome::Accepted { .. } => unreachable!("accepted sends are not failures"),
    };
    let retryable = matches!(
        outcome,
        Outcome::RateLimited { .. } | Outcome::Outage { .. }
    );
    let mut tx = pool.begin().await?;
    let updated: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE messages SET delivery_status = 'failed', failed_time = now(),
            error_code = $2, error_title = $3, error_message = $4, send_retryable = $5
         WHERE id = $1 AND delivery_status = 'pending'
         RETURNING {MESSAGE_COLUMNS}"
    )))
    .bind(id)
    .bind(truncate(&code, 64))
    .bind(truncate(&title, 1024))
    .bind(outcome::retryable_note(outcome))
    .bind(retryable)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(updated) = updated else {
        tx.rollback().await?;
        return Ok((load(pool, id).await?, false));
    };
    delivery::status_changed(&mut tx, &updated).await?;
    tx.commit().await?;
    Ok((updated, true))
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// What a failed message's row says the provider did, for a retry's answer.
pub(super) fn stored_outcome(row: &MessageRow) -> Outcome {
    let code = row.error_code.clone().unwrap_or_default();
    let title = row.error_title.clone().unwrap_or_default();
    if code == UNKNOWN_OUTCOME {
        return Outcome::Unknown {
            reason: title
                .strip_suffix(": the message may have been sent")
                .unwrap_or(&title)
                .to_owned(),
        };
    }
    if row.send_retryable {
        return outcome::from_retryable_row(&code, &title, row.error_message.as_deref());
    }
    Outcome::Refused { code, title }
}

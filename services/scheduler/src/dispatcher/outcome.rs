//! Writing what became of a claimed item. Each write is guarded by the lease
//! (`lease_owner = me`) and the state machine (`status = ANY(allowed)`): a
//! replica that lost the item, or an item cancelled while it was sent,
//! changes nothing. When a write fails the lease expires on its own and the
//! next attempt resends with the same request_id, which conversations answers
//! with the first send.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use super::{Kind, claim::Item};
use crate::{State, recurrence};

#[derive(Debug)]
pub(super) enum Outcome {
    Sent {
        provider_message_id: String,
    },
    /// Quiet hours: try again when they end, no retry counted.
    Defer {
        until: DateTime<Utc>,
    },
    /// A refusal that may be lifted; `retry_after` is the mesh's own hint.
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Trying again would fail the same way.
    Fail {
        reason: String,
    },
    /// Trying again would fail the same way, and an operator should look:
    /// failed with a dead letter at once.
    DeadLetter {
        error: String,
    },
}

impl Outcome {
    pub fn fail(reason: impl Into<String>) -> Self {
        Self::Fail {
            reason: reason.into(),
        }
    }

    pub fn retry(error: String, retry_after: Option<Duration>) -> Self {
        Self::Retry { error, retry_after }
    }
}

/// Records `outcome`; returns when the item is due again, if it is.
pub(super) async fn record(
    state: &State,
    me: Uuid,
    item: &Item,
    outcome: Outcome,
    payload: Value,
) -> Option<DateTime<Utc>> {
    let metrics = &state.metrics;
    let kind = item.kind.label();
    // The last retry allowed is given up on like a refusal for good.
    let outcome = match outcome {
        Outcome::Retry { error, .. }
            if item.retry_count + 1 >= state.config.dispatcher.max_retries =>
        {
            Outcome::DeadLetter { error }
        }
        other => other,
    };
    let written = match outcome {
        Outcome::Sent {
            provider_message_id,
        } => match sent(state, me, item, &provider_message_id).await {
            Ok(Some(lateness)) => {
                tracing::debug!(lateness_seconds = lateness, %provider_message_id, "sent");
                metrics.sent(kind, lateness);
                Ok(None)
            }
            Ok(None) => Ok(lost(item)),
            Err(error) => Err(error),
        },
        Outcome::Defer { until } => {
            let reason = format!("deferred: quiet hours until {}", until.to_rfc3339());
            tracing::info!(%until, "deferred for quiet hours");
            metrics.outcome(kind, "deferred");
            release(state, me, item, until, &reason, false)
                .await
                .map(|moved| moved.then_some(until))
        }
        Outcome::Retry { error, retry_after } => {
            let retries = item.retry_count + 1;
            let wait =
                backoff(&state.config.dispatcher, retries).max(retry_after.unwrap_or_default());
            let at = Utc::now() + wait;
            tracing::info!(%error, retries, retry_in = ?wait, "will retry");
            metrics.outcome(kind, "retried");
            release(state, me, item, at, &format!("retrying: {error}"), true)
                .await
                .map(|moved| moved.then_some(at))
        }
        Outcome::Fail { reason } => {
            tracing::warn!(%reason, "failed");
            metrics.outcome(kind, "failed");
            fail(state, me, item, &reason, None).await.map(|_| None)
        }
        Outcome::DeadLetter { error } => {
            let retries = item.retry_count + 1;
            tracing::warn!(%error, retries, "giving up; dead-lettered");
            metrics.outcome(kind, "dead_lettered");
            fail(state, me, item, &error, Some((retries, &payload)))
                .await
                .map(|_| None)
        }
    };
    written.unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot record the outcome; the lease will expire and it is retried");
        None
    })
}

fn lost(item: &Item) -> Option<DateTime<Utc>> {
    tracing::warn!(
        id = %item.id,
        "sent, but the item was no longer ours (lease lost or status changed): left as it is"
    );
    None
}

/// The wait before the `retries`-th retry: doubling from retry_base up to
/// retry_max, with equal jitter (half fixed, half random) so that items
/// refused together do not come back together.
pub(super) fn backoff(config: &crate::config::DispatcherConfig, retries: i32) -> Duration {
    let doublings = u32::try_from(retries.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    let full = config
        .retry_base
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(config.retry_max);
    let half = full / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// pending -> sent, and the next occurrence of a recurring reminder, in one
/// transaction. The lateness (sent - scheduled, in seconds) when written.
async fn sent(
    state: &State,
    me: Uuid,
    item: &Item,
    provider_message_id: &str,
) -> anyhow::Result<Option<f64>> {
    let mut tx = state.pool.begin().await?;
    let lateness: Option<f64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "UPDATE {} SET status = 'sent', sent_time = now(), provider_message_id = $3,
                status_reason = '', lease_owner = NULL, lease_expire_time = NULL
         WHERE id = $1 AND lease_owner = $2 AND status = ANY($4)
         RETURNING extract(epoch FROM sent_time - scheduled_time)::float8",
        item.kind.table()
    )))
    .bind(item.id)
    .bind(me)
    .bind(provider_message_id)
    .bind(item.kind.allowed_from("sent"))
    .fetch_optional(&mut *tx)
    .await?;
    if lateness.is_none() {
        return Ok(None);
    }
    if item.kind == Kind::Reminder
        && let Some(next) = recurrence::create_next(&mut tx, item.id)
            .await
            .map_err(|error| anyhow::anyhow!("the next occurrence: {error}"))?
    {
        tracing::debug!(%next, "next occurrence created");
        super::wake(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(lateness)
}

/// Stores `request` as the item's `send_request` before it is sent, if the
/// item is still leased to `me`; whether it was.
pub(super) async fn pin(
    state: &State,
    me: Uuid,
    item: &Item,
    request: &Value,
) -> anyhow::Result<bool> {
    let pinned = sqlx::query(AssertSqlSafe(format!(
        "UPDATE {} SET send_request = $3
         WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
        item.kind.table()
    )))
    .bind(item.id)
    .bind(me)
    .bind(request)
    .execute(&state.pool)
    .await?
    .rows_affected();
    Ok(pinned == 1)
}

/// Back to waiting until `at`, lease released; whether it was still ours.
async fn release(
    state: &State,
    me: Uuid,
    item: &Item,
    at: DateTime<Utc>,
    reason: &str,
    count_retry: bool,
) -> anyhow::Result<bool> {
    let increment = if count_retry { 1 } else { 0 };
    let moved = sqlx::query(AssertSqlSafe(format!(
        "UPDATE {} SET next_attempt_time = $3, status_reason = $4,
                retry_count = retry_count + $5, lease_owner = NULL, lease_expire_time = NULL
         WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
        item.kind.table()
    )))
    .bind(item.id)
    .bind(me)
    .bind(at)
    .bind(reason)
    .bind(increment)
    .execute(&state.pool)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

/// pending -> failed; with `dead_letter` (retries, payload) the dead letter
/// is written in the same transaction.
async fn fail(
    state: &State,
    me: Uuid,
    item: &Item,
    reason: &str,
    dead_letter: Option<(i32, &Value)>,
) -> anyhow::Result<bool> {
    let mut tx = state.pool.begin().await?;
    let moved = sqlx::query(AssertSqlSafe(format!(
        "UPDATE {} SET status = 'failed', status_reason = $3,
                retry_count = retry_count + $4, lease_owner = NULL, lease_expire_time = NULL
         WHERE id = $1 AND lease_owner = $2 AND status = ANY($5)",
        item.kind.table()
    )))
    .bind(item.id)
    .bind(me)
    .bind(reason)
    .bind(i32::from(dead_letter.is_some()))
    .bind(item.kind.allowed_from("failed"))
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if moved && let Some((retries, payload)) = dead_letter {
        insert_dead_letter(&mut tx, item, reason, retries, payload).await?;
    }
    tx.commit().await?;
    if !moved {
        lost(item);
    }
    Ok(moved)
}

async fn insert_dead_letter(
    conn: &mut PgConnection,
    item: &Item,
    error: &str,
    retries: i32,
    payload: &Value,
) -> sqlx::Result<()> {
    // An item has at most one dead letter: a newer one replaces it, with a
    // new (time-ordered) id so that it lists where it belongs, oldest first.
    sqlx::query(
        "INSERT INTO dead_letters (id, operation, item_id, user_id, payload, error, retries)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (item_id) DO UPDATE SET id = excluded.id, operation = excluded.operation,
             payload = excluded.payload, error = excluded.error, retries = excluded.retries,
             create_time = now()",
    )
    .bind(Uuid::now_v7())
    .bind(item.kind.operation())
    .bind(item.id)
    .bind(item.user_id)
    .bind(payload)
    .bind(error)
    .bind(retries)
    .execute(conn)
    .await?;
    Ok(())
}

//! Carrying erasures on: one attempt calls every context that has not
//! answered yet; the last one to answer lets the user go.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::join_all;
use mesh_runtime::{ApiResult, idempotency, purge::delete_user_rows};
use sqlx::{PgConnection, types::Json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use mesh_runtime::client::did_not_answer;

use super::{Claim, Context, Erasures, USERS_STEP, backoff, describe};

/// How often the worker looks for due erasures it was not woken for (those
/// of other replicas, or left by a restart).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Runs due erasures until `shutdown`; an attempt under way is finished
/// first (it is bounded by the purge deadline, and a cut one is only
/// repeated: every call is idempotent).
pub async fn run_worker(erasures: Arc<Erasures>, shutdown: CancellationToken) {
    loop {
        match erasures.attempt_due().await {
            // Something was due: look again at once, unless draining.
            Ok(true) if !shutdown.is_cancelled() => continue,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "erasure attempt failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = erasures.wake.notified() => {}
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

impl Erasures {
    /// Claims the most overdue erasure and makes one attempt at it. Returns
    /// whether one was due (one claimed by another worker is left to it).
    pub(super) async fn attempt_due(&self) -> ApiResult<bool> {
        // The claim is the lease itself: the erasure is not due again until
        // this attempt had time to finish (or its worker died).
        let claimed: Option<Claim> = sqlx::query_as(
            "UPDATE erasures SET next_attempt_time = clock_timestamp() + $1::interval
             WHERE id = (SELECT id FROM erasures
                         WHERE state = 'running' AND next_attempt_time <= now()
                         ORDER BY next_attempt_time LIMIT 1
                         FOR UPDATE SKIP LOCKED)
             RETURNING id, user_id, phone",
        )
        .bind(self.lease)
        .fetch_optional(&self.pool)
        .await?;
        let Some(claim) = claimed else {
            return Ok(false);
        };
        self.attempt(claim).await?;
        Ok(true)
    }

    /// One attempt at a claimed erasure: calls every context that has not
    /// answered yet, records each outcome, then either removes the user
    /// (all answered) or sets when to try again. No transaction is open
    /// while the contexts are called.
    #[tracing::instrument(skip_all, fields(erasure = %claim.id))]
    pub(super) async fn attempt(&self, claim: Claim) -> ApiResult<()> {
        let Claim {
            id,
            user_id: user,
            phone,
        } = claim;
        let pending: Vec<String> = sqlx::query_scalar(
            "SELECT context FROM erasure_steps
             WHERE erasure_id = $1 AND complete_time IS NULL AND context <> $2
             ORDER BY position",
        )
        .bind(id)
        .bind(USERS_STEP)
        .fetch_all(&self.pool)
        .await?;

        // The request id is the erasure's: a call whose answer was lost is
        // answered from the context's record the next time. The phone is the
        // one taken when the erasure began, so every call asks the same.
        let request_id = format!("erasure:{id}");
        let phone = phone.unwrap_or_default();
        let (phone, request_id) = (&phone, &request_id);
        let calls = pending.iter().map(|name| async move {
            let result = match Context::from_name(name) {
                Some(context) => self
                    .contexts
                    .purge(context, user, phone, request_id)
                    .await
                    .map_err(|status| (describe(context, &status), did_not_answer(status.code()))),
                None => Err((format!("unknown context {name}"), false)),
            };
            (name.as_str(), result)
        });
        let mut failed_attempts = Vec::new();
        for (context, result) in join_all(calls).await {
            match result {
                Ok(deleted) => {
                    record(&self.pool, id, context, Ok(&deleted)).await?;
                    tracing::info!(context, ?deleted, "context erased the user");
                }
                Err((error, outage)) => {
                    failed_attempts.push(record(&self.pool, id, context, Err(&error)).await?);
                    if outage {
                        tracing::warn!(context, error, "context did not answer; retrying");
                    } else {
                        // A refusal needs someone to look: a configuration or
                        // a deploy. It is retried all the same, since the
                        // erasure must happen once that is fixed.
                        tracing::error!(context, error, "context refused the purge; retrying");
                    }
                }
            }
        }

        if let Some(attempts) = failed_attempts.into_iter().max() {
            sqlx::query(
                "UPDATE erasures SET next_attempt_time = clock_timestamp() + $2::interval
                 WHERE id = $1 AND state = 'running'",
            )
            .bind(id)
            .bind(backoff(attempts, self.retry_max))
            .execute(&self.pool)
            .await?;
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        // Locked and checked again: a worker whose claim lapsed may have
        // finished it meanwhile.
        let state: String =
            sqlx::query_scalar("SELECT state FROM erasures WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if state == "running" {
            let deleted = remove_user(&mut tx, user).await?;
            record(&mut *tx, id, USERS_STEP, Ok(&deleted)).await?;
            sqlx::query(
                "UPDATE erasures SET state = 'done', phone = NULL, complete_time = clock_timestamp()
                 WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tracing::info!(%user, "user erased from every context");
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Records one call to `context`: what it erased, or why it failed. Returns
/// the step's attempts so far. Times are `clock_timestamp()`: inside the
/// finishing transaction `now()` would be when it began.
async fn record<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    erasure: Uuid,
    context: &str,
    outcome: Result<&HashMap<String, i64>, &str>,
) -> ApiResult<i32> {
    let (deleted, error) = match outcome {
        Ok(deleted) => (Some(Json(deleted)), ""),
        Err(error) => (None, error),
    };
    Ok(sqlx::query_scalar(
        "UPDATE erasure_steps
         SET attempts = attempts + 1,
             last_attempt_time = clock_timestamp(),
             last_error = $3,
             deleted = coalesce($4, deleted),
             complete_time = CASE WHEN $4 IS NULL THEN NULL ELSE clock_timestamp() END
         WHERE erasure_id = $1 AND context = $2
         RETURNING attempts",
    )
    .bind(erasure)
    .bind(context)
    .bind(error)
    .bind(deleted)
    .fetch_one(executor)
    .await?)
}

/// Removes the user and everything this service holds for them, counted by
/// table (each counted before the row it hangs off goes, so the counts are
/// what each table lost, not what cascaded).
async fn remove_user(conn: &mut PgConnection, user: Uuid) -> ApiResult<HashMap<String, i64>> {
    let mut deleted = HashMap::new();
    delete_user_rows(
        conn,
        user,
        &["devices", "link_tokens", "agent_preferences", "onboarding"],
        &mut deleted,
    )
    .await?;
    let projects = sqlx::query(
        "DELETE FROM projects WHERE workspace_id IN (SELECT id FROM workspaces WHERE owner_user_id = $1)",
    )
    .bind(user)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let workspaces = sqlx::query("DELETE FROM workspaces WHERE owner_user_id = $1")
        .bind(user)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    // Flag targets name the user by id only, with no foreign key.
    let flag_targets = sqlx::query(
        "UPDATE feature_flags SET target_user_ids = array_remove(target_user_ids, $1)
         WHERE $1 = ANY (target_user_ids)",
    )
    .bind(user)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // Stored answers of earlier calls (CreateUser's holds the phone and names).
    let answers = idempotency::forget_user(conn, user, "").await?;
    let users = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(user)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    for (table, n) in [
        ("projects", projects),
        ("workspaces", workspaces),
        ("feature_flag_targets", flag_targets),
        ("idempotency_keys", answers),
        ("users", users),
    ] {
        deleted.insert(table.to_owned(), n as i64);
    }
    Ok(deleted)
}

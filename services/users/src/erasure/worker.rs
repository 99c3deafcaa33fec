//! Carrying erasures on: one attempt calls every context that has not
//! answered yet; the last one to answer lets the user go.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::join_all;
use mesh_runtime::{
    ApiResult,
    purge::{delete_user_rows, forget_answers},
};
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
             RETURNING id, user_id, phone, sweep_after IS NOT NULL AS first_done",
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

    /// One attempt at a claimed erasure. The first round calls every
    /// context that has not answered yet; once all have, and the settle
    /// time has passed, the sweep calls each once more (with its own request
    /// id), and once all have answered that too the user is removed. Each
    /// outcome is recorded as it comes; a failure sets when to try again. No
    /// transaction is open while the contexts are called.
    #[tracing::instrument(skip_all, fields(erasure = %claim.id))]
    pub(super) async fn attempt(&self, claim: Claim) -> ApiResult<()> {
        let mut steps = self.steps(claim.id).await?;
        if !claim.first_done {
            let first: Vec<&str> = steps
                .iter()
                .filter(|step| !step.purged)
                .map(|step| step.context.as_str())
                .collect();
            // The request id is the erasure's: a call whose answer was lost
            // is answered from the context's record the next time.
            let request_id = format!("erasure:{}", claim.id);
            let answers = self.call(&claim, &first, &request_id).await;
            if !self.record_round(claim.id, answers, Round::First).await? {
                return Ok(());
            }
            sqlx::query(
                "UPDATE erasures SET sweep_after = clock_timestamp() + $2::interval,
                                     next_attempt_time = clock_timestamp() + $2::interval
                 WHERE id = $1",
            )
            .bind(claim.id)
            .bind(self.settle)
            .execute(&self.pool)
            .await?;
            if !self.settle.is_zero() {
                // The worker comes back for the sweep when it is due.
                return Ok(());
            }
            // Read again: the first round just recorded its counts, which
            // the sweep's add to.
            steps = self.steps(claim.id).await?;
        }

        let unswept: Vec<&Step> = steps.iter().filter(|step| !step.swept).collect();
        let names: Vec<&str> = unswept.iter().map(|step| step.context.as_str()).collect();
        let request_id = format!("erasure:{}:sweep", claim.id);
        let mut answers = self.call(&claim, &names, &request_id).await;
        for (context, answer) in &mut answers {
            let before = unswept.iter().find(|step| step.context == *context);
            if let (Ok(deleted), Some(before)) = (answer, before) {
                for (table, n) in &before.deleted.0 {
                    *deleted.entry(table.clone()).or_default() += n;
                }
            }
        }
        if !self.record_round(claim.id, answers, Round::Sweep).await? {
            return Ok(());
        }
        self.finish(claim.id, claim.user_id).await
    }

    /// The erasure's steps for the other contexts, in order.
    async fn steps(&self, erasure: Uuid) -> ApiResult<Vec<Step>> {
        Ok(sqlx::query_as(
            "SELECT context, complete_time IS NOT NULL AS purged,
                    sweep_time IS NOT NULL AS swept, deleted
             FROM erasure_steps WHERE erasure_id = $1 AND context <> $2 ORDER BY position",
        )
        .bind(erasure)
        .bind(USERS_STEP)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Calls PurgeUser on each of `contexts` at once.
    async fn call<'n>(
        &self,
        claim: &Claim,
        contexts: &[&'n str],
        request_id: &str,
    ) -> Vec<(&'n str, Answer)> {
        let phone = claim.phone.as_deref().unwrap_or_default();
        let calls = contexts.iter().map(|name| async move {
            let answer = match Context::from_name(name) {
                Some(context) => self
                    .contexts
                    .purge(context, claim.user_id, phone, request_id)
                    .await
                    .map_err(|status| Failure {
                        error: describe(context, &status),
                        outage: did_not_answer(status.code()),
                    }),
                None => Err(Failure {
                    error: format!("unknown context {name}"),
                    outage: false,
                }),
            };
            (*name, answer)
        });
        join_all(calls).await
    }

    /// Records a round's answers; when any failed, sets when to try again
    /// and returns false.
    async fn record_round(
        &self,
        erasure: Uuid,
        answers: Vec<(&str, Answer)>,
        round: Round,
    ) -> ApiResult<bool> {
        let mut failed_attempts = Vec::new();
        for (context, answer) in answers {
            match answer {
                Ok(deleted) => {
                    record(&self.pool, erasure, context, round, Ok(&deleted)).await?;
                    tracing::info!(context, ?round, ?deleted, "context erased the user");
                }
                Err(Failure { error, outage }) => {
                    let attempts = record(&self.pool, erasure, context, round, Err(&error)).await?;
                    failed_attempts.push(attempts);
                    if outage {
                        tracing::warn!(context, ?round, error, "context did not answer; retrying");
                    } else {
                        // A refusal needs someone to look: a configuration or
                        // a deploy. It is retried all the same, since the
                        // erasure must happen once that is fixed.
                        tracing::error!(
                            context,
                            ?round,
                            error,
                            "context refused the purge; retrying"
                        );
                    }
                }
            }
        }
        let Some(attempts) = failed_attempts.into_iter().max() else {
            return Ok(true);
        };
        sqlx::query(
            "UPDATE erasures SET next_attempt_time = clock_timestamp() + $2::interval
             WHERE id = $1 AND state = 'running'",
        )
        .bind(erasure)
        .bind(backoff(attempts, self.retry_max))
        .execute(&self.pool)
        .await?;
        Ok(false)
    }

    /// Removes the user once every context answered both rounds, in the
    /// transaction that marks the erasure done.
    async fn finish(&self, erasure: Uuid, user: Uuid) -> ApiResult<()> {
        let mut tx = self.pool.begin().await?;
        // Locked and checked again: a worker whose claim lapsed may have
        // finished it meanwhile.
        let state: String =
            sqlx::query_scalar("SELECT state FROM erasures WHERE id = $1 FOR UPDATE")
                .bind(erasure)
                .fetch_one(&mut *tx)
                .await?;
        if state == "running" {
            let deleted = remove_user(&mut tx, user).await?;
            record(&mut *tx, erasure, USERS_STEP, Round::First, Ok(&deleted)).await?;
            sqlx::query(
                "UPDATE erasures SET state = 'done', phone = NULL, complete_time = clock_timestamp()
                 WHERE id = $1",
            )
            .bind(erasure)
            .execute(&mut *tx)
            .await?;
            tracing::info!(%user, "user erased from every context");
        }
        tx.commit().await?;
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct Step {
    context: String,
    /// The first round is done.
    purged: bool,
    /// The sweep is done.
    swept: bool,
    deleted: Json<HashMap<String, i64>>,
}

/// Which round a call belongs to.
#[derive(Clone, Copy, Debug)]
enum Round {
    First,
    Sweep,
}

/// What a context answered: the rows it erased, by table.
type Answer = Result<HashMap<String, i64>, Failure>;

struct Failure {
    error: String,
    /// The context did not answer (rather than refused).
    outage: bool,
}

/// Records one call to `context`: what it erased (for the sweep, the
/// totals of both rounds), or why it failed. Returns the step's attempts so
/// far. Times are `clock_timestamp()`: inside the finishing transaction
/// `now()` would be when it began.
async fn record<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    erasure: Uuid,
    context: &str,
    round: Round,
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
             complete_time = CASE WHEN $4 IS NOT NULL AND NOT $5 THEN clock_timestamp()
                                  ELSE complete_time END,
             sweep_time = CASE WHEN $4 IS NOT NULL AND $5 THEN clock_timestamp()
                               ELSE sweep_time END
         WHERE erasure_id = $1 AND context = $2
         RETURNING attempts",
    )
    .bind(erasure)
    .bind(context)
    .bind(error)
    .bind(deleted)
    .bind(matches!(round, Round::Sweep))
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
    forget_answers(conn, user, &mut deleted).await?;
    let users = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(user)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    for (table, n) in [
        ("projects", projects),
        ("workspaces", workspaces),
        ("feature_flag_targets", flag_targets),
        ("users", users),
    ] {
        deleted.insert(table.to_owned(), n as i64);
    }
    Ok(deleted)
}

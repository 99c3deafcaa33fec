//! Erasing a user from the whole mesh (users.DeleteUser and GetErasure).
//!
//! DeleteUser records an erasure, one step per context, and makes the first
//! attempt at once: every other context's PurgeUser in parallel. Once all of
//! them answered, the user's rows here go, in the transaction that marks the
//! erasure done. Contexts that did not answer are retried by the worker
//! (worker.rs) with backoff. Everything is in Postgres, so an erasure
//! survives restarts, and any replica may carry it on: a claim is a row lock
//! (`SKIP LOCKED`) held while one attempt runs, released at once if the
//! process dies.

mod contexts;
mod worker;

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use mesh_proto::mesh::users::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    client::did_not_answer,
    convert::{parse_uuid, timestamp},
    idempotency,
};
use sqlx::{PgPool, types::Json};
use tokio::sync::Notify;
use uuid::Uuid;

pub use contexts::{Context, Contexts};
pub use worker::run_worker;

use crate::State;

/// The step that removes the user from this service, always last.
const USERS_STEP: &str = "users";

/// What erasures need: the database, the other contexts, and how to retry.
pub struct Erasures {
    pool: PgPool,
    contexts: Contexts,
    retry_max: Duration,
    /// Wakes the worker when a first attempt left work behind.
    wake: Notify,
}

impl Erasures {
    pub fn new(pool: PgPool, contexts: Contexts, retry_max: Duration) -> Arc<Self> {
        Arc::new(Self {
            pool,
            contexts,
            retry_max,
            wake: Notify::new(),
        })
    }
}

#[derive(sqlx::FromRow)]
struct ErasureRow {
    id: Uuid,
    user_id: Uuid,
    request_id: String,
    state: String,
    next_attempt_time: DateTime<Utc>,
    create_time: DateTime<Utc>,
    complete_time: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct StepRow {
    context: String,
    deleted: Json<HashMap<String, i64>>,
    attempts: i32,
    last_error: String,
    last_attempt_time: Option<DateTime<Utc>>,
    complete_time: Option<DateTime<Utc>>,
}

/// DeleteUser: starts the user's erasure (or finds the one already started)
/// and answers it as it stands after a first attempt.
#[tracing::instrument(skip(state))]
pub async fn delete_user(
    state: &State,
    request: pb::DeleteUserRequest,
) -> ApiResult<pb::DeleteUserResponse> {
    let erasures = &state.erasures;
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let user = user.expect("validated");

    let (id, started) = begin(erasures, user, &request.request_id).await?;
    if started {
        // The first attempt runs here so that, with every context up, the
        // caller sees the erasure done. A failure is the worker's to retry.
        if let Err(error) = erasures.attempt(Some(id)).await {
            tracing::warn!(%error, erasure = %id, "first erasure attempt failed; the worker retries");
        }
        erasures.wake.notify_one();
    }
    Ok(pb::DeleteUserResponse {
        erasure: Some(load(&erasures.pool, id).await?),
    })
}

/// GetErasure.
#[tracing::instrument(skip(state))]
pub async fn get_erasure(
    state: &State,
    request: pb::GetErasureRequest,
) -> ApiResult<pb::GetErasureResponse> {
    let erasures = &state.erasures;
    let id = parse_uuid("erasure_id", &request.erasure_id)?;
    Ok(pb::GetErasureResponse {
        erasure: Some(load(&erasures.pool, id).await?),
    })
}

/// Whether `user` is being erased: lookups that feed new data into the mesh
/// (by phone, by Telegram id) refuse them meanwhile. Only an inactive user
/// can be, so active ones cost no query.
pub async fn refuse_if_erasing(pool: &PgPool, user: Uuid, is_active: bool) -> ApiResult<()> {
    if is_active {
        return Ok(());
    }
    let erasing: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM erasures WHERE user_id = $1 AND state = 'running')",
    )
    .bind(user)
    .fetch_one(pool)
    .await?;
    if erasing {
        return Err(ApiError::Unavailable(format!(
            "user {user} is being erased; retry later"
        )));
    }
    Ok(())
}

/// Records the erasure of `user` with one step per configured context and
/// one for this service, and marks the user inactive. Returns its id and
/// whether it is new (a repeat finds the first one, even once it is done).
#[tracing::instrument(skip(erasures))]
async fn begin(erasures: &Erasures, user: Uuid, request_id: &str) -> ApiResult<(Uuid, bool)> {
    let mut tx = erasures.pool.begin().await?;
    if let Some(id) = existing(&mut tx, user).await? {
        return Ok((id, false));
    }
    if !request_id.is_empty() {
        // A request id names one request: reused for another user, the
        // caller has mixed two up.
        let other: Option<Uuid> =
            sqlx::query_scalar("SELECT user_id FROM erasures WHERE request_id = $1 LIMIT 1")
                .bind(request_id)
                .fetch_optional(&mut *tx)
                .await?;
        if other.is_some() {
            return Err(ApiError::invalid(
                "request_id",
                "already used to erase another user",
            ));
        }
    }
    // Locks the user's row: a concurrent DeleteUser waits here, then finds
    // this erasure through the conflict below.
    let found = sqlx::query("UPDATE users SET is_active = false WHERE id = $1")
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if found == 0 {
        return Err(ApiError::not_found(format!("no user with id {user}")));
    }
    let id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO erasures (id, user_id, request_id) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO NOTHING RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(request_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        drop(tx);
        let mut conn = erasures.pool.acquire().await?;
        let id = existing(&mut conn, user).await?.ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "erasure of {user} conflicted but is absent"
            ))
        })?;
        return Ok((id, false));
    };
    let steps: Vec<&str> = erasures
        .contexts
        .names()
        .map(Context::name)
        .chain([USERS_STEP])
        .collect();
    sqlx::query(
        "INSERT INTO erasure_steps (erasure_id, context, position)
         SELECT $1, context, position::smallint FROM unnest($2::text[]) WITH ORDINALITY AS s (context, position)",
    )
    .bind(id)
    .bind(&steps)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(erasure = %id, %user, "erasure started");
    Ok((id, true))
}

async fn existing(conn: &mut sqlx::PgConnection, user: Uuid) -> ApiResult<Option<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM erasures WHERE user_id = $1")
            .bind(user)
            .fetch_optional(conn)
            .await?,
    )
}

/// The erasure `id` with its steps, as the API shows it.
#[tracing::instrument(skip(pool))]
async fn load(pool: &PgPool, id: Uuid) -> ApiResult<pb::Erasure> {
    let erasure: ErasureRow = sqlx::query_as("SELECT * FROM erasures WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no erasure with id {id}")))?;
    let steps: Vec<StepRow> = sqlx::query_as(
        "SELECT context, deleted, attempts, last_error, last_attempt_time, complete_time
         FROM erasure_steps WHERE erasure_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let running = erasure.state == "running";
    Ok(pb::Erasure {
        erasure_id: erasure.id.to_string(),
        user_id: erasure.user_id.to_string(),
        state: if running {
            pb::ErasureState::Running
        } else {
            pb::ErasureState::Done
        } as i32,
        steps: steps
            .into_iter()
            .map(|step| {
                let done = step.complete_time.is_some();
                pb::ErasureStep {
                    context: step.context,
                    done,
                    deleted: step.deleted.0,
                    attempts: step.attempts,
                    last_error: step.last_error,
                    last_attempt_time: step.last_attempt_time.map(timestamp),
                    complete_time: step.complete_time.map(timestamp),
                    next_attempt_time: (!done && running)
                        .then(|| timestamp(erasure.next_attempt_time)),
                }
            })
            .collect(),
        request_id: erasure.request_id,
        create_time: Some(timestamp(erasure.create_time)),
        complete_time: erasure.complete_time.map(timestamp),
    })
}

/// The wait before the next attempt after `attempts` failed ones: doubling
/// from half a second, at most `max`.
fn backoff(attempts: i32, max: Duration) -> Duration {
    let doublings = attempts.clamp(1, 20) as u32 - 1;
    (Duration::from_millis(500) * 2u32.pow(doublings)).min(max)
}

/// How a failed purge call is recorded: the code, and the message unless the
/// callee simply did not answer (then the code says it all).
fn describe(context: Context, status: &tonic::Status) -> String {
    if did_not_answer(status.code()) {
        format!("{} did not answer: {:?}", context.name(), status.code())
    } else {
        format!(
            "{}: {:?} {}",
            context.name(),
            status.code(),
            status.message()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_the_maximum() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(1, max), Duration::from_millis(500));
        assert_eq!(backoff(2, max), Duration::from_secs(1));
        assert_eq!(backoff(5, max), Duration::from_secs(8));
        assert_eq!(backoff(8, max), max);
        assert_eq!(backoff(i32::MAX, max), max);
        assert_eq!(backoff(0, max), Duration::from_millis(500));
    }
}

//! Erasing a user from the whole mesh (users.DeleteUser and GetErasure).
//!
//! DeleteUser marks the user, records an erasure with one step per context,
//! and makes the first attempt at once: every other context's PurgeUser in
//! parallel. Once all of them answered, the user's rows here go, in the
//! transaction that marks the erasure done. Contexts that did not answer are
//! retried by the worker (worker.rs) with backoff. Everything is in Postgres,
//! so an erasure survives restarts, and any replica may carry it on: an
//! attempt claims the erasure with a lease (its `next_attempt_time` moved past
//! the attempt's longest run), and no transaction stays open while the other
//! contexts are called.

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

use crate::{State, config::ErasureConfig};

/// The step that removes the user from this service, always last.
const USERS_STEP: &str = "users";

/// What erasures need: the database, the other contexts, and how to retry.
pub struct Erasures {
    pool: PgPool,
    contexts: Contexts,
    retry_max: Duration,
    /// How long an attempt's claim lasts: one round of calls, with margin.
    lease: Duration,
    /// The wait between the first round of purges and the sweep.
    settle: Duration,
    /// Wakes the worker when a first attempt left work behind.
    wake: Notify,
}

impl Erasures {
    pub fn new(pool: PgPool, contexts: Contexts, config: &ErasureConfig) -> Arc<Self> {
        if contexts.names().next().is_none() {
            tracing::warn!(
                "no other context is configured: erasures remove the user from this service only"
            );
        }
        Arc::new(Self {
            pool,
            contexts,
            retry_max: config.retry_max,
            lease: config.purge_timeout + Duration::from_secs(5),
            settle: config.settle,
            wake: Notify::new(),
        })
    }
}

/// An erasure an attempt has claimed.
#[derive(sqlx::FromRow)]
struct Claim {
    id: Uuid,
    user_id: Uuid,
    /// The user's phone when the erasure began.
    phone: Option<String>,
    /// Every context answered the first round, so the sweep is due: the
    /// first round's last write sets `sweep_after` and `next_attempt_time`
    /// together, and a worker claims only once `next_attempt_time` passed.
    first_done: bool,
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
    sweep_time: Option<DateTime<Utc>>,
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

    let id = match begin(erasures, user, &request.request_id).await? {
        Begun::Already(id) => id,
        Begun::Started(claim) => {
            // The first attempt runs here so that, with every context up, the
            // caller sees the erasure done. Its claim was taken with the
            // erasure, so no worker races it; what it leaves, the worker
            // retries once the claim lapses or the backoff says.
            let id = claim.id;
            if let Err(error) = erasures.attempt(claim).await {
                tracing::warn!(%error, erasure = %id, "first erasure attempt failed; the worker retries");
            }
            erasures.wake.notify_one();
            id
        }
    };
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

/// Refuses a user whose erasure began (`erase_time`): lookups that feed new
/// data into the mesh, and writes to the user, answer UNAVAILABLE. Once the
/// erasure is done the user is gone, and a retry finds no one (or, by phone,
/// makes a new user).
pub fn refuse_if_erasing(user: Uuid, erase_time: Option<DateTime<Utc>>) -> ApiResult<()> {
    match erase_time {
        None => Ok(()),
        Some(_) => Err(ApiError::Unavailable(format!(
            "user {user} is being erased; retry later"
        ))),
    }
}

/// What DeleteUser found or started.
enum Begun {
    /// The user's erasure, begun earlier (perhaps done).
    Already(Uuid),
    /// A new erasure, claimed for its first attempt.
    Started(Claim),
}

/// Marks `user` as being erased and records their erasure, with one step
/// per configured context and one for this service; the new erasure comes
/// back claimed for its first attempt. A repeat finds the first erasure,
/// even once it is done and the user gone.
#[tracing::instrument(skip(erasures))]
async fn begin(erasures: &Erasures, user: Uuid, request_id: &str) -> ApiResult<Begun> {
    let mut tx = erasures.pool.begin().await?;
    // Locks the user's row first: a concurrent DeleteUser waits here, then
    // finds this erasure below.
    let phone: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE users SET is_active = false, erase_time = coalesce(erase_time, now())
         WHERE id = $1 RETURNING phone",
    )
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = existing(&mut tx, user).await? {
        return Ok(Begun::Already(id));
    }
    let Some(phone) = phone else {
        return Err(ApiError::not_found(format!("no user with id {user}")));
    };
    let reused = || ApiError::invalid("request_id", "already used to erase another user");
    if !request_id.is_empty() {
        let taken: Option<i32> = sqlx::query_scalar("SELECT 1 FROM erasures WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(reused());
        }
    }
    let claim: Claim = sqlx::query_as(
        "INSERT INTO erasures (id, user_id, request_id, phone, next_attempt_time)
         VALUES ($1, $2, $3, $4, clock_timestamp() + $5::interval)
         RETURNING id, user_id, phone, false AS first_done",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(request_id)
    .bind(phone)
    .bind(erasures.lease)
    .fetch_one(&mut *tx)
    .await
    .map_err(|error| match &error {
        // The same request id, for another user, in a concurrent call.
        sqlx::Error::Database(db) if db.constraint() == Some("erasures_request_id") => reused(),
        _ => ApiError::from(error),
    })?;
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
    .bind(claim.id)
    .bind(&steps)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(erasure = %claim.id, %user, "erasure started");
    Ok(Begun::Started(claim))
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
        "SELECT context, deleted, attempts, last_error, last_attempt_time, complete_time,
                sweep_time
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
                // The users step has no sweep: it is the last thing done.
                let waiting = !done || (step.sweep_time.is_none() && step.context != USERS_STEP);
                pb::ErasureStep {
                    context: step.context,
                    done,
                    deleted: step.deleted.0,
                    attempts: step.attempts,
                    last_error: step.last_error,
                    last_attempt_time: step.last_attempt_time.map(timestamp),
                    complete_time: step.complete_time.map(timestamp),
                    next_attempt_time: (waiting && running)
                        .then(|| timestamp(erasure.next_attempt_time)),
                    sweep_time: step.sweep_time.map(timestamp),
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

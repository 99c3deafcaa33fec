//! Sends the dispatcher gave up on: list, retry, discard.
//!
//! The dispatcher writes a dead letter when it fails an item; the item stays
//! failed until RetryDeadLetter puts it back to pending (and removes the dead
//! letter) or the user cancels it.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::scheduler::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{json_to_struct, parse_uuid, timestamp},
    pagination::{Page, next_page},
    wire::optional_uuid,
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{State, checkins, dispatcher, reminders, status, wire::dead_letter_operation};

#[derive(sqlx::FromRow)]
struct DeadLetterRow {
    id: Uuid,
    operation: String,
    item_id: Uuid,
    user_id: Uuid,
    payload: serde_json::Value,
    error: String,
    retries: i32,
    create_time: DateTime<Utc>,
}

impl DeadLetterRow {
    fn into_pb(self) -> pb::DeadLetter {
        pb::DeadLetter {
            id: self.id.to_string(),
            operation: dead_letter_operation::parse(&self.operation) as i32,
            item_id: self.item_id.to_string(),
            user_id: self.user_id.to_string(),
            payload: Some(json_to_struct(&self.payload)),
            error: self.error,
            retries: self.retries,
            create_time: Some(timestamp(self.create_time)),
        }
    }
}

#[tracing::instrument(skip_all)]
pub async fn list(
    state: &State,
    request: pb::ListDeadLettersRequest,
) -> ApiResult<pb::ListDeadLettersResponse> {
    let mut violations = Violations::default();
    let user = violations.check(optional_uuid("user_id", &request.user_id));
    let page = Page::<Uuid>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (user, page) = (user.expect("checked"), page.expect("checked"));
    // Ids are UUIDv7: their order is the order the dead letters were written.
    let mut rows: Vec<DeadLetterRow> = sqlx::query_as(
        "SELECT id, operation, item_id, user_id, payload, error, retries, create_time
         FROM dead_letters
         WHERE ($1::uuid IS NULL OR user_id = $1)
           AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id
         LIMIT $3",
    )
    .bind(user)
    .bind(page.after)
    .bind(page.size + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_page_token = next_page(&mut rows, page.size, |row| row.id.to_string());
    Ok(pb::ListDeadLettersResponse {
        dead_letters: rows.into_iter().map(DeadLetterRow::into_pb).collect(),
        next_page_token,
    })
}

#[tracing::instrument(skip_all)]
pub async fn retry(
    state: &State,
    request: pb::RetryDeadLetterRequest,
) -> ApiResult<pb::RetryDeadLetterResponse> {
    let id = parse_uuid("dead_letter_id", &request.dead_letter_id)?;
    let mut tx = state.pool.begin().await?;
    // Locked, so two retries of one dead letter revive its item once.
    let (operation, item): (String, Uuid) =
        sqlx::query_as("SELECT operation, item_id FROM dead_letters WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no dead letter {id}")))?;
    let response = match operation.as_str() {
        "send_reminder" => {
            revive(&mut tx, "reminders", item).await?;
            pb::RetryDeadLetterResponse {
                reminder: Some(reminders::fetch(&mut tx, item).await?),
                check_in: None,
            }
        }
        "send_check_in" => {
            revive(&mut tx, "check_ins", item).await?;
            pb::RetryDeadLetterResponse {
                reminder: None,
                check_in: Some(checkins::fetch(&mut tx, item).await?),
            }
        }
        other => {
            return Err(ApiError::internal(anyhow::anyhow!(
                "dead letter {id} has unknown operation {other:?}"
            )));
        }
    };
    sqlx::query("DELETE FROM dead_letters WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    dispatcher::wake(&mut tx).await?;
    tx.commit().await?;
    Ok(response)
}

/// Puts item `id` of `table` (reminders or check_ins) back to pending, due
/// now with its retries reset; FAILED_PRECONDITION, changing nothing, when
/// it is no longer failed (a reminder the user cancelled meanwhile stays
/// cancelled). failed -> pending is a transition of both state machines.
async fn revive(conn: &mut PgConnection, table: &str, id: Uuid) -> ApiResult<()> {
    // `table` is one of the two literals above, not input.
    let current: Option<(String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH revived AS (
             UPDATE {table} SET status = 'pending', status_reason = '', retry_count = 0,
                 next_attempt_time = now(), lease_owner = NULL, lease_expire_time = NULL
             WHERE id = $1 AND status = $2
             RETURNING id
         )
         SELECT status, EXISTS (SELECT 1 FROM revived) FROM {table} WHERE id = $1"
    )))
    .bind(id)
    .bind(status::FAILED)
    .fetch_optional(conn)
    .await?;
    match current {
        Some((_, true)) => Ok(()),
        Some((status, false)) => Err(ApiError::FailedPrecondition(format!(
            "the item {id} is {status}, no longer failed; the dead letter is kept"
        ))),
        None => Err(ApiError::FailedPrecondition(format!(
            "the item {id} no longer exists; discard the dead letter"
        ))),
    }
}

#[tracing::instrument(skip_all)]
pub async fn discard(
    state: &State,
    request: pb::DiscardDeadLetterRequest,
) -> ApiResult<pb::DiscardDeadLetterResponse> {
    let id = parse_uuid("dead_letter_id", &request.dead_letter_id)?;
    let deleted = sqlx::query("DELETE FROM dead_letters WHERE id = $1")
        .bind(id)
        .execute(&state.pool)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found(format!("no dead letter {id}")));
    }
    Ok(pb::DiscardDeadLetterResponse {})
}

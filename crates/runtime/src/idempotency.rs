//! `request_id` on retryable RPCs: the first call does the work and stores its
//! answer in the same transaction; a retry with the same id gets that answer
//! back and changes nothing. A concurrent retry waits on the first call's row
//! lock, then reads its answer. If the first call failed, nothing was stored
//! and a retry does the work afresh.
//!
//! Each service's schema has the table (see the users migrations):
//! `idempotency_keys(operation, request_id, request, response, user_id,
//! create_time)`. Keys expire after [`RETENTION`] (the server bootstrap prunes
//! them), and [`forget_user`] erases those about one user.

use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{ApiError, ApiResult};

pub const MAX_REQUEST_ID_LEN: usize = 128;

/// How long a retry still gets the first answer.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Which call a stored answer belongs to.
pub struct Key<'a> {
    /// The RPC name.
    pub operation: &'static str,
    /// The caller's `request_id`; empty means no deduplication was asked for.
    pub request_id: &'a str,
    /// The user the answer is about, if any: erasing them erases it.
    pub user_id: Option<Uuid>,
}

/// A `request_id` is optional, at most [`MAX_REQUEST_ID_LEN`] characters.
/// Handlers check it with their other fields, so every bad field is named.
pub fn check_request_id(request_id: &str) -> Result<(), crate::FieldViolation> {
    if request_id.chars().count() > MAX_REQUEST_ID_LEN || request_id.contains('\0') {
        return Err(crate::FieldViolation::new(
            "request_id",
            format!("must be at most {MAX_REQUEST_ID_LEN} characters, without NUL"),
        ));
    }
    Ok(())
}

/// Runs `work` once per (`operation`, `request_id`).
pub async fn run_once<Req, Resp, F>(
    pool: &PgPool,
    key: Key<'_>,
    request: &Req,
    work: F,
) -> ApiResult<Resp>
where
    Req: Message,
    Resp: Message + Default,
    F: AsyncFnOnce(&mut PgConnection) -> ApiResult<Resp>,
{
    let Key {
        operation,
        request_id,
        user_id,
    } = key;
    check_request_id(request_id)?;
    let mut tx = pool.begin().await?;
    if request_id.is_empty() {
        let response = work(&mut tx).await?;
        tx.commit().await?;
        return Ok(response);
    }

    // A digest, not the request: requests hold personal data (a purge's
    // phone, a signup's names) and the stored answers of purges outlive it.
    let encoded = request.encode_to_vec();
    let fingerprint = Sha256::digest(&encoded).to_vec();
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (operation, request_id, request, user_id)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(operation)
    .bind(request_id)
    .bind(&fingerprint)
    .bind(user_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        let response = work(&mut tx).await?;
        sqlx::query(
            "UPDATE idempotency_keys SET response = $3 WHERE operation = $1 AND request_id = $2",
        )
        .bind(operation)
        .bind(request_id)
        .bind(response.encode_to_vec())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(response);
    }
    tx.rollback().await?;

    let (stored_request, stored_response): (Vec<u8>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT request, response FROM idempotency_keys WHERE operation = $1 AND request_id = $2",
    )
    .bind(operation)
    .bind(request_id)
    .fetch_one(pool)
    .await?;
    // Keys stored before requests were digested hold the request itself.
    if stored_request != fingerprint && stored_request != encoded {
        return Err(ApiError::invalid(
            "request_id",
            "was already used for a different request",
        ));
    }
    let bytes = stored_response.ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "idempotency key committed without a response"
        ))
    })?;
    Resp::decode(bytes.as_slice()).map_err(ApiError::internal)
}

/// Erases the stored answers about `user`, except those of `keep` (the
/// erasing call's own, so that its retries still get their answer); returns
/// how many.
pub async fn forget_user(conn: &mut PgConnection, user: Uuid, keep: &str) -> ApiResult<u64> {
    Ok(
        sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND operation <> $2")
            .bind(user)
            .bind(keep)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

/// Deletes the answers older than [`RETENTION`]; returns how many.
pub async fn prune(pool: &PgPool) -> ApiResult<u64> {
    Ok(
        sqlx::query("DELETE FROM idempotency_keys WHERE create_time < now() - $1::interval")
            .bind(format!("{} seconds", RETENTION.as_secs()))
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

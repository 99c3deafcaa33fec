//! `request_id` on retryable RPCs: the first call does the work and stores its
//! answer in the same transaction; a retry with the same id gets that answer
//! back and changes nothing. A concurrent retry waits on the first call's row
//! lock, then reads its answer. If the first call failed, nothing was stored
//! and a retry does the work afresh.
//!
//! Each service's schema has the table (see its first migration):
//! `idempotency_keys(operation, request_id, request, response, created_at)`.

use prost::Message;
use sqlx::{PgConnection, PgPool};

use crate::{ApiError, ApiResult};

pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Runs `work` once per (`operation`, `request_id`); an empty `request_id`
/// means the caller did not ask for deduplication.
pub async fn run_once<Req, Resp, F>(
    pool: &PgPool,
    operation: &str,
    request_id: &str,
    request: &Req,
    work: F,
) -> ApiResult<Resp>
where
    Req: Message,
    Resp: Message + Default,
    F: AsyncFnOnce(&mut PgConnection) -> ApiResult<Resp>,
{
    if request_id.chars().count() > MAX_REQUEST_ID_LEN {
        return Err(ApiError::invalid(
            "request_id",
            format!("must be at most {MAX_REQUEST_ID_LEN} characters"),
        ));
    }
    let mut tx = pool.begin().await?;
    if request_id.is_empty() {
        let response = work(&mut tx).await?;
        tx.commit().await?;
        return Ok(response);
    }

    let fingerprint = request.encode_to_vec();
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (operation, request_id, request) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(operation)
    .bind(request_id)
    .bind(&fingerprint)
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
    if stored_request != fingerprint {
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

//! The gateway's dead letters: webhook deliveries it received and could not
//! apply, kept byte for byte so they can be replayed, until someone resolves
//! or abandons them.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, FieldViolation, Violations,
    convert::{parse_uuid, timestamp},
    idempotency::MAX_REQUEST_ID_LEN,
    pagination,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{records::Page, wire};

#[derive(sqlx::FromRow)]
struct FailureRow {
    id: Uuid,
    request_id: String,
    source: String,
    phone: Option<String>,
    user_id: Option<Uuid>,
    provider_message_id: Option<String>,
    raw_payload: Vec<u8>,
    error: String,
    status: String,
    retry_count: i32,
    resolution: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl From<FailureRow> for pb::WebhookFailure {
    fn from(row: FailureRow) -> Self {
        Self {
            id: row.id.to_string(),
            request_id: row.request_id,
            source: wire::webhook_source::parse(&row.source) as i32,
            phone: row.phone.unwrap_or_default(),
            user_id: row.user_id.map(|u| u.to_string()).unwrap_or_default(),
            provider_message_id: row.provider_message_id.unwrap_or_default(),
            raw_payload: row.raw_payload,
            error: row.error,
            status: wire::webhook_status::parse(&row.status) as i32,
            retry_count: row.retry_count,
            create_time: Some(timestamp(row.create_time)),
            update_time: Some(timestamp(row.update_time)),
            resolution: row.resolution,
        }
    }
}

/// A request carrying this much, and the answer echoing it, stay within
/// gRPC's default 4 MiB message limit, which clients such as grpcurl keep.
/// Real webhook bodies are kilobytes (media travels by id).
const MAX_PAYLOAD: usize = 3 * 1024 * 1024;
const MAX_ERROR: usize = 10_000;

/// E.164: `+`, a non-zero digit, then 7 to 14 more digits.
fn phone(field: &str, value: &str) -> Result<(), FieldViolation> {
    if !mesh_runtime::validate::is_e164(value) {
        return Err(FieldViolation::new(
            field,
            "must be E.164: + then 8 to 15 digits, not starting with 0",
        ));
    }
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn record(
    pool: &PgPool,
    request: pb::RecordWebhookFailureRequest,
) -> ApiResult<pb::RecordWebhookFailureResponse> {
    let Some(failure) = &request.failure else {
        return Err(ApiError::invalid("failure", "is required"));
    };
    let mut violations = Violations::default();
    violations.check(wire::required_text(
        "failure.request_id",
        &failure.request_id,
        MAX_REQUEST_ID_LEN,
    ));
    let source = violations.check(wire::webhook_source::require(
        "failure.source",
        failure.source,
    ));
    if !failure.phone.is_empty() {
        violations.check(phone("failure.phone", &failure.phone));
    }
    let user = violations.check(wire::optional_uuid("failure.user_id", &failure.user_id));
    violations.check(wire::text(
        "failure.provider_message_id",
        &failure.provider_message_id,
        256,
    ));
    if failure.raw_payload.is_empty() || failure.raw_payload.len() > MAX_PAYLOAD {
        violations.push("failure.raw_payload", "must be 1 byte to 3 MiB");
    }
    violations.check(wire::required_text(
        "failure.error",
        &failure.error,
        MAX_ERROR,
    ));
    violations.into_result()?;
    let user = user.expect("validated");

    // The request_id column is the idempotency key: a repeat, even a
    // concurrent one, inserts nothing and reads the first record.
    let inserted: Option<FailureRow> = sqlx::query_as(
        "INSERT INTO webhook_failures (id, request_id, source, phone, user_id, provider_message_id,
            raw_payload, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (request_id) DO NOTHING RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(&failure.request_id)
    .bind(source)
    .bind(wire::non_empty(&failure.phone))
    .bind(user)
    .bind(wire::non_empty(&failure.provider_message_id))
    .bind(&failure.raw_payload)
    .bind(&failure.error)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = inserted {
        return Ok(pb::RecordWebhookFailureResponse {
            failure: Some(row.into()),
            created: true,
        });
    }
    let stored: FailureRow = sqlx::query_as("SELECT * FROM webhook_failures WHERE request_id = $1")
        .bind(&failure.request_id)
        .fetch_optional(pool)
        .await?
        // Purged between the two statements: the caller's retry records it afresh.
        .ok_or_else(|| ApiError::Unavailable("the failure was erased meanwhile; retry".into()))?;
    Ok(pb::RecordWebhookFailureResponse {
        failure: Some(stored.into()),
        created: false,
    })
}

/// Bytes a page may carry before it stops early, so that a page of large
/// deliveries still fits a client's default 4 MiB message limit.
const PAGE_BYTES: i64 = 3 * 1024 * 1024;

#[derive(sqlx::FromRow)]
struct ListedRow {
    #[sqlx(flatten)]
    failure: FailureRow,
    /// What the page weighs on the wire (about) up to and including this row.
    bytes_through: i64,
}

#[tracing::instrument(skip_all)]
pub async fn list(
    pool: &PgPool,
    request: pb::ListWebhookFailuresRequest,
) -> ApiResult<pb::ListWebhookFailuresResponse> {
    let mut violations = Violations::default();
    let status = violations.check(wire::webhook_status::optional("status", request.status));
    let page = Page::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (status, page) = (status.expect("validated"), page.expect("validated"));
    // Fetches the rows a page may keep plus the first one it cannot (to know
    // there is more), but never the payloads far past the byte budget: a row
    // comes back while the rows before it weigh at most PAGE_BYTES, and the
    // first two always do (the first is kept whatever its size).
    let mut rows: Vec<ListedRow> = sqlx::query_as(
        "SELECT * FROM (
             SELECT f.*, s.bytes, row_number() OVER w AS position, sum(s.bytes) OVER w AS bytes_through
             FROM webhook_failures f,
                  LATERAL (SELECT octet_length(f.raw_payload) + octet_length(f.error)
                                  + octet_length(f.resolution) + 256 AS bytes) s
             WHERE ($1::text IS NULL OR f.status = $1) AND ($2::uuid IS NULL OR f.id > $2)
             WINDOW w AS (ORDER BY f.id)
             ORDER BY f.id LIMIT $3
         ) page
         WHERE position <= 2 OR bytes_through - bytes <= $4
         ORDER BY id",
    )
    .bind(status)
    .bind(page.after)
    .bind(page.size + 1)
    .bind(PAGE_BYTES)
    .fetch_all(pool)
    .await?;
    let keep = rows
        .iter()
        .enumerate()
        .take_while(|(i, row)| {
            (*i as i64) < page.size && (*i == 0 || row.bytes_through <= PAGE_BYTES)
        })
        .count();
    let next_page_token = if rows.len() > keep {
        pagination::encode_token(&rows[keep - 1].failure.id.to_string())
    } else {
        String::new()
    };
    rows.truncate(keep);
    Ok(pb::ListWebhookFailuresResponse {
        failures: rows.into_iter().map(|r| r.failure.into()).collect(),
        next_page_token,
    })
}

fn is_final(status: &str) -> bool {
    matches!(status, "resolved" | "abandoned")
}

#[tracing::instrument(skip_all)]
pub async fn resolve(
    pool: &PgPool,
    request: pb::ResolveWebhookFailureRequest,
) -> ApiResult<pb::ResolveWebhookFailureResponse> {
    let mut violations = Violations::default();
    let id = violations.check(parse_uuid("id", &request.id));
    let to = match wire::webhook_status::name(request.status) {
        Some(to) if to != "pending" => Some(to),
        _ => {
            violations.push(
                "status",
                "must be WEBHOOK_FAILURE_STATUS_RETRYING, _RESOLVED or _ABANDONED",
            );
            None
        }
    };
    violations.check(wire::text("resolution", &request.resolution, MAX_ERROR));
    violations.into_result()?;
    let (id, to) = (id.expect("validated"), to.expect("validated"));

    let mut tx = pool.begin().await?;
    let (from, resolution): (String, String) =
        sqlx::query_as("SELECT status, resolution FROM webhook_failures WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no webhook failure with id {id}")))?;
    let row: FailureRow = if is_final(&from) {
        // Repeating the final move with nothing new is a retry: answer it.
        let repeat =
            from == to && (request.resolution.is_empty() || request.resolution == resolution);
        if !repeat {
            return Err(ApiError::FailedPrecondition(format!(
                "webhook failure {id} is {from}, which is final; it cannot move to {to}"
            )));
        }
        sqlx::query_as("SELECT * FROM webhook_failures WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
    } else {
        // Every move to retrying is one more retry, counted.
        sqlx::query_as(
            "UPDATE webhook_failures
             SET status = $2,
                 retry_count = retry_count + CASE WHEN $2 = 'retrying' THEN 1 ELSE 0 END,
                 resolution = COALESCE(NULLIF($3, ''), resolution)
             WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(to)
        .bind(&request.resolution)
        .fetch_one(&mut *tx)
        .await?
    };
    tx.commit().await?;
    Ok(pb::ResolveWebhookFailureResponse {
        failure: Some(row.into()),
    })
}

//! The log of background memory extraction: one row per run, for watching
//! what the extractor does (how often, how much it finds, how it fails).

use chrono::{DateTime, Utc};
use mesh_proto::mesh::memory::v1 as pb;
use mesh_runtime::{
    ApiResult, Violations,
    convert::{parse_uuid, timestamp},
    idempotency::{self, Key},
    pagination::{Page, next_page},
    wire::optional_uuid,
};
use uuid::Uuid;

use crate::{
    State,
    wire::{extraction_status, extraction_type, text},
};

const MAX_ERROR_CHARS: usize = 4000;
/// A run longer than a day is a clock mistake, not a run.
const MAX_DURATION_MS: i64 = 24 * 60 * 60 * 1000;
const COLUMNS: &str =
    "id, user_id, conversation_id, type, status, items_extracted, duration_ms, error, create_time";

#[derive(sqlx::FromRow)]
struct ExtractionRow {
    id: Uuid,
    user_id: Uuid,
    conversation_id: Option<Uuid>,
    r#type: String,
    status: String,
    items_extracted: i32,
    duration_ms: i64,
    error: Option<String>,
    create_time: DateTime<Utc>,
}

impl ExtractionRow {
    fn into_pb(self) -> pb::Extraction {
        pb::Extraction {
            id: self.id.to_string(),
            user_id: self.user_id.to_string(),
            conversation_id: self
                .conversation_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
            r#type: extraction_type::parse(&self.r#type) as i32,
            status: extraction_status::parse(&self.status) as i32,
            items_extracted: self.items_extracted,
            duration: Some(prost_types::Duration {
                seconds: self.duration_ms / 1000,
                nanos: ((self.duration_ms % 1000) * 1_000_000) as i32,
            }),
            error: self.error.unwrap_or_default(),
            create_time: Some(timestamp(self.create_time)),
        }
    }
}

#[tracing::instrument(skip_all)]
pub async fn record(
    state: &State,
    request: pb::RecordExtractionRequest,
) -> ApiResult<pb::RecordExtractionResponse> {
    let mut violations = Violations::default();
    let missing = pb::Extraction::default();
    let given = match &request.extraction {
        Some(extraction) => extraction,
        None => {
            violations.push("extraction", "is required");
            &missing
        }
    };
    let user = violations.check(parse_uuid("extraction.user_id", &given.user_id));
    let conversation = violations.check(optional_uuid(
        "extraction.conversation_id",
        &given.conversation_id,
    ));
    let kind = violations.check(extraction_type::require("extraction.type", given.r#type));
    let status = violations.check(extraction_status::require(
        "extraction.status",
        given.status,
    ));
    if given.items_extracted < 0 {
        violations.push("extraction.items_extracted", "must not be negative");
    }
    let duration_ms = match &given.duration {
        None => Some(0),
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            violations.push("extraction.duration", "must not be negative");
            None
        }
        Some(d) => {
            let ms = d
                .seconds
                .saturating_mul(1000)
                .saturating_add(i64::from(d.nanos) / 1_000_000);
            if ms > MAX_DURATION_MS {
                violations.push("extraction.duration", "must be at most 24 hours");
            }
            Some(ms)
        }
    };
    violations.check(text("extraction.error", &given.error, MAX_ERROR_CHARS));
    match (status, given.error.is_empty()) {
        (Some("failed"), true) => {
            violations.push("extraction.error", "is required when the run failed")
        }
        (Some(s), false) if s != "failed" => {
            violations.push("extraction.error", "must be empty unless the run failed")
        }
        _ => {}
    }
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let user = user.expect("checked");
    let key = Key {
        operation: "RecordExtraction",
        request_id: &request.request_id,
        user_id: Some(user),
    };
    idempotency::run_once(&state.pool, key, &request, async |conn| {
        let row: ExtractionRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO extractions (id, user_id, conversation_id, type, status, items_extracted,
                 duration_ms, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(conversation.flatten())
        .bind(kind)
        .bind(status)
        .bind(given.items_extracted)
        .bind(duration_ms)
        .bind(crate::wire::non_empty(&given.error))
        .fetch_one(&mut *conn)
        .await?;
        Ok(pb::RecordExtractionResponse {
            extraction: Some(row.into_pb()),
        })
    })
    .await
}

#[tracing::instrument(skip_all)]
pub async fn list(
    state: &State,
    request: pb::ListExtractionsRequest,
) -> ApiResult<pb::ListExtractionsResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let kind = violations.check(extraction_type::optional("type", request.r#type));
    let page = Page::<Uuid>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let page = page.expect("checked");
    let mut rows: Vec<ExtractionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM extractions
         WHERE user_id = $1 AND ($2::text IS NULL OR type = $2) AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    )))
    .bind(user.expect("checked"))
    .bind(kind.flatten())
    .bind(page.after)
    .bind(page.size + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_page_token = next_page(&mut rows, page.size, |row| row.id.to_string());
    Ok(pb::ListExtractionsResponse {
        extractions: rows.into_iter().map(ExtractionRow::into_pb).collect(),
        next_page_token,
    })
}

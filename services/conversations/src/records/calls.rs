//! Voice calls (WhatsApp Business calling). The provider reports a call in
//! several webhooks (ringing, answered, ended), so a call with a provider id
//! is one row that each record of that id brings up to date.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{from_timestamp, json_to_struct, optional_timestamp, parse_uuid, timestamp},
};
use sqlx::PgPool;
use uuid::Uuid;

use super::{list_page, non_negative, parents};
use crate::wire;

#[derive(sqlx::FromRow)]
struct CallRow {
    id: Uuid,
    user_id: Uuid,
    conversation_id: Option<Uuid>,
    provider_call_id: Option<String>,
    direction: String,
    status: String,
    duration_seconds: i32,
    end_reason: String,
    start_time: Option<DateTime<Utc>>,
    end_time: Option<DateTime<Utc>>,
    metadata: serde_json::Value,
    create_time: DateTime<Utc>,
}

impl From<CallRow> for pb::CallLog {
    fn from(row: CallRow) -> Self {
        Self {
            id: row.id.to_string(),
            user_id: row.user_id.to_string(),
            conversation_id: row
                .conversation_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
            provider_call_id: row.provider_call_id.unwrap_or_default(),
            direction: wire::call_direction::parse(&row.direction) as i32,
            status: wire::call_status::parse(&row.status) as i32,
            duration_seconds: row.duration_seconds,
            end_reason: row.end_reason,
            start_time: optional_timestamp(row.start_time),
            end_time: optional_timestamp(row.end_time),
            metadata: Some(json_to_struct(&row.metadata)),
            create_time: Some(timestamp(row.create_time)),
        }
    }
}

/// A call row plus whether the upsert inserted it (`xmax = 0` holds only for
/// a freshly inserted row version).
#[derive(sqlx::FromRow)]
struct Upserted {
    #[sqlx(flatten)]
    call: CallRow,
    created: bool,
}

/// A later record of a known call replaces its status and fills in what it
/// carries; what it leaves unset (0, empty) keeps the stored value, and its
/// metadata is merged into the stored one (top-level keys replaced). The
/// direction and the user are the first record's.
const UPSERT: &str = "
    INSERT INTO call_logs (id, user_id, conversation_id, provider_call_id, direction, status,
        duration_seconds, end_reason, start_time, end_time, metadata)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (provider_call_id) DO UPDATE SET
        status = EXCLUDED.status,
        duration_seconds = COALESCE(NULLIF(EXCLUDED.duration_seconds, 0), call_logs.duration_seconds),
        end_reason = COALESCE(NULLIF(EXCLUDED.end_reason, ''), call_logs.end_reason),
        start_time = COALESCE(EXCLUDED.start_time, call_logs.start_time),
        end_time = COALESCE(EXCLUDED.end_time, call_logs.end_time),
        conversation_id = COALESCE(EXCLUDED.conversation_id, call_logs.conversation_id),
        metadata = call_logs.metadata || EXCLUDED.metadata
    WHERE call_logs.user_id = EXCLUDED.user_id
    RETURNING *, (xmax = 0) AS created";

#[tracing::instrument(skip_all)]
pub async fn record_call(
    pool: &PgPool,
    request: pb::RecordCallRequest,
) -> ApiResult<pb::RecordCallResponse> {
    let Some(call) = &request.call else {
        return Err(ApiError::invalid("call", "is required"));
    };
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("call.user_id", &call.user_id));
    let conversation = violations.check(wire::optional_uuid(
        "call.conversation_id",
        &call.conversation_id,
    ));
    violations.check(wire::text(
        "call.provider_call_id",
        &call.provider_call_id,
        256,
    ));
    let direction = violations.check(wire::call_direction::require(
        "call.direction",
        call.direction,
    ));
    let status = violations.check(wire::call_status::require("call.status", call.status));
    violations.check(non_negative("call.duration_seconds", call.duration_seconds));
    violations.check(wire::text("call.end_reason", &call.end_reason, 500));
    let start = match &call.start_time {
        Some(t) => violations
            .check(from_timestamp("call.start_time", t))
            .map(Some),
        None => Some(None),
    };
    let end = match &call.end_time {
        Some(t) => violations
            .check(from_timestamp("call.end_time", t))
            .map(Some),
        None => Some(None),
    };
    if let (Some(Some(start)), Some(Some(end))) = (start, end)
        && end < start
    {
        violations.push("call.end_time", "must not be before call.start_time");
    }
    let metadata = violations.check(wire::json_object("call.metadata", call.metadata.as_ref()));
    violations.into_result()?;
    let (user, conversation, metadata) = (
        user.expect("validated"),
        conversation.expect("validated"),
        metadata.expect("validated"),
    );

    if let Some(conversation) = conversation {
        parents::conversation(pool, "call.conversation_id", conversation, user).await?;
    }
    let provider_call_id = wire::non_empty(&call.provider_call_id);
    let upserted: Option<Upserted> = sqlx::query_as(UPSERT)
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(conversation)
        .bind(provider_call_id)
        .bind(direction)
        .bind(status)
        .bind(call.duration_seconds)
        .bind(&call.end_reason)
        .bind(start.flatten())
        .bind(end.flatten())
        .bind(&metadata)
        .fetch_optional(pool)
        .await
        .map_err(|e| {
            ApiError::from(e)
                .or_missing(|| format!("no conversation with id {}", call.conversation_id))
        })?;
    // No row: the provider call id is taken by another user's call, which
    // the upsert's WHERE refused to touch.
    let Upserted { call: row, created } = upserted.ok_or_else(|| {
        ApiError::AlreadyExists(format!(
            "provider_call_id {:?} is another user's call",
            call.provider_call_id
        ))
    })?;
    Ok(pb::RecordCallResponse {
        call: Some(row.into()),
        created,
    })
}

#[tracing::instrument(skip_all)]
pub async fn list_calls(
    pool: &PgPool,
    request: pb::ListCallsRequest,
) -> ApiResult<pb::ListCallsResponse> {
    let (_, calls, next_page_token) = list_page(
        pool,
        "call_logs",
        "user_id",
        &request.user_id,
        request.page_size,
        &request.page_token,
        |r: &CallRow| r.id,
    )
    .await?;
    Ok(pb::ListCallsResponse {
        calls,
        next_page_token,
    })
}

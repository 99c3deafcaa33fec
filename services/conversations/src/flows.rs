//! WhatsApp Flows sessions, addressed by their flow token.
//!
//! A session lives 24 h. Its status moves pending -> in_progress -> completed,
//! expired or failed (pending may go straight to any of the last three). A
//! live session found past its expire_time is turned to expired there and
//! then, and stored so: the contract holds without a sweeper.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, FieldViolation, Violations,
    convert::{json_to_struct, parse_uuid, timestamp},
    idempotency,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{records::parents, wire};

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: Uuid,
    flow_token: String,
    user_id: Uuid,
    conversation_id: Option<Uuid>,
    flow_id: String,
    flow_type: String,
    status: String,
    session_data: serde_json::Value,
    response_data: serde_json::Value,
    expire_time: DateTime<Utc>,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl From<SessionRow> for pb::FlowSession {
    fn from(row: SessionRow) -> Self {
        Self {
            id: row.id.to_string(),
            flow_token: row.flow_token,
            user_id: row.user_id.to_string(),
            conversation_id: row
                .conversation_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
            flow_id: row.flow_id,
            flow_type: wire::flow_type::parse(&row.flow_type) as i32,
            status: wire::flow_status::parse(&row.status) as i32,
            session_data: Some(json_to_struct(&row.session_data)),
            response_data: Some(json_to_struct(&row.response_data)),
            expire_time: Some(timestamp(row.expire_time)),
            create_time: Some(timestamp(row.create_time)),
            update_time: Some(timestamp(row.update_time)),
        }
    }
}

const MAX_TOKEN: usize = 256;

/// The token travels in WhatsApp payloads and URLs: RFC 3986 unreserved
/// characters only.
fn flow_token(field: &str, value: &str) -> Result<(), FieldViolation> {
    let url_safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~');
    if value.is_empty() || value.len() > MAX_TOKEN || !value.chars().all(url_safe) {
        return Err(FieldViolation::new(
            field,
            format!("must be 1 to {MAX_TOKEN} characters of A-Z, a-z, 0-9, '-', '_', '.', '~'"),
        ));
    }
    Ok(())
}

/// 32 random bytes, base64url: unguessable, since the token alone lets the
/// gateway act on the session.
fn new_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

#[tracing::instrument(skip_all)]
pub async fn create(
    pool: &PgPool,
    request: pb::CreateFlowSessionRequest,
) -> ApiResult<pb::CreateFlowSessionResponse> {
    let Some(session) = &request.session else {
        return Err(ApiError::invalid("session", "is required"));
    };
    let mut violations = Violations::default();
    if !session.flow_token.is_empty() {
        violations.check(flow_token("session.flow_token", &session.flow_token));
    }
    let user = violations.check(parse_uuid("session.user_id", &session.user_id));
    let conversation = violations.check(wire::optional_uuid(
        "session.conversation_id",
        &session.conversation_id,
    ));
    violations.check(wire::text("session.flow_id", &session.flow_id, MAX_TOKEN));
    let flow_type = violations.check(wire::flow_type::require(
        "session.flow_type",
        session.flow_type,
    ));
    let session_data = violations.check(wire::json_object(
        "session.session_data",
        session.session_data.as_ref(),
    ));
    let response_data = violations.check(wire::json_object(
        "session.response_data",
        session.response_data.as_ref(),
    ));
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let (user, conversation) = (user.expect("validated"), conversation.expect("validated"));
    let (session_data, response_data) = (
        session_data.expect("validated"),
        response_data.expect("validated"),
    );
    let token = match session.flow_token.as_str() {
        "" => new_token(),
        given => given.to_owned(),
    };

    let key = idempotency::Key {
        operation: "CreateFlowSession",
        request_id: &request.request_id,
        user_id: Some(user),
    };
    idempotency::run_once(pool, key, &request, async |conn| {
        if let Some(conversation) = conversation {
            parents::conversation(&mut *conn, "session.conversation_id", conversation, user).await?;
        }
        // create_time and expire_time from one now(): exactly 24 h apart.
        let row: SessionRow = sqlx::query_as(
            "INSERT INTO flow_sessions (id, flow_token, user_id, conversation_id, flow_id, flow_type,
                session_data, response_data, expire_time)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + interval '24 hours') RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(&token)
        .bind(user)
        .bind(conversation)
        .bind(&session.flow_id)
        .bind(flow_type)
        .bind(&session_data)
        .bind(&response_data)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| {
            ApiError::from(e)
                .or_conflict(|| format!("a flow session with token {token:?} already exists"))
                .or_missing(|| format!("no conversation with id {}", session.conversation_id))
        })?;
        Ok(pb::CreateFlowSessionResponse {
            session: Some(row.into()),
        })
    })
    .await
}

fn no_session(token: &str) -> ApiError {
    ApiError::not_found(format!("no flow session with token {token:?}"))
}

#[tracing::instrument(skip_all)]
pub async fn get(
    pool: &PgPool,
    request: pb::GetFlowSessionRequest,
) -> ApiResult<pb::GetFlowSessionResponse> {
    let token = request.flow_token;
    flow_token("flow_token", &token)?;
    sqlx::query(
        "UPDATE flow_sessions SET status = 'expired'
         WHERE flow_token = $1 AND status IN ('pending', 'in_progress') AND expire_time <= now()",
    )
    .bind(&token)
    .execute(pool)
    .await?;
    let row: SessionRow = sqlx::query_as("SELECT * FROM flow_sessions WHERE flow_token = $1")
        .bind(&token)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| no_session(&token))?;
    Ok(pb::GetFlowSessionResponse {
        session: Some(row.into()),
    })
}

/// What an update does to a session in status `from`.
#[derive(Debug, PartialEq)]
enum Move {
    /// Set the status and merge the response data.
    Apply,
    /// A repeat that would change nothing (a retry): answer with the session as it is.
    Unchanged,
    Refused,
}

fn decide(from: &str, to: &str, changes_data: bool) -> Move {
    let live = matches!(from, "pending" | "in_progress");
    match (from, to) {
        _ if from == to && !changes_data => Move::Unchanged,
        // Staying in a live status collects more response data step by step.
        _ if from == to && live => Move::Apply,
        ("in_progress", "pending") => Move::Refused,
        _ if live => Move::Apply,
        _ => Move::Refused,
    }
}

#[tracing::instrument(skip_all)]
pub async fn update(
    pool: &PgPool,
    request: pb::UpdateFlowSessionRequest,
) -> ApiResult<pb::UpdateFlowSessionResponse> {
    let mut violations = Violations::default();
    violations.check(flow_token("flow_token", &request.flow_token));
    let to = violations.check(wire::flow_status::require("status", request.status));
    let data = violations.check(wire::json_object(
        "response_data",
        request.response_data.as_ref(),
    ));
    violations.into_result()?;
    let (token, to, data) = (
        &request.flow_token,
        to.expect("validated"),
        data.expect("validated"),
    );

    let mut tx = pool.begin().await?;
    let (from, lapsed, merged, changes_data): (String, bool, serde_json::Value, bool) =
        sqlx::query_as(
            "SELECT status,
                    status IN ('pending', 'in_progress') AND expire_time <= now(),
                    response_data || $2,
                    response_data || $2 <> response_data
             FROM flow_sessions WHERE flow_token = $1 FOR UPDATE",
        )
        .bind(token)
        .bind(&data)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| no_session(token))?;
    if lapsed && to != "expired" {
        // The expiry stands whatever the caller wanted: store it, then refuse.
        sqlx::query("UPDATE flow_sessions SET status = 'expired' WHERE flow_token = $1")
            .bind(token)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Err(ApiError::FailedPrecondition(format!(
            "flow session {token:?} expired; it cannot move to {to}"
        )));
    }
    let row: SessionRow = match decide(&from, to, changes_data) {
        // Each update is bounded, but a live session collects data step by
        // step: bound what it would hold, measured as the validator does.
        Move::Apply if merged.to_string().len() > wire::MAX_JSON_BYTES => {
            return Err(ApiError::FailedPrecondition(format!(
                "flow session {token:?} would hold more than 64 KiB of response_data as JSON; \
                 it keeps what it has"
            )));
        }
        Move::Apply => {
            sqlx::query_as(
                "UPDATE flow_sessions SET status = $2, response_data = response_data || $3
                 WHERE flow_token = $1 RETURNING *",
            )
            .bind(token)
            .bind(to)
            .bind(&data)
            .fetch_one(&mut *tx)
            .await?
        }
        Move::Unchanged => {
            sqlx::query_as("SELECT * FROM flow_sessions WHERE flow_token = $1")
                .bind(token)
                .fetch_one(&mut *tx)
                .await?
        }
        Move::Refused => {
            return Err(ApiError::FailedPrecondition(format!(
                "flow session {token:?} is {from}; it cannot move to {to}"
            )));
        }
    };
    tx.commit().await?;
    Ok(pb::UpdateFlowSessionResponse {
        session: Some(row.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::{Move, decide};

    #[test]
    fn moves_follow_the_contract() {
        for to in ["in_progress", "completed", "expired", "failed"] {
            assert_eq!(decide("pending", to, false), Move::Apply, "pending -> {to}");
        }
        for to in ["completed", "expired", "failed"] {
            assert_eq!(
                decide("in_progress", to, false),
                Move::Apply,
                "in_progress -> {to}"
            );
        }
        assert_eq!(decide("in_progress", "pending", true), Move::Refused);
        assert_eq!(decide("in_progress", "in_progress", true), Move::Apply);
        assert_eq!(decide("in_progress", "in_progress", false), Move::Unchanged);
        for from in ["completed", "expired", "failed"] {
            assert_eq!(decide(from, from, false), Move::Unchanged, "{from} again");
            assert_eq!(
                decide(from, from, true),
                Move::Refused,
                "{from} again, new data"
            );
            for to in ["pending", "in_progress", "completed", "expired", "failed"] {
                if to != from {
                    assert_eq!(decide(from, to, false), Move::Refused, "{from} -> {to}");
                }
            }
        }
    }
}

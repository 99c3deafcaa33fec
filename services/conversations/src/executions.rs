//! What the assistant did while answering: each agent run and each tool it
//! called, kept per conversation for debugging and cost accounting.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{json_to_struct, parse_uuid, timestamp},
    idempotency, pagination,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::records::{Page, non_negative, parents};
use crate::wire;

const MAX_NAME: usize = 200;
/// Room for a stack trace or a provider's error body, not for a log file.
const MAX_ERROR: usize = 10_000;

#[derive(sqlx::FromRow)]
struct ToolRow {
    id: Uuid,
    conversation_id: Uuid,
    message_id: Option<Uuid>,
    tool_name: String,
    input: serde_json::Value,
    output: serde_json::Value,
    status: String,
    latency_ms: i32,
    tokens: i32,
    error: String,
    create_time: DateTime<Utc>,
}

impl From<ToolRow> for pb::ToolExecution {
    fn from(row: ToolRow) -> Self {
        Self {
            id: row.id.to_string(),
            conversation_id: row.conversation_id.to_string(),
            message_id: row.message_id.map(|m| m.to_string()).unwrap_or_default(),
            tool_name: row.tool_name,
            input: Some(json_to_struct(&row.input)),
            output: Some(json_to_struct(&row.output)),
            status: wire::execution_status::parse(&row.status) as i32,
            latency_ms: row.latency_ms,
            tokens: row.tokens,
            error: row.error,
            create_time: Some(timestamp(row.create_time)),
        }
    }
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    id: Uuid,
    conversation_id: Uuid,
    message_id: Option<Uuid>,
    agent_name: String,
    model: String,
    status: String,
    latency_ms: i32,
    input_tokens: i32,
    output_tokens: i32,
    error: String,
    metadata: serde_json::Value,
    create_time: DateTime<Utc>,
}

impl From<AgentRow> for pb::AgentExecution {
    fn from(row: AgentRow) -> Self {
        Self {
            id: row.id.to_string(),
            conversation_id: row.conversation_id.to_string(),
            message_id: row.message_id.map(|m| m.to_string()).unwrap_or_default(),
            agent_name: row.agent_name,
            model: row.model,
            status: wire::execution_status::parse(&row.status) as i32,
            latency_ms: row.latency_ms,
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            error: row.error,
            metadata: Some(json_to_struct(&row.metadata)),
            create_time: Some(timestamp(row.create_time)),
        }
    }
}

/// The conversation and message an execution belongs to, checked once its
/// fields are valid: NOT_FOUND when either is missing. Gives the
/// conversation's user, whom the stored idempotent answer is about.
async fn parent(pool: &PgPool, conversation: Uuid, message: Option<Uuid>) -> ApiResult<Uuid> {
    let user = parents::conversation_user(pool, conversation).await?;
    if let Some(message) = message {
        parents::message(
            pool,
            "execution.message_id",
            message,
            user,
            Some(conversation),
        )
        .await?;
    }
    Ok(user)
}

/// A foreign key refused the insert: the conversation or message was deleted
/// after [`parent`] found it.
fn gone(error: sqlx::Error) -> ApiError {
    ApiError::from(error).or_missing(|| "the conversation or message no longer exists".into())
}

#[tracing::instrument(skip_all)]
pub async fn record_tool(
    pool: &PgPool,
    request: pb::RecordToolExecutionRequest,
) -> ApiResult<pb::RecordToolExecutionResponse> {
    let Some(execution) = &request.execution else {
        return Err(ApiError::invalid("execution", "is required"));
    };
    let mut violations = Violations::default();
    let conversation = violations.check(parse_uuid(
        "execution.conversation_id",
        &execution.conversation_id,
    ));
    let message = violations.check(wire::optional_uuid(
        "execution.message_id",
        &execution.message_id,
    ));
    violations.check(wire::required_text(
        "execution.tool_name",
        &execution.tool_name,
        MAX_NAME,
    ));
    let status = violations.check(wire::execution_status::require(
        "execution.status",
        execution.status,
    ));
    violations.check(non_negative("execution.latency_ms", execution.latency_ms));
    violations.check(non_negative("execution.tokens", execution.tokens));
    violations.check(wire::text("execution.error", &execution.error, MAX_ERROR));
    let input = violations.check(wire::json_object(
        "execution.input",
        execution.input.as_ref(),
    ));
    let output = violations.check(wire::json_object(
        "execution.output",
        execution.output.as_ref(),
    ));
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let (conversation, message) = (
        conversation.expect("validated"),
        message.expect("validated"),
    );
    let (input, output) = (input.expect("validated"), output.expect("validated"));

    let user = parent(pool, conversation, message).await?;
    let key = idempotency::Key {
        operation: "RecordToolExecution",
        request_id: &request.request_id,
        user_id: Some(user),
    };
    idempotency::run_once(pool, key, &request, async |conn| {
        let row: ToolRow = sqlx::query_as(
            "INSERT INTO tool_executions (id, conversation_id, message_id, tool_name, input, output,
                status, latency_ms, tokens, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(conversation)
        .bind(message)
        .bind(&execution.tool_name)
        .bind(&input)
        .bind(&output)
        .bind(status)
        .bind(execution.latency_ms)
        .bind(execution.tokens)
        .bind(&execution.error)
        .fetch_one(&mut *conn)
        .await
        .map_err(gone)?;
        Ok(pb::RecordToolExecutionResponse {
            execution: Some(row.into()),
        })
    })
    .await
}

#[tracing::instrument(skip_all)]
pub async fn record_agent(
    pool: &PgPool,
    request: pb::RecordAgentExecutionRequest,
) -> ApiResult<pb::RecordAgentExecutionResponse> {
    let Some(execution) = &request.execution else {
        return Err(ApiError::invalid("execution", "is required"));
    };
    let mut violations = Violations::default();
    let conversation = violations.check(parse_uuid(
        "execution.conversation_id",
        &execution.conversation_id,
    ));
    let message = violations.check(wire::optional_uuid(
        "execution.message_id",
        &execution.message_id,
    ));
    violations.check(wire::required_text(
        "execution.agent_name",
        &execution.agent_name,
        MAX_NAME,
    ));
    violations.check(wire::text("execution.model", &execution.model, MAX_NAME));
    let status = violations.check(wire::execution_status::require(
        "execution.status",
        execution.status,
    ));
    violations.check(non_negative("execution.latency_ms", execution.latency_ms));
    violations.check(non_negative(
        "execution.input_tokens",
        execution.input_tokens,
    ));
    violations.check(non_negative(
        "execution.output_tokens",
        execution.output_tokens,
    ));
    violations.check(wire::text("execution.error", &execution.error, MAX_ERROR));
    let metadata = violations.check(wire::json_object(
        "execution.metadata",
        execution.metadata.as_ref(),
    ));
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let (conversation, message, metadata) = (
        conversation.expect("validated"),
        message.expect("validated"),
        metadata.expect("validated"),
    );

    let user = parent(pool, conversation, message).await?;
    let key = idempotency::Key {
        operation: "RecordAgentExecution",
        request_id: &request.request_id,
        user_id: Some(user),
    };
    idempotency::run_once(pool, key, &request, async |conn| {
        let row: AgentRow = sqlx::query_as(
            "INSERT INTO agent_executions (id, conversation_id, message_id, agent_name, model,
                status, latency_ms, input_tokens, output_tokens, error, metadata)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(conversation)
        .bind(message)
        .bind(&execution.agent_name)
        .bind(&execution.model)
        .bind(status)
        .bind(execution.latency_ms)
        .bind(execution.input_tokens)
        .bind(execution.output_tokens)
        .bind(&execution.error)
        .bind(&metadata)
        .fetch_one(&mut *conn)
        .await
        .map_err(gone)?;
        Ok(pb::RecordAgentExecutionResponse {
            execution: Some(row.into()),
        })
    })
    .await
}

/// A list request's conversation and page, checked.
fn list_args(conversation_id: &str, page_size: i32, page_token: &str) -> ApiResult<(Uuid, Page)> {
    let mut violations = Violations::default();
    let conversation = violations.check(parse_uuid("conversation_id", conversation_id));
    let page = Page::check(&mut violations, page_size, page_token);
    violations.into_result()?;
    Ok((conversation.expect("validated"), page.expect("validated")))
}

#[tracing::instrument(skip_all)]
pub async fn list_tools(
    pool: &PgPool,
    request: pb::ListToolExecutionsRequest,
) -> ApiResult<pb::ListToolExecutionsResponse> {
    let (conversation, page) = list_args(
        &request.conversation_id,
        request.page_size,
        &request.page_token,
    )?;
    let mut rows: Vec<ToolRow> = sqlx::query_as(
        "SELECT * FROM tool_executions WHERE conversation_id = $1 AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3",
    )
    .bind(conversation)
    .bind(page.after)
    .bind(page.size + 1)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        // An empty page: tell "nothing recorded" from "no such conversation".
        parents::conversation_user(pool, conversation).await?;
    }
    let next_page_token = pagination::next_page(&mut rows, page.size, |r| r.id.to_string());
    Ok(pb::ListToolExecutionsResponse {
        executions: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

#[tracing::instrument(skip_all)]
pub async fn list_agents(
    pool: &PgPool,
    request: pb::ListAgentExecutionsRequest,
) -> ApiResult<pb::ListAgentExecutionsResponse> {
    let (conversation, page) = list_args(
        &request.conversation_id,
        request.page_size,
        &request.page_token,
    )?;
    let mut rows: Vec<AgentRow> = sqlx::query_as(
        "SELECT * FROM agent_executions WHERE conversation_id = $1 AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3",
    )
    .bind(conversation)
    .bind(page.after)
    .bind(page.size + 1)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        // An empty page: tell "nothing recorded" from "no such conversation".
        parents::conversation_user(pool, conversation).await?;
    }
    let next_page_token = pagination::next_page(&mut rows, page.size, |r| r.id.to_string());
    Ok(pb::ListAgentExecutionsResponse {
        executions: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

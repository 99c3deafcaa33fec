//! What the assistant did while answering: each agent run and each tool it
//! called, kept per conversation for debugging and cost accounting.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{json_to_struct, parse_uuid, timestamp},
    idempotency,
};
use sqlx::{PgConnection, PgPool, postgres::PgRow};
use uuid::Uuid;

use crate::records::{list_page, non_negative, parents};
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

/// The ids of the conversation and message an execution belongs to, checked.
fn parent_ids(
    violations: &mut Violations,
    conversation_id: &str,
    message_id: &str,
) -> Option<(Uuid, Option<Uuid>)> {
    let conversation = violations.check(parse_uuid("execution.conversation_id", conversation_id));
    let message = violations.check(wire::optional_uuid("execution.message_id", message_id));
    Some((conversation?, message?))
}

/// Runs `insert` once per `request_id` of `operation`, after checking the
/// conversation and message the execution belongs to: NOT_FOUND when either
/// is missing. The stored answer is about the conversation's user.
async fn record_once<Req, Resp>(
    pool: &PgPool,
    operation: &'static str,
    request: &Req,
    request_id: &str,
    (conversation, message): (Uuid, Option<Uuid>),
    insert: impl AsyncFnOnce(&mut PgConnection) -> ApiResult<Resp>,
) -> ApiResult<Resp>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
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
    let key = idempotency::Key {
        operation,
        request_id,
        user_id: Some(user),
    };
    idempotency::run_once(pool, key, request, insert).await
}

const INSERT_TOOL: &str = "
    INSERT INTO tool_executions (id, conversation_id, message_id, tool_name, input, output,
        status, latency_ms, tokens, error)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *";

#[tracing::instrument(skip_all)]
pub async fn record_tool(
    pool: &PgPool,
    request: pb::RecordToolExecutionRequest,
) -> ApiResult<pb::RecordToolExecutionResponse> {
    let Some(execution) = &request.execution else {
        return Err(ApiError::invalid("execution", "is required"));
    };
    let mut violations = Violations::default();
    let parents = parent_ids(
        &mut violations,
        &execution.conversation_id,
        &execution.message_id,
    );
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
    let (conversation, message) = parents.expect("validated");
    let (input, output) = (input.expect("validated"), output.expect("validated"));

    record_once(
        pool,
        "RecordToolExecution",
        &request,
        &request.request_id,
        (conversation, message),
        async |conn| {
            let row: ToolRow = sqlx::query_as(INSERT_TOOL)
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
                .map_err(parents::gone)?;
            Ok(pb::RecordToolExecutionResponse {
                execution: Some(row.into()),
            })
        },
    )
    .await
}

const INSERT_AGENT: &str = "
    INSERT INTO agent_executions (id, conversation_id, message_id, agent_name, model,
        status, latency_ms, input_tokens, output_tokens, error, metadata)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *";

#[tracing::instrument(skip_all)]
pub async fn record_agent(
    pool: &PgPool,
    request: pb::RecordAgentExecutionRequest,
) -> ApiResult<pb::RecordAgentExecutionResponse> {
    let Some(execution) = &request.execution else {
        return Err(ApiError::invalid("execution", "is required"));
    };
    let mut violations = Violations::default();
    let parents = parent_ids(
        &mut violations,
        &execution.conversation_id,
        &execution.message_id,
    );
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
    let ((conversation, message), metadata) =
        (parents.expect("validated"), metadata.expect("validated"));

    record_once(
        pool,
        "RecordAgentExecution",
        &request,
        &request.request_id,
        (conversation, message),
        async |conn| {
            let row: AgentRow = sqlx::query_as(INSERT_AGENT)
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
                .map_err(parents::gone)?;
            Ok(pb::RecordAgentExecutionResponse {
                execution: Some(row.into()),
            })
        },
    )
    .await
}

/// A page of one conversation's executions in `table`, as [`list_page`]
/// gives it; an empty page of a conversation that does not exist is
/// NOT_FOUND.
async fn list<R, T>(
    pool: &PgPool,
    table: &'static str,
    conversation_id: &str,
    page_size: i32,
    page_token: &str,
    id: impl Fn(&R) -> Uuid,
) -> ApiResult<(Vec<T>, String)>
where
    R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin + Into<T>,
{
    let (conversation, executions, next_page_token) = list_page(
        pool,
        table,
        "conversation_id",
        conversation_id,
        page_size,
        page_token,
        id,
    )
    .await?;
    if executions.is_empty() {
        // An empty page: tell "nothing recorded" from "no such conversation".
        parents::conversation_user(pool, conversation).await?;
    }
    Ok((executions, next_page_token))
}

#[tracing::instrument(skip_all)]
pub async fn list_tools(
    pool: &PgPool,
    request: pb::ListToolExecutionsRequest,
) -> ApiResult<pb::ListToolExecutionsResponse> {
    let (executions, next_page_token) = list(
        pool,
        "tool_executions",
        &request.conversation_id,
        request.page_size,
        &request.page_token,
        |r: &ToolRow| r.id,
    )
    .await?;
    Ok(pb::ListToolExecutionsResponse {
        executions,
        next_page_token,
    })
}

#[tracing::instrument(skip_all)]
pub async fn list_agents(
    pool: &PgPool,
    request: pb::ListAgentExecutionsRequest,
) -> ApiResult<pb::ListAgentExecutionsResponse> {
    let (executions, next_page_token) = list(
        pool,
        "agent_executions",
        &request.conversation_id,
        request.page_size,
        &request.page_token,
        |r: &AgentRow| r.id,
    )
    .await?;
    Ok(pb::ListAgentExecutionsResponse {
        executions,
        next_page_token,
    })
}

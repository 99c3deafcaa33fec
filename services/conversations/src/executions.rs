use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;

#[tracing::instrument(skip_all)]
pub async fn record_tool(_pool: &PgPool, _request: pb::RecordToolExecutionRequest) -> ApiResult<pb::RecordToolExecutionResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn list_tools(_pool: &PgPool, _request: pb::ListToolExecutionsRequest) -> ApiResult<pb::ListToolExecutionsResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn record_agent(_pool: &PgPool, _request: pb::RecordAgentExecutionRequest) -> ApiResult<pb::RecordAgentExecutionResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn list_agents(_pool: &PgPool, _request: pb::ListAgentExecutionsRequest) -> ApiResult<pb::ListAgentExecutionsResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;

#[tracing::instrument(skip_all)]
pub async fn create(_pool: &PgPool, _request: pb::CreateFlowSessionRequest) -> ApiResult<pb::CreateFlowSessionResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn get(_pool: &PgPool, _request: pb::GetFlowSessionRequest) -> ApiResult<pb::GetFlowSessionResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn update(_pool: &PgPool, _request: pb::UpdateFlowSessionRequest) -> ApiResult<pb::UpdateFlowSessionResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

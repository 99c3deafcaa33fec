use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;

#[tracing::instrument(skip_all)]
pub async fn get_or_create_active(_pool: &PgPool, _idle_gap: std::time::Duration, _request: pb::GetOrCreateActiveConversationRequest) -> ApiResult<pb::GetOrCreateActiveConversationResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn get(_pool: &PgPool, _request: pb::GetConversationRequest) -> ApiResult<pb::GetConversationResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn list(_pool: &PgPool, _request: pb::ListConversationsRequest) -> ApiResult<pb::ListConversationsResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn close(_pool: &PgPool, _request: pb::CloseConversationRequest) -> ApiResult<pb::CloseConversationResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn archive(_pool: &PgPool, _request: pb::ArchiveConversationRequest) -> ApiResult<pb::ArchiveConversationResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn update_summary(_pool: &PgPool, _request: pb::UpdateConversationSummaryRequest) -> ApiResult<pb::UpdateConversationSummaryResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

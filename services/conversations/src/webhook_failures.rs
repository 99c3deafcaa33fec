use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;

#[tracing::instrument(skip_all)]
pub async fn record(_pool: &PgPool, _request: pb::RecordWebhookFailureRequest) -> ApiResult<pb::RecordWebhookFailureResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn list(_pool: &PgPool, _request: pb::ListWebhookFailuresRequest) -> ApiResult<pb::ListWebhookFailuresResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn resolve(_pool: &PgPool, _request: pb::ResolveWebhookFailureRequest) -> ApiResult<pb::ResolveWebhookFailureResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

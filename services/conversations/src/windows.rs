use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;

#[tracing::instrument(skip_all)]
pub async fn get(_pool: &PgPool, _request: pb::GetMessagingWindowRequest) -> ApiResult<pb::GetMessagingWindowResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;

#[tracing::instrument(skip_all)]
pub async fn purge_user(_pool: &PgPool, _request: pb::PurgeUserRequest) -> ApiResult<pb::PurgeUserResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

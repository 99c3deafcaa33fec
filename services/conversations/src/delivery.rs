use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;

#[tracing::instrument(skip_all)]
pub async fn update(_pool: &PgPool, _request: pb::UpdateDeliveryStatusRequest) -> ApiResult<pb::UpdateDeliveryStatusResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

pub async fn prune_deferred(_pool: &PgPool) -> anyhow::Result<u64> {
    Ok(0)
}

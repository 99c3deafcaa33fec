use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;

#[tracing::instrument(skip_all)]
pub async fn record_call(_pool: &PgPool, _request: pb::RecordCallRequest) -> ApiResult<pb::RecordCallResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn list_calls(_pool: &PgPool, _request: pb::ListCallsRequest) -> ApiResult<pb::ListCallsResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn record_interaction(_pool: &PgPool, _request: pb::RecordInteractionRequest) -> ApiResult<pb::RecordInteractionResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn list_interactions(_pool: &PgPool, _request: pb::ListInteractionsRequest) -> ApiResult<pb::ListInteractionsResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn record_location(_pool: &PgPool, _request: pb::RecordLocationRequest) -> ApiResult<pb::RecordLocationResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn list_locations(_pool: &PgPool, _request: pb::ListLocationsRequest) -> ApiResult<pb::ListLocationsResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

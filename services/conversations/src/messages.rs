use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;

#[tracing::instrument(skip_all)]
pub async fn record_inbound(_pool: &PgPool, _request: pb::RecordInboundMessageRequest) -> ApiResult<pb::RecordInboundMessageResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn get(_pool: &PgPool, _request: pb::GetMessageRequest) -> ApiResult<pb::GetMessageResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn list(_pool: &PgPool, _request: pb::ListMessagesRequest) -> ApiResult<pb::ListMessagesResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn history(_pool: &PgPool, _request: pb::GetHistoryRequest) -> ApiResult<pb::GetHistoryResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

#[tracing::instrument(skip_all)]
pub async fn set_feedback(_pool: &PgPool, _request: pb::SetMessageFeedbackRequest) -> ApiResult<pb::SetMessageFeedbackResponse> {
    Err(ApiError::Unavailable("not built yet".into()))
}

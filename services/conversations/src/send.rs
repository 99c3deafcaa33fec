//! SendMessage.
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;

pub struct Sender {}

impl Sender {
    pub fn new(_config: &crate::Config) -> anyhow::Result<Self> {
        Ok(Self {})
    }

    pub async fn send(
        &self,
        _pool: &PgPool,
        _idle_gap: std::time::Duration,
        _request: pb::SendMessageRequest,
    ) -> ApiResult<pb::SendMessageResponse> {
        Err(ApiError::Unavailable("not built yet".into()))
    }
}

//! The event stream.
use std::pin::Pin;

use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEventsResponse, tonic::Status>> + Send>>;

pub struct Hub {}

impl Hub {
    pub fn start(_pool: PgPool, _shutdown: CancellationToken) -> Self {
        Self {}
    }

    pub async fn watch(&self, _request: pb::WatchEventsRequest) -> ApiResult<EventStream> {
        Err(ApiError::Unavailable("not built yet".into()))
    }
}

pub async fn prune(_pool: &PgPool, _retention: std::time::Duration) -> anyhow::Result<u64> {
    Ok(0)
}

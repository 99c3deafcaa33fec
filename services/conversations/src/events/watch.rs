//! WatchEvents: the [`Hub`] that starts each call's reader task, and the
//! stream the client reads.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{
    listener::listen,
    reader::{CLIENT_BUFFER, DRAINING, Reader, out_of_range},
    request::{Start, validate},
};

pub type EventStream = Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEventsResponse, tonic::Status>> + Send>,
>;

/// The stream's ends, as one committed snapshot sees them.
#[derive(sqlx::FromRow)]
struct Bounds {
    last_seq: i64,
    pruned_through: i64,
}

async fn bounds(pool: &PgPool) -> ApiResult<Bounds> {
    Ok(
        sqlx::query_as("SELECT last_seq, pruned_through FROM event_head")
            .fetch_one(pool)
            .await?,
    )
}

/// The service's side of WatchEvents: one listener for the replica, one task
/// per stream.
pub struct Hub {
    pool: PgPool,
    shutdown: CancellationToken,
    /// The highest sequence number notified (or read from the head after the
    /// listener reconnected); only ever grows.
    notified: watch::Receiver<i64>,
}

impl Hub {
    /// Starts the replica's listener; it ends when `shutdown` is cancelled.
    pub fn start(pool: PgPool, shutdown: CancellationToken) -> Self {
        let (sender, notified) = watch::channel(0);
        tokio::spawn(listen(pool.clone(), sender, shutdown.clone()));
        Self {
            pool,
            shutdown,
            notified,
        }
    }

    /// Validates the request and finds where the stream starts; errors come
    /// back as the call's status before any event. The events come from a
    /// task that ends when the client goes away or the server drains.
    #[tracing::instrument(skip_all)]
    pub async fn watch(&self, request: pb::WatchEventsRequest) -> ApiResult<EventStream> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::Unavailable(DRAINING.into()));
        }
        let (start, filter) = validate(&request)?;
        let bounds = bounds(&self.pool).await?;
        let position = match start {
            Start::After(seq) if seq > bounds.last_seq => {
                return Err(ApiError::OutOfRange(
                    "after_cursor is ahead of the newest event: it was not issued by this stream"
                        .into(),
                ));
            }
            Start::After(seq) if seq < bounds.pruned_through => {
                return Err(out_of_range());
            }
            Start::After(seq) => seq,
            Start::Oldest => bounds.pruned_through,
            Start::Now => bounds.last_seq,
        };
        let (items, receiver) = mpsc::channel(CLIENT_BUFFER);
        let (end, ended) = oneshot::channel();
        let reader = Reader {
            pool: self.pool.clone(),
            shutdown: self.shutdown.clone(),
            notified: self.notified.clone(),
            filter,
        };
        tokio::spawn(
            async move {
                if let Some(status) = reader.run(position, items).await {
                    let _ = end.send(status);
                }
            }
            .in_current_span(),
        );
        Ok(Box::pin(Feed {
            items: receiver,
            end: Some(ended),
        }))
    }
}

/// What the client reads: the events its task sends, then the status the
/// task ended with.
struct Feed {
    items: mpsc::Receiver<pb::WatchEventsResponse>,
    end: Option<oneshot::Receiver<tonic::Status>>,
}

impl tokio_stream::Stream for Feed {
    type Item = Result<pb::WatchEventsResponse, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(item) = ready!(self.items.poll_recv(cx)) {
            return Poll::Ready(Some(Ok(item)));
        }
        let Some(end) = self.end.as_mut() else {
            return Poll::Ready(None);
        };
        let ended = ready!(Pin::new(end).poll(cx));
        self.end = None;
        // Every way the task ends while the client listens sends a status;
        // none means it panicked.
        Poll::Ready(Some(Err(ended.unwrap_or_else(|_| {
            tonic::Status::internal("the event stream failed; reconnect with your last cursor")
        }))))
    }
}

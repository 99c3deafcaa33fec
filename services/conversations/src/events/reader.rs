//! One WatchEvents call's task: reads the table in batches, in order, and
//! sends the matching events to the client until it goes away or the server
//! drains.

use std::time::Duration;

use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult};
use prost::Message as _;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{cursor::encode_cursor, request::Filter};

/// Rows one query reads. With [`CLIENT_BUFFER`], what one stream holds at
/// most: a client that reads slowly makes its task wait, it never makes the
/// server buffer more.
const BATCH: i64 = 256;
/// Responses queued for one client before its task waits for it to read.
pub(super) const CLIENT_BUFFER: usize = 32;
/// How often a caught-up stream looks for new events without being woken:
/// notifications sent while the listener reconnects are lost.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// How a stream ends when the server drains.
pub(super) const DRAINING: &str = "server is draining; reconnect with your last cursor";

pub(super) fn out_of_range() -> ApiError {
    ApiError::OutOfRange(
        "events after this cursor were deleted by retention (CONVERSATIONS_EVENT_RETENTION_HOURS); \
         start again with from_oldest or without a cursor"
            .into(),
    )
}

/// One stream's task.
pub(super) struct Reader {
    pub(super) pool: PgPool,
    pub(super) shutdown: CancellationToken,
    pub(super) notified: watch::Receiver<i64>,
    pub(super) filter: Filter,
}

/// One batch: the matching events after a position, and the head they were
/// read up to, from one snapshot.
#[derive(sqlx::FromRow)]
struct BatchRow {
    last_seq: i64,
    pruned_through: i64,
    seq: Option<i64>,
    payload: Option<Vec<u8>>,
}

impl Reader {
    /// Sends the events after `scanned` until the client goes away (`None`)
    /// or the stream must end with a status.
    pub(super) async fn run(
        mut self,
        mut scanned: i64,
        items: mpsc::Sender<pb::WatchEventsResponse>,
    ) -> Option<tonic::Status> {
        loop {
            let batch = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Some(ApiError::Unavailable(DRAINING.into()).into()),
                () = items.closed() => return None,
                batch = self.batch(scanned) => batch,
            };
            let rows = match batch {
                Ok(rows) => rows,
                Err(error) => return Some(error.into()),
            };
            let Some(first) = rows.first() else {
                return Some(
                    ApiError::internal(anyhow::anyhow!("the event head row is missing")).into(),
                );
            };
            if scanned < first.pruned_through {
                return Some(out_of_range().into());
            }
            let head = first.last_seq;
            let mut delivered = 0;
            let mut last = scanned;
            for row in rows {
                let (Some(seq), Some(payload)) = (row.seq, row.payload) else {
                    continue;
                };
                let mut event = match pb::Event::decode(payload.as_slice()) {
                    Ok(event) => event,
                    Err(error) => return Some(ApiError::internal(error).into()),
                };
                event.cursor = encode_cursor(seq);
                let response = pb::WatchEventsResponse { event: Some(event) };
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return Some(ApiError::Unavailable(DRAINING.into()).into()),
                    sent = items.send(response) => if sent.is_err() { return None },
                }
                delivered += 1;
                last = seq;
            }
            // A full batch may have more behind it; otherwise everything up to
            // the head was scanned, matched or not.
            scanned = if delivered == BATCH {
                last
            } else {
                head.max(scanned)
            };
            if delivered == BATCH {
                continue;
            }
            let woken = async {
                if self.notified.wait_for(|seq| *seq > scanned).await.is_err() {
                    // The listener is gone (the server is stopping): poll.
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Some(ApiError::Unavailable(DRAINING.into()).into()),
                () = items.closed() => return None,
                () = woken => {}
                () = tokio::time::sleep(FALLBACK_POLL) => {}
            }
        }
    }

    /// The matching events after `scanned`, oldest first, at most [`BATCH`],
    /// each row also carrying the head and the pruning mark (one row with no
    /// event when none match). One statement, so one snapshot: every event up
    /// to that head is committed and visible in it.
    async fn batch(&self, scanned: i64) -> ApiResult<Vec<BatchRow>> {
        Ok(sqlx::query_as(
            "SELECT h.last_seq, h.pruned_through, e.seq, e.payload
             FROM event_head h
             LEFT JOIN LATERAL (
                 SELECT seq, payload FROM events
                 WHERE seq > $1 AND seq <= h.last_seq
                   AND ($2::text[] IS NULL OR type = ANY($2))
                   AND ($3::uuid IS NULL OR user_id = $3)
                   AND ($4::uuid IS NULL OR conversation_id = $4)
                 ORDER BY seq
                 LIMIT $5
             ) e ON true
             ORDER BY e.seq",
        )
        .bind(scanned)
        .bind(&self.filter.types)
        .bind(self.filter.user_id)
        .bind(self.filter.conversation_id)
        .bind(BATCH)
        .fetch_all(&self.pool)
        .await?)
    }
}

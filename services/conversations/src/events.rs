//! The event stream: what was recorded, in commit order, for WatchEvents.
//!
//! Writers call [`emit`] as the last statement of their transaction. It takes
//! the next sequence number from the single `event_head` row, whose lock is
//! held until commit, so sequence numbers are gapless and commit in order: a
//! reader that has seen N has seen everything before N, and resuming after N
//! misses nothing. `pg_notify` at commit wakes the readers.
//!
//! Reading ([`Hub`]): one `LISTEN` connection per replica publishes the
//! highest sequence number notified on a `watch` channel. Each WatchEvents
//! call runs a task that reads the table in batches, in order, filtered in
//! SQL, and, once caught up, sleeps until the watch passes its position (or a
//! fallback poll, in case a notification was lost while the listener
//! reconnected). Each batch reads the head in the same snapshot as the rows,
//! so the task knows everything up to that head was scanned, even when a
//! filter matched none of it. The client gets the events through a bounded
//! channel: a slow client holds its task back, not the server's memory.
//!
//! Retention ([`prune`]) deletes a prefix of the stream and records how far
//! in `event_head.pruned_through` before deleting, so a reader behind it is
//! told OUT_OF_RANGE instead of silently missing events.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiError, ApiResult, FieldViolation, Violations, convert::timestamp};
use prost::Message as _;
use sqlx::{PgConnection, PgPool, postgres::PgListener};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

/// The channel writers notify on, with the new sequence number as payload.
pub const NOTIFY_CHANNEL: &str = "conversation_events";

/// Appends `event` (its cursor is ignored) to the stream, within the caller's
/// transaction. Call it last: the event head stays locked until commit.
pub async fn emit(conn: &mut PgConnection, event: pb::Event) -> ApiResult<i64> {
    let kind = type_name(event.r#type());
    let user_id = uuid::Uuid::parse_str(&event.user_id).map_err(ApiError::internal)?;
    let conversation_id = crate::wire::optional_uuid("conversation_id", &event.conversation_id)
        .map_err(|_| ApiError::internal(anyhow::anyhow!("event with a bad conversation id")))?;
    // One statement, so one round trip: every writer of the service queues
    // for the head row, and holds it from here to its commit.
    let seq: i64 = sqlx::query_scalar(
        "WITH head AS (
             UPDATE event_head SET last_seq = last_seq + 1 RETURNING last_seq),
         stored AS (
             INSERT INTO events (seq, type, user_id, conversation_id, payload)
             SELECT last_seq, $1, $2, $3, $4 FROM head
             RETURNING seq)
         SELECT seq FROM stored CROSS JOIN LATERAL pg_notify($5, seq::text)",
    )
    .bind(kind)
    .bind(user_id)
    .bind(conversation_id)
    .bind(event.encode_to_vec())
    .bind(NOTIFY_CHANNEL)
    .fetch_one(&mut *conn)
    .await?;
    Ok(seq)
}

/// [`emit`]s each of `events`, in order.
pub async fn emit_all(conn: &mut PgConnection, events: Vec<pb::Event>) -> ApiResult<()> {
    for event in events {
        emit(conn, event).await?;
    }
    Ok(())
}

/// The stored name of an event type.
pub fn type_name(kind: pb::EventType) -> &'static str {
    match kind {
        pb::EventType::MessageReceived => "message_received",
        pb::EventType::MessageSent => "message_sent",
        pb::EventType::DeliveryStatusChanged => "delivery_status_changed",
        pb::EventType::ConversationStarted => "conversation_started",
        pb::EventType::ConversationUpdated => "conversation_updated",
        pb::EventType::Unspecified => "unspecified",
    }
}

/// An event about `message` as it is now.
pub fn message_event(kind: pb::EventType, message: &pb::Message) -> pb::Event {
    pb::Event {
        r#type: kind as i32,
        create_time: Some(timestamp(chrono::Utc::now())),
        user_id: message.user_id.clone(),
        conversation_id: message.conversation_id.clone(),
        message: Some(message.clone()),
        ..Default::default()
    }
}

/// An event about `conversation` as it is now.
pub fn conversation_event(kind: pb::EventType, conversation: &pb::Conversation) -> pb::Event {
    pb::Event {
        r#type: kind as i32,
        create_time: Some(timestamp(chrono::Utc::now())),
        user_id: conversation.user_id.clone(),
        conversation_id: conversation.id.clone(),
        conversation: Some(conversation.clone()),
        ..Default::default()
    }
}

pub type EventStream = Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEventsResponse, tonic::Status>> + Send>,
>;

/// Rows one query reads. With [`CLIENT_BUFFER`], what one stream holds at
/// most: a client that reads slowly makes its task wait, it never makes the
/// server buffer more.
const BATCH: i64 = 256;
/// Responses queued for one client before its task waits for it to read.
const CLIENT_BUFFER: usize = 32;
/// How often a caught-up stream looks for new events without being woken:
/// notifications sent while the listener reconnects are lost.
const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// Backoff bounds of the listener's reconnection.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How a stream ends when the server drains.
const DRAINING: &str = "server is draining; reconnect with your last cursor";

/// Versioned so the encoding can change; opaque to callers.
const CURSOR_PREFIX: &str = "e1:";

/// The cursor of the event with sequence number `seq`.
pub fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{seq}"))
}

/// The sequence number a cursor we issued stands for. Anything else (another
/// service's page token, an edited cursor) is refused.
fn decode_cursor(field: &str, cursor: &str) -> Result<i64, FieldViolation> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(CURSOR_PREFIX)?.parse::<i64>().ok())
        // Only the canonical form: no sign, no leading zeros, no zero.
        .filter(|seq| *seq > 0 && encode_cursor(*seq) == cursor)
        .ok_or_else(|| FieldViolation::new(field, "is not a cursor this service issued"))
}

/// What a WatchEvents call asked for, validated.
struct Filter {
    types: Option<Vec<&'static str>>,
    user_id: Option<Uuid>,
    conversation_id: Option<Uuid>,
}

enum Start {
    After(i64),
    Oldest,
    Now,
}

fn validate(request: &pb::WatchEventsRequest) -> ApiResult<(Start, Filter)> {
    let mut violations = Violations::default();
    let after = if request.after_cursor.is_empty() {
        None
    } else {
        violations.check(decode_cursor("after_cursor", &request.after_cursor))
    };
    if request.from_oldest && !request.after_cursor.is_empty() {
        violations.push(
            "from_oldest",
            "cannot be combined with after_cursor: the cursor says where to start",
        );
    }
    let mut types = Vec::new();
    for (i, value) in request.types.iter().enumerate() {
        match pb::EventType::try_from(*value) {
            Ok(kind) if kind != pb::EventType::Unspecified => {
                let name = type_name(kind);
                if !types.contains(&name) {
                    types.push(name);
                }
            }
            _ => violations.push(
                &format!("types[{i}]"),
                "must be one of EVENT_TYPE_MESSAGE_RECEIVED, EVENT_TYPE_MESSAGE_SENT, \
                 EVENT_TYPE_DELIVERY_STATUS_CHANGED, EVENT_TYPE_CONVERSATION_STARTED, \
                 EVENT_TYPE_CONVERSATION_UPDATED",
            ),
        }
    }
    let user_id = violations.check(crate::wire::optional_uuid("user_id", &request.user_id));
    let conversation_id = violations.check(crate::wire::optional_uuid(
        "conversation_id",
        &request.conversation_id,
    ));
    violations.into_result()?;
    let start = match after {
        Some(seq) => Start::After(seq),
        None if request.from_oldest => Start::Oldest,
        None => Start::Now,
    };
    Ok((
        start,
        Filter {
            types: (!types.is_empty()).then_some(types),
            user_id: user_id.flatten(),
            conversation_id: conversation_id.flatten(),
        },
    ))
}

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

fn out_of_range() -> ApiError {
    ApiError::OutOfRange(
        "events after this cursor were deleted by retention (CONVERSATIONS_EVENT_RETENTION_HOURS); \
         start again with from_oldest or without a cursor"
            .into(),
    )
}

/// Keeps `notified` at the highest sequence number committed, for as long as
/// the service runs: LISTEN on one connection, reconnecting with backoff when
/// it drops. After each (re)connection it reads the head, so watchers are
/// woken for whatever was committed while nobody listened.
async fn listen(pool: PgPool, notified: watch::Sender<i64>, shutdown: CancellationToken) {
    let advance = |seq: i64| {
        notified.send_if_modified(|seen| {
            let newer = seq > *seen;
            if newer {
                *seen = seq;
            }
            newer
        });
    };
    let resync = || async {
        match sqlx::query_scalar::<_, i64>("SELECT last_seq FROM event_head")
            .fetch_one(&pool)
            .await
        {
            Ok(seq) => advance(seq),
            // Before the migrations ran, or the database went away again:
            // the readers' fallback poll covers it.
            Err(error) => tracing::debug!(%error, "cannot read the event head"),
        }
    };
    let mut delay = RECONNECT_MIN;
    loop {
        let connect = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = connect => connected,
        };
        match connected {
            Ok(mut listener) => {
                delay = RECONNECT_MIN;
                resync().await;
                loop {
                    let received = tokio::select! {
                        () = shutdown.cancelled() => return,
                        received = listener.try_recv() => received,
                    };
                    match received {
                        Ok(Some(notification)) => match notification.payload().parse() {
                            Ok(seq) => advance(seq),
                            Err(_) => resync().await,
                        },
                        // The connection dropped and the listener has
                        // reconnected: what was notified meanwhile is lost.
                        Ok(None) => {
                            tracing::info!("event listener reconnected");
                            resync().await;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "event listener lost its connection");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "event listener cannot connect")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

/// One stream's task.
struct Reader {
    pool: PgPool,
    shutdown: CancellationToken,
    notified: watch::Receiver<i64>,
    filter: Filter,
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
    async fn run(
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

/// Deletes the events older than `retention`: always a prefix of the stream
/// (up to the oldest event still within it), so what remains has no holes a
/// reader could fall into. The mark is raised before the rows go, so a
/// reader behind it gets OUT_OF_RANGE, never a silent gap. Safe on several
/// replicas at once.
pub async fn prune(pool: &PgPool, retention: Duration) -> anyhow::Result<u64> {
    // create_time is the writer's transaction start, not its commit, so it is
    // not quite in seq order: stop before the first event within retention.
    let through: Option<i64> = sqlx::query_scalar(
        "SELECT COALESCE(
             (SELECT seq FROM events
              WHERE create_time >= now() - make_interval(secs => $1)
              ORDER BY seq LIMIT 1) - 1,
             (SELECT max(seq) FROM events))",
    )
    .bind(retention.as_secs_f64())
    .fetch_one(pool)
    .await?;
    let Some(through) = through else {
        return Ok(0);
    };
    // Waits for a writer holding the head (only until its commit).
    sqlx::query("UPDATE event_head SET pruned_through = $1 WHERE pruned_through < $1")
        .bind(through)
        .execute(pool)
        .await?;
    // In slices, so no statement holds many row locks or runs long.
    const SLICE: i64 = 10_000;
    let mut deleted = 0;
    loop {
        let slice = sqlx::query(
            "DELETE FROM events WHERE seq IN (
                 SELECT seq FROM events WHERE seq <= $1 ORDER BY seq LIMIT $2)",
        )
        .bind(through)
        .bind(SLICE)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += slice;
        if slice < SLICE as u64 {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        for seq in [1, 42, i64::MAX] {
            assert_eq!(decode_cursor("c", &encode_cursor(seq)).unwrap(), seq);
        }
        let page_token = mesh_runtime::pagination::encode_token("42");
        for bad in [
            "",
            "not-a-cursor",
            page_token.as_str(),
            &URL_SAFE_NO_PAD.encode("e1:0"),
            &URL_SAFE_NO_PAD.encode("e1:-3"),
            &URL_SAFE_NO_PAD.encode("e1:+3"),
            &URL_SAFE_NO_PAD.encode("e1:03"),
            &URL_SAFE_NO_PAD.encode("e2:3"),
        ] {
            assert!(decode_cursor("c", bad).is_err(), "{bad:?}");
        }
    }
}

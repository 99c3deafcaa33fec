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

mod cursor;
mod listener;
mod reader;
mod request;
mod retention;
mod watch;

use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiResult, convert::timestamp};
use prost::Message as _;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{conversations::ConversationRow, messages::MessageRow, wire};

pub use retention::prune;
pub use watch::{EventStream, Hub};

/// The channel writers notify on, with the new sequence number as payload.
pub const NOTIFY_CHANNEL: &str = "conversation_events";

/// An event to [`emit`], with the ids it is filtered on.
#[derive(Debug)]
pub struct Event {
    user_id: Uuid,
    conversation_id: Option<Uuid>,
    proto: pb::Event,
}

/// Appends `event` to the stream, within the caller's transaction. Call it
/// last: the event head stays locked until commit.
pub async fn emit(conn: &mut PgConnection, event: Event) -> ApiResult<i64> {
    // The rows the constructors take never have UNSPECIFIED.
    let kind = wire::event_type::name(event.proto.r#type).unwrap_or("unspecified");
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
    .bind(event.user_id)
    .bind(event.conversation_id)
    .bind(event.proto.encode_to_vec())
    .bind(NOTIFY_CHANNEL)
    .fetch_one(&mut *conn)
    .await?;
    Ok(seq)
}

/// [`emit`]s each of `events`, in order.
pub async fn emit_all(conn: &mut PgConnection, events: Vec<Event>) -> ApiResult<()> {
    for event in events {
        emit(conn, event).await?;
    }
    Ok(())
}

/// An event about `message` as it is now.
pub fn message_event(kind: pb::EventType, message: &MessageRow) -> Event {
    Event {
        user_id: message.user_id,
        conversation_id: Some(message.conversation_id),
        proto: pb::Event {
            r#type: kind as i32,
            create_time: Some(timestamp(chrono::Utc::now())),
            user_id: message.user_id.to_string(),
            conversation_id: message.conversation_id.to_string(),
            message: Some(message.clone().into_proto()),
            ..Default::default()
        },
    }
}

/// An event about `conversation` as it is now.
pub fn conversation_event(kind: pb::EventType, conversation: &ConversationRow) -> Event {
    Event {
        user_id: conversation.user_id,
        conversation_id: Some(conversation.id),
        proto: pb::Event {
            r#type: kind as i32,
            create_time: Some(timestamp(chrono::Utc::now())),
            user_id: conversation.user_id.to_string(),
            conversation_id: conversation.id.to_string(),
            conversation: Some(conversation.clone().into_proto()),
            ..Default::default()
        },
    }
}

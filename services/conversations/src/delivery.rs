//! Delivery statuses of outbound messages, which only move forward:
//! pending < accepted < sent < delivered < read < played, and failed is final
//! (the order is the database's `delivery_rank`). Providers send statuses out
//! of order and sometimes before we have stored the message's provider id, so
//! a status for an unknown id is deferred and applied when the id appears.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiResult, Violations, convert::from_timestamp};
use sqlx::{PgConnection, PgPool};

use crate::{
    events,
    messages::{MESSAGE_COLUMNS, MessageRow},
    wire,
};

/// How long a status waits for its message.
const DEFERRED_RETENTION_DAYS: i32 = 7;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Status {
    pub status: String,
    pub status_time: DateTime<Utc>,
    pub error_code: Option<String>,
    pub error_title: Option<String>,
    pub error_message: Option<String>,
    pub pricing_category: Option<String>,
}

#[tracing::instrument(skip_all)]
pub async fn update(
    pool: &PgPool,
    request: pb::UpdateDeliveryStatusRequest,
) -> ApiResult<pb::UpdateDeliveryStatusResponse> {
    let mut violations = Violations::default();
    let channel = violations.check(wire::channel::require("channel", request.channel));
    violations.check(wire::required_text(
        "provider_message_id",
        &request.provider_message_id,
        256,
    ));
    let status = match pb::DeliveryStatus::try_from(request.status) {
        Ok(
            pb::DeliveryStatus::Sent
            | pb::DeliveryStatus::Delivered
            | pb::DeliveryStatus::Read
            | pb::DeliveryStatus::Played
            | pb::DeliveryStatus::Failed,
        ) => wire::delivery_status::name(request.status),
        _ => {
            violations.push(
                "status",
                "must be DELIVERY_STATUS_SENT, _DELIVERED, _READ, _PLAYED or _FAILED",
            );
            None
        }
    };
    let status_time = match &request.status_time {
        Some(t) => violations.check(from_timestamp("status_time", t)),
        None => Some(Utc::now()),
    };
    violations.check(wire::text("error_code", &request.error_code, 64));
    violations.check(wire::text("error_title", &request.error_title, 1024));
    violations.check(wire::text("error_message", &request.error_message, 4096));
    violations.check(wire::text(
        "pricing_category",
        &request.pricing_category,
        64,
    ));
    violations.into_result()?;
    let channel = channel.expect("validated");
    let status = Status {
        status: status.expect("validated").to_owned(),
        status_time: status_time.expect("validated"),
        error_code: wire::non_empty(&request.error_code).map(str::to_owned),
        error_title: wire::non_empty(&request.error_title).map(str::to_owned),
        error_message: wire::non_empty(&request.error_message).map(str::to_owned),
        pricing_category: wire::non_empty(&request.pricing_category).map(str::to_owned),
    };

    let provider_id = &request.provider_message_id;
    let mut tx = pool.begin().await?;
    lock_provider_id(&mut tx, channel, provider_id).await?;
    // Most statuses move their message forward: try that first.
    if let Some(message) = apply(&mut tx, channel, provider_id, &status).await? {
        tx.commit().await?;
        return Ok(pb::UpdateDeliveryStatusResponse {
            message: Some(message.into_proto()),
            applied: true,
            deferred: false,
        });
    }
    let message: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel = $1 AND provider_message_id = $2"
    )))
    .bind(channel)
    .bind(provider_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(message) = message else {
        // The first report of each status is kept; a repeat changes nothing.
        sqlx::query(
            "INSERT INTO deferred_statuses (channel, provider_message_id, status, status_time,
                error_code, error_title, error_message, pricing_category)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(channel)
        .bind(provider_id)
        .bind(&status.status)
        .bind(status.status_time)
        .bind(&status.error_code)
        .bind(&status.error_title)
        .bind(&status.error_message)
        .bind(&status.pricing_category)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(pb::UpdateDeliveryStatusResponse {
            message: None,
            applied: false,
            deferred: true,
        });
    };
    // Stored, but not moved: the status is not forward of its own, or the
    // message is inbound.
    tx.commit().await?;
    Ok(pb::UpdateDeliveryStatusResponse {
        message: Some(message.into_proto()),
        applied: false,
        deferred: false,
    })
}

/// Serialises "store a status for this provider id" against "give a message
/// this provider id" for the rest of the transaction, so a status arriving
/// while its message is being stored is either seen by the message's writer
/// or finds the message: never neither.
pub async fn lock_provider_id(
    conn: &mut PgConnection,
    channel: &str,
    provider_id: &str,
) -> ApiResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("{channel}:{provider_id}"))
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves the outbound message with `provider_id` on `channel` to `status` if
/// that is forward, and emits the change; `None` when nothing moved (no such
/// outbound message, or the status is not forward of its own).
async fn apply(
    conn: &mut PgConnection,
    channel: &str,
    provider_id: &str,
    status: &Status,
) -> ApiResult<Option<MessageRow>> {
    let updated: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE messages SET
            delivery_status = $3,
            sent_time = CASE WHEN $3 = 'sent' THEN $4 ELSE sent_time END,
            delivered_time = CASE WHEN $3 = 'delivered' THEN $4 ELSE delivered_time END,
            read_time = CASE WHEN $3 = 'read' THEN $4 ELSE read_time END,
            played_time = CASE WHEN $3 = 'played' THEN $4 ELSE played_time END,
            failed_time = CASE WHEN $3 = 'failed' THEN $4 ELSE failed_time END,
            error_code = CASE WHEN $3 = 'failed' THEN $5 ELSE error_code END,
            error_title = CASE WHEN $3 = 'failed' THEN $6 ELSE error_title END,
            error_message = CASE WHEN $3 = 'failed' THEN $7 ELSE error_message END,
            pricing_category = COALESCE($8, pricing_category)
         WHERE channel = $1 AND provider_message_id = $2 AND direction = 'outbound'
           AND delivery_rank($3) > delivery_rank(delivery_status)
         RETURNING {MESSAGE_COLUMNS}"
    )))
    .bind(channel)
    .bind(provider_id)
    .bind(&status.status)
    .bind(status.status_time)
    .bind(&status.error_code)
    .bind(&status.error_title)
    .bind(&status.error_message)
    .bind(&status.pricing_category)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(updated) = &updated {
        status_changed(conn, updated).await?;
    }
    Ok(updated)
}

/// Tells the watchers of `message` that its delivery status changed; call it
/// in the transaction that changed it.
pub async fn status_changed(conn: &mut PgConnection, message: &MessageRow) -> ApiResult<()> {
    let event = events::message_event(pb::EventType::DeliveryStatusChanged, message);
    events::emit(conn, event).await?;
    Ok(())
}

/// Applies the statuses that arrived for `message`'s provider id before the
/// message had it, in the order they move forward, and forgets them; when any
/// waited, resolves the webhook failures recorded for them. Call it in the
/// transaction that gives the message its provider id, which took
/// [`lock_provider_id`] before storing the id (and before emitting anything:
/// a status holding that lock may be waiting for the event head).
pub async fn apply_deferred(
    conn: &mut PgConnection,
    mut message: MessageRow,
) -> ApiResult<MessageRow> {
    let Some(provider_id) = message.provider_message_id.clone() else {
        return Ok(message);
    };
    let waiting: Vec<Status> = sqlx::query_as(
        "WITH d AS (
             DELETE FROM deferred_statuses WHERE channel = $1 AND provider_message_id = $2
             RETURNING status, status_time, error_code, error_title, error_message,
                pricing_category)
         SELECT * FROM d ORDER BY delivery_rank(status)",
    )
    .bind(&message.channel)
    .bind(&provider_id)
    .fetch_all(&mut *conn)
    .await?;
    for status in &waiting {
        if let Some(moved) = apply(conn, &message.channel, &provider_id, status).await? {
            message = moved;
        }
    }
    if !waiting.is_empty() {
        resolve_failures(conn, &message.channel, &provider_id).await?;
    }
    Ok(message)
}

/// What a dead letter resolved by [`apply_deferred`] says.
const RESOLVED_BY_LATE_MESSAGE: &str =
    "the message was stored later and its deferred status applied";

/// Resolves the open webhook failures the gateway recorded for statuses of
/// `provider_id` that were deferred ("a status for a message we never sent")
/// and have now been applied. The source of a failure is the channel's name.
async fn resolve_failures(
    conn: &mut PgConnection,
    channel: &str,
    provider_id: &str,
) -> ApiResult<()> {
    // The partial index webhook_failures_open_provider_id finds them.
    let resolved = sqlx::query(
        "UPDATE webhook_failures SET status = 'resolved', resolution = $3
         WHERE source = $1 AND provider_message_id = $2 AND status IN ('pending', 'retrying')",
    )
    .bind(channel)
    .bind(provider_id)
    .bind(RESOLVED_BY_LATE_MESSAGE)
    .execute(conn)
    .await?
    .rows_affected();
    if resolved > 0 {
        tracing::info!(
            channel,
            provider_id,
            resolved,
            "webhook failures resolved by a late message"
        );
    }
    Ok(())
}

/// Deletes deferred statuses whose message never appeared.
pub async fn prune_deferred(pool: &PgPool) -> anyhow::Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM deferred_statuses WHERE create_time < now() - make_interval(days => $1)",
    )
    .bind(DEFERRED_RETENTION_DAYS)
    .execute(pool)
    .await?
    .rows_affected())
}

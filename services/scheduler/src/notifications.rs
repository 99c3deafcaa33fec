//! In-app notifications and their retention.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::scheduler::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{json_to_struct, optional_timestamp, parse_uuid, timestamp},
    idempotency::{self, Key},
    pagination::{Page, TimeKey, next_page},
};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use crate::{
    State,
    wire::{json_object, notification_priority, notification_type, required_text},
};

const MAX_TITLE_CHARS: usize = 200;
const MAX_MESSAGE_CHARS: usize = 4000;
/// Rows one retention statement deletes: a backlog goes in short transactions.
const DELETE_BATCH: i64 = 5000;

/// Every column a Notification is read from, in [`NotificationRow`]'s order.
const COLUMNS: &str = "id, user_id, type, title, message, action, priority, read_time, create_time";

#[derive(sqlx::FromRow)]
struct NotificationRow {
    id: Uuid,
    user_id: Uuid,
    r#type: String,
    title: String,
    message: String,
    action: serde_json::Value,
    priority: String,
    read_time: Option<DateTime<Utc>>,
    create_time: DateTime<Utc>,
}

impl NotificationRow {
    fn into_pb(self) -> pb::Notification {
        pb::Notification {
            id: self.id.to_string(),
            user_id: self.user_id.to_string(),
            r#type: notification_type::parse(&self.r#type) as i32,
            title: self.title,
            message: self.message,
            action: Some(json_to_struct(&self.action)),
            priority: notification_priority::parse(&self.priority) as i32,
            read: self.read_time.is_some(),
            read_time: optional_timestamp(self.read_time),
            create_time: Some(timestamp(self.create_time)),
        }
    }
}

#[tracing::instrument(skip_all)]
pub async fn create(
    state: &State,
    request: pb::CreateNotificationRequest,
) -> ApiResult<pb::CreateNotificationResponse> {
    let mut violations = Violations::default();
    violations.check(idempotency::check_request_id(&request.request_id));
    let Some(notification) = &request.notification else {
        violations.push("notification", "is required");
        return Err(violations.into());
    };
    let user = violations.check(parse_uuid("notification.user_id", &notification.user_id));
    let kind = violations.check(notification_type::require(
        "notification.type",
        notification.r#type,
    ));
    violations.check(required_text(
        "notification.title",
        &notification.title,
        MAX_TITLE_CHARS,
    ));
    violations.check(required_text(
        "notification.message",
        &notification.message,
        MAX_MESSAGE_CHARS,
    ));
    let action = violations.check(json_object(
        "notification.action",
        notification.action.as_ref(),
    ));
    let priority = if notification.priority == 0 {
        Some("normal")
    } else {
        violations.check(notification_priority::require(
            "notification.priority",
            notification.priority,
        ))
    };
    violations.into_result()?;
    let (user, kind, action, priority) = (
        user.expect("checked"),
        kind.expect("checked"),
        action.expect("checked"),
        priority.expect("checked"),
    );
    let key = Key {
        operation: "CreateNotification",
        request_id: &request.request_id,
        user_id: Some(user),
    };
    idempotency::run_once(&state.pool, key, &request, async |conn| {
        let row: NotificationRow = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO notifications (id, user_id, type, title, message, action, priority)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             RETURNING {COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(kind)
        .bind(&notification.title)
        .bind(&notification.message)
        .bind(&action)
        .bind(priority)
        .fetch_one(conn)
        .await?;
        Ok(pb::CreateNotificationResponse {
            notification: Some(row.into_pb()),
        })
    })
    .await
}

#[tracing::instrument(skip_all)]
pub async fn list(
    state: &State,
    request: pb::ListNotificationsRequest,
) -> ApiResult<pb::ListNotificationsResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let page = Page::<TimeKey>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (user, page) = (user.expect("checked"), page.expect("checked"));
    // Newest first by creation, the id breaking ties.
    let (after_time, after_id) = page.after.map(|key| (key.time, key.id)).unzip();
    // One snapshot for the page and the count, so they agree.
    let mut tx = state.pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let mut rows: Vec<NotificationRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM notifications
         WHERE user_id = $1
           AND (NOT $2 OR read_time IS NULL)
           AND ($3::timestamptz IS NULL OR (create_time, id) < ($3, $4))
         ORDER BY create_time DESC, id DESC
         LIMIT $5"
    )))
    .bind(user)
    .bind(request.unread_only)
    .bind(after_time)
    .bind(after_id)
    .bind(page.size + 1)
    .fetch_all(&mut *tx)
    .await?;
    let unread_count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE user_id = $1 AND read_time IS NULL",
    )
    .bind(user)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let next_page_token = next_page(&mut rows, page.size, |row| {
        TimeKey::new(row.create_time, row.id).to_string()
    });
    Ok(pb::ListNotificationsResponse {
        notifications: rows.into_iter().map(NotificationRow::into_pb).collect(),
        next_page_token,
        unread_count: i32::try_from(unread_count).unwrap_or(i32::MAX),
    })
}

#[tracing::instrument(skip_all)]
pub async fn mark_read(
    state: &State,
    request: pb::MarkNotificationReadRequest,
) -> ApiResult<pb::MarkNotificationReadResponse> {
    let id = parse_uuid("notification_id", &request.notification_id)?;
    // The first read time stays: a repeat marks nothing new.
    let row: NotificationRow = sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE notifications SET read_time = coalesce(read_time, now())
         WHERE id = $1
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no notification {id}")))?;
    Ok(pb::MarkNotificationReadResponse {
        notification: Some(row.into_pb()),
    })
}

/// Deletes read notifications older than `retention`; returns how many.
/// Every replica runs it: SKIP LOCKED leaves the rows one is deleting to it.
#[tracing::instrument(skip(pool))]
pub async fn delete_expired(pool: PgPool, retention: std::time::Duration) -> anyhow::Result<u64> {
    let mut deleted = 0;
    loop {
        let batch = sqlx::query(
            "DELETE FROM notifications WHERE id IN (
                 SELECT id FROM notifications
                 WHERE read_time < now() - make_interval(secs => $1)
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             )",
        )
        .bind(retention.as_secs_f64())
        .bind(DELETE_BATCH)
        .execute(&pool)
        .await?
        .rows_affected();
        deleted += batch;
        if batch < DELETE_BATCH as u64 {
            return Ok(deleted);
        }
    }
}

//! Claiming due items under a lease, and when the next one is due.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use super::Kind;

/// A claimed reminder or check-in, with what sending it needs.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct Item {
    #[sqlx(skip)]
    pub kind: Kind,
    pub id: Uuid,
    pub user_id: Uuid,
    /// A reminder's title, a check-in's content.
    pub title: String,
    pub description: String,
    pub scheduled_time: DateTime<Utc>,
    pub retry_count: i32,
    pub send_token: Uuid,
    pub channel: Option<String>,
    pub whatsapp_template: Option<serde_json::Value>,
    /// The request an earlier attempt made under `send_token`, if any.
    pub send_request: Option<serde_json::Value>,
}

impl Item {
    /// What the user receives.
    pub fn text(&self) -> String {
        crate::reminders::text(&self.title, &self.description)
    }
}

/// Claims up to `limit` due items, reminders first (the older ones in each
/// table first), leasing them to `me` for `lease`.
pub(super) async fn claim(
    pool: &PgPool,
    me: Uuid,
    lease: Duration,
    limit: usize,
) -> sqlx::Result<Vec<Item>> {
    let mut items = claim_from(pool, Kind::Reminder, me, lease, limit).await?;
    if items.len() < limit {
        items.extend(claim_from(pool, Kind::CheckIn, me, lease, limit - items.len()).await?);
    }
    Ok(items)
}

async fn claim_from(
    pool: &PgPool,
    kind: Kind,
    me: Uuid,
    lease: Duration,
    limit: usize,
) -> sqlx::Result<Vec<Item>> {
    // The same predicates as the partial indexes reminders_due / check_ins_due.
    let (has_content, title, description) = match kind {
        Kind::Reminder => ("", "t.title", "t.description"),
        Kind::CheckIn => ("AND content IS NOT NULL", "t.content", "''"),
    };
    let table = kind.table();
    let sql = format!(
        "WITH due AS (
             SELECT id FROM {table}
             WHERE status = 'pending' {has_content} AND next_attempt_time <= now()
               AND (lease_expire_time IS NULL OR lease_expire_time < now())
             ORDER BY next_attempt_time
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         )
         UPDATE {table} t
         SET lease_owner = $1, lease_expire_time = now() + make_interval(secs => $3)
         FROM due WHERE t.id = due.id
         RETURNING t.id, t.user_id, {title} AS title, {description} AS description,
                   t.scheduled_time, t.retry_count, t.send_token, t.channel,
                   t.whatsapp_template, t.send_request"
    );
    let mut items: Vec<Item> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(me)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(lease.as_secs_f64())
        .fetch_all(pool)
        .await?;
    for item in &mut items {
        item.kind = kind;
    }
    Ok(items)
}

/// The earliest time within `horizon` at which a pending item becomes
/// claimable (its due time, or its lease's end when another replica holds
/// it); None when there is none that soon. Reads only the partial indexes'
/// near end.
pub(super) async fn next_due(
    pool: &PgPool,
    horizon: Duration,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "SELECT min(greatest(next_attempt_time, coalesce(lease_expire_time, next_attempt_time)))
         FROM (
             SELECT next_attempt_time, lease_expire_time FROM reminders
             WHERE status = 'pending'
               AND next_attempt_time < now() + make_interval(secs => $1)
             UNION ALL
             SELECT next_attempt_time, lease_expire_time FROM check_ins
             WHERE status = 'pending' AND content IS NOT NULL
               AND next_attempt_time < now() + make_interval(secs => $1)
         ) soon",
    )
    .bind(horizon.as_secs_f64())
    .fetch_one(pool)
    .await
}

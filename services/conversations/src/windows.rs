//! The WhatsApp messaging windows of a user.
//!
//! Customer service window: 24 h from the user's last inbound message; inside
//! it any message may be sent, outside only templates. Free entry point: a
//! user who came from an ad and is answered within 24 h opens 72 h of free
//! messaging, counted from that first reply.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{
    ApiResult, Violations,
    convert::{parse_uuid, timestamp},
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::conversations::time_zone;

pub const CUSTOMER_SERVICE: Duration = Duration::hours(24);
pub const FREE_ENTRY_POINT: Duration = Duration::hours(72);
/// How long after the ad referral our first reply still opens the free entry point.
pub const REFERRAL_REPLY: Duration = Duration::hours(24);

/// Records an inbound user message sent at `sent_at`: opens or refreshes the
/// customer service window (never moving it back, as messages can arrive out
/// of order) and, with an ad `referral`, records it.
pub async fn note_inbound(
    conn: &mut PgConnection,
    user: Uuid,
    sent_at: DateTime<Utc>,
    referral: Option<serde_json::Value>,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO messaging_windows (user_id, last_inbound_time, referral_time, referral)
         VALUES ($1, $2, CASE WHEN $3::jsonb IS NULL THEN NULL ELSE $2 END, $3)
         ON CONFLICT (user_id) DO UPDATE SET
            last_inbound_time = GREATEST(messaging_windows.last_inbound_time, EXCLUDED.last_inbound_time),
            -- A late, older ad message keeps neither its time nor its ad.
            referral_time = CASE WHEN EXCLUDED.referral IS NULL THEN messaging_windows.referral_time
                ELSE GREATEST(messaging_windows.referral_time, EXCLUDED.referral_time) END,
            referral = CASE
                WHEN EXCLUDED.referral IS NULL THEN messaging_windows.referral
                WHEN messaging_windows.referral_time > EXCLUDED.referral_time THEN messaging_windows.referral
                ELSE EXCLUDED.referral END,
            update_time = now()",
    )
    .bind(user)
    .bind(sent_at)
    .bind(referral)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that we replied: the first reply within 24 h of an ad referral
/// opens the free entry point window.
pub async fn note_outbound(conn: &mut PgConnection, user: Uuid) -> ApiResult<()> {
    sqlx::query(
        "UPDATE messaging_windows SET free_entry_point_start = now(), update_time = now()
         WHERE user_id = $1 AND referral_time > now() - $2::interval
           AND (free_entry_point_start IS NULL OR free_entry_point_start < referral_time)",
    )
    .bind(user)
    .bind(format!("{} seconds", REFERRAL_REPLY.num_seconds()))
    .execute(conn)
    .await?;
    Ok(())
}

/// When each window closes (closed) for one user; `None` when it never opened.
#[derive(Debug, Default, Clone, Copy)]
pub struct WindowState {
    pub customer_service_until: Option<DateTime<Utc>>,
    pub free_entry_point_until: Option<DateTime<Utc>>,
}

impl WindowState {
    pub fn customer_service_open(&self, now: DateTime<Utc>) -> bool {
        self.customer_service_until.is_some_and(|until| until > now)
    }

    pub fn free_entry_point_open(&self, now: DateTime<Utc>) -> bool {
        self.free_entry_point_until.is_some_and(|until| until > now)
    }

    /// Whether non-template messages may be sent now.
    pub fn free_form_open(&self, now: DateTime<Utc>) -> bool {
        self.customer_service_open(now) || self.free_entry_point_open(now)
    }

    /// The latest time until which free-form messages may be sent, if open now.
    pub fn free_form_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        [self.customer_service_until, self.free_entry_point_until]
            .into_iter()
            .flatten()
            .filter(|until| *until > now)
            .max()
    }
}

/// The times the windows count from, as stored.
#[derive(sqlx::FromRow, Default)]
struct WindowRow {
    last_inbound_time: Option<DateTime<Utc>>,
    free_entry_point_start: Option<DateTime<Utc>>,
}

pub async fn state(conn: &mut PgConnection, user: Uuid) -> ApiResult<WindowState> {
    let row: Option<WindowRow> = sqlx::query_as(
        "SELECT last_inbound_time, free_entry_point_start FROM messaging_windows WHERE user_id = $1",
    )
    .bind(user)
    .fetch_optional(conn)
    .await?;
    let row = row.unwrap_or_default();
    Ok(WindowState {
        customer_service_until: row.last_inbound_time.map(|t| t + CUSTOMER_SERVICE),
        free_entry_point_until: row.free_entry_point_start.map(|t| t + FREE_ENTRY_POINT),
    })
}

#[tracing::instrument(skip_all)]
pub async fn get(
    pool: &PgPool,
    request: pb::GetMessagingWindowRequest,
) -> ApiResult<pb::GetMessagingWindowResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let zone = if request.time_zone.is_empty() {
        Some(chrono_tz::UTC)
    } else {
        violations.check(time_zone("time_zone", &request.time_zone))
    };
    violations.into_result()?;
    let (user, zone) = (user.expect("validated"), zone.expect("validated"));

    let now = Utc::now();
    let today = now.with_timezone(&zone).date_naive();
    let local_midnight = [
        NaiveTime::MIN,
        NaiveTime::from_hms_opt(1, 0, 0).expect("01:00"),
    ]
    .into_iter()
    // Where a DST change skips midnight, the day starts at 01:00.
    .find_map(|time| zone.from_local_datetime(&today.and_time(time)).earliest())
    .map_or(now, |start| start.with_timezone(&Utc));
    let mut conn = pool.acquire().await?;
    let windows = state(&mut conn, user).await?;
    let proactive_today: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages
         WHERE user_id = $1 AND channel = 'whatsapp' AND direction = 'outbound' AND proactive
           AND delivery_status IS DISTINCT FROM 'failed' AND create_time >= $2",
    )
    .bind(user)
    .bind(local_midnight)
    .fetch_one(&mut *conn)
    .await?;
    let window = |open: bool, until: Option<DateTime<Utc>>| pb::MessagingWindow {
        open,
        expire_time: until.map(timestamp),
    };
    Ok(pb::GetMessagingWindowResponse {
        free_form_allowed: windows.free_form_open(now),
        free_form_until: windows.free_form_until(now).map(timestamp),
        customer_service: Some(window(
            windows.customer_service_open(now),
            windows.customer_service_until,
        )),
        free_entry_point: Some(window(
            windows.free_entry_point_open(now),
            windows.free_entry_point_until,
        )),
        proactive_messages_today: i32::try_from(proactive_today).unwrap_or(i32::MAX),
    })
}

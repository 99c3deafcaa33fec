//! Calendar events and the reminders before them.
//!
//! An event with `reminder_minutes_before` gets a pending reminder that long
//! before its start (when that is still ahead), in the same transaction as
//! the event's write; moving the start or changing the minutes moves it,
//! cancelling or deleting the event cancels it, all through the reminder
//! state machine. The reminder is in the user's time zone (asked of the
//! users service only when a reminder is made or moved), so its text shows
//! the local start time and the dispatcher's quiet hours apply as usual.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use mesh_proto::mesh::scheduler::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, FieldViolation, Violations,
    convert::{from_timestamp, parse_uuid, timestamp},
    field_mask,
    idempotency::{self, Key},
    pagination::{Page, TimeKey, next_page},
    wire::non_empty,
};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::{
    State, clock,
    reminders::{self, NewReminder},
    status,
    wire::{calendar_event_status, required_text, text},
};

const MAX_TITLE_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 4000;
const MAX_LOCATION_CHARS: usize = 500;
const MAX_EXTERNAL_ID_CHARS: usize = 256;
const MAX_REMINDER_MINUTES: i32 = 40_320;
const CANCELLED: &str = "cancelled";

const COLUMNS: &str = "id, user_id, title, description, start_time, end_time, location, status, \
    external_id, reminder_minutes_before, reminder_id, create_time, update_time";

const UPDATABLE: &[&str] = &[
    "title",
    "description",
    "start_time",
    "end_time",
    "location",
    "status",
    "external_id",
    "reminder_minutes_before",
];

/// Paths whose change may make, move or cancel the event's reminder.
const REMINDER_PATHS: &[&str] = &["title", "start_time", "status", "reminder_minutes_before"];

#[derive(sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    user_id: Uuid,
    title: String,
    description: String,
    start_time: DateTime<Utc>,
    end_time: DateTime<Utc>,
    location: String,
    status: String,
    external_id: Option<String>,
    reminder_minutes_before: Option<i32>,
    reminder_id: Option<Uuid>,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl EventRow {
    fn into_pb(self) -> pb::CalendarEvent {
        pb::CalendarEvent {
            id: self.id.to_string(),
            user_id: self.user_id.to_string(),
            title: self.title,
            description: self.description,
            start_time: Some(timestamp(self.start_time)),
            end_time: Some(timestamp(self.end_time)),
            location: self.location,
            status: calendar_event_status::parse(&self.status) as i32,
            external_id: self.external_id.unwrap_or_default(),
            reminder_minutes_before: self.reminder_minutes_before,
            reminder_id: self
                .reminder_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            create_time: Some(timestamp(self.create_time)),
            update_time: Some(timestamp(self.update_time)),
        }
    }

    /// When its reminder is due, if it should have one now.
    fn reminder_time(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let minutes = self.reminder_minutes_before?;
        let at = self.start_time - TimeDelta::minutes(i64::from(minutes));
        (self.status != CANCELLED && at > now).then_some(at)
    }
}

/// An event's writable fields, checked.
struct EventInput {
    user: Uuid,
    title: String,
    description: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    location: String,
    status: &'static str,
    external_id: Option<String>,
    reminder_minutes_before: Option<i32>,
}

fn check_event(
    violations: &mut Violations,
    event: Option<&pb::CalendarEvent>,
) -> Option<EventInput> {
    let Some(event) = event else {
        violations.push("event", "is required");
        return None;
    };
    let user = violations.check(parse_uuid("event.user_id", &event.user_id));
    let title = violations.check(required_text("event.title", &event.title, MAX_TITLE_CHARS));
    let description = violations.check(text(
        "event.description",
        &event.description,
        MAX_DESCRIPTION_CHARS,
    ));
    let time = |violations: &mut Violations, field: &str, time: Option<&prost_types::Timestamp>| {
        violations.check(
            time.ok_or_else(|| FieldViolation::new(field, "is required"))
                .and_then(|time| from_timestamp(field, time)),
        )
    };
    let start = time(violations, "event.start_time", event.start_time.as_ref());
    let end = time(violations, "event.end_time", event.end_time.as_ref());
    if let (Some(start), Some(end)) = (start, end)
        && start >= end
    {
        violations.push("event.end_time", "must be after start_time");
    }
    let location = violations.check(text("event.location", &event.location, MAX_LOCATION_CHARS));
    let status = violations
        .check(calendar_event_status::optional(
            "event.status",
            event.status,
        ))
        .map(|status| status.unwrap_or("confirmed"));
    let external_id = violations.check(text(
        "event.external_id",
        &event.external_id,
        MAX_EXTERNAL_ID_CHARS,
    ));
    let minutes = event.reminder_minutes_before;
    if minutes.is_some_and(|m| !(0..=MAX_REMINDER_MINUTES).contains(&m)) {
        violations.push(
            "event.reminder_minutes_before",
            format!("must be between 0 and {MAX_REMINDER_MINUTES}"),
        );
    }
    title?;
    description?;
    location?;
    external_id?;
    Some(EventInput {
        user: user?,
        title: event.title.clone(),
        description: event.description.clone(),
        start: start?,
        end: end?,
        location: event.location.clone(),
        status: status?,
        external_id: non_empty(&event.external_id).map(str::to_owned),
        reminder_minutes_before: minutes.filter(|m| (0..=MAX_REMINDER_MINUTES).contains(m)),
    })
    .filter(|_| violations.is_empty())
}

fn conflict(error: ApiError) -> ApiError {
    error.or_conflict(|| "the user already has an event with this external_id".into())
}

#[tracing::instrument(skip_all)]
pub async fn create(
    state: &State,
    request: pb::CreateCalendarEventRequest,
) -> ApiResult<pb::CreateCalendarEventResponse> {
    let mut violations = Violations::default();
    let input = check_event(&mut violations, request.event.as_ref());
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let input = input.expect("checked");
    let zone = match input.reminder_minutes_before {
        Some(_) => Some(state.people.person(input.user).await?.time_zone),
        None => None,
    };
    let key = Key {
        operation: "CreateCalendarEvent",
        request_id: &request.request_id,
        user_id: Some(input.user),
    };
    idempotency::run_once(&state.pool, key, &request, async |conn| {
        let row: EventRow = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO calendar_events (id, user_id, title, description, start_time, end_time,
                 location, status, external_id, reminder_minutes_before)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             RETURNING {COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(input.user)
        .bind(&input.title)
        .bind(&input.description)
        .bind(input.start)
        .bind(input.end)
        .bind(&input.location)
        .bind(input.status)
        .bind(&input.external_id)
        .bind(input.reminder_minutes_before)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| conflict(e.into()))?;
        let row = sync_reminder(conn, row, zone, "event cancelled", true).await?;
        Ok(pb::CreateCalendarEventResponse {
            event: Some(row.into_pb()),
        })
    })
    .await
}

/// Makes the event's reminder match it: created, moved (and retitled),
/// cancelled with `reason`, or left alone; stores its id on the event.
/// `zone` is the user's, needed when a reminder is made or moved; unless
/// `revive`, a failed or cancelled reminder is left as it is.
async fn sync_reminder(
    conn: &mut PgConnection,
    event: EventRow,
    zone: Option<Tz>,
    reason: &str,
    revive: bool,
) -> ApiResult<EventRow> {
    // One being sent makes the event's change wait (UNAVAILABLE).
    let linked_status = match event.reminder_id {
        Some(id) => reminders::hold(conn, id).await?,
        None => None,
    };
    let Some(at) = event.reminder_time(Utc::now()) else {
        if let Some(id) = event.reminder_id {
            // A sent one stays sent: cancel_in refuses it, which is fine here.
            reminders::cancel_in(conn, id, reason).await?;
        }
        return Ok(event);
    };
    let zone = zone.unwrap_or(Tz::UTC);
    let description = reminder_description(&event, zone);
    if let (Some(id), Some(current)) = (event.reminder_id, linked_status.as_deref())
        && current != status::SENT
    {
        if current != status::PENDING && !revive {
            return Ok(event);
        }
        sqlx::query("UPDATE reminders SET title = $2, description = $3 WHERE id = $1")
            .bind(id)
            .bind(&event.title)
            .bind(&description)
            .execute(&mut *conn)
            .await?;
        reminders::reschedule_in(conn, id, at, Some(clock::local_of(zone, at))).await?;
        return Ok(event);
    }
    let id = Uuid::now_v7();
    reminders::insert(
        conn,
        &NewReminder {
            id,
            user: event.user_id,
            title: event.title.clone(),
            description,
            scheduled: at,
            time_zone: zone,
            metadata: serde_json::json!({}),
            recurrence: None,
            series_id: id,
            occurrence: 1,
            series_local_time: clock::local_of(zone, at),
            channel: None,
            whatsapp_template: None,
            calendar_event: Some(event.id),
        },
    )
    .await?;
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE calendar_events SET reminder_id = $2 WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(event.id)
    .bind(id)
    .fetch_one(&mut *conn)
    .await?)
}

/// "starts at 14:30 (Room 4)", in the user's time zone.
fn reminder_description(event: &EventRow, zone: Tz) -> String {
    let start = clock::local_of(zone, event.start_time).format("%H:%M");
    if event.location.is_empty() {
        format!("starts at {start}")
    } else {
        format!("starts at {start} ({})", event.location)
    }
}

#[tracing::instrument(skip_all)]
pub async fn get(
    state: &State,
    request: pb::GetCalendarEventRequest,
) -> ApiResult<pb::GetCalendarEventResponse> {
    let id = parse_uuid("event_id", &request.event_id)?;
    let row = fetch(&mut *state.pool.acquire().await?, id, false).await?;
    Ok(pb::GetCalendarEventResponse {
        event: Some(row.into_pb()),
    })
}

async fn fetch(conn: &mut PgConnection, id: Uuid, lock: bool) -> ApiResult<EventRow> {
    let lock = if lock { "FOR UPDATE" } else { "" };
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM calendar_events WHERE id = $1 {lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no calendar event {id}")))
}

#[tracing::instrument(skip_all)]
pub async fn update(
    state: &State,
    request: pb::UpdateCalendarEventRequest,
) -> ApiResult<pb::UpdateCalendarEventResponse> {
    let mut violations = Violations::default();
    let paths = violations.merge(field_mask::paths(request.update_mask.as_ref(), UPDATABLE));
    let given = request.event.unwrap_or_default();
    let id = violations.check(parse_uuid("event.id", &given.id));
    violations.into_result()?;
    let (paths, id) = (paths.expect("checked"), id.expect("checked"));
    let before = fetch(&mut *state.pool.acquire().await?, id, false).await?;
    let named = |path: &str| paths.iter().any(|p| p == path);
    let minutes_after = if named("reminder_minutes_before") {
        given.reminder_minutes_before
    } else {
        before.reminder_minutes_before
    };
    // Asked before the transaction: no remote call while holding the row.
    let zone = if minutes_after.is_some() && REMINDER_PATHS.iter().any(|p| named(p)) {
        Some(state.people.person(before.user_id).await?.time_zone)
    } else {
        None
    };

    let mut tx = state.pool.begin().await?;
    let current = fetch(&mut tx, id, true).await?;
    let mut merged = current.into_pb();
    for path in &paths {
        match path.as_str() {
            "title" => merged.title.clone_from(&given.title),
            "description" => merged.description.clone_from(&given.description),
            "start_time" => merged.start_time = given.start_time,
            "end_time" => merged.end_time = given.end_time,
            "location" => merged.location.clone_from(&given.location),
            "status" => merged.status = given.status,
            "external_id" => merged.external_id.clone_from(&given.external_id),
            "reminder_minutes_before" => {
                merged.reminder_minutes_before = given.reminder_minutes_before;
            }
            _ => unreachable!("field_mask::paths keeps to UPDATABLE"),
        }
    }
    let mut violations = Violations::default();
    let input = check_event(&mut violations, Some(&merged));
    violations.into_result()?;
    let input = input.expect("checked");
    let row: EventRow = sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE calendar_events
         SET title = $2, description = $3, start_time = $4, end_time = $5, location = $6,
             status = $7, external_id = $8, reminder_minutes_before = $9
         WHERE id = $1
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(&input.title)
    .bind(&input.description)
    .bind(input.start)
    .bind(input.end)
    .bind(&input.location)
    .bind(input.status)
    .bind(&input.external_id)
    .bind(input.reminder_minutes_before)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| conflict(e.into()))?;
    let row = if REMINDER_PATHS.iter().any(|p| named(p)) {
        let reason = if input.status == CANCELLED {
            "event cancelled"
        } else {
            "event reminder removed"
        };
        // A title alone retitles a pending reminder but revives no other.
        let revive = ["start_time", "status", "reminder_minutes_before"]
            .iter()
            .any(|p| named(p));
        sync_reminder(&mut tx, row, zone, reason, revive).await?
    } else {
        row
    };
    tx.commit().await?;
    Ok(pb::UpdateCalendarEventResponse {
        event: Some(row.into_pb()),
    })
}

#[tracing::instrument(skip_all)]
pub async fn delete(
    state: &State,
    request: pb::DeleteCalendarEventRequest,
) -> ApiResult<pb::DeleteCalendarEventResponse> {
    let id = parse_uuid("event_id", &request.event_id)?;
    let mut tx = state.pool.begin().await?;
    let reminder: Option<Option<Uuid>> =
        sqlx::query_scalar("DELETE FROM calendar_events WHERE id = $1 RETURNING reminder_id")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(reminder) = reminder else {
        return Err(ApiError::not_found(format!("no calendar event {id}")));
    };
    if let Some(reminder) = reminder {
        // One being sent makes the deletion wait (rolled back), or the
        // reminder would outlive its event; a sent or cancelled one stays.
        reminders::hold(&mut tx, reminder).await?;
        reminders::cancel_in(&mut tx, reminder, "event deleted").await?;
    }
    tx.commit().await?;
    Ok(pb::DeleteCalendarEventResponse {})
}

#[tracing::instrument(skip_all)]
pub async fn list_upcoming(
    state: &State,
    request: pb::ListUpcomingCalendarEventsRequest,
) -> ApiResult<pb::ListUpcomingCalendarEventsResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let after_time = match &request.after_time {
        Some(time) => violations.check(from_timestamp("after_time", time)),
        None => Some(Utc::now()),
    };
    let page = Page::<TimeKey>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (user, after_time, page) = (
        user.expect("checked"),
        after_time.expect("checked"),
        page.expect("checked"),
    );
    let size = page.size;
    let (after_start, after_id) = page.after.map(|key| (key.time, key.id)).unzip();
    let mut rows: Vec<EventRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM calendar_events
         WHERE user_id = $1 AND end_time > $2
           AND ($3 OR status <> '{CANCELLED}')
           AND ($4::timestamptz IS NULL OR (start_time, id) > ($4, $5::uuid))
         ORDER BY start_time, id
         LIMIT $6"
    )))
    .bind(user)
    .bind(after_time)
    .bind(request.include_cancelled)
    .bind(after_start)
    .bind(after_id)
    .bind(size + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_page_token = next_page(&mut rows, size, |row| {
        TimeKey::new(row.start_time, row.id).to_string()
    });
    Ok(pb::ListUpcomingCalendarEventsResponse {
        events: rows.into_iter().map(EventRow::into_pb).collect(),
        next_page_token,
    })
}

//! Reminders: create (an instant or a local time in a zone), read, list, and
//! the RPCs that move them through the state machine (status.rs).

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use mesh_proto::mesh::scheduler::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{from_timestamp, json_to_struct, optional_timestamp, parse_uuid, timestamp},
    idempotency::{self, Key},
    pagination::{Page, TimeKey, next_page},
};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::{
    State, clock, delivery,
    dispatcher::{self, NOT_BEING_SENT, being_sent},
    recurrence::{self, Rule},
    status,
    wire::{self, json_object, optional, reminder_status, required_text},
};

const MAX_TITLE_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 2000;
const MAX_REASON_CHARS: usize = 500;
const DEFAULT_SNOOZE: TimeDelta = TimeDelta::minutes(10);
const MIN_SNOOZE: TimeDelta = TimeDelta::minutes(1);
const MAX_SNOOZE: TimeDelta = TimeDelta::days(7);

/// Every column a Reminder is read from, in [`ReminderRow`]'s order.
const COLUMNS: &str = "id, user_id, title, description, scheduled_time, time_zone, status, \
    status_reason, retry_count, send_token, metadata, recurrence, series_id, occurrence, \
    channel, whatsapp_template, calendar_event_id, next_attempt_time, provider_message_id, \
    sent_time, create_time, update_time";

#[derive(sqlx::FromRow)]
struct ReminderRow {
    id: Uuid,
    user_id: Uuid,
    title: String,
    description: String,
    scheduled_time: DateTime<Utc>,
    time_zone: String,
    status: String,
    status_reason: String,
    retry_count: i32,
    send_token: Uuid,
    metadata: Value,
    recurrence: Option<Value>,
    series_id: Uuid,
    occurrence: i32,
    channel: Option<String>,
    whatsapp_template: Option<Value>,
    calendar_event_id: Option<Uuid>,
    next_attempt_time: DateTime<Utc>,
    provider_message_id: Option<String>,
    sent_time: Option<DateTime<Utc>>,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl ReminderRow {
    fn into_pb(self) -> pb::Reminder {
        pb::Reminder {
            id: self.id.to_string(),
            user_id: self.user_id.to_string(),
            text: text(&self.title, &self.description),
            title: self.title,
            description: self.description,
            scheduled_time: Some(timestamp(self.scheduled_time)),
            time_zone: self.time_zone,
            status: reminder_status::parse(&self.status) as i32,
            retry_count: self.retry_count,
            send_token: self.send_token.to_string(),
            metadata: Some(json_to_struct(&self.metadata)),
            recurrence: self
                .recurrence
                .as_ref()
                .and_then(Rule::from_json)
                .map(|rule| rule.to_wire()),
            delivery: delivery::to_wire(self.channel.as_deref(), self.whatsapp_template.as_ref()),
            provider_message_id: self.provider_message_id.unwrap_or_default(),
            sent_time: optional_timestamp(self.sent_time),
            status_reason: self.status_reason,
            series_id: self.series_id.to_string(),
            occurrence: self.occurrence,
            calendar_event_id: self
                .calendar_event_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            next_attempt_time: Some(timestamp(self.next_attempt_time)),
            create_time: Some(timestamp(self.create_time)),
            update_time: Some(timestamp(self.update_time)),
        }
    }
}

/// A reminder to insert: a new one, a series' next occurrence, or an event's.
pub struct NewReminder {
    pub id: Uuid,
    pub user: Uuid,
    pub title: String,
    pub description: String,
    pub scheduled: DateTime<Utc>,
    pub time_zone: Tz,
    pub metadata: Value,
    /// The rule as stored (see recurrence.rs).
    pub recurrence: Option<Value>,
    pub series_id: Uuid,
    pub occurrence: i32,
    /// The local wall-clock time the series keeps.
    pub series_local_time: NaiveDateTime,
    pub channel: Option<String>,
    pub whatsapp_template: Option<Value>,
    pub calendar_event: Option<Uuid>,
}

/// Inserts `new` as pending, due at its scheduled time, and wakes the
/// dispatchers; returns its id, or None when its series already has that
/// occurrence.
#[tracing::instrument(skip_all, fields(id = %new.id))]
pub async fn insert(conn: &mut PgConnection, new: &NewReminder) -> ApiResult<Option<Uuid>> {
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO reminders (id, user_id, title, description, scheduled_time, time_zone,
             send_token, metadata, recurrence, series_id, occurrence, series_local_time,
             channel, whatsapp_template, calendar_event_id, next_attempt_time)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $5)
         ON CONFLICT (series_id, occurrence) DO NOTHING
         RETURNING id",
    )
    .bind(new.id)
    .bind(new.user)
    .bind(&new.title)
    .bind(&new.description)
    .bind(new.scheduled)
    .bind(new.time_zone.name())
    .bind(Uuid::new_v4())
    .bind(&new.metadata)
    .bind(&new.recurrence)
    .bind(new.series_id)
    .bind(new.occurrence)
    .bind(new.series_local_time)
    .bind(&new.channel)
    .bind(&new.whatsapp_template)
    .bind(new.calendar_event)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_some() {
        dispatcher::wake(conn).await?;
    }
    Ok(inserted)
}

/// When a create or reschedule asks for it: an instant, or a wall-clock time
/// in the item's zone (resolved once the zone is known).
#[derive(Clone, Copy)]
pub enum When {
    Instant(DateTime<Utc>),
    Local(NaiveDateTime),
}

impl When {
    /// Exactly one of `scheduled` (field `scheduled_field`) and `local`
    /// (field `local_field`).
    pub fn check(
        violations: &mut Violations,
        scheduled_field: &str,
        scheduled: Option<&prost_types::Timestamp>,
        local_field: &str,
        local: &str,
    ) -> Option<Self> {
        match (scheduled, local.is_empty()) {
            (Some(time), true) => violations
                .check(from_timestamp(scheduled_field, time))
                .map(Self::Instant),
            (None, false) => violations
                .check(clock::parse_local(local_field, local))
                .map(Self::Local),
            (None, true) => {
                violations.push(
                    scheduled_field,
                    format!("is required (or {local_field}, a local time)"),
                );
                None
            }
            (Some(_), false) => {
                violations.push(
                    local_field,
                    format!("give {scheduled_field} or {local_field}, not both"),
                );
                None
            }
        }
    }

    /// The instant, and the wall-clock time a series keeps: the one asked for
    /// (02:30 stays 02:30 on nights without a gap), else the instant's.
    fn resolve(self, zone: Tz) -> (DateTime<Utc>, NaiveDateTime) {
        match self {
            Self::Instant(instant) => (instant, clock::local_of(zone, instant)),
            Self::Local(local) => (clock::resolve(zone, local), local),
        }
    }

    fn field<'a>(&self, scheduled_field: &'a str, local_field: &'a str) -> &'a str {
        match self {
            Self::Instant(_) => scheduled_field,
            Self::Local(_) => local_field,
        }
    }
}

/// The instant `when` names in `zone`, which must be ahead of now.
fn future(
    when: When,
    zone: Tz,
    scheduled_field: &str,
    local_field: &str,
) -> ApiResult<(DateTime<Utc>, NaiveDateTime)> {
    let (instant, local) = when.resolve(zone);
    if instant <= Utc::now() {
        return Err(ApiError::invalid(
            when.field(scheduled_field, local_field),
            "must be in the future",
        ));
    }
    Ok((instant, local))
}

struct ReminderInput {
    user: Uuid,
    title: String,
    description: String,
    when: When,
    zone: Option<Tz>,
    metadata: Value,
    recurrence: Option<Rule>,
    delivery: delivery::Stored,
}

fn check_reminder(
    violations: &mut Violations,
    reminder: Option<&pb::Reminder>,
    local_time: &str,
) -> Option<ReminderInput> {
    let Some(reminder) = reminder else {
        violations.push("reminder", "is required");
        return None;
    };
    let user = violations.check(parse_uuid("reminder.user_id", &reminder.user_id));
    let title = violations.check(required_text(
        "reminder.title",
        &reminder.title,
        MAX_TITLE_CHARS,
    ));
    let description = violations.check(wire::text(
        "reminder.description",
        &reminder.description,
        MAX_DESCRIPTION_CHARS,
    ));
    let when = When::check(
        violations,
        "reminder.scheduled_time",
        reminder.scheduled_time.as_ref(),
        "local_time",
        local_time,
    );
    let zone = violations.check(optional(&reminder.time_zone, |zone| {
        clock::parse_zone("reminder.time_zone", zone)
    }));
    let metadata = violations.check(json_object("reminder.metadata", reminder.metadata.as_ref()));
    let recurrence = recurrence::check(
        "reminder.recurrence",
        reminder.recurrence.as_ref(),
        violations,
    );
    let delivery = delivery::check("reminder.delivery", reminder.delivery.as_ref(), violations);
    title?;
    description?;
    Some(ReminderInput {
        user: user?,
        title: reminder.title.clone(),
        description: reminder.description.clone(),
        when: when?,
        zone: zone?,
        metadata: metadata?,
        recurrence: recurrence?,
        delivery,
    })
}

#[tracing::instrument(skip_all)]
pub async fn create(
    state: &State,
    request: pb::CreateReminderRequest,
) -> ApiResult<pb::CreateReminderResponse> {
    let mut violations = Violations::default();
    let input = check_reminder(
        &mut violations,
        request.reminder.as_ref(),
        &request.local_time,
    );
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let input = input.expect("checked");
    let zone = match input.zone {
        Some(zone) => zone,
        None => state.people.person(input.user).await?.time_zone,
    };
    let key = Key {
        operation: "CreateReminder",
        request_id: &request.request_id,
        user_id: Some(input.user),
    };
    idempotency::run_once(&state.pool, key, &request, async |conn| {
        // Checked here, not with the other fields, so that a retry after the
        // time has passed still gets the first answer.
        let (scheduled, local) = future(input.when, zone, "reminder.scheduled_time", "local_time")?;
        if let Some(until) = input.recurrence.as_ref().and_then(|rule| rule.until_date)
            && until < local.date()
        {
            return Err(ApiError::invalid(
                "reminder.recurrence.until_date",
                format!("is before the first occurrence ({})", local.date()),
            ));
        }
        let id = Uuid::now_v7();
        let new = NewReminder {
            id,
            user: input.user,
            title: input.title,
            description: input.description,
            scheduled,
            time_zone: zone,
            metadata: input.metadata,
            recurrence: input
                .recurrence
                .map(|rule| rule.anchored_on(local.date()).to_json()),
            series_id: id,
            occurrence: 1,
            series_local_time: local,
            channel: input.delivery.channel,
            whatsapp_template: input.delivery.whatsapp_template,
            calendar_event: None,
        };
        insert(conn, &new).await?;
        Ok(pb::CreateReminderResponse {
            reminder: Some(fetch(conn, id).await?),
        })
    })
    .await
}

#[tracing::instrument(skip_all)]
pub async fn get(
    state: &State,
    request: pb::GetReminderRequest,
) -> ApiResult<pb::GetReminderResponse> {
    let id = parse_uuid("reminder_id", &request.reminder_id)?;
    Ok(pb::GetReminderResponse {
        reminder: Some(fetch(&mut *state.pool.acquire().await?, id).await?),
    })
}

#[tracing::instrument(skip_all)]
pub async fn list(
    state: &State,
    request: pb::ListRemindersRequest,
) -> ApiResult<pb::ListRemindersResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let statuses: Option<Vec<&str>> = violations.check(
        request
            .statuses
            .iter()
            .map(|s| reminder_status::require("statuses", *s))
            .collect(),
    );
    let start = request
        .start_time
        .as_ref()
        .map(|t| violations.check(from_timestamp("start_time", t)));
    let end = request
        .end_time
        .as_ref()
        .map(|t| violations.check(from_timestamp("end_time", t)));
    if let (Some(Some(start)), Some(Some(end))) = (start, end)
        && start >= end
    {
        violations.push("end_time", "must be after start_time");
    }
    let page = Page::<TimeKey>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (user, statuses, page) = (
        user.expect("checked"),
        statuses.expect("checked"),
        page.expect("checked"),
    );
    let size = page.size;
    let (after_time, after_id) = page.after.map(|key| (key.time, key.id)).unzip();
    let mut rows: Vec<ReminderRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM reminders
         WHERE user_id = $1
           AND (cardinality($2::text[]) = 0 OR status = ANY($2))
           AND ($3::timestamptz IS NULL OR scheduled_time >= $3)
           AND ($4::timestamptz IS NULL OR scheduled_time < $4)
           AND ($5::timestamptz IS NULL OR (scheduled_time, id) > ($5, $6::uuid))
         ORDER BY scheduled_time, id
         LIMIT $7"
    )))
    .bind(user)
    .bind(&statuses)
    .bind(start.flatten())
    .bind(end.flatten())
    .bind(after_time)
    .bind(after_id)
    .bind(size + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_page_token = next_page(&mut rows, size, |row| {
        TimeKey::new(row.scheduled_time, row.id).to_string()
    });
    Ok(pb::ListRemindersResponse {
        reminders: rows.into_iter().map(ReminderRow::into_pb).collect(),
        next_page_token,
    })
}

/// Why a guarded status change touched no row: NOT_FOUND, a send in flight
/// (UNAVAILABLE, retry shortly), or the state machine's refusal of the
/// row's actual status.
async fn refusal(conn: &mut PgConnection, id: Uuid, to: &str) -> ApiError {
    match current_status(conn, id, false).await {
        Ok(Some((_, true))) => being_sent("reminder", id),
        Ok(Some((from, false))) => status::refused(&from, to),
        Ok(None) => ApiError::not_found(format!("no reminder {id}")),
        Err(error) => error,
    }
}

/// The reminder's status, and whether a dispatcher is sending it now;
/// with `lock`, the row stays locked for this transaction.
async fn current_status(
    conn: &mut PgConnection,
    id: Uuid,
    lock: bool,
) -> ApiResult<Option<(String, bool)>> {
    let lock = if lock { "FOR UPDATE" } else { "" };
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "SELECT status, NOT {NOT_BEING_SENT} FROM reminders WHERE id = $1 {lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Locks reminder `id` for a change in this transaction (no dispatcher
/// claims it until the commit) and returns its status; UNAVAILABLE when a
/// dispatcher holds it now, as its message may be at the provider. None when
/// there is no such reminder.
pub async fn hold(conn: &mut PgConnection, id: Uuid) -> ApiResult<Option<String>> {
    match current_status(conn, id, true).await? {
        Some((_, true)) => Err(being_sent("reminder", id)),
        current => Ok(current.map(|(status, _)| status)),
    }
}

#[tracing::instrument(skip_all)]
pub async fn cancel(
    state: &State,
    request: pb::CancelReminderRequest,
) -> ApiResult<pb::CancelReminderResponse> {
    let mut violations = Violations::default();
    let id = violations.check(parse_uuid("reminder_id", &request.reminder_id));
    violations.check(wire::text("reason", &request.reason, MAX_REASON_CHARS));
    violations.into_result()?;
    let id = id.expect("checked");
    let mut tx = state.pool.begin().await?;
    if !cancel_in(&mut tx, id, &request.reason).await? {
        return Err(refusal(&mut tx, id, status::CANCELLED).await);
    }
    let reminder = fetch(&mut tx, id).await?;
    tx.commit().await?;
    Ok(pb::CancelReminderResponse {
        reminder: Some(reminder),
    })
}

/// Cancels reminder `id` if the state machine allows it; returns whether it did.
#[tracing::instrument(skip(conn))]
pub async fn cancel_in(conn: &mut PgConnection, id: Uuid, reason: &str) -> ApiResult<bool> {
    let cancelled = sqlx::query(AssertSqlSafe(format!(
        "UPDATE reminders
         SET status = $3, status_reason = $2, lease_owner = NULL, lease_expire_time = NULL
         WHERE id = $1 AND status = ANY($4) AND {NOT_BEING_SENT}"
    )))
    .bind(id)
    .bind(reason)
    .bind(status::CANCELLED)
    .bind(status::allowed_from(status::CANCELLED))
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if cancelled {
        forget_dead_letter(conn, id).await?;
    }
    Ok(cancelled)
}

/// A reminder that leaves failed (cancelled, or pending again) needs no
/// operator any more: its dead letter goes.
async fn forget_dead_letter(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM dead_letters WHERE item_id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn reschedule(
    state: &State,
    request: pb::RescheduleReminderRequest,
) -> ApiResult<pb::RescheduleReminderResponse> {
    let mut violations = Violations::default();
    let id = violations.check(parse_uuid("reminder_id", &request.reminder_id));
    let when = When::check(
        &mut violations,
        "scheduled_time",
        request.scheduled_time.as_ref(),
        "local_time",
        &request.local_time,
    );
    violations.into_result()?;
    let (id, when) = (id.expect("checked"), when.expect("checked"));
    let mut tx = state.pool.begin().await?;
    let zone: Option<String> = sqlx::query_scalar("SELECT time_zone FROM reminders WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let zone = zone
        .ok_or_else(|| ApiError::not_found(format!("no reminder {id}")))?
        .parse::<Tz>()
        .map_err(|_| ApiError::internal(anyhow::anyhow!("reminder {id} has a bad time zone")))?;
    let (scheduled, local) = future(when, zone, "scheduled_time", "local_time")?;
    if !reschedule_in(&mut tx, id, scheduled, Some(local)).await? {
        return Err(refusal(&mut tx, id, status::PENDING).await);
    }
    let reminder = fetch(&mut tx, id).await?;
    tx.commit().await?;
    Ok(pb::RescheduleReminderResponse {
        reminder: Some(reminder),
    })
}

/// Moves reminder `id` to `scheduled` as pending, if it is pending, or failed
/// or cancelled (which the state machine lets become pending: a retry, with
/// the retry count and reason reset). `local` becomes the series' wall-clock
/// time of a reminder that does not recur (a recurring one keeps its
/// series'). Wakes the dispatchers; returns whether it moved.
#[tracing::instrument(skip(conn))]
pub async fn reschedule_in(
    conn: &mut PgConnection,
    id: Uuid,
    scheduled: DateTime<Utc>,
    local: Option<NaiveDateTime>,
) -> ApiResult<bool> {
    let mut from: Vec<&str> = status::allowed_from(status::PENDING).to_vec();
    from.push(status::PENDING);
    let moved = sqlx::query(AssertSqlSafe(format!(
        "UPDATE reminders
         SET scheduled_time = $2, next_attempt_time = $2,
             series_local_time = CASE WHEN recurrence IS NULL AND $3::timestamp IS NOT NULL
                 THEN $3 ELSE series_local_time END,
             retry_count = CASE WHEN status = $4 THEN retry_count ELSE 0 END,
             status = $4, status_reason = '', lease_owner = NULL, lease_expire_time = NULL
         WHERE id = $1 AND status = ANY($5) AND {NOT_BEING_SENT}"
    )))
    .bind(id)
    .bind(scheduled)
    .bind(local)
    .bind(status::PENDING)
    .bind(&from)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if moved {
        forget_dead_letter(conn, id).await?;
        dispatcher::wake(conn).await?;
    }
    Ok(moved)
}

#[tracing::instrument(skip_all)]
pub async fn snooze(
    state: &State,
    request: pb::SnoozeReminderRequest,
) -> ApiResult<pb::SnoozeReminderResponse> {
    let mut violations = Violations::default();
    let id = violations.check(parse_uuid("reminder_id", &request.reminder_id));
    let duration = match &request.duration {
        None => Some(DEFAULT_SNOOZE),
        Some(given) => TimeDelta::new(
            given.seconds,
            u32::try_from(given.nanos).unwrap_or(u32::MAX),
        )
        .filter(|d| (MIN_SNOOZE..=MAX_SNOOZE).contains(d))
        .or_else(|| {
            violations.push("duration", "must be between 1 minute and 7 days");
            None
        }),
    };
    violations.into_result()?;
    let (id, duration) = (id.expect("checked"), duration.expect("checked"));
    let until = Utc::now() + duration;
    let mut tx = state.pool.begin().await?;
    let snoozed: Option<ReminderRow> = sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE reminders
         SET scheduled_time = $2, next_attempt_time = $2, status_reason = '',
             lease_owner = NULL, lease_expire_time = NULL
         WHERE id = $1 AND status = $3 AND {NOT_BEING_SENT}
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(until)
    .bind(status::PENDING)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(snoozed) = snoozed else {
        // Only a pending reminder snoozes, though failed -> pending is a
        // transition (RescheduleReminder's): say so rather than the table.
        return Err(match current_status(&mut tx, id, false).await? {
            None => ApiError::not_found(format!("no reminder {id}")),
            Some((_, true)) => being_sent("reminder", id),
            Some((from, false)) => ApiError::FailedPrecondition(format!(
                "a {from} reminder cannot be snoozed: only a pending one can \
                 (RescheduleReminder moves a failed or cancelled one)"
            )),
        });
    };
    dispatcher::wake(&mut tx).await?;
    tx.commit().await?;
    Ok(pb::SnoozeReminderResponse {
        reminder: Some(snoozed.into_pb()),
    })
}

/// The text a reminder is sent as: the title, then the description.
pub fn text(title: &str, description: &str) -> String {
    if description.is_empty() {
        title.to_owned()
    } else {
        format!("{title}\n\n{description}")
    }
}

/// The reminder `id` as the API shows it; NOT_FOUND when there is none.
pub async fn fetch(conn: &mut PgConnection, id: Uuid) -> ApiResult<pb::Reminder> {
    let row: ReminderRow = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM reminders WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no reminder {id}")))?;
    Ok(row.into_pb())
}

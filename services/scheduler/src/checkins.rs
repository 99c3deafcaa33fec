//! Daily check-ins: one per user and local day.
//!
//! A check-in is scheduled (often before its text is known), given content,
//! then sent by the dispatcher; one still without content after the grace
//! period is skipped. Its statuses: pending -> sent | failed | skipped, and
//! failed -> pending (RetryDeadLetter).

use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use mesh_proto::mesh::scheduler::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{json_to_struct, optional_timestamp, parse_uuid, timestamp},
    pagination::{Page, next_page},
};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    State,
    clock::{self, resolve},
    delivery,
    dispatcher::{self, NOT_BEING_SENT, being_sent},
    wire::{check_in_priority, check_in_status, json_object, optional, required_text, text},
};

/// When neither the request nor the user names a time.
const DEFAULT_LOCAL_TIME: NaiveTime = NaiveTime::from_hms_opt(9, 0, 0).expect("a valid time");
const MAX_CONTENT_CHARS: usize = 4096;
const MAX_REASON_CHARS: usize = 500;
/// The reason a check-in nobody wrote in time is skipped with.
pub const NO_CONTENT: &str = "no_content";

/// Every column a CheckIn is read from, in [`CheckInRow`]'s order.
const COLUMNS: &str = "id, user_id, slot_date, scheduled_time, time_zone, priority, \
    generation_context, content, status, status_reason, channel, whatsapp_template, \
    retry_count, send_token, provider_message_id, sent_time, next_attempt_time, \
    create_time, update_time";

#[derive(sqlx::FromRow)]
struct CheckInRow {
    id: Uuid,
    user_id: Uuid,
    slot_date: NaiveDate,
    scheduled_time: DateTime<Utc>,
    time_zone: String,
    priority: String,
    generation_context: serde_json::Value,
    content: Option<String>,
    status: String,
    status_reason: String,
    channel: Option<String>,
    whatsapp_template: Option<serde_json::Value>,
    retry_count: i32,
    send_token: Uuid,
    provider_message_id: Option<String>,
    sent_time: Option<DateTime<Utc>>,
    next_attempt_time: DateTime<Utc>,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl CheckInRow {
    fn into_pb(self) -> pb::CheckIn {
        pb::CheckIn {
            id: self.id.to_string(),
            user_id: self.user_id.to_string(),
            slot_date: self.slot_date.format("%Y-%m-%d").to_string(),
            scheduled_time: Some(timestamp(self.scheduled_time)),
            time_zone: self.time_zone,
            priority: check_in_priority::parse(&self.priority) as i32,
            generation_context: Some(json_to_struct(&self.generation_context)),
            content: self.content.unwrap_or_default(),
            status: check_in_status::parse(&self.status) as i32,
            status_reason: self.status_reason,
            delivery: delivery::to_wire(self.channel.as_deref(), self.whatsapp_template.as_ref()),
            retry_count: self.retry_count,
            send_token: self.send_token.to_string(),
            provider_message_id: self.provider_message_id.unwrap_or_default(),
            sent_time: optional_timestamp(self.sent_time),
            next_attempt_time: Some(timestamp(self.next_attempt_time)),
            create_time: Some(timestamp(self.create_time)),
            update_time: Some(timestamp(self.update_time)),
        }
    }
}

/// A ScheduleCheckIn request, checked; what is left unset defaults from the user.
struct Scheduling {
    user: Uuid,
    local_time: Option<NaiveTime>,
    time_zone: Option<Tz>,
    slot_date: Option<NaiveDate>,
    priority: &'static str,
    generation_context: serde_json::Value,
    content: Option<String>,
    delivery: delivery::Stored,
}

fn check_scheduling(request: &pb::ScheduleCheckInRequest) -> ApiResult<Scheduling> {
    let mut violations = Violations::default();
    let local_time = violations.check(optional(&request.local_time, |time| {
        clock::parse_hh_mm("local_time", time)
    }));
    let Some(check_in) = &request.check_in else {
        violations.push("check_in", "is required");
        return Err(violations.into());
    };
    let user = violations.check(parse_uuid("check_in.user_id", &check_in.user_id));
    let time_zone = violations.check(optional(&check_in.time_zone, |zone| {
        clock::parse_zone("check_in.time_zone", zone)
    }));
    let slot_date = violations.check(optional(&check_in.slot_date, |date| {
        clock::parse_date("check_in.slot_date", date)
    }));
    let priority = if check_in.priority == 0 {
        Some("generic")
    } else {
        violations.check(check_in_priority::require(
            "check_in.priority",
            check_in.priority,
        ))
    };
    let generation_context = violations.check(json_object(
        "check_in.generation_context",
        check_in.generation_context.as_ref(),
    ));
    violations.check(text(
        "check_in.content",
        &check_in.content,
        MAX_CONTENT_CHARS,
    ));
    let delivery = delivery::check(
        "check_in.delivery",
        check_in.delivery.as_ref(),
        &mut violations,
    );
    violations.into_result()?;
    Ok(Scheduling {
        user: user.expect("checked"),
        local_time: local_time.expect("checked"),
        time_zone: time_zone.expect("checked"),
        slot_date: slot_date.expect("checked"),
        priority: priority.expect("checked"),
        generation_context: generation_context.expect("checked"),
        content: (!check_in.content.is_empty()).then(|| check_in.content.clone()),
        delivery,
    })
}

#[tracing::instrument(skip_all)]
pub async fn schedule(
    state: &State,
    request: pb::ScheduleCheckInRequest,
) -> ApiResult<pb::ScheduleCheckInResponse> {
    let input = check_scheduling(&request)?;
    // Asked even when the request names the zone and time: it is how an
    // unknown user is told NOT_FOUND rather than given a check-in.
    let person = state.people.person(input.user).await?;
    let zone = input.time_zone.unwrap_or(person.time_zone);
    let local_time = input
        .local_time
        .or(person.preferred_checkin_time)
        .unwrap_or(DEFAULT_LOCAL_TIME);
    let now = Utc::now();
    let (slot_date, scheduled_time) = match input.slot_date {
        Some(date) => {
            let at = resolve(zone, date.and_time(local_time));
            if at <= now {
                // A repeat of a scheduling made in time answers as every
                // repeat does: the slot's check-in, unchanged.
                let mut conn = state.pool.acquire().await?;
                if let Ok(existing) = slot_of(&mut conn, input.user, date).await {
                    return Ok(pb::ScheduleCheckInResponse {
                        check_in: Some(existing.into_pb()),
                        created: false,
                    });
                }
                return Err(ApiError::invalid(
                    "check_in.slot_date",
                    format!(
                        "the check-in time ({date} {} in {zone}) has passed",
                        local_time.format("%H:%M")
                    ),
                ));
            }
            (date, at)
        }
        None => next_slot(zone, local_time, now),
    };

    let mut tx = state.pool.begin().await?;
    let inserted: Option<CheckInRow> = sqlx::query_as(AssertSqlSafe(format!(
        "INSERT INTO check_ins (id, user_id, slot_date, scheduled_time, time_zone, priority,
             generation_context, content, send_token, channel, whatsapp_template,
             next_attempt_time)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $4)
         ON CONFLICT ON CONSTRAINT check_ins_one_per_slot DO NOTHING
         RETURNING {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(input.user)
    .bind(slot_date)
    .bind(scheduled_time)
    .bind(zone.name())
    .bind(input.priority)
    .bind(&input.generation_context)
    .bind(&input.content)
    .bind(Uuid::new_v4())
    .bind(&input.delivery.channel)
    .bind(&input.delivery.whatsapp_template)
    .fetch_optional(&mut *tx)
    .await?;
    let (row, created) = match inserted {
        Some(row) => {
            if row.content.is_some() {
                dispatcher::wake(&mut tx).await?;
            }
            (row, true)
        }
        // The slot's check-in committed before this statement ran (ON
        // CONFLICT waited for it), so this read sees it.
        None => (slot_of(&mut tx, input.user, slot_date).await?, false),
    };
    tx.commit().await?;
    Ok(pb::ScheduleCheckInResponse {
        check_in: Some(row.into_pb()),
        created,
    })
}

/// The first local day (today or tomorrow in `zone`) whose `local_time` is
/// still ahead of `now`, and that time.
fn next_slot(zone: Tz, local_time: NaiveTime, now: DateTime<Utc>) -> (NaiveDate, DateTime<Utc>) {
    let today = now.with_timezone(&zone).date_naive();
    let at = resolve(zone, today.and_time(local_time));
    if at > now {
        return (today, at);
    }
    let tomorrow = today.succ_opt().expect("a date before 9999");
    (tomorrow, resolve(zone, tomorrow.and_time(local_time)))
}

#[tracing::instrument(skip(conn))]
async fn slot_of(
    conn: &mut PgConnection,
    user: Uuid,
    slot_date: NaiveDate,
) -> ApiResult<CheckInRow> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM check_ins WHERE user_id = $1 AND slot_date = $2"
    )))
    .bind(user)
    .bind(slot_date)
    .fetch_optional(conn)
    .await?
    // Only PurgeUser deletes check-ins: it ran between the two statements.
    .ok_or_else(|| ApiError::not_found(format!("no check-in of user {user} on {slot_date}")))
}

#[tracing::instrument(skip_all)]
pub async fn get(
    state: &State,
    request: pb::GetCheckInRequest,
) -> ApiResult<pb::GetCheckInResponse> {
    let id = parse_uuid("check_in_id", &request.check_in_id)?;
    let mut conn = state.pool.acquire().await?;
    Ok(pb::GetCheckInResponse {
        check_in: Some(fetch(&mut conn, id).await?),
    })
}

#[tracing::instrument(skip_all)]
pub async fn list(
    state: &State,
    request: pb::ListCheckInsRequest,
) -> ApiResult<pb::ListCheckInsResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let statuses = violations.check(
        request
            .statuses
            .iter()
            .map(|status| check_in_status::require("statuses", *status).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>(),
    );
    // A user has one check-in a day, so the slot date alone orders a page.
    let page = Page::<NaiveDate>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (user, statuses, page) = (
        user.expect("checked"),
        statuses.expect("checked"),
        page.expect("checked"),
    );
    let mut rows: Vec<CheckInRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM check_ins
         WHERE user_id = $1
           AND (cardinality($2::text[]) = 0 OR status = ANY($2))
           AND ($3::date IS NULL OR slot_date < $3)
         ORDER BY slot_date DESC
         LIMIT $4"
    )))
    .bind(user)
    .bind(&statuses)
    .bind(page.after)
    .bind(page.size + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_page_token = next_page(&mut rows, page.size, |row| row.slot_date.to_string());
    Ok(pb::ListCheckInsResponse {
        check_ins: rows.into_iter().map(CheckInRow::into_pb).collect(),
        next_page_token,
    })
}

#[tracing::instrument(skip_all)]
pub async fn set_content(
    state: &State,
    request: pb::SetCheckInContentRequest,
) -> ApiResult<pb::SetCheckInContentResponse> {
    let mut violations = Violations::default();
    let id = violations.check(parse_uuid("check_in_id", &request.check_in_id));
    violations.check(required_text(
        "content",
        &request.content,
        MAX_CONTENT_CHARS,
    ));
    violations.into_result()?;
    let id = id.expect("checked");
    let mut tx = state.pool.begin().await?;
    let row: Option<CheckInRow> = sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE check_ins SET content = $2
         WHERE id = $1 AND status = 'pending' AND {NOT_BEING_SENT} AND send_request IS NULL
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(&request.content)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(refusal(&mut tx, id, "take new content").await);
    };
    dispatcher::wake(&mut tx).await?;
    tx.commit().await?;
    Ok(pb::SetCheckInContentResponse {
        check_in: Some(row.into_pb()),
    })
}

#[tracing::instrument(skip_all)]
pub async fn skip(
    state: &State,
    request: pb::SkipCheckInRequest,
) -> ApiResult<pb::SkipCheckInResponse> {
    let mut violations = Violations::default();
    let id = violations.check(parse_uuid("check_in_id", &request.check_in_id));
    violations.check(required_text("reason", &request.reason, MAX_REASON_CHARS));
    violations.into_result()?;
    let id = id.expect("checked");
    let mut conn = state.pool.acquire().await?;
    let row: Option<CheckInRow> = sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE check_ins SET status = 'skipped', status_reason = $2
         WHERE id = $1 AND status = 'pending' AND {NOT_BEING_SENT}
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(&request.reason)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(refusal(&mut conn, id, "be skipped").await);
    };
    Ok(pb::SkipCheckInResponse {
        check_in: Some(row.into_pb()),
    })
}

/// Why a change to check-in `id` that touched nothing was refused: it does
/// not exist, it is no longer pending, the dispatcher is sending it, or (new
/// content only) a send of its content was attempted already.
async fn refusal(conn: &mut PgConnection, id: Uuid, change: &str) -> ApiError {
    let current: Option<(String, bool, bool)> = match sqlx::query_as(AssertSqlSafe(format!(
        "SELECT status, NOT {NOT_BEING_SENT}, send_request IS NOT NULL
         FROM check_ins WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
    {
        Ok(current) => current,
        Err(error) => return error.into(),
    };
    match current {
        None => ApiError::not_found(format!("no check-in {id}")),
        Some((_, true, _)) => being_sent("check-in", id),
        // Only new content is refused so: a retry resends the first
        // attempt's text, which may have been delivered.
        Some((status, false, true)) if status == "pending" => {
            ApiError::FailedPrecondition(format!(
                "check-in {id} has had a send attempted with its content, which a retry \
                 resends as it was, so it cannot {change}; skip it if it should not go"
            ))
        }
        Some((status, ..)) => ApiError::FailedPrecondition(format!(
            "check-in {id} is {status}; only a pending check-in can {change}"
        )),
    }
}

/// The check-in `id` as the API shows it; NOT_FOUND when there is none.
#[tracing::instrument(skip(conn))]
pub async fn fetch(conn: &mut PgConnection, id: Uuid) -> ApiResult<pb::CheckIn> {
    sqlx::query_as::<_, CheckInRow>(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM check_ins WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .map(CheckInRow::into_pb)
    .ok_or_else(|| ApiError::not_found(format!("no check-in {id}")))
}

/// Skips the pending check-ins still without content `grace` after their
/// time, with reason "no_content"; returns how many. One statement, so
/// replicas running it at once skip each check-in once. Uses the
/// check_ins_waiting index (pending, content IS NULL).
#[tracing::instrument(skip(pool))]
pub async fn skip_without_content(pool: &PgPool, grace: Duration) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE check_ins SET status = 'skipped', status_reason = $2
         WHERE status = 'pending' AND content IS NULL
           AND scheduled_time < now() - make_interval(secs => $1)",
    )
    .bind(grace.as_secs_f64())
    .bind(NO_CONTENT)
    .execute(pool)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDateTime;

    use super::*;

    fn local(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn a_time_in_the_spring_gap_moves_forward_by_the_gap() {
        let at = resolve(chrono_tz::America::New_York, local("2026-03-08 02:30"));
        assert_eq!(at.to_rfc3339(), "2026-03-08T07:30:00+00:00");
    }

    #[test]
    fn a_time_that_happens_twice_is_the_first() {
        let at = resolve(chrono_tz::America::New_York, local("2026-11-01 01:30"));
        assert_eq!(at.to_rfc3339(), "2026-11-01T05:30:00+00:00");
    }

    #[test]
    fn a_half_hour_gap_moves_by_half_an_hour() {
        // Lord Howe Island springs forward from 02:00 to 02:30.
        let at = resolve(chrono_tz::Australia::Lord_Howe, local("2026-10-04 02:15"));
        let shown = at.with_timezone(&chrono_tz::Australia::Lord_Howe);
        assert_eq!(shown.format("%H:%M").to_string(), "02:45");
    }

    #[test]
    fn the_next_slot_is_today_until_its_time_passes() {
        let zone = chrono_tz::Europe::Madrid;
        let nine = NaiveTime::from_hms_opt(9, 0, 0).unwrap();
        let morning = resolve(zone, local("2026-05-04 08:00"));
        assert_eq!(next_slot(zone, nine, morning).0.to_string(), "2026-05-04");
        let noon = resolve(zone, local("2026-05-04 12:00"));
        assert_eq!(next_slot(zone, nine, noon).0.to_string(), "2026-05-05");
    }
}

//! Recurring reminders: the rule, checked and stored as JSON, and the next
//! occurrence, created when one is sent.
//!
//! A series is counted from its first occurrence (the anchor): occurrence k
//! is the k-th date the rule yields from the anchor's local date, at the
//! series' local wall-clock time. Numbering from the anchor (not from the
//! last send) keeps monthly clamping anchored (Jan 31 -> Feb 28 -> Mar 31)
//! and lets `count` bound the whole series, skipped occurrences included.

use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveDateTime, TimeDelta, Utc, Weekday};
use chrono_tz::Tz;
use mesh_proto::mesh::scheduler::v1 as pb;
use mesh_runtime::{ApiError, ApiResult, Violations};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    clock, reminders,
    wire::{optional, recurrence_frequency},
};

const MAX_INTERVAL: i32 = 366;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frequency {
    Daily,
    Weekly,
    Monthly,
}

impl Frequency {
    /// As stored, and as `recurrence_frequency` names it on the wire.
    fn name(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Daily, Self::Weekly, Self::Monthly]
            .into_iter()
            .find(|frequency| frequency.name() == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub frequency: Frequency,
    pub interval: u32,
    /// ISO weekday numbers (Monday 1 .. Sunday 7), sorted; weekly only.
    pub weekdays: Vec<u32>,
    /// Inclusive, in the series' time zone.
    pub until_date: Option<NaiveDate>,
    /// Occurrences in all, the first included.
    pub count: Option<u32>,
}

/// Checks `recurrence` (fields under `field`); `Some(None)` when there is none.
pub fn check(
    field: &str,
    recurrence: Option<&pb::Recurrence>,
    violations: &mut Violations,
) -> Option<Option<Rule>> {
    let Some(recurrence) = recurrence else {
        return Some(None);
    };
    let name = |sub: &str| format!("{field}.{sub}");
    let frequency = violations
        .check(recurrence_frequency::require(
            &name("frequency"),
            recurrence.frequency,
        ))
        .and_then(Frequency::from_name);
    let interval = match recurrence.interval {
        0 => Some(1),
        n @ 1..=MAX_INTERVAL => Some(n as u32),
        _ => {
            violations.push(
                &name("interval"),
                format!("must be between 1 and {MAX_INTERVAL}"),
            );
            None
        }
    };
    let mut weekdays = Vec::new();
    let mut weekdays_ok = true;
    for &day in &recurrence.weekdays {
        match pb::Weekday::try_from(day) {
            Ok(pb::Weekday::Unspecified) | Err(_) => weekdays_ok = false,
            Ok(_) => weekdays.push(day as u32),
        }
    }
    if !weekdays_ok {
        violations.push(
            &name("weekdays"),
            "must hold only WEEKDAY_MONDAY .. WEEKDAY_SUNDAY",
        );
    } else if !weekdays.is_empty() && frequency.is_some_and(|f| f != Frequency::Weekly) {
        violations.push(&name("weekdays"), "is for RECURRENCE_FREQUENCY_WEEKLY only");
        weekdays_ok = false;
    }
    weekdays.sort_unstable();
    weekdays.dedup();
    let until_date = violations.check(optional(&recurrence.until_date, |date| {
        clock::parse_date(&name("until_date"), date)
    }));
    let count = match recurrence.count {
        0 => Some(None),
        n if n > 0 => Some(Some(n as u32)),
        _ => {
            violations.push(&name("count"), "must not be negative (0: no limit)");
            None
        }
    };
    Some(Some(Rule {
        frequency: frequency?,
        interval: interval?,
        weekdays: weekdays_ok.then_some(weekdays)?,
        until_date: until_date?,
        count: count?,
    }))
}

impl Rule {
    /// A weekly rule without weekdays falls on the first occurrence's weekday.
    pub fn anchored_on(mut self, first: NaiveDate) -> Self {
        if self.frequency == Frequency::Weekly && self.weekdays.is_empty() {
            self.weekdays = vec![first.weekday().number_from_monday()];
        }
        self
    }

    /// As stored in reminders.recurrence (shape in the migration).
    pub fn to_json(&self) -> Value {
        let mut stored = json!({
            "frequency": self.frequency.name(),
            "interval": self.interval,
        });
        if !self.weekdays.is_empty() {
            stored["weekdays"] = json!(self.weekdays);
        }
        if let Some(until) = self.until_date {
            stored["until_date"] = json!(until.format("%Y-%m-%d").to_string());
        }
        if let Some(count) = self.count {
            stored["count"] = json!(count);
        }
        stored
    }

    /// The stored rule; None when it is not one this module wrote.
    pub fn from_json(stored: &Value) -> Option<Self> {
        let frequency = Frequency::from_name(stored["frequency"].as_str()?)?;
        let number = |key: &str| stored[key].as_u64().and_then(|n| u32::try_from(n).ok());
        Some(Self {
            frequency,
            interval: number("interval").unwrap_or(1).max(1),
            weekdays: stored["weekdays"]
                .as_array()
                .map(|days| {
                    days.iter()
                        .filter_map(|d| d.as_u64().and_then(|d| u32::try_from(d).ok()))
                        .filter(|d| (1..=7).contains(d))
                        .collect()
                })
                .unwrap_or_default(),
            until_date: stored["until_date"]
                .as_str()
                .and_then(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()),
            count: number("count"),
        })
    }

    pub fn to_wire(&self) -> pb::Recurrence {
        pb::Recurrence {
            frequency: recurrence_frequency::parse(self.frequency.name()) as i32,
            interval: self.interval as i32,
            weekdays: self.weekdays.iter().map(|&d| d as i32).collect(),
            until_date: self
                .until_date
                .map(|d| d.format("%Y-%m-%d").to_string())
                .unwrap_or_default(),
            count: self.count.map_or(0, |c| c as i32),
        }
    }

    /// The series' local dates in order, the anchor first, within `until_date`
    /// and `count`.
    pub fn dates(&self, anchor: NaiveDate) -> impl Iterator<Item = NaiveDate> + '_ {
        let limit = self.count.map_or(usize::MAX, |c| c as usize);
        std::iter::once(anchor)
            .chain(self.later_dates(anchor))
            .take(limit)
            .take_while(move |date| self.until_date.is_none_or(|until| *date <= until))
    }

    fn later_dates(&self, anchor: NaiveDate) -> Box<dyn Iterator<Item = NaiveDate> + '_> {
        let interval = self.interval;
        match self.frequency {
            Frequency::Daily => Box::new((1..).map_while(move |k: u64| {
                anchor.checked_add_signed(TimeDelta::days((k * u64::from(interval)) as i64))
            })),
            // checked_add_months clamps to the month's last day, always from
            // the anchor, so a 31st comes back after a short month.
            Frequency::Monthly => Box::new((1..).map_while(move |k: u32| {
                anchor.checked_add_months(Months::new(k.checked_mul(interval)?))
            })),
            Frequency::Weekly => {
                let days = if self.weekdays.is_empty() {
                    vec![anchor.weekday().number_from_monday()]
                } else {
                    self.weekdays.clone()
                };
                let monday = anchor.week(Weekday::Mon).first_day();
                Box::new(
                    (0..)
                        .map_while(move |week: i64| {
                            monday.checked_add_signed(TimeDelta::weeks(week * i64::from(interval)))
                        })
                        .flat_map(move |week_start| {
                            days.clone().into_iter().filter_map(move |day| {
                                week_start.checked_add_signed(TimeDelta::days(i64::from(day) - 1))
                            })
                        })
                        .filter(move |date| *date > anchor),
                )
            }
        }
    }

    /// The first occurrence after number `occurrence` that falls after
    /// `after`, as (its number, its instant): `series_local` is the first
    /// occurrence's local time in `zone`. None when the series has ended.
    pub fn next(
        &self,
        series_local: NaiveDateTime,
        zone: Tz,
        occurrence: u32,
        after: DateTime<Utc>,
    ) -> Option<(u32, DateTime<Utc>)> {
        self.dates(series_local.date())
            .zip(1..)
            .skip(occurrence as usize)
            .map(|(date, number)| {
                (
                    number,
                    clock::resolve(zone, date.and_time(series_local.time())),
                )
            })
            .find(|(_, instant)| *instant > after)
    }
}

#[derive(sqlx::FromRow)]
struct SentRow {
    user_id: Uuid,
    title: String,
    description: String,
    metadata: Value,
    recurrence: Option<Value>,
    series_id: Uuid,
    occurrence: i32,
    series_local_time: NaiveDateTime,
    time_zone: String,
    channel: Option<String>,
    whatsapp_template: Option<Value>,
}

/// Called in the transaction that marks reminder `sent_id` sent: when it
/// recurs and its series has another occurrence, inserts that occurrence as a
/// new pending reminder (at most once: unique (series_id, occurrence)) and
/// returns its id. None when the series ends here, or when that occurrence
/// already exists (a repeated call creates nothing). An occurrence whose time
/// has passed (a late send) is skipped for the first one still ahead, so a
/// late send never causes a burst.
#[tracing::instrument(skip(conn))]
pub async fn create_next(conn: &mut PgConnection, sent_id: Uuid) -> ApiResult<Option<Uuid>> {
    let sent: SentRow = sqlx::query_as(
        "SELECT user_id, title, description, metadata, recurrence, series_id, occurrence,
                series_local_time, time_zone, channel, whatsapp_template
         FROM reminders WHERE id = $1",
    )
    .bind(sent_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no reminder {sent_id}")))?;
    let Some(stored) = &sent.recurrence else {
        return Ok(None);
    };
    let (Some(rule), Ok(zone)) = (Rule::from_json(stored), sent.time_zone.parse::<Tz>()) else {
        tracing::warn!(%sent_id, "a recurring reminder with an unreadable rule or zone ends its series");
        return Ok(None);
    };
    let occurrence = u32::try_from(sent.occurrence).unwrap_or(1);
    let Some((number, scheduled)) = rule.next(sent.series_local_time, zone, occurrence, Utc::now())
    else {
        return Ok(None);
    };
    let next = reminders::NewReminder {
        id: Uuid::now_v7(),
        user: sent.user_id,
        title: sent.title,
        description: sent.description,
        scheduled,
        time_zone: zone,
        metadata: sent.metadata,
        recurrence: Some(stored.clone()),
        series_id: sent.series_id,
        occurrence: i32::try_from(number).unwrap_or(i32::MAX),
        series_local_time: sent.series_local_time,
        channel: sent.channel,
        whatsapp_template: sent.whatsapp_template,
        calendar_event: None,
    };
    reminders::insert(conn, &next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(frequency: Frequency) -> Rule {
        Rule {
            frequency,
            interval: 1,
            weekdays: Vec::new(),
            until_date: None,
            count: None,
        }
    }

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn local(text: &str) -> NaiveDateTime {
        clock::parse_local("t", text).unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn dates(rule: &Rule, anchor: &str, n: usize) -> Vec<String> {
        rule.dates(date(anchor))
            .take(n)
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn daily_across_spring_forward_keeps_nine_local() {
        let zone: Tz = "America/New_York".parse().unwrap();
        let series = local("2026-03-07T09:00");
        let long_ago = utc("2000-01-01T00:00:00Z");
        let (number, instant) = rule(Frequency::Daily)
            .next(series, zone, 1, long_ago)
            .unwrap();
        assert_eq!(number, 2);
        // 09:00 EDT now, not 09:00 EST: an hour earlier in UTC.
        assert_eq!(instant, utc("2026-03-08T13:00:00Z"));
        let madrid: Tz = "Europe/Madrid".parse().unwrap();
        let (_, instant) = rule(Frequency::Daily)
            .next(local("2026-10-24T09:00"), madrid, 1, long_ago)
            .unwrap();
        assert_eq!(instant, utc("2026-10-25T08:00:00Z"));
    }

    #[test]
    fn a_gap_time_moves_forward_only_on_the_gap_night() {
        let zone: Tz = "America/New_York".parse().unwrap();
        let series = local("2026-03-07T02:30");
        let long_ago = utc("2000-01-01T00:00:00Z");
        let daily = rule(Frequency::Daily);
        let (_, gap_night) = daily.next(series, zone, 1, long_ago).unwrap();
        assert_eq!(clock::local_of(zone, gap_night), local("2026-03-08T03:30"));
        let (_, after) = daily.next(series, zone, 2, long_ago).unwrap();
        assert_eq!(clock::local_of(zone, after), local("2026-03-09T02:30"));
    }

    #[test]
    fn weekly_on_monday_and_thursday() {
        let mut weekly = rule(Frequency::Weekly);
        weekly.weekdays = vec![1, 4];
        // 2026-03-02 is a Monday.
        assert_eq!(
            dates(&weekly, "2026-03-02", 5),
            [
                "2026-03-02",
                "2026-03-05",
                "2026-03-09",
                "2026-03-12",
                "2026-03-16"
            ]
        );
        weekly.interval = 2;
        // Anchored on a Wednesday: it is the first, then the rule's days.
        assert_eq!(
            dates(&weekly, "2026-03-04", 4),
            ["2026-03-04", "2026-03-05", "2026-03-16", "2026-03-19"]
        );
        let defaulted = rule(Frequency::Weekly).anchored_on(date("2026-03-04"));
        assert_eq!(defaulted.weekdays, [3]);
        assert_eq!(
            dates(&defaulted, "2026-03-04", 3),
            ["2026-03-04", "2026-03-11", "2026-03-18"]
        );
    }

    #[test]
    fn monthly_on_the_31st_clamps_and_comes_back() {
        assert_eq!(
            dates(&rule(Frequency::Monthly), "2026-01-31", 4),
            ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"]
        );
        let mut quarterly = rule(Frequency::Monthly);
        quarterly.interval = 3;
        assert_eq!(
            dates(&quarterly, "2026-11-30", 3),
            ["2026-11-30", "2027-02-28", "2027-05-30"]
        );
    }

    #[test]
    fn count_and_until_end_the_series() {
        let zone: Tz = "Europe/Madrid".parse().unwrap();
        let series = local("2026-05-01T08:00");
        let long_ago = utc("2000-01-01T00:00:00Z");
        let mut counted = rule(Frequency::Daily);
        counted.count = Some(3);
        assert_eq!(dates(&counted, "2026-05-01", 10).len(), 3);
        assert!(counted.next(series, zone, 2, long_ago).is_some());
        assert!(counted.next(series, zone, 3, long_ago).is_none());
        let mut until = rule(Frequency::Daily);
        until.until_date = Some(date("2026-05-02"));
        assert_eq!(until.next(series, zone, 1, long_ago).unwrap().0, 2);
        assert!(until.next(series, zone, 2, long_ago).is_none());
    }

    #[test]
    fn a_late_send_skips_to_the_first_future_occurrence() {
        let zone: Tz = "UTC".parse().unwrap();
        let series = local("2026-05-01T08:00");
        let (number, instant) = rule(Frequency::Daily)
            .next(series, zone, 1, utc("2026-05-04T09:00:00Z"))
            .unwrap();
        assert_eq!((number, instant), (5, utc("2026-05-05T08:00:00Z")));
    }

    #[test]
    fn the_stored_json_round_trips() {
        let mut full = rule(Frequency::Weekly);
        full.interval = 2;
        full.weekdays = vec![1, 4];
        full.until_date = Some(date("2026-12-31"));
        full.count = Some(10);
        assert_eq!(
            full.to_json(),
            json!({"frequency": "weekly", "interval": 2, "weekdays": [1, 4],
                   "until_date": "2026-12-31", "count": 10})
        );
        assert_eq!(Rule::from_json(&full.to_json()), Some(full));
        assert_eq!(Rule::from_json(&json!({"frequency": "hourly"})), None);
    }

    #[test]
    fn a_bad_rule_names_every_bad_field() {
        let mut violations = Violations::default();
        let checked = check(
            "reminder.recurrence",
            Some(&pb::Recurrence {
                frequency: 0,
                interval: 367,
                weekdays: vec![9],
                until_date: "soon".into(),
                count: -1,
            }),
            &mut violations,
        );
        assert!(checked.is_none());
        let message = violations.to_string();
        for field in ["frequency", "interval", "weekdays", "until_date", "count"] {
            assert!(
                message.contains(&format!("reminder.recurrence.{field}:")),
                "{message}"
            );
        }
    }
}

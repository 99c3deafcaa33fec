//! Quiet hours, and the users service's answers cached for a short while:
//! a batch often holds several items of one user, and every send needs the
//! person and their quiet hours.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, Days, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use mesh_runtime::ApiResult;
use uuid::Uuid;

use crate::{
    State,
    people::{Person, QuietHours},
};

/// How long a user's answers are reused: a change of quiet hours or channel
/// applies within this.
const TTL: Duration = Duration::from_secs(30);

/// A user's answers, and when they were fetched.
type Entry = (Instant, Person, Option<QuietHours>);

#[derive(Default)]
pub(super) struct PeopleCache {
    known: Mutex<HashMap<Uuid, Entry>>,
}

impl PeopleCache {
    /// The user and their quiet hours, from the cache or the users service.
    pub async fn get(&self, state: &State, user: Uuid) -> ApiResult<(Person, Option<QuietHours>)> {
        {
            let mut known = self.known.lock().expect("not poisoned");
            match known.get(&user) {
                Some((at, person, quiet)) if at.elapsed() < TTL => {
                    return Ok((person.clone(), *quiet));
                }
                Some(_) => {
                    known.remove(&user);
                }
                None => {}
            }
        }
        let (person, quiet) =
            tokio::join!(state.people.person(user), state.people.quiet_hours(user));
        let (person, quiet) = (person?, quiet?);
        let mut known = self.known.lock().expect("not poisoned");
        // Forget the stale ones now and then, so the map stays small.
        if known.len() > 10_000 {
            known.retain(|_, (at, ..)| at.elapsed() < TTL);
        }
        known.insert(user, (Instant::now(), person.clone(), quiet));
        Ok((person, quiet))
    }
}

/// When `now` falls in `quiet` hours in `zone`, the instant they end.
pub(super) fn quiet_until(
    now: DateTime<Utc>,
    zone: Tz,
    quiet: QuietHours,
) -> Option<DateTime<Utc>> {
    let local = now.with_timezone(&zone).naive_local();
    let time = local.time();
    let today = local.date();
    let end_day = if quiet.start < quiet.end {
        (quiet.start <= time && time < quiet.end).then_some(today)?
    } else if time >= quiet.start {
        // 22:00-07:00 at 23:00: they end tomorrow morning.
        today.checked_add_days(Days::new(1))?
    } else if time < quiet.end {
        today
    } else {
        return None;
    };
    end_after(zone, end_day.and_time(quiet.end), now)
}

/// The first instant after `now` at which the wall clock in `zone` reads
/// `local`: of a time that happens twice (DST ends) the earlier unless it
/// has passed (`now` is in the repeated hour, after its first pass), and for
/// one that does not exist (DST starts) the same time an hour later. None
/// when that has passed too: the quiet hours are over.
fn end_after(zone: Tz, local: NaiveDateTime, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let candidates = match zone.from_local_datetime(&local) {
        LocalResult::None => zone.from_local_datetime(&(local + chrono::Duration::hours(1))),
        found => found,
    };
    let (first, second) = match candidates {
        LocalResult::Single(time) => (Some(time), None),
        LocalResult::Ambiguous(earlier, later) => (Some(earlier), Some(later)),
        LocalResult::None => (None, None),
    };
    [first, second]
        .into_iter()
        .flatten()
        .map(|time| time.with_timezone(&Utc))
        .find(|time| *time > now)
}

#[cfg(test)]
mod tests {
    use chrono::NaiveTime;

    use super::*;

    fn hours(start: &str, end: &str) -> QuietHours {
        QuietHours {
            start: NaiveTime::parse_from_str(start, "%H:%M").unwrap(),
            end: NaiveTime::parse_from_str(end, "%H:%M").unwrap(),
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn inside_same_day_hours_ends_today() {
        // 14:00 in Bogotá (UTC-5).
        let until = quiet_until(
            utc("2025-03-10T19:00:00Z"),
            chrono_tz::America::Bogota,
            hours("13:00", "15:30"),
        );
        assert_eq!(until, Some(utc("2025-03-10T20:30:00Z")));
    }

    #[test]
    fn outside_hours_is_none() {
        let until = quiet_until(
            utc("2025-03-10T19:00:00Z"),
            chrono_tz::America::Bogota,
            hours("22:00", "07:00"),
        );
        assert_eq!(until, None);
    }

    #[test]
    fn hours_across_midnight_end_the_next_morning_before_midnight() {
        // 23:00 in Bogotá: quiet until 07:00 the next day.
        let until = quiet_until(
            utc("2025-03-11T04:00:00Z"),
            chrono_tz::America::Bogota,
            hours("22:00", "07:00"),
        );
        assert_eq!(until, Some(utc("2025-03-11T12:00:00Z")));
    }

    #[test]
    fn hours_across_midnight_end_this_morning_after_midnight() {
        // 02:00 in Bogotá.
        let until = quiet_until(
            utc("2025-03-11T07:00:00Z"),
            chrono_tz::America::Bogota,
            hours("22:00", "07:00"),
        );
        assert_eq!(until, Some(utc("2025-03-11T12:00:00Z")));
    }

    #[test]
    fn an_end_in_the_dst_gap_moves_an_hour_later() {
        // New York skips 02:00-03:00 on 2025-03-09; at 01:00 EST (06:00Z),
        // quiet hours ending 02:30 end at 03:30 EDT (07:30Z).
        let until = quiet_until(
            utc("2025-03-09T06:00:00Z"),
            chrono_tz::America::New_York,
            hours("00:00", "02:30"),
        );
        assert_eq!(until, Some(utc("2025-03-09T07:30:00Z")));
    }

    #[test]
    fn an_end_in_the_repeated_hour_is_the_next_one_after_now() {
        // New York repeats 01:00-02:00 on 2026-11-01. Quiet until 01:30:
        // during the first pass (01:10 EDT, 05:10Z) they end at 01:30 EDT
        // (05:30Z); during the second (01:10 EST, 06:10Z) at 01:30 EST
        // (06:30Z), not at the 05:30Z already gone (a deferral into the
        // past would be claimed and deferred again at once, in a loop).
        let zone = chrono_tz::America::New_York;
        let quiet = hours("22:00", "01:30");
        assert_eq!(
            quiet_until(utc("2026-11-01T05:10:00Z"), zone, quiet),
            Some(utc("2026-11-01T05:30:00Z"))
        );
        assert_eq!(
            quiet_until(utc("2026-11-01T06:10:00Z"), zone, quiet),
            Some(utc("2026-11-01T06:30:00Z"))
        );
    }
}

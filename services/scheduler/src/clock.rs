//! Local wall-clock times in IANA time zones, and DST: a local time skipped by
//! a spring-forward change moves forward by the change; one that happens
//! twice (fall back) is the first of the two.

use chrono::{
    DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta, TimeZone, Utc,
};
use chrono_tz::Tz;
use mesh_runtime::FieldViolation;

/// The years a time may fall in: those a protobuf Timestamp can carry
/// (chrono itself parses signed years of any length, which overflow later).
const YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

/// "YYYY-MM-DDTHH:MM[:SS]", without an offset: the offset comes from the zone.
pub fn parse_local(field: &str, text: &str) -> Result<NaiveDateTime, FieldViolation> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M"))
        .ok()
        .filter(|local| YEARS.contains(&local.year()))
        .ok_or_else(|| {
            FieldViolation::new(
                field,
                "must be a local time \"YYYY-MM-DDTHH:MM[:SS]\" (no offset), years 0001 to 9999",
            )
        })
}

/// A local date "YYYY-MM-DD", years 0001 to 9999.
pub fn parse_date(field: &str, text: &str) -> Result<NaiveDate, FieldViolation> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|date| YEARS.contains(&date.year()))
        .ok_or_else(|| {
            FieldViolation::new(field, "must be a date \"YYYY-MM-DD\", years 0001 to 9999")
        })
}

/// A local time of day "HH:MM" (24 h), as the users service stores them too.
pub fn hh_mm(text: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(text, "%H:%M").ok()
}

/// [`hh_mm`] of a request's field.
pub fn parse_hh_mm(field: &str, text: &str) -> Result<NaiveTime, FieldViolation> {
    hh_mm(text).ok_or_else(|| FieldViolation::new(field, "must be a local time \"HH:MM\""))
}

/// An IANA time zone name such as "America/New_York".
pub fn parse_zone(field: &str, name: &str) -> Result<Tz, FieldViolation> {
    if name.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    name.parse::<Tz>().map_err(|_| {
        FieldViolation::new(
            field,
            "must be an IANA time zone name such as \"America/New_York\"",
        )
    })
}

/// The instant `local` names in `zone`.
pub fn resolve(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    if let Some(first) = zone.from_local_datetime(&local).earliest() {
        return first.with_timezone(&Utc);
    }
    // In a gap: read the wall clock with the offset in force just before the
    // change, which lands as far past the gap's end as `local` was past its
    // start (02:30 EST is 03:30 EDT). Gaps are at most a day long (Samoa 2011).
    let before = (1..=48)
        .filter_map(|hours| local.checked_sub_signed(TimeDelta::hours(hours)))
        .find_map(|earlier| zone.from_local_datetime(&earlier).earliest())
        .map_or(0, |earlier| earlier.offset().fix().local_minus_utc());
    local
        .checked_sub_signed(TimeDelta::seconds(i64::from(before)))
        .unwrap_or(local)
        .and_utc()
}

/// The wall-clock time `instant` shows in `zone`.
pub fn local_of(zone: Tz, instant: DateTime<Utc>) -> NaiveDateTime {
    instant.with_timezone(&zone).naive_local()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(text: &str) -> NaiveDateTime {
        parse_local("t", text).unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn an_ordinary_time_takes_the_zone_offset() {
        let zone: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            resolve(zone, local("2026-01-15T09:00")),
            utc("2026-01-15T14:00:00Z")
        );
        assert_eq!(
            resolve(zone, local("2026-07-15T09:00:30")),
            utc("2026-07-15T13:00:30Z")
        );
    }

    #[test]
    fn a_time_in_the_spring_forward_gap_moves_forward_by_the_gap() {
        let new_york: Tz = "America/New_York".parse().unwrap();
        let instant = resolve(new_york, local("2026-03-08T02:30"));
        assert_eq!(instant, utc("2026-03-08T07:30:00Z"));
        assert_eq!(local_of(new_york, instant), local("2026-03-08T03:30"));

        let madrid: Tz = "Europe/Madrid".parse().unwrap();
        let instant = resolve(madrid, local("2026-03-29T02:15"));
        assert_eq!(instant, utc("2026-03-29T01:15:00Z"));
        assert_eq!(local_of(madrid, instant), local("2026-03-29T03:15"));
    }

    #[test]
    fn a_time_that_happens_twice_is_the_first() {
        let new_york: Tz = "America/New_York".parse().unwrap();
        // 01:30 EDT (UTC-4), not 01:30 EST (UTC-5).
        assert_eq!(
            resolve(new_york, local("2026-11-01T01:30")),
            utc("2026-11-01T05:30:00Z")
        );
        let madrid: Tz = "Europe/Madrid".parse().unwrap();
        // 02:30 CEST (UTC+2), not 02:30 CET (UTC+1).
        assert_eq!(
            resolve(madrid, local("2026-10-25T02:30")),
            utc("2026-10-25T00:30:00Z")
        );
    }

    #[test]
    fn malformed_times_and_zones_name_their_field() {
        for bad in [
            "",
            "2026-03-08",
            "2026-03-08 09:00",
            "2026-03-08T09:00Z",
            "09:00",
        ] {
            let violation = parse_local("local_time", bad).unwrap_err();
            assert_eq!(violation.field, "local_time", "{bad:?}");
        }
        assert_eq!(
            local("2026-03-08T09:00:15").to_string(),
            "2026-03-08 09:00:15"
        );
        assert_eq!(
            parse_zone("reminder.time_zone", "Mars/Olympus")
                .unwrap_err()
                .field,
            "reminder.time_zone"
        );
        assert!(parse_zone("z", "Europe/Madrid").is_ok());
    }
}

//! The metered features: their names on the wire, in config and in the
//! database, and the period each is counted over in the user's time zone.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use mesh_proto::mesh::billing::v1 as pb;
use mesh_runtime::FieldViolation;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    InboundMessages,
    AiTokens,
    AiCostUsd,
    Memories,
    Documents,
}

/// How long a feature's usage counts before it starts again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
    Never,
}

impl Feature {
    pub const ALL: [Feature; 5] = [
        Feature::InboundMessages,
        Feature::AiTokens,
        Feature::AiCostUsd,
        Feature::Memories,
        Feature::Documents,
    ];

    /// The name in plan files and in `usage_counters.feature`.
    pub fn config_name(self) -> &'static str {
        match self {
            Feature::InboundMessages => "inbound_messages",
            Feature::AiTokens => "ai_tokens",
            Feature::AiCostUsd => "ai_cost_usd",
            Feature::Memories => "memories",
            Feature::Documents => "documents",
        }
    }

    pub fn from_config_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.config_name() == name)
    }

    pub fn period(self) -> Period {
        match self {
            Feature::InboundMessages | Feature::AiTokens => Period::Day,
            Feature::AiCostUsd => Period::Month,
            Feature::Memories | Feature::Documents => Period::Never,
        }
    }

    pub fn to_pb(self) -> pb::Feature {
        match self {
            Feature::InboundMessages => pb::Feature::InboundMessages,
            Feature::AiTokens => pb::Feature::AiTokens,
            Feature::AiCostUsd => pb::Feature::AiCostUsd,
            Feature::Memories => pb::Feature::Memories,
            Feature::Documents => pb::Feature::Documents,
        }
    }

    /// The feature a request names; UNSPECIFIED or an unknown number is a
    /// violation of `field` that lists the allowed names.
    pub fn require(field: &str, value: i32) -> Result<Self, FieldViolation> {
        Self::ALL
            .into_iter()
            .find(|f| f.to_pb() as i32 == value)
            .ok_or_else(|| {
                FieldViolation::new(
                    field,
                    format!(
                        "must be one of {}",
                        Self::ALL.map(|f| f.to_pb().as_str_name()).join(", ")
                    ),
                )
            })
    }
}

/// The period `now` falls in for `feature` in `zone`: its key in
/// `usage_counters.period` and when the next one starts.
pub fn current(feature: Feature, zone: Tz, now: DateTime<Utc>) -> (String, Option<DateTime<Utc>>) {
    let today = now.with_timezone(&zone).date_naive();
    match feature.period() {
        Period::Day => (
            today.format("%Y-%m-%d").to_string(),
            Some(local_midnight(zone, today.succ_opt().unwrap_or(today))),
        ),
        Period::Month => (
            today.format("%Y-%m").to_string(),
            Some(local_midnight(
                zone,
                first_of_next_month(today).unwrap_or(today),
            )),
        ),
        Period::Never => ("total".to_owned(), None),
    }
}

/// The first day of the month after `day`'s; None past the calendar's end.
pub fn first_of_next_month(day: NaiveDate) -> Option<NaiveDate> {
    if day.month() == 12 {
        NaiveDate::from_ymd_opt(day.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(day.year(), day.month() + 1, 1)
    }
}

/// The first instant of `day` in `zone` (a day starting in a DST gap starts
/// when the gap ends).
fn local_midnight(zone: Tz, day: NaiveDate) -> DateTime<Utc> {
    let mut time = day.and_hms_opt(0, 0, 0).expect("midnight exists");
    for _ in 0..48 {
        if let Some(instant) = zone.from_local_datetime(&time).earliest() {
            return instant.with_timezone(&Utc);
        }
        time += chrono::Duration::minutes(30);
    }
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months_follow_the_users_zone() {
        let zone: Tz = "America/Bogota".parse().unwrap();
        // 03:00 UTC on the 8th is 22:00 on the 7th in Bogotá (UTC-5).
        let now = Utc.with_ymd_and_hms(2026, 12, 8, 3, 0, 0).unwrap();
        let (day, reset) = current(Feature::InboundMessages, zone, now);
        assert_eq!(day, "2026-12-07");
        assert_eq!(
            reset,
            Some(Utc.with_ymd_and_hms(2026, 12, 8, 5, 0, 0).unwrap())
        );
        let (month, reset) = current(Feature::AiCostUsd, zone, now);
        assert_eq!(month, "2026-12");
        assert_eq!(
            reset,
            Some(Utc.with_ymd_and_hms(2027, 1, 1, 5, 0, 0).unwrap())
        );
        assert_eq!(
            current(Feature::Memories, zone, now),
            ("total".into(), None)
        );
    }

    #[test]
    fn a_day_starting_in_a_dst_gap_starts_when_the_gap_ends() {
        // Santiago skips 00:00-01:00 on 2026-09-06.
        let zone: Tz = "America/Santiago".parse().unwrap();
        let midnight = local_midnight(zone, NaiveDate::from_ymd_opt(2026, 9, 6).unwrap());
        assert_eq!(
            midnight.with_timezone(&zone).format("%H:%M").to_string(),
            "01:00"
        );
    }

    #[test]
    fn unspecified_features_are_refused_by_name() {
        let refusal = Feature::require("feature", 0).unwrap_err();
        assert!(refusal.description.contains("FEATURE_INBOUND_MESSAGES"));
        assert_eq!(Feature::require("feature", 2).unwrap(), Feature::AiTokens);
    }
}

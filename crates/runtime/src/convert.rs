//! Conversions between wire types and storage types, with the field path of a
//! bad value so the caller sees which field to fix.

use chrono::{DateTime, Utc};
use prost_types::{Struct, Timestamp, Value, value::Kind};
use tonic_types::FieldViolation;
use uuid::Uuid;

pub fn parse_uuid(field: &str, value: &str) -> Result<Uuid, FieldViolation> {
    if value.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    Uuid::parse_str(value).map_err(|_| FieldViolation::new(field, "must be a UUID"))
}

pub fn timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

pub fn optional_timestamp(time: Option<DateTime<Utc>>) -> Option<Timestamp> {
    time.map(timestamp)
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range of
/// google.protobuf.Timestamp, and within what Postgres stores.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

pub fn from_timestamp(field: &str, ts: &Timestamp) -> Result<DateTime<Utc>, FieldViolation> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(FieldViolation::new(
            field,
            "must be between 0001-01-01 and 9999-12-31",
        ));
    }
    u32::try_from(ts.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
        .ok_or_else(|| FieldViolation::new(field, "is not a valid timestamp"))
}

/// A protobuf Struct as a JSON object.
pub fn struct_to_json(value: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(value_to_json).collect())
        }
    }
}

/// A JSON object as a protobuf Struct (anything else becomes an empty Struct).
pub fn json_to_struct(value: &serde_json::Value) -> Struct {
    match value {
        serde_json::Value::Object(map) => Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        },
        _ => Struct::default(),
    }
}

fn json_to_value(value: &serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(value)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_survives_a_round_trip_through_struct() {
        let json = serde_json::json!({"a": 1.5, "b": [true, null, "x"], "c": {"d": "e"}});
        assert_eq!(struct_to_json(&json_to_struct(&json)), json);
    }

    #[test]
    fn timestamps_keep_nanoseconds_and_reject_bad_nanos() {
        let now = Utc::now();
        assert_eq!(from_timestamp("t", &timestamp(now)).unwrap(), now);
        for (seconds, nanos) in [
            (0, -1),
            (0, 1_000_000_000),
            (MAX_SECONDS + 1, 0),
            (MIN_SECONDS - 1, 0),
        ] {
            assert!(from_timestamp("t", &Timestamp { seconds, nanos }).is_err());
        }
        assert!(
            from_timestamp(
                "t",
                &Timestamp {
                    seconds: MAX_SECONDS,
                    nanos: 0
                }
            )
            .is_ok()
        );
    }
}

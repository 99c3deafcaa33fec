//! List RPC conventions: `page_size` (0 means the default, capped at the
//! maximum) and an opaque `page_token` holding the last key of the previous
//! page (keyset pagination: stable under inserts, no OFFSET scans).

use std::{fmt, str::FromStr};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{FieldViolation, Violations};

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 1000;

/// The number of rows to return for a requested `page_size`.
pub fn page_size(requested: i32) -> Result<i64, FieldViolation> {
    match requested {
        n if n < 0 => Err(FieldViolation::new("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

const PREFIX: &str = "k1:";

/// An opaque token for "after this key".
pub fn encode_token(last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PREFIX}{last_key}"))
}

/// The key a token stands for; `None` for an empty token (the first page).
pub fn decode_token(token: &str) -> Result<Option<String>, FieldViolation> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(PREFIX).map(str::to_owned))
        // Our keys never hold NUL, and Postgres would refuse it as text.
        .filter(|key| !key.contains('\0'))
        .map(Some)
        .ok_or_else(foreign_token)
}

fn foreign_token() -> FieldViolation {
    FieldViolation::new("page_token", "is not a token this service issued")
}

/// A token holding a key of type `T`: anything with a text form that parses
/// back (UUIDs, strings, integers, dates, [`TimeKey`]).
pub fn decode_parsed_token<T: FromStr>(token: &str) -> Result<Option<T>, FieldViolation> {
    decode_token(token)?
        .map(|key| key.parse().map_err(|_| foreign_token()))
        .transpose()
}

/// The key of rows listed by a time, the id breaking ties: its text form is
/// "<microseconds since the epoch>.<uuid>" (microseconds: what Postgres
/// keeps, so the key compares equal to the stored row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeKey {
    pub time: DateTime<Utc>,
    pub id: Uuid,
}

impl TimeKey {
    pub fn new(time: DateTime<Utc>, id: Uuid) -> Self {
        Self { time, id }
    }
}

impl fmt::Display for TimeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.time.timestamp_micros(), self.id)
    }
}

impl FromStr for TimeKey {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (micros, id) = text.split_once('.').ok_or(())?;
        let time = micros
            .parse()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or(())?;
        Ok(Self::new(time, id.parse().map_err(|_| ())?))
    }
}

/// A list request's `page_size` and `page_token`, checked: how many rows to
/// return and the key to list after (`None` for the first page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<K> {
    pub size: i64,
    pub after: Option<K>,
}

impl<K: FromStr> Page<K> {
    /// Checks `page_size` then `page_token`, recording what is wrong in
    /// `violations`; `None` when either is invalid.
    pub fn check(violations: &mut Violations, page_size: i32, page_token: &str) -> Option<Self> {
        let size = violations.check(self::page_size(page_size));
        let after = violations.check(decode_parsed_token(page_token));
        Some(Self {
            size: size?,
            after: after?,
        })
    }
}

/// Splits one extra fetched row off `rows` and turns it into the next token:
/// queries fetch `page_size + 1` rows to learn whether another page exists.
pub fn next_page<T>(rows: &mut Vec<T>, page_size: i64, key: impl Fn(&T) -> String) -> String {
    if rows.len() as i64 > page_size {
        rows.truncate(page_size as usize);
        rows.last()
            .map(|last| encode_token(&key(last)))
            .unwrap_or_default()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_cap_and_refuse_negatives() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5000).unwrap(), MAX_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        let id = Uuid::now_v7();
        let token = encode_token(&id.to_string());
        assert_eq!(decode_parsed_token::<Uuid>(&token).unwrap(), Some(id));
        assert_eq!(decode_parsed_token::<Uuid>("").unwrap(), None);
        assert!(decode_parsed_token::<Uuid>("not-a-token").is_err());
        assert!(decode_parsed_token::<Uuid>(&encode_token("not-a-uuid")).is_err());
        assert!(decode_token(&encode_token("a\0b")).is_err());
        assert_eq!(
            decode_parsed_token::<i64>(&encode_token("42")).unwrap(),
            Some(42)
        );
        assert!(decode_parsed_token::<i64>(&encode_token("x")).is_err());
    }

    #[test]
    fn time_keys_round_trip_to_the_microsecond() {
        let time = DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap();
        let key = TimeKey::new(time, Uuid::now_v7());
        let token = encode_token(&key.to_string());
        assert_eq!(decode_parsed_token::<TimeKey>(&token).unwrap(), Some(key));
        assert!(decode_parsed_token::<TimeKey>(&encode_token("12.not-a-uuid")).is_err());
        assert!(
            decode_parsed_token::<TimeKey>(&encode_token(&Uuid::now_v7().to_string())).is_err()
        );
    }

    #[test]
    fn next_page_trims_the_probe_row() {
        let mut rows = vec![1, 2, 3];
        let token = next_page(&mut rows, 2, |r| r.to_string());
        assert_eq!(rows, [1, 2]);
        assert_eq!(decode_token(&token).unwrap().as_deref(), Some("2"));
        let mut rows = vec![1, 2];
        assert_eq!(next_page(&mut rows, 2, |r| r.to_string()), "");
    }
}

//! The cursors WatchEvents hands out with each event and takes back to
//! resume after it.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use mesh_runtime::FieldViolation;

/// Versioned so the encoding can change; opaque to callers.
const CURSOR_PREFIX: &str = "e1:";

/// The cursor of the event with sequence number `seq`.
pub(super) fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{seq}"))
}

/// The sequence number a cursor we issued stands for. Anything else (another
/// service's page token, an edited cursor) is refused.
pub(super) fn decode_cursor(field: &str, cursor: &str) -> Result<i64, FieldViolation> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(CURSOR_PREFIX)?.parse::<i64>().ok())
        // Only the canonical form: no sign, no leading zeros, no zero.
        .filter(|seq| *seq > 0 && encode_cursor(*seq) == cursor)
        .ok_or_else(|| FieldViolation::new(field, "is not a cursor this service issued"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        for seq in [1, 42, i64::MAX] {
            assert_eq!(decode_cursor("c", &encode_cursor(seq)).unwrap(), seq);
        }
        let page_token = mesh_runtime::pagination::encode_token("42");
        for bad in [
            "",
            "not-a-cursor",
            page_token.as_str(),
            &URL_SAFE_NO_PAD.encode("e1:0"),
            &URL_SAFE_NO_PAD.encode("e1:-3"),
            &URL_SAFE_NO_PAD.encode("e1:+3"),
            &URL_SAFE_NO_PAD.encode("e1:03"),
            &URL_SAFE_NO_PAD.encode("e2:3"),
        ] {
            assert!(decode_cursor("c", bad).is_err(), "{bad:?}");
        }
    }
}

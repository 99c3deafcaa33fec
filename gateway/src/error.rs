//! The error a route maps to 400 ([`PayloadError`]), and the body limits
//! over which it answers 413.

use thiserror::Error;

/// Meta documents webhook payloads of up to 3 MB; anything larger is refused
/// before it is buffered further or hashed.
pub const MAX_WHATSAPP_BODY: usize = 3 * 1024 * 1024;

/// Lemon Squeezy's events are a few KiB; the billing service takes at most
/// 256 KiB, so nothing larger is worth hashing.
pub const MAX_LEMONSQUEEZY_BODY: usize = 256 * 1024;

/// Longest reason kept in an error: serde messages can quote the offending
/// input, and a 3 MB string has no place in a 400 body or a log line.
const MAX_REASON: usize = 160;

/// Why a body is not a payload we accept (answer 400 with the Display text).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// Not parseable as JSON at all.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not the provider's shape; the reason names where.
    #[error("not the provider's shape: {0}")]
    Shape(String),
    /// A WhatsApp body for some other Graph API object (page, instagram...).
    #[error("unexpected object {0:?}, expected \"whatsapp_business_account\"")]
    WrongObject(String),
    /// A timestamp that is not non-negative Unix seconds.
    #[error("bad timestamp at {0}")]
    BadTimestamp(String),
}

impl PayloadError {
    pub(crate) fn not_json(e: &serde_json::Error) -> Self {
        Self::NotJson(short(&e.to_string()))
    }

    pub(crate) fn shape(path: &str, e: impl std::fmt::Display) -> Self {
        Self::Shape(short(&format!("{path}: {e}")))
    }

    pub(crate) fn wrong_object(object: &str) -> Self {
        Self::WrongObject(short(object))
    }
}

/// Cuts `s` to [`MAX_REASON`] bytes on a char boundary.
pub(crate) fn short(s: &str) -> String {
    if s.len() <= MAX_REASON {
        return s.to_owned();
    }
    let mut end = MAX_REASON;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_a_char_boundary() {
        let long = "é".repeat(500);
        let cut = short(&long);
        assert!(cut.len() <= MAX_REASON + 3);
        assert!(cut.ends_with("..."));
        let e = PayloadError::wrong_object(&"x".repeat(10_000));
        assert!(e.to_string().len() < 250);
    }
}

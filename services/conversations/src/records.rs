//! What happened around a conversation, recorded for the user's history:
//! calls, taps on interactive content, shared locations. Each is one user's;
//! the conversation and message a record names must be that user's too.

mod calls;
mod interactions;
mod locations;
pub(crate) mod parents;

pub use calls::{list_calls, record_call};
pub use interactions::{list_interactions, record_interaction};
pub use locations::{list_locations, record_location};

use mesh_runtime::{FieldViolation, Violations, pagination};
use uuid::Uuid;

/// A list request's `page_size` and `page_token`, checked. Every list here
/// pages by id (UUID v7), oldest first.
pub(crate) struct Page {
    pub size: i64,
    pub after: Option<Uuid>,
}

impl Page {
    pub fn check(violations: &mut Violations, page_size: i32, page_token: &str) -> Option<Self> {
        let size = violations.check(pagination::page_size(page_size));
        let after = violations.check(pagination::decode_uuid_token(page_token));
        Some(Self {
            size: size?,
            after: after?,
        })
    }
}

/// Counts (latency, tokens, seconds) are never negative.
pub(crate) fn non_negative(field: &str, value: i32) -> Result<(), FieldViolation> {
    if value < 0 {
        return Err(FieldViolation::new(field, "must not be negative"));
    }
    Ok(())
}

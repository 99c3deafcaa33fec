//! The reminder state machine, in one place: every path that changes a
//! reminder's status (the RPCs, the dispatcher, dead letters, calendar
//! events) asks [`allowed_from`] which statuses it may leave, and writes with
//! `WHERE status = ANY($allowed)`, so a refused change touches nothing.
//!
//! ```text
//! pending   -> sent       (the dispatcher delivered it)
//! pending   -> cancelled  (CancelReminder)
//! pending   -> failed     (the dispatcher gave up)
//! failed    -> pending    (RescheduleReminder, RetryDeadLetter)
//! failed    -> cancelled  (CancelReminder)
//! cancelled -> pending    (RescheduleReminder)
//! ```
//!
//! Anything else (a sent reminder is final) is FAILED_PRECONDITION.

use mesh_runtime::ApiError;

pub const PENDING: &str = "pending";
pub const SENT: &str = "sent";
pub const FAILED: &str = "failed";
pub const CANCELLED: &str = "cancelled";

pub const ALL: [&str; 4] = [PENDING, SENT, FAILED, CANCELLED];

/// The statuses a reminder may move to `to` from.
pub fn allowed_from(to: &str) -> &'static [&'static str] {
    match to {
        PENDING => &[FAILED, CANCELLED],
        SENT | FAILED => &[PENDING],
        CANCELLED => &[PENDING, FAILED],
        _ => &[],
    }
}

/// The refusal of `from -> to`, naming both.
pub fn refused(from: &str, to: &str) -> ApiError {
    ApiError::FailedPrecondition(format!(
        "a {from} reminder cannot become {to} (allowed: {})",
        allowed_transitions()
    ))
}

fn allowed_transitions() -> String {
    let mut pairs = Vec::new();
    for to in ALL {
        for from in allowed_from(to) {
            pairs.push(format!("{from}->{to}"));
        }
    }
    pairs.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(from: &str, to: &str) -> bool {
        allowed_from(to).contains(&from)
    }

    #[test]
    fn the_table_allows_exactly_the_six_transitions() {
        let mut allowed_pairs = Vec::new();
        for from in ALL {
            for to in ALL {
                if allowed(from, to) {
                    allowed_pairs.push(format!("{from}->{to}"));
                }
            }
        }
        allowed_pairs.sort();
        assert_eq!(
            allowed_pairs,
            [
                "cancelled->pending",
                "failed->cancelled",
                "failed->pending",
                "pending->cancelled",
                "pending->failed",
                "pending->sent",
            ]
        );
    }

    #[test]
    fn a_refusal_names_both_statuses() {
        let ApiError::FailedPrecondition(message) = refused(SENT, PENDING) else {
            panic!("a refusal is FAILED_PRECONDITION");
        };
        assert!(
            message.starts_with("a sent reminder cannot become pending"),
            "{message}"
        );
    }
}

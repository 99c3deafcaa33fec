//! The one mapping from what went wrong to what a gRPC caller sees.
//!
//! Handlers return [`ApiError`]; `From<ApiError> for Status` is the only place
//! that chooses codes. Database errors become ALREADY_EXISTS (unique
//! violation), UNAVAILABLE (the database is unreachable: retry) or INTERNAL;
//! INTERNAL is logged with the trace id and never carries SQL or error text.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; every bad field is named.
    #[error("invalid argument: {0}")]
    InvalidArgument(Violations),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is well-formed but the current state refuses it.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after: Option<Duration>,
    },
    /// A position (such as a stream cursor) outside the range the service
    /// still holds; another position may well work.
    #[error("{0}")]
    OutOfRange(String),
    /// A dependency is down; the caller should retry.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(Violations::default().add(field, description))
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    /// Gives a NOT_FOUND (such as a foreign key naming a missing parent) a
    /// message that says what is missing; other errors pass through.
    pub fn or_missing(self, message: impl FnOnce() -> String) -> Self {
        match self {
            Self::NotFound(_) => Self::NotFound(message()),
            other => other,
        }
    }

    /// Gives an ALREADY_EXISTS a message that says what conflicts.
    pub fn or_conflict(self, message: impl FnOnce() -> String) -> Self {
        match self {
            Self::AlreadyExists(_) => Self::AlreadyExists(message()),
            other => other,
        }
    }
}

impl From<FieldViolation> for ApiError {
    fn from(violation: FieldViolation) -> Self {
        Self::InvalidArgument(Violations(vec![violation]))
    }
}

/// The fields of a request that are wrong, each with why.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    #[must_use]
    pub fn add(mut self, field: &str, description: impl Into<String>) -> Self {
        self.push(field, description);
        self
    }

    pub fn push(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records the violation of a check that failed, if it failed.
    pub fn check<T>(&mut self, result: Result<T, FieldViolation>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(violation) => {
                self.0.push(violation);
                None
            }
        }
    }

    /// Takes in the violations of a validation step that failed, if it failed.
    pub fn merge<T>(&mut self, result: Result<T, Violations>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(other) => {
                self.0.extend(other.0);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was wrong, else INVALID_ARGUMENT naming every field.
    pub fn into_result(self) -> ApiResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self))
        }
    }
}

impl From<Violations> for ApiError {
    fn from(violations: Violations) -> Self {
        Self::InvalidArgument(violations)
    }
}

impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(violations) => Status::with_error_details(
                Code::InvalidArgument,
                violations.to_string(),
                ErrorDetails::with_bad_request(violations.0),
            ),
            ApiError::NotFound(message) => Status::not_found(message),
            ApiError::AlreadyExists(message) => Status::already_exists(message),
            ApiError::FailedPrecondition(message) => Status::failed_precondition(message),
            ApiError::ResourceExhausted {
                message,
                retry_after,
            } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(retry_after),
            ),
            ApiError::OutOfRange(message) => Status::out_of_range(message),
            ApiError::Unavailable(message) => Status::with_error_details(
                Code::Unavailable,
                message,
                ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            ),
            ApiError::Internal(error) => {
                let trace_id = crate::telemetry::current_trace_id();
                tracing::error!(error = ?error, %trace_id, "internal error");
                Status::internal(format!("internal error (trace id {trace_id})"))
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                let key = db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| pg.detail())
                    .and_then(key_columns)
                    .unwrap_or_else(|| "key".to_owned());
                ApiError::AlreadyExists(format!("another record already has this {key}"))
            }
            // A row names a parent that does not exist (or was just deleted).
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => {
                let key = db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| pg.detail())
                    .and_then(key_columns)
                    .unwrap_or_else(|| "reference".to_owned());
                ApiError::NotFound(format!("no record matches this {key}"))
            }
            // Postgres refuses U+0000 in text and jsonb: the caller's input, not our fault.
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("22021" | "22P05")) =>
            {
                ApiError::invalid(
                    "request",
                    "text must not contain the NUL character (U+0000)",
                )
            }
            sqlx::Error::Database(db) if db.code().as_deref().is_some_and(is_transient) => {
                tracing::warn!(error = %error, "transient database error");
                ApiError::Unavailable("the database is busy or restarting; retry".into())
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(error = %error, "database unavailable");
                ApiError::Unavailable("the database is unavailable; retry later".into())
            }
            _ => ApiError::Internal(error.into()),
        }
    }
}

/// SQLSTATEs after which the same call may well succeed: connection loss,
/// server shutdown or start-up, exhausted resources, and serialization
/// failures or deadlocks.
fn is_transient(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

/// `Key (workspace_id, name)=(…) already exists.` -> `workspace_id, name`: the
/// columns only, never the values.
fn key_columns(detail: &str) -> Option<String> {
    let rest = detail.strip_prefix("Key (")?;
    let end = rest.find(")=")?;
    Some(rest[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_violation_detail_names_columns_without_values() {
        assert_eq!(
            key_columns("Key (phone)=(+573001234567) already exists.").as_deref(),
            Some("phone")
        );
        assert_eq!(
            key_columns("Key (workspace_id, name)=(a, b) already exists.").as_deref(),
            Some("workspace_id, name")
        );
        assert_eq!(key_columns("something else"), None);
    }

    #[test]
    fn retryable_sqlstates_are_told_from_the_rest() {
        // Connection loss, shutdown/start-up, too many connections, serialization, deadlock.
        for code in [
            "08006", "08001", "57P01", "57P03", "53300", "40001", "40P01",
        ] {
            assert!(is_transient(code), "{code}");
        }
        // Unique and foreign-key violations, syntax errors, permission denied.
        for code in ["23505", "23503", "42601", "42501", "22021"] {
            assert!(!is_transient(code), "{code}");
        }
    }

    #[test]
    fn or_missing_and_or_conflict_reword_only_their_own_code() {
        let missing = ApiError::NotFound("no record matches this reference".into())
            .or_missing(|| "no user with id 7".into())
            .or_conflict(|| unreachable!("not a conflict"));
        assert!(matches!(&missing, ApiError::NotFound(m) if m == "no user with id 7"));
        let taken = ApiError::AlreadyExists("phone".into())
            .or_missing(|| unreachable!("not a missing parent"))
            .or_conflict(|| "that phone is taken".into());
        assert!(matches!(&taken, ApiError::AlreadyExists(m) if m == "that phone is taken"));
        let other = ApiError::Unavailable("retry".into())
            .or_missing(|| unreachable!())
            .or_conflict(|| unreachable!());
        assert!(matches!(&other, ApiError::Unavailable(m) if m == "retry"));
    }

    #[test]
    fn out_of_range_keeps_its_code_and_message() {
        let status: Status = ApiError::OutOfRange("cursor too old".into()).into();
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(status.message(), "cursor too old");
    }

    #[test]
    fn invalid_argument_carries_bad_request_details() {
        let status: Status = ApiError::InvalidArgument(
            Violations::default()
                .add("user.phone", "must be E.164")
                .add("user.timezone", "unknown"),
        )
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad_request = status.get_details_bad_request().expect("details");
        let fields: Vec<_> = bad_request
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["user.phone", "user.timezone"]);
    }
}

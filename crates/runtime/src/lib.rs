//! What every mesh service stands on, so that each service's `main.rs` stays a
//! few lines: configuration ([`config`]), logs and traces ([`telemetry`]), the
//! gRPC server with health, reflection, auth and graceful drain ([`server`]),
//! the one error-to-Status mapping ([`error`]), the database pool and
//! migrations ([`db`]), and the API conventions shared by every RPC
//! ([`convert`], [`pagination`], [`idempotency`]).

pub mod auth;
pub mod client;
pub mod config;
pub mod convert;
pub mod db;
pub mod error;
pub mod field_mask;
pub mod idempotency;
pub mod pagination;
pub mod purge;
pub mod server;
pub mod setup;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validate;
pub mod wire;

pub use error::{ApiError, ApiResult, Violations};
pub use tonic_types::FieldViolation;

//! The webhook gateway: it will receive the providers' webhooks over HTTP
//! (`POST /webhooks/whatsapp`, `POST /webhooks/telegram`), verify them, and
//! turn each delivery into gRPC calls on the users and conversations services.
//!
//! What is here now is the transport-free core those routes will stand on:
//!
//! - [`signature`]: the authenticity checks (WhatsApp's `X-Hub-Signature-256`
//!   HMAC over the raw body, Telegram's secret-token header), both constant-time;
//! - [`whatsapp`] and [`telegram`]: payload parsers that turn a raw body into
//!   normalized values, or a [`PayloadError`] the route answers with 400;
//! - [`check_size`] / [`MAX_WHATSAPP_BODY`]: the 3 MB cap (413).
//!
//! The intended order in a route is: size check, signature check on the raw
//! bytes, then parse. Nothing here panics on any input; the property tests in
//! `tests/fuzz.rs` feed arbitrary bytes and arbitrary JSON to hold that line.

mod de;
mod error;
pub mod signature;
pub mod telegram;
pub mod whatsapp;

pub use error::{MAX_WHATSAPP_BODY, PayloadError, TooLarge, check_size};
pub use signature::SignatureError;

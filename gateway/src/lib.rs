//! The webhook gateway: receives the providers' webhooks over HTTP, verifies
//! them, and turns each delivery into gRPC calls on the users, conversations
//! and billing services. It owns no data: a delivery is answered 200 only
//! once everything in it is stored (or dead-lettered as something that can
//! never be stored); any other failure is a 5xx the provider retries, and the
//! services' idempotency makes the retry harmless.
//!
//! - [`routes`]: `GET/POST /webhooks/whatsapp`, `POST /webhooks/telegram`,
//!   `POST /webhooks/lemonsqueezy`, `/healthz`, `/readyz`, `/metrics`;
//! - [`signature`]: the authenticity checks (WhatsApp's `X-Hub-Signature-256`
//!   and Lemon Squeezy's `X-Signature`, HMACs over the raw body; Telegram's
//!   secret-token header), constant-time;
//! - [`whatsapp`] and [`telegram`]: payload parsers from raw bytes to
//!   normalized values, or a [`PayloadError`] answered with 400;
//!   [`lemonsqueezy`] checks only an event's envelope (billing reads the rest);
//! - `inbound`: from a parsed delivery to calls on the mesh, each message
//!   counted against the sender's inbound-message quota first;
//! - `mesh`: those calls, with deadlines and the trace context.
//!
//! The order in a route is: size, signature on the raw bytes, parse, hand on.
//! No parser panics on any input (`tests/fuzz.rs`).

mod answer;
mod app;
pub mod config;
mod de;
mod error;
mod inbound;
pub mod lemonsqueezy;
mod mesh;
mod metrics;
pub mod routes;
pub mod signature;
pub mod telegram;
pub mod whatsapp;

pub use app::{Application, build};
pub use config::Config;
pub use error::{MAX_LEMONSQUEEZY_BODY, MAX_WHATSAPP_BODY, PayloadError};
pub use signature::SignatureError;

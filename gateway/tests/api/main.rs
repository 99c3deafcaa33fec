//! End-to-end tests of the gateway: the real users and conversations
//! services over real Postgres (a fresh database per test), the gateway in
//! front of them, provider-shaped webhooks signed as the providers sign them,
//! and every result read back through the services' gRPC APIs.

mod failures;
mod fake_whatsapp;
mod faults;
mod harness;
mod ops;
mod payloads;
mod readme;
mod telegram;
mod whatsapp;
mod whatsapp_statuses;

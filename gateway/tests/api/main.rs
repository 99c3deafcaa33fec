//! End-to-end tests of the gateway: the real users, conversations and
//! billing services over real Postgres (a fresh database per test), the
//! gateway in front of them, provider-shaped webhooks signed as the providers
//! sign them, and every result read back through the services' gRPC APIs.

mod failures;
mod fake_whatsapp;
mod faults;
mod harness;
mod lemonsqueezy;
mod ops;
mod payloads;
mod quota;
mod readme;
mod telegram;
mod whatsapp;
mod whatsapp_statuses;

//! Integration tests of mesh.conversations.v1.ConversationsService: a real
//! gRPC channel to the service on port 0, over real Postgres, a fresh database
//! per test; the providers are local fake servers speaking their wire format.

mod conversations;
mod delivery;
mod events;
mod executions;
mod flows;
mod harness;
mod messages;
mod platform;
mod purge;
mod records;
mod send;
mod webhook_failures;
mod windows;

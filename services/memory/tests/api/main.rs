//! The memory service over a real gRPC channel and a real Postgres.

mod context;
mod documents;
mod embed;
mod extractions;
mod harness;
mod memories;
mod platform;
mod purge;
mod search;

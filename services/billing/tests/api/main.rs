//! The billing service over a real gRPC channel and a real Postgres, with
//! the real users service behind it.

mod harness;
mod platform;
mod purge;
mod quotas;
mod rate_limits;
mod subscriptions;
mod usage;

//! The scheduler service over a real gRPC channel and a real Postgres, with
//! the real users and conversations services and fake providers behind them.

mod calendar;
mod checkins;
mod dead_letters;
mod dispatch;
mod harness;
mod notifications;
mod platform;
mod purge;
mod recurrence;
mod reminders;
mod replicas;

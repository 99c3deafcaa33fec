//! The dispatcher: claims due reminders and check-ins and sends them.
//!
//! Every replica runs one. It is safe to run many, and to kill any, with no
//! state outside the database:
//! - An item is claimed (claim.rs) with `FOR UPDATE SKIP LOCKED` and a lease
//!   (`lease_owner`, `lease_expire_time`): two replicas never hold the same
//!   item, and one that dies loses it when the lease expires.
//! - It is sent (send.rs) with its `send_token` as SendMessage's request_id,
//!   so the attempt after a crash gets the first send's answer from
//!   conversations instead of sending a second message.
//! - Its outcome (outcome.rs) is written only while the lease is still ours
//!   and the state machine allows it: a replica that lost the item, or an
//!   item cancelled meanwhile, changes nothing.
//!
//! The loop claims only as many items as it has free send slots, so a
//! claimed item never waits in memory while its lease runs out. Between
//! looks it sleeps until the earliest of the poll interval, the next item's
//! due time, or a NOTIFY on [`WAKE_CHANNEL`] (listen.rs).

mod claim;
mod listen;
pub mod metrics;
mod outcome;
mod quiet;
mod send;
mod skip;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tokio::{sync::Notify, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::State;

/// The Postgres channel that wakes every replica's dispatcher: written by any
/// change that makes an item due (sooner), so it is sent without waiting for
/// the next poll.
pub const WAKE_CHANNEL: &str = "scheduler_due";

/// SQL true unless a dispatcher holds the row under a live lease. User
/// changes (cancel, reschedule, snooze, new content, skip) wait for it: the
/// row's SendMessage may be at the provider, and a change then would be
/// overtaken by the message going out anyway. They answer UNAVAILABLE
/// ([`being_sent`]): the lease ends within seconds.
pub const NOT_BEING_SENT: &str = "(lease_expire_time IS NULL OR lease_expire_time <= now())";

/// The answer to a change of an item a dispatcher is sending right now.
pub fn being_sent(what: &str, id: Uuid) -> mesh_runtime::ApiError {
    mesh_runtime::ApiError::Unavailable(format!(
        "{what} {id} is being sent right now; try again in a few seconds"
    ))
}

/// Wakes the dispatchers when the surrounding transaction commits.
pub async fn wake(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// The two kinds of dispatchable items: same columns for claiming and
/// outcomes, different tables, texts and state machines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Kind {
    #[default]
    Reminder,
    CheckIn,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Self::Reminder => "reminders",
            Self::CheckIn => "check_ins",
        }
    }

    /// The metrics' and logs' name.
    fn label(self) -> &'static str {
        match self {
            Self::Reminder => "reminder",
            Self::CheckIn => "check_in",
        }
    }

    /// The dead letter's `operation`.
    fn operation(self) -> &'static str {
        match self {
            Self::Reminder => "send_reminder",
            Self::CheckIn => "send_check_in",
        }
    }

    /// The statuses the item may move to `to` from. A check-in leaves
    /// pending only once, to sent, failed or skipped.
    fn allowed_from(self, to: &str) -> &'static [&'static str] {
        match self {
            Self::Reminder => crate::status::allowed_from(to),
            Self::CheckIn => &[crate::status::PENDING],
        }
    }
}

/// Runs until `shutdown`, then lets the sends in flight finish.
pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    let me = Uuid::new_v4();
    let config = state.config.dispatcher.clone();
    tracing::info!(replica = %me, ?config, "dispatcher started");
    let wake = Arc::new(Notify::new());
    let listening = shutdown.child_token();
    tokio::spawn(listen::listen(
        state.pool.clone(),
        wake.clone(),
        listening.clone(),
    ));
    let people = Arc::new(quiet::PeopleCache::default());
    let mut sends: JoinSet<Option<DateTime<Utc>>> = JoinSet::new();
    let mut error_pause = config.poll_interval;
    let mut skipper = skip::Skipper::default();
    'looking: while !shutdown.is_cancelled() {
        if sends.len() >= config.concurrency {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = sends.join_next() => {}
            }
            while sends.try_join_next().is_some() {}
            continue;
        }
        skipper.maybe_run(&state).await;
        let room = (config.concurrency - sends.len()).min(config.batch_size.max(1) as usize);
        let mut next_look = Instant::now() + config.poll_interval;
        match claim::claim(&state.pool, me, config.lease, room).await {
            Ok(items) => {
                error_pause = config.poll_interval;
                let more = items.len() >= room;
                for item in items {
                    let span = tracing::info_span!(
                        "dispatch",
                        kind = item.kind.label(),
                        id = %item.id,
                        scheduled = %item.scheduled_time,
                        user = %item.user_id,
                        trace_id = tracing::field::Empty,
                    );
                    mesh_runtime::telemetry::record_trace_id(&span);
                    let job = send::Job {
                        state: state.clone(),
                        people: people.clone(),
                        me,
                    };
                    sends.spawn(job.process(item).instrument(span));
                }
                if more {
                    // More may be due: look again as soon as a slot is free.
                    continue;
                }
                match claim::next_due(&state.pool, config.poll_interval).await {
                    Ok(Some(due)) => next_look = next_look.min(instant(due)),
                    Ok(None) => {}
                    Err(error) => tracing::debug!(%error, "cannot read the next due time"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?error_pause, "cannot claim due items");
                next_look = Instant::now() + error_pause;
                error_pause = (error_pause * 2).min(Duration::from_secs(30));
            }
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break 'looking,
                () = wake.notified() => break,
                () = tokio::time::sleep_until(next_look) => break,
                Some(joined) = sends.join_next(), if !sends.is_empty() => {
                    // A retry or deferral may be due before the next look.
                    if let Ok(Some(due)) = joined {
                        next_look = next_look.min(instant(due));
                    }
                }
            }
        }
    }
    listening.cancel();
    tracing::info!(replica = %me, in_flight = sends.len(), "dispatcher stopping");
    while sends.join_next().await.is_some() {}
    tracing::info!(replica = %me, "dispatcher stopped");
}

/// `time` on the monotonic clock (now when it has passed).
fn instant(time: DateTime<Utc>) -> Instant {
    let ahead = (time - Utc::now()).to_std().unwrap_or_default();
    Instant::now() + ahead
}

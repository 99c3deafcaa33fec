//! Check-ins still without content past their grace period are skipped with
//! reason "no_content": a check-in is sent only once it has content.
//!
//! Kept here until `checkins::skip_without_content` exists; then this calls it.

use std::time::Instant;

use crate::State;

/// Runs the skip at most once per poll interval (the loop may turn far more
/// often than that when many items are due).
#[derive(Default)]
pub(super) struct Skipper {
    last: Option<Instant>,
}

impl Skipper {
    pub async fn maybe_run(&mut self, state: &State) {
        let interval = state.config.dispatcher.poll_interval;
        if self.last.is_some_and(|last| last.elapsed() < interval) {
            return;
        }
        self.last = Some(Instant::now());
        match skip_without_content(state).await {
            Ok(0) => {}
            Ok(skipped) => tracing::info!(skipped, "check-ins without content skipped"),
            Err(error) => tracing::warn!(%error, "cannot skip check-ins without content"),
        }
    }
}

/// Uses the check_ins_waiting index (pending, content IS NULL).
async fn skip_without_content(state: &State) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE check_ins SET status = 'skipped', status_reason = 'no_content',
                lease_owner = NULL, lease_expire_time = NULL
         WHERE status = 'pending' AND content IS NULL
           AND scheduled_time < now() - make_interval(secs => $1)",
    )
    .bind(state.config.checkin_content_grace.as_secs_f64())
    .execute(&state.pool)
    .await?
    .rows_affected())
}

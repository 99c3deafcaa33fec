//! Check-ins still without content past their grace period are skipped with
//! reason "no_content": a check-in is sent only once it has content.

use std::time::Instant;

use crate::{State, checkins};

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
        let grace = state.config.checkin_content_grace;
        match checkins::skip_without_content(&state.pool, grace).await {
            Ok(0) => {}
            Ok(skipped) => tracing::info!(skipped, "check-ins without content skipped"),
            Err(error) => tracing::warn!(%error, "cannot skip check-ins without content"),
        }
    }
}

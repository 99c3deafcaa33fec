//! Retention: deleting the events older than the configured window.

use std::time::Duration;

use sqlx::PgPool;

/// Deletes the events older than `retention`: always a prefix of the stream
/// (up to the oldest event still within it), so what remains has no holes a
/// reader could fall into. The mark is raised before the rows go, so a
/// reader behind it gets OUT_OF_RANGE, never a silent gap. Safe on several
/// replicas at once.
pub async fn prune(pool: &PgPool, retention: Duration) -> anyhow::Result<u64> {
    // create_time is the writer's transaction start, not its commit, so it is
    // not quite in seq order: stop before the first event within retention.
    let through: Option<i64> = sqlx::query_scalar(
        "SELECT COALESCE(
             (SELECT seq FROM events
              WHERE create_time >= now() - make_interval(secs => $1)
              ORDER BY seq LIMIT 1) - 1,
             (SELECT max(seq) FROM events))",
    )
    .bind(retention.as_secs_f64())
    .fetch_one(pool)
    .await?;
    let Some(through) = through else {
        return Ok(0);
    };
    // Waits for a writer holding the head (only until its commit).
    sqlx::query("UPDATE event_head SET pruned_through = $1 WHERE pruned_through < $1")
        .bind(through)
        .execute(pool)
        .await?;
    // In slices, so no statement holds many row locks or runs long.
    const SLICE: i64 = 10_000;
    let mut deleted = 0;
    loop {
        let slice = sqlx::query(
            "DELETE FROM events WHERE seq IN (
                 SELECT seq FROM events WHERE seq <= $1 ORDER BY seq LIMIT $2)",
        )
        .bind(through)
        .bind(SLICE)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += slice;
        if slice < SLICE as u64 {
            return Ok(deleted);
        }
    }
}

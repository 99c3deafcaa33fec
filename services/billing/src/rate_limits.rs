//! Rate limits for anything (a user, a phone number, an IP address) on any
//! endpoint, shared by every replica through Postgres. A call is judged over
//! a sliding window: the calls of the current fixed window plus the previous
//! window's calls weighted by how much of it the sliding window still
//! covers (the "sliding window counter"). It never lets a burst of twice
//! the limit through at a window boundary, as a fixed window would.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use mesh_proto::mesh::billing::v1 as pb;
use mesh_runtime::{ApiError, ApiResult, Violations, convert::timestamp, wire::required_text};

use crate::State;

const MAX_WINDOW: Duration = Duration::from_secs(86_400);

/// The database's time, and one of the key's recent windows (its start and
/// hits), if it has any.
type ClockAndWindow = (DateTime<Utc>, Option<DateTime<Utc>>, Option<i64>);

/// The fixed window `now` is in, and how far into it `now` is (0 to 1).
fn window_of(now: DateTime<Utc>, window: Duration) -> (DateTime<Utc>, f64) {
    let width = window.as_millis() as i64;
    let millis = now.timestamp_millis();
    let start = millis - millis.rem_euclid(width);
    let elapsed = (millis - start) as f64 / width as f64;
    (
        DateTime::from_timestamp_millis(start).expect("in range"),
        elapsed,
    )
}

/// How long until one more call fits, with `previous` and `current` calls
/// counted, `elapsed` of the way through the current window.
fn retry_after(
    limit: i64,
    previous: i64,
    current: i64,
    elapsed: f64,
    window: Duration,
) -> Duration {
    let width = window.as_secs_f64();
    let room = (limit - 1 - current) as f64;
    let wait = if room >= 0.0 && previous > 0 {
        // The previous window's weight must fall to `room`.
        let needed = 1.0 - room / previous as f64;
        (needed - elapsed).max(0.0) * width
    } else {
        // Only in the next window: this one's calls, weighted, must fall
        // to `limit - 1`.
        let needed = if current > 0 {
            (1.0 - (limit - 1) as f64 / current as f64).max(0.0)
        } else {
            0.0
        };
        (1.0 - elapsed + needed) * width
    };
    Duration::from_millis((wait * 1000.0).ceil() as u64).max(Duration::from_millis(1))
}

pub async fn check(
    state: &State,
    request: pb::CheckRateLimitRequest,
) -> ApiResult<pb::CheckRateLimitResponse> {
    let mut violations = Violations::default();
    violations.check(required_text("key", &request.key, 256));
    violations.check(required_text("endpoint", &request.endpoint, 128));
    if request.limit < 1 {
        violations.push("limit", "must be at least 1");
    }
    let window = request
        .window
        .as_ref()
        .and_then(|w| Duration::try_from(*w).ok())
        .filter(|w| {
            (Duration::from_secs(1)..=MAX_WINDOW).contains(w) && w.subsec_nanos() % 1_000_000 == 0
        });
    if window.is_none() {
        violations.push(
            "window",
            "must be whole milliseconds from 1 second to 1 day",
        );
    }
    violations.into_result()?;
    let window = window.expect("checked");
    // The database's clock, not this replica's: every replica must agree
    // on where a window starts. One query reads it with the key's recent
    // windows (a row of NULLs when there are none).
    let rows: Vec<ClockAndWindow> = sqlx::query_as(
        "SELECT c.now, w.window_start, w.hits
         FROM (SELECT now() AS now) c
         LEFT JOIN rate_limit_windows w
           ON w.key = $1 AND w.endpoint = $2
          AND w.window_start > c.now - make_interval(secs => $3)",
    )
    .bind(&request.key)
    .bind(&request.endpoint)
    .bind(2.0 * window.as_secs_f64())
    .fetch_all(&state.pool)
    .await?;
    let now = rows.first().map_or_else(Utc::now, |(now, _, _)| *now);
    let (start, elapsed) = window_of(now, window);
    let width = TimeDelta::from_std(window).expect("at most a day");
    let counts: Vec<(DateTime<Utc>, i64)> = rows
        .into_iter()
        .filter_map(|(_, start, hits)| Some((start?, hits?)))
        .collect();
    let hits_at = |at| counts.iter().find(|(s, _)| *s == at).map_or(0, |(_, h)| *h);
    let previous = hits_at(start - width);
    // What the previous window still weighs, rounded up: never let through
    // more than the limit.
    let carried = (previous as f64 * (1.0 - elapsed)).ceil() as i64;
    let allowed = request.limit - carried;
    let refuse = |current: i64| ApiError::ResourceExhausted {
        message: format!(
            "rate limit of {} calls per {}s reached for this key on {}",
            request.limit,
            window.as_secs(),
            request.endpoint
        ),
        retry_after: Some(retry_after(
            request.limit,
            previous,
            current,
            elapsed,
            window,
        )),
    };
    if allowed < 1 {
        return Err(refuse(hits_at(start)));
    }
    // The row lock of ON CONFLICT orders concurrent callers; the WHERE sees
    // every earlier caller's hit.
    let counted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO rate_limit_windows (key, endpoint, window_start, hits, expire_time)
         VALUES ($1, $2, $3, 1, $4)
         ON CONFLICT (key, endpoint, window_start)
         DO UPDATE SET hits = rate_limit_windows.hits + 1
         WHERE rate_limit_windows.hits + 1 <= $5
         RETURNING hits",
    )
    .bind(&request.key)
    .bind(&request.endpoint)
    .bind(start)
    .bind(start + width * 2)
    .bind(allowed)
    .fetch_optional(&state.pool)
    .await?;
    match counted {
        Some(hits) => Ok(pb::CheckRateLimitResponse {
            remaining: allowed - hits,
            reset_time: Some(timestamp(start + width)),
        }),
        None => Err(refuse(allowed)),
    }
}

/// Deletes windows nothing reads any more, in batches (housekeeping).
pub async fn delete_expired(pool: sqlx::PgPool) -> anyhow::Result<u64> {
    let mut deleted = 0;
    loop {
        let batch = sqlx::query(
            "DELETE FROM rate_limit_windows WHERE ctid IN (
                 SELECT ctid FROM rate_limit_windows WHERE expire_time < now()
                 LIMIT 5000 FOR UPDATE SKIP LOCKED)",
        )
        .execute(&pool)
        .await?
        .rows_affected();
        deleted += batch;
        if batch < 5000 {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn windows_are_aligned() {
        let now = DateTime::from_timestamp(90, 0).unwrap();
        let (start, elapsed) = window_of(now, MINUTE);
        assert_eq!(start.timestamp(), 60);
        assert!((elapsed - 0.5).abs() < 1e-9);
    }

    fn about(got: Duration, want: Duration) -> bool {
        got.abs_diff(want) <= Duration::from_millis(2)
    }

    #[test]
    fn retry_waits_for_the_previous_window_to_fade_or_the_next_one() {
        // 10 per minute, 10 calls last minute, 2 now, a quarter in: the
        // previous window weighs 7.5 (8); one more fits when it weighs 7,
        // 30% in: 3 s from now.
        assert!(about(
            retry_after(10, 10, 2, 0.25, MINUTE),
            Duration::from_secs(3)
        ));
        // 10 this minute, half way: wait for the next window, then until
        // this one weighs 9 (10% into the next): 30 s + 6 s.
        assert!(about(
            retry_after(10, 0, 10, 0.5, MINUTE),
            Duration::from_secs(36)
        ));
        // 5 last minute, 5 now, 10% in: the previous must weigh 4 (20% in).
        assert!(about(
            retry_after(10, 5, 5, 0.1, MINUTE),
            Duration::from_secs(6)
        ));
    }
}

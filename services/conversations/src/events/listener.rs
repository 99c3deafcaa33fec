//! The replica's one LISTEN connection, which wakes the WatchEvents tasks.

use std::time::Duration;

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::NOTIFY_CHANNEL;

/// Backoff bounds of the listener's reconnection.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Keeps `notified` at the highest sequence number committed, for as long as
/// the service runs: LISTEN on one connection, reconnecting with backoff when
/// it drops. After each (re)connection it reads the head, so watchers are
/// woken for whatever was committed while nobody listened.
pub(super) async fn listen(
    pool: PgPool,
    notified: watch::Sender<i64>,
    shutdown: CancellationToken,
) {
    let advance = |seq: i64| {
        notified.send_if_modified(|seen| {
            let newer = seq > *seen;
            if newer {
                *seen = seq;
            }
            newer
        });
    };
    let resync = || async {
        match sqlx::query_scalar::<_, i64>("SELECT last_seq FROM event_head")
            .fetch_one(&pool)
            .await
        {
            Ok(seq) => advance(seq),
            // Before the migrations ran, or the database went away again:
            // the readers' fallback poll covers it.
            Err(error) => tracing::debug!(%error, "cannot read the event head"),
        }
    };
    let mut delay = RECONNECT_MIN;
    loop {
        let connect = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = connect => connected,
        };
        match connected {
            Ok(mut listener) => {
                delay = RECONNECT_MIN;
                resync().await;
                loop {
                    let received = tokio::select! {
                        () = shutdown.cancelled() => return,
                        received = listener.try_recv() => received,
                    };
                    match received {
                        Ok(Some(notification)) => match notification.payload().parse() {
                            Ok(seq) => advance(seq),
                            Err(_) => resync().await,
                        },
                        // The connection dropped and the listener has
                        // reconnected: what was notified meanwhile is lost.
                        Ok(None) => {
                            tracing::info!("event listener reconnected");
                            resync().await;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "event listener lost its connection");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "event listener cannot connect")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

//! The replica's LISTEN on [`WAKE_CHANNEL`]: each notification wakes the
//! dispatcher loop. A `Notify` keeps at most one wake-up pending, so a burst
//! of notifications costs one look. While the listener cannot connect the
//! loop still polls, so a lost notification only delays a send.

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::WAKE_CHANNEL;

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

pub(super) async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut delay = RECONNECT_MIN;
    loop {
        let connect = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(WAKE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = connect => connected,
        };
        match connected {
            Ok(mut listener) => {
                delay = RECONNECT_MIN;
                // Whatever was notified while nobody listened.
                wake.notify_one();
                loop {
                    let received = tokio::select! {
                        () = shutdown.cancelled() => return,
                        received = listener.try_recv() => received,
                    };
                    match received {
                        Ok(Some(_)) => wake.notify_one(),
                        // Reconnected after a drop: notifications may be lost.
                        Ok(None) => wake.notify_one(),
                        Err(error) => {
                            tracing::warn!(%error, "dispatcher listener lost its connection; polling");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "dispatcher listener cannot connect; polling")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

//! Start-up and shutdown: bind, serve, and on stop drain the requests in
//! flight within the grace period (a delivery cut half-way is answered by
//! nobody, so the provider retries it: nothing is lost either way).

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
use axum::{Router, serve::ListenerExt};
use tokio::net::TcpListener;

use crate::{config::Config, routes};

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    drain_grace: Duration,
}

/// Binds the address and builds the routes. The downstream services are
/// connected lazily: the gateway starts (and answers /healthz) without them.
pub async fn build(config: &Config) -> anyhow::Result<Application> {
    config.warn_missing_secrets();
    let state = routes::AppState::new(config)?;
    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {} (GATEWAY_ADDR)", config.addr))?;
    let local_addr = listener.local_addr()?;
    Ok(Application {
        listener,
        local_addr,
        router: routes::router(state),
        drain_grace: config.drain_grace,
    })
}

impl Application {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until SIGTERM or SIGINT, then drains.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(mesh_runtime::server::shutdown_signal())
            .await
    }

    /// Serves until `stop` completes, then drains for at most the grace period.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            listener,
            local_addr,
            router,
            drain_grace,
        } = self;
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = listener.tap_io(|stream| {
            // Webhook answers are small writes: do not hold them for an ACK.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        let mut server = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = draining_rx.await;
                })
                .into_future(),
        );
        tracing::info!(service = "gateway", %local_addr, "listening");
        tokio::select! {
            () = stop => tracing::info!("stop requested: draining"),
            result = &mut server => return result?.context("HTTP server failed"),
        }
        let _ = draining_tx.send(());
        match tokio::time::timeout(drain_grace, &mut server).await {
            Ok(result) => {
                result?.context("HTTP server failed while draining")?;
                tracing::info!(service = "gateway", "stopped");
            }
            Err(_) => {
                tracing::warn!(grace = ?drain_grace, "drain deadline passed; cutting remaining requests");
                server.abort();
            }
        }
        Ok(())
    }
}

//! The one server bootstrap every service shares.
//!
//! [`Application::build`] binds the port, opens a lazy pool and assembles the
//! gRPC server: the service's own routes behind bearer-token auth, gRPC health
//! and server reflection (v1 and v1alpha) in the open, a span per request that
//! continues the caller's trace. [`Application::run_until_stopped`] serves,
//! migrates the database in the background (health says NOT_SERVING until the
//! database answers and migrations are applied, and again whenever the
//! database stops answering), and on SIGTERM/SIGINT drains in-flight requests
//! for at most the configured grace period.

use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};

use anyhow::Context as _;
use sqlx::{PgPool, migrate::Migrator};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    service::Routes,
    transport::{Identity, Server, ServerTlsConfig},
};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{auth::BearerAuthLayer, config::ServiceConfig, db, idempotency, telemetry};

/// What distinguishes one service from another for the shared bootstrap.
pub struct ServiceSpec {
    /// Short name: the database schema, and the name in logs and traces.
    pub name: &'static str,
    /// Fully qualified gRPC service names, reported by health.
    pub grpc_services: &'static [&'static str],
    /// The encoded FileDescriptorSet of the service's protos, for reflection.
    pub file_descriptor_set: &'static [u8],
    pub migrator: &'static Migrator,
}

/// How often the housekeeping jobs run (expired idempotency keys are always
/// one: every service's schema has the table; see mesh_runtime::idempotency).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// What a service's routes are built from.
pub struct ServiceContext {
    pub pool: PgPool,
    /// Cancelled when the server starts draining: long-lived work (streams,
    /// background loops) ends then instead of holding the drain to its deadline.
    pub shutdown: CancellationToken,
}

type HousekeepingFuture = Pin<Box<dyn Future<Output = anyhow::Result<u64>> + Send>>;

type WorkerFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A long-running background task (a dispatcher, an ingestion loop).
struct Worker {
    what: &'static str,
    start: Box<dyn FnOnce(CancellationToken) -> WorkerFuture + Send>,
}

/// A periodic clean-up: returns how many rows it removed.
struct Housekeeping {
    what: &'static str,
    run: Box<dyn Fn(PgPool) -> HousekeepingFuture + Send + Sync>,
}

/// How often the database is checked once the service is up.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    routes: Routes,
    tls: Option<ServerTlsConfig>,
    auth: BearerAuthLayer,
    health: HealthReporter,
    pool: PgPool,
    spec: &'static ServiceSpec,
    drain_grace: Duration,
    shutdown: CancellationToken,
    housekeeping: Vec<Housekeeping>,
    workers: Vec<Worker>,
}

impl Application {
    /// Binds `config.addr` (port 0 picks a free port) and prepares the server;
    /// `routes` receives the pool and the shutdown token and returns the
    /// service's gRPC routes.
    pub async fn build(
        config: &ServiceConfig,
        spec: &'static ServiceSpec,
        routes: impl FnOnce(ServiceContext) -> Routes,
    ) -> anyhow::Result<Self> {
        let pool = db::lazy_pool(
            &config.database_url,
            spec.name,
            config.db_max_connections,
            spec.name,
        )?;
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in health_names(spec) {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        // Whether the process answers at all, whatever its database says:
        // what a liveness probe asks (restarting a service because Postgres
        // is away helps nothing; it reconnects by itself).
        health
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let reflection = |builder: tonic_reflection::server::Builder<'static>| {
            builder
                .register_encoded_file_descriptor_set(spec.file_descriptor_set)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc error details, so grpcurl can print BadRequest and RetryInfo.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 =
            reflection(tonic_reflection::server::Builder::configure()).build_v1()?;
        let reflection_v1alpha =
            reflection(tonic_reflection::server::Builder::configure()).build_v1alpha()?;
        let shutdown = CancellationToken::new();
        let routes = routes(ServiceContext {
            pool: pool.clone(),
            shutdown: shutdown.clone(),
        })
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

        let tls = match &config.tls {
            None => None,
            Some(files) => {
                let cert = std::fs::read(&files.cert_path)
                    .with_context(|| format!("MESH_TLS_CERT_FILE={}", files.cert_path))?;
                let key = std::fs::read(&files.key_path)
                    .with_context(|| format!("MESH_TLS_KEY_FILE={}", files.key_path))?;
                Some(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            }
        };
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.addr))?;
        let local_addr = listener.local_addr()?;
        let app = Self {
            listener,
            local_addr,
            routes,
            tls,
            auth: BearerAuthLayer::new(&config.auth_token),
            health,
            pool,
            spec,
            drain_grace: config.drain_grace,
            shutdown,
            housekeeping: Vec::new(),
            workers: Vec::new(),
        };
        Ok(
            app.with_housekeeping("expired idempotency keys", |pool| async move {
                Ok(idempotency::prune(&pool).await?)
            }),
        )
    }

    /// Adds a clean-up the service runs hourly once it is serving (on every
    /// replica: the job must be safe to run concurrently). `what` names what
    /// it deletes, for the log.
    #[must_use]
    pub fn with_housekeeping<F, Fut>(mut self, what: &'static str, job: F) -> Self
    where
        F: Fn(PgPool) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
    {
        self.housekeeping.push(Housekeeping {
            what,
            run: Box::new(move |pool| Box::pin(job(pool))),
        });
        self
    }

    /// Adds a background task that starts once the service first reports
    /// SERVING (the migrations are applied) and runs until the token it is
    /// given is cancelled, when the service starts draining; the drain waits
    /// for it within the grace period. Like housekeeping, it runs on every
    /// replica, so its claims on shared work must be safe under concurrency.
    #[must_use]
    pub fn with_worker<F, Fut>(mut self, what: &'static str, worker: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.workers.push(Worker {
            what,
            start: Box::new(move |shutdown| Box::pin(worker(shutdown))),
        });
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until SIGTERM or SIGINT, then drains.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` completes, then drains. Returns an error when the
    /// server fails or the migrations cannot be applied.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            listener,
            local_addr,
            routes,
            tls,
            auth,
            health,
            pool,
            spec,
            drain_grace,
            shutdown,
            housekeeping,
            workers,
        } = self;
        let mut builder = Server::builder().trace_fn(telemetry::request_span);
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = builder
            .layer(auth)
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                // tonic sets TCP_NODELAY only on connections it accepts itself.
                // Without it, a small write that follows another (a streamed
                // message after a response on the same connection) waits for
                // the peer's delayed ACK: tens of milliseconds.
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |accepted| {
                        if let Ok(stream) = &accepted
                            && let Err(error) = stream.set_nodelay(true)
                        {
                            tracing::debug!(%error, "cannot set TCP_NODELAY");
                        }
                        accepted
                    },
                ),
                async {
                    let _ = drain_rx.await;
                },
            );
        let mut server = tokio::spawn(serve);
        // Cancelled (fired) when the service first reports SERVING.
        let serving = CancellationToken::new();
        let mut readiness = tokio::spawn(keep_health(
            pool.clone(),
            health.clone(),
            spec,
            serving.clone(),
        ));
        let chores = tokio::spawn(run_housekeeping(
            pool.clone(),
            serving.clone(),
            housekeeping,
        ));
        let workers = start_workers(workers, serving, shutdown.clone());
        tracing::info!(service = spec.name, %local_addr, "listening");

        tokio::select! {
            () = stop => tracing::info!("stop requested: draining"),
            result = &mut readiness => {
                server.abort();
                chores.abort();
                shutdown.cancel();
                return Err(result.map_err(anyhow::Error::from).and_then(|r| r).err()
                    .unwrap_or_else(|| anyhow::anyhow!("health task ended")));
            }
            result = &mut server => {
                readiness.abort();
                chores.abort();
                shutdown.cancel();
                return result?.context("gRPC server failed");
            }
        }

        readiness.abort();
        chores.abort();
        shutdown.cancel();
        for name in health_names(spec) {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        let _ = drain_tx.send(());
        let deadline = tokio::time::Instant::now() + drain_grace;
        let drained = tokio::time::timeout_at(deadline, &mut server).await;
        for (what, mut worker) in workers {
            if tokio::time::timeout_at(deadline, &mut worker)
                .await
                .is_err()
            {
                tracing::warn!(what, "background task still running at the drain deadline");
                worker.abort();
            }
        }
        match drained {
            Ok(result) => {
                result?.context("gRPC server failed while draining")?;
                pool.close().await;
                tracing::info!(service = spec.name, "stopped");
            }
            Err(_) => {
                // Requests still running hold pool connections, so closing the
                // pool would wait for them: leave them to end with the process.
                tracing::warn!(grace = ?drain_grace, "drain deadline passed; cutting remaining requests");
                server.abort();
            }
        }
        Ok(())
    }
}

/// The health name that is SERVING for as long as the process runs.
pub const LIVENESS: &str = "liveness";

fn health_names(spec: &ServiceSpec) -> impl Iterator<Item = &'static str> {
    // "" is the whole server: what `grpcurl ... grpc.health.v1.Health/Check` asks about.
    std::iter::once("").chain(spec.grpc_services.iter().copied())
}

/// Starts each worker once `serving` fires; returns their handles by name.
fn start_workers(
    workers: Vec<Worker>,
    serving: CancellationToken,
    shutdown: CancellationToken,
) -> Vec<(&'static str, tokio::task::JoinHandle<()>)> {
    workers
        .into_iter()
        .map(|worker| {
            let serving = serving.clone();
            let shutdown = shutdown.clone();
            let handle = tokio::spawn(async move {
                tokio::select! {
                    () = serving.cancelled() => {}
                    () = shutdown.cancelled() => return,
                }
                tracing::info!(what = worker.what, "background task started");
                (worker.start)(shutdown).await;
            });
            (worker.what, handle)
        })
        .collect()
}

/// Waits for the database, migrates it, reports SERVING (and fires
/// `first_serving` the first time), then follows the database's health.
/// Returns only when the migrations fail.
async fn keep_health(
    pool: PgPool,
    health: HealthReporter,
    spec: &'static ServiceSpec,
    first_serving: CancellationToken,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(100);
    while !db::ping(&pool).await {
        tracing::warn!(retry_in = ?delay, "database not answering yet");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    db::migrate(&pool, spec.migrator).await?;
    let mut serving = false;
    loop {
        let up = db::ping(&pool).await;
        if up != serving {
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::info!(?status, "health changed");
            for name in health_names(spec) {
                health.set_service_status(name, status).await;
            }
            serving = up;
            if serving {
                first_serving.cancel();
            }
        }
        tokio::time::sleep(if serving {
            HEALTH_INTERVAL
        } else {
            Duration::from_millis(500)
        })
        .await;
    }
}

/// Runs the housekeeping jobs every [`HOUSEKEEPING_INTERVAL`], starting one
/// health interval after the service first reports SERVING. Kept apart from
/// [`keep_health`] so that a long job never holds up the health checks.
async fn run_housekeeping(
    pool: PgPool,
    first_serving: CancellationToken,
    housekeeping: Vec<Housekeeping>,
) {
    first_serving.cancelled().await;
    let mut interval = tokio::time::interval_at(
        tokio::time::Instant::now() + HEALTH_INTERVAL,
        HOUSEKEEPING_INTERVAL,
    );
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        for job in &housekeeping {
            match (job.run)(pool.clone()).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, what = job.what, "housekeeping"),
                Err(error) => tracing::warn!(%error, what = job.what, "housekeeping failed"),
            }
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// Implements a generated gRPC service trait whose every RPC unwraps the
/// request, runs a module function with `&self.<field>` and the message, and
/// maps its `ApiError` once:
///
/// ```ignore
/// mesh_runtime::grpc_handlers! { pb, UsersService for UsersApi, pool;
///     get_user(GetUserRequest) -> GetUserResponse => users::get;
/// }
/// ```
#[macro_export]
macro_rules! grpc_handlers {
    ($pb:ident, $service:ident for $api:ident, $field:ident;
     $($method:ident($request:ident) -> $response:ident => $handler:path;)*) => {
        #[tonic::async_trait]
        impl $service for $api {
            $(
                async fn $method(
                    &self,
                    request: tonic::Request<$pb::$request>,
                ) -> ::std::result::Result<tonic::Response<$pb::$response>, tonic::Status> {
                    Ok(tonic::Response::new($handler(&self.$field, request.into_inner()).await?))
                }
            )*
        }
    };
}

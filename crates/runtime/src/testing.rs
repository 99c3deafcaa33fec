//! Integration-test support: a fresh database per test on the server that
//! `DATABASE_URL` names (a superuser URL; `cargo xtask test` starts a
//! throwaway Postgres and sets it), set up exactly as in production by
//! `migrations/bootstrap.sql`; and an OTLP collector in the test process
//! ([`otlp`]) for tests of what is traced.

pub mod otlp;

use std::str::FromStr;

use sqlx::{
    AssertSqlSafe, Connection, Executor, PgConnection,
    postgres::{PgConnectOptions, PgConnection as Conn},
};

/// One database, created for one test.
pub struct TestDatabase {
    admin: PgConnectOptions,
    pub name: String,
}

impl TestDatabase {
    /// Creates `test_<uuid>` and bootstraps its roles, schemas and extensions.
    pub async fn create() -> Self {
        let url = std::env::var("DATABASE_URL").expect(
            "DATABASE_URL must name a Postgres superuser URL: run the tests with `cargo xtask test`",
        );
        let admin = PgConnectOptions::from_str(&url).expect("DATABASE_URL is a valid URL");
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut server = Conn::connect_with(&admin)
            .await
            .expect("connect to DATABASE_URL");
        server
            // The name is ours (test_ and a UUID), not input: safe to splice.
            .execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .await
            .expect("create the test database");
        let mut database = Conn::connect_with(&admin.clone().database(&name))
            .await
            .expect("connect to the test database");
        crate::setup::bootstrap(&mut database)
            .await
            .expect("migrations/bootstrap.sql applies");
        if let Ok(password) = std::env::var("MESH_DB_PASSWORD") {
            crate::setup::set_role_passwords(&mut database, &password)
                .await
                .expect("set the role passwords");
        }
        Self { admin, name }
    }

    /// How a test runs `service` over this database: port 0, the test token,
    /// a short drain.
    pub fn service_config(&self, service: &str) -> crate::config::ServiceConfig {
        crate::config::ServiceConfig {
            addr: "127.0.0.1:0".parse().expect("valid"),
            database_url: self.service_url(service),
            db_max_connections: 10,
            auth_token: TOKEN.into(),
            drain_grace: std::time::Duration::from_secs(5),
            tls: None,
            tls_ca: None,
        }
    }

    /// The URL a service connects with: its own role, this database.
    pub fn service_url(&self, service: &str) -> String {
        let host = self.admin.get_host();
        let port = self.admin.get_port();
        match std::env::var("MESH_DB_PASSWORD") {
            Ok(password) => format!(
                "postgres://mesh_{service}:{password}@{host}:{port}/{}",
                self.name
            ),
            Err(_) => format!("postgres://mesh_{service}@{host}:{port}/{}", self.name),
        }
    }

    /// A superuser connection to this database, for checking what was stored.
    pub async fn admin_connection(&self) -> PgConnection {
        Conn::connect_with(&self.admin.clone().database(&self.name))
            .await
            .expect("connect to the test database as superuser")
    }
}

impl Drop for TestDatabase {
    /// Drops the database, so that tests against a long-lived server
    /// (DATABASE_URL) leave nothing behind. FORCE ends the connections the
    /// test's service may still hold. `cargo xtask test` on its own throwaway
    /// server skips this (MESH_TEST_SERVER_IS_THROWAWAY): the cluster goes
    /// whole, and each drop forces a checkpoint.
    fn drop(&mut self) {
        if std::env::var_os("MESH_TEST_SERVER_IS_THROWAWAY").is_some() {
            return;
        }
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop cannot await; a thread with its own runtime works whether or
        // not the test's runtime is still running.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let mut server = Conn::connect_with(&admin).await.ok()?;
                server
                    .execute(AssertSqlSafe(format!(
                        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                    )))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

impl TestDatabase {
    /// Rows in `<schema>.<table>` right now, counted as the superuser.
    pub async fn count(&self, schema: &str, table: &str) -> i64 {
        let mut conn = self.admin_connection().await;
        // Schema and table come from the test's own literals, not input.
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.{table}"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap()
    }
}

/// The bearer token test services are configured with.
pub const TOKEN: &str = "test-token";

/// The interceptor type test clients carry.
pub type Auth = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// Adds `authorization: Bearer TOKEN` to every request.
pub fn bearer(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}")
            .parse()
            .expect("a valid header value"),
    );
    Ok(request)
}

/// A plaintext channel to a test service at `addr`.
pub async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("connect to the service")
}

/// Polls gRPC health until the whole server reports SERVING.
pub async fn wait_serving(channel: tonic::transport::Channel) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(channel);
    for _ in 0..300 {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status());
        if matches!(status, Ok(ServingStatus::Serving)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the service never reported SERVING");
}

/// A service running in the background for a test.
pub struct Served {
    pub addr: std::net::SocketAddr,
    /// Stops it (with its drain) when sent or dropped.
    pub stop: tokio::sync::oneshot::Sender<()>,
    /// Its exit, for tests that wait for a clean stop.
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Served {
    /// Stops it and waits for its drain to end: what a restart in a test
    /// does before it starts the service again on the same address.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// Runs `app` in the background until stopped, once it reports SERVING.
pub async fn serve_task(app: crate::server::Application) -> Served {
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    wait_serving(channel(addr).await).await;
    Served { addr, stop, task }
}

/// Like [`serve_task`], for tests that never wait for the exit: where it
/// listens, and the sender that stops it.
pub async fn serve(
    app: crate::server::Application,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let Served { addr, stop, .. } = serve_task(app).await;
    (addr, stop)
}

/// The field paths a BadRequest status names (asserting it is
/// INVALID_ARGUMENT with BadRequest details).
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT carries BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// The grpcurl binary the tests use as an independent client: the one
/// `cargo xtask test` installs and names in `MESH_GRPCURL`.
pub fn grpcurl_path() -> std::path::PathBuf {
    std::env::var_os("MESH_GRPCURL")
        .expect("MESH_GRPCURL must name a grpcurl binary: run the tests with `cargo xtask test`")
        .into()
}

/// Runs `command` and returns what it printed, asserting it succeeded (its
/// stderr is the failure message).
pub fn run_ok(command: &mut std::process::Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", command.get_program()));
    assert!(
        output.status.success(),
        "{:?} failed: {}",
        command.get_program(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The lines of the first ```sh block after `heading` in `readme`, trimmed,
/// with line continuations joined, blank lines left out.
pub fn readme_sh_lines(readme: &str, heading: &str) -> Vec<String> {
    let section = readme
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("README has the {heading:?} section"));
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("the {heading:?} section has a sh block"));
    block
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs a README `line` with bash as a newcomer would, with the grpcurl that
/// `cargo xtask` installed first on PATH and no stdin.
pub fn sh_with_grpcurl(line: &str) -> std::process::Output {
    let grpcurl = grpcurl_path();
    let path = format!(
        "{}:{}",
        grpcurl.parent().expect("grpcurl has a directory").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::process::Command::new("bash")
        .args(["-c", line])
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bash runs")
}

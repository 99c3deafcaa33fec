//! The mesh's processes, started the one way `up` and `chaos` share: which
//! binaries there are, how they are built (debug or release), the
//! environment each is given (its address, its database role, the URLs of
//! the others), how each tells it is ready, and how they are stopped.

use std::{
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use mesh_runtime::{config::optional, setup::CONTEXTS};

use crate::{
    health::{self, wait_ready},
    postgres,
    process::{die_with_parent, pump_lines, signal_group},
    tools::Paths,
};

/// Where each process of the mesh listens unless its variable says otherwise
/// (DESIGN.md, "Runtime"). All are given to every service, so any service can
/// find any other.
pub const ADDRESSES: &[(&str, &str)] = &[
    ("USERS_ADDR", "127.0.0.1:50051"),
    ("CONVERSATIONS_ADDR", "127.0.0.1:50052"),
    ("MEMORY_ADDR", "127.0.0.1:50053"),
    ("SCHEDULER_ADDR", "127.0.0.1:50054"),
    ("BILLING_ADDR", "127.0.0.1:50055"),
    ("GATEWAY_ADDR", "127.0.0.1:8080"),
];

/// The bearer token the services accept unless MESH_AUTH_TOKEN is set.
pub const DEV_TOKEN: &str = "dev-token";
/// The gateway's webhook secrets, each unless already set: with them the
/// webhooks are accepted (without, the gateway refuses them).
pub const DEV_SECRETS: &[(&str, &str)] = &[
    ("WHATSAPP_VERIFY_TOKEN", "dev-verify-token"),
    ("WHATSAPP_APP_SECRET", "dev-app-secret"),
    ("TELEGRAM_SECRET_TOKEN", "dev-telegram-secret"),
    ("LEMONSQUEEZY_SIGNING_SECRET", "dev-lemonsqueezy-secret"),
];

/// All an isolated child keeps of xtask's own environment: finding
/// programs, a home, temporary files and the locale. Anything else the
/// caller exports (EMBEDDER, GATEWAY_*, SCHEDULER_*, LOG_FORMAT, OTEL_*...)
/// would change what chaos measures.
const ISOLATED_PASSTHROUGH: &[&str] = &["PATH", "HOME", "LANG", "TMPDIR"];

/// How long a stopped process gets to drain before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A process of the mesh.
pub struct ServiceSpec {
    /// Short name, for log prefixes and log file names.
    pub name: &'static str,
    pub package: &'static str,
    /// Binary name under target/<profile>.
    pub bin: &'static str,
    /// The variable holding its listen address (one of [`ADDRESSES`]).
    pub addr_env: &'static str,
    /// How it is known to be ready.
    pub probe: Probe,
}

/// How a process tells it is ready.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Probe {
    /// gRPC health (`grpc.health.v1.Health/Check`) says SERVING.
    Grpc,
    /// `GET <path>` over HTTP answers 200.
    Http(&'static str),
}

/// Every process, in start order: each after those it calls.
pub const SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        name: "users",
        package: "mesh-users",
        bin: "users",
        addr_env: "USERS_ADDR",
        probe: Probe::Grpc,
    },
    // After users: it asks the users service for recipients (CONVERSATIONS_USERS_URL).
    ServiceSpec {
        name: "conversations",
        package: "mesh-conversations",
        bin: "conversations",
        addr_env: "CONVERSATIONS_ADDR",
        probe: Probe::Grpc,
    },
    // Embeds with the local model unless EMBEDDER says otherwise (MEMORY_MODEL_DIR).
    ServiceSpec {
        name: "memory",
        package: "mesh-memory",
        bin: "memory",
        addr_env: "MEMORY_ADDR",
        probe: Probe::Grpc,
    },
    // After users and conversations: its dispatcher asks users for time
    // zones and quiet hours and sends through conversations.
    ServiceSpec {
        name: "scheduler",
        package: "mesh-scheduler",
        bin: "scheduler",
        addr_env: "SCHEDULER_ADDR",
        probe: Probe::Grpc,
    },
    // After users: it asks users for time zones and owned workspaces.
    ServiceSpec {
        name: "billing",
        package: "mesh-billing",
        bin: "billing",
        addr_env: "BILLING_ADDR",
        probe: Probe::Grpc,
    },
    // Last: it hands webhooks on to users, conversations and billing, and its
    // /readyz is 200 only once users and conversations report SERVING.
    ServiceSpec {
        name: "gateway",
        package: "mesh-gateway",
        bin: "gateway",
        addr_env: "GATEWAY_ADDR",
        probe: Probe::Http("/readyz"),
    },
];

/// The spec named `name`.
pub fn spec(name: &str) -> Result<&'static ServiceSpec> {
    SERVICES
        .iter()
        .find(|spec| spec.name == name)
        .with_context(|| format!("no service named {name:?}"))
}

/// Which cargo profile the binaries come from: `up` and the benches run
/// release builds; chaos runs the debug ones `cargo test` already built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    /// The directory under target/ its binaries land in.
    fn dir(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }
}

/// Builds the named services in one cargo run, so shared dependencies build once.
pub fn build(paths: &Paths, names: &[&str], profile: Profile) -> Result<()> {
    let specs = names
        .iter()
        .map(|name| spec(name))
        .collect::<Result<Vec<_>>>()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.arg("build").current_dir(&paths.repo);
    if profile == Profile::Release {
        command.arg("--release");
    }
    for spec in &specs {
        command.args(["-p", spec.package]);
    }
    println!("xtask: building {} ({})", names.join(", "), profile.dir());
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build ({}) failed ({status})", profile.dir());
    }
    Ok(())
}

/// target/`profile`/`bin` as a child of xtask: without xtask's DATABASE_URL
/// (the superuser's is xtask's business: each service gets its own role),
/// without stdin, and sent SIGTERM should xtask die.
pub fn service_command(paths: &Paths, profile: Profile, bin: &str) -> Command {
    let mut command = Command::new(paths.target.join(profile.dir()).join(bin));
    command.env_remove("DATABASE_URL").stdin(Stdio::null());
    die_with_parent(&mut command);
    command
}

/// The variables the services are started with.
pub struct ServiceEnv {
    vars: Vec<(String, String)>,
    /// True for `up`: a variable set in xtask's own environment wins over
    /// every default and is left out of `vars` (the children inherit it).
    inherit: bool,
}

impl ServiceEnv {
    /// Dev defaults under whatever the caller's environment sets (`up`).
    pub fn inheriting() -> Self {
        Self {
            vars: Vec::new(),
            inherit: true,
        }
    }

    /// `vars` first, then the defaults; the caller's environment does not
    /// count, since every value is set on the children explicitly (chaos:
    /// its own ports, token and secrets, whatever the shell exports).
    pub fn isolated(vars: Vec<(String, String)>) -> Self {
        Self {
            vars,
            inherit: false,
        }
    }

    /// Adds `name=value` unless `name` already has a value.
    fn default(&mut self, name: &str, value: String) {
        if !self.set_by_caller(name) && !self.vars.iter().any(|(n, _)| n == name) {
            self.vars.push((name.to_owned(), value));
        }
    }

    /// The value a service sees for `name`.
    pub fn get(&self, name: &str) -> String {
        self.inherit
            .then(|| optional(name))
            .flatten()
            .or_else(|| {
                self.vars
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_default()
    }

    /// The variables to set on each child.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// Sets the variables on `command`: on top of xtask's environment when
    /// inheriting, else on an empty one but for [`ISOLATED_PASSTHROUGH`].
    fn apply(&self, command: &mut Command) {
        if !self.inherit {
            command.env_clear();
            for name in ISOLATED_PASSTHROUGH {
                if let Some(value) = std::env::var_os(name) {
                    command.env(name, value);
                }
            }
        }
        command.envs(self.vars.iter().map(|(k, v)| (k, v)));
    }

    /// Whether `name` is set by the caller rather than defaulted here.
    pub fn set_by_caller(&self, name: &str) -> bool {
        self.inherit && optional(name).is_some()
    }

    /// `http://<dialable address of the process listening on addr_env>`.
    fn url_of(&self, addr_env: &str) -> String {
        format!("http://{}", dial_addr(&self.get(addr_env)))
    }

    /// Completes the environment: a dev default for every variable still
    /// unset, the cross-service URLs from the listen addresses, and a
    /// database URL per service logging in as its own role to `database` on
    /// the server of `admin_url`. MEMORY_MODEL_DIR, when given, is always set:
    /// it is made absolute, and the services run in the repository.
    pub fn complete(
        mut self,
        admin_url: &str,
        database: &str,
        model_dir: Option<&Path>,
    ) -> Result<Self> {
        self.default("MESH_AUTH_TOKEN", DEV_TOKEN.to_owned());
        for (name, value) in DEV_SECRETS {
            self.default(name, (*value).to_owned());
        }
        self.default("RUST_LOG", "info".to_owned());
        for (name, addr) in ADDRESSES {
            self.default(name, (*addr).to_owned());
        }
        // Unset provider credentials (WHATSAPP_ACCESS_TOKEN, TELEGRAM_BOT_TOKEN,
        // ...) stay unset: sends on that channel are refused rather than
        // reaching a real provider from a dev machine.
        let users = self.url_of("USERS_ADDR");
        let conversations = self.url_of("CONVERSATIONS_ADDR");
        let memory = self.url_of("MEMORY_ADDR");
        let scheduler = self.url_of("SCHEDULER_ADDR");
        let billing = self.url_of("BILLING_ADDR");
        for (name, url) in [
            ("CONVERSATIONS_USERS_URL", &users),
            ("SCHEDULER_USERS_URL", &users),
            ("SCHEDULER_CONVERSATIONS_URL", &conversations),
            ("BILLING_USERS_URL", &users),
            ("GATEWAY_USERS_URL", &users),
            ("GATEWAY_CONVERSATIONS_URL", &conversations),
            ("GATEWAY_BILLING_URL", &billing),
            // The users service drives a user's erasure through every other.
            ("USERS_CONVERSATIONS_URL", &conversations),
            ("USERS_MEMORY_URL", &memory),
            ("USERS_SCHEDULER_URL", &scheduler),
            ("USERS_BILLING_URL", &billing),
        ] {
            self.default(name, url.clone());
        }
        if let Some(dir) = model_dir {
            self.vars.retain(|(name, _)| name != "MEMORY_MODEL_DIR");
            self.vars.push((
                "MEMORY_MODEL_DIR".to_owned(),
                dir.to_string_lossy().into_owned(),
            ));
        }
        let password = optional("MESH_DB_PASSWORD");
        // The contexts that own a schema: role `mesh_<context>`, variable
        // `<CONTEXT>_DATABASE_URL` (the roles come from migrations/bootstrap.sql).
        for context in CONTEXTS {
            let url = postgres::with_login(
                admin_url,
                &format!("mesh_{context}"),
                password.as_deref(),
                database,
            )?;
            self.default(&format!("{}_DATABASE_URL", context.to_uppercase()), url);
        }
        Ok(self)
    }
}

/// Where a started process's output goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// To the terminal, each line prefixed with the process's name, and to
    /// its log file (`up`).
    Terminal,
    /// To its log file only (chaos: a CI log is no place for six services' info lines).
    LogOnly,
}

/// Starts the mesh's processes, each with the same environment.
pub struct Launcher {
    pub paths: Paths,
    pub profile: Profile,
    pub env: ServiceEnv,
    pub echo: Echo,
    /// Prefix of the log file names under `<tools>/logs`: `up` writes
    /// `users.log`, chaos `chaos-users.log`.
    pub log_prefix: &'static str,
}

/// One running process of the mesh.
pub struct Process {
    pub spec: &'static ServiceSpec,
    /// Its name in logs: the spec's, or a replica's own (`scheduler-b`).
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
    /// Its listen address as dialled (`127.0.0.1:50051`).
    pub addr: String,
    /// Variables on top of the launcher's, kept for a restart.
    extra: Vec<(String, String)>,
    /// Threads copying its output to the terminal and the log file.
    pumps: Vec<std::thread::JoinHandle<()>>,
}

impl Launcher {
    /// Starts `spec` (a fresh log file).
    pub fn start(&self, spec: &'static ServiceSpec) -> Result<Process> {
        self.spawn(spec, spec.name, Vec::new(), false)
    }

    /// Starts another instance of `spec` named `name` (its own log), with
    /// `extra` on top of the launcher's environment (later entries win).
    pub fn start_replica(
        &self,
        spec: &'static ServiceSpec,
        name: &'static str,
        extra: Vec<(String, String)>,
    ) -> Result<Process> {
        self.spawn(spec, name, extra, false)
    }

    /// Starts `process` again after it exited (or was killed), with the same
    /// environment, appending to its log.
    pub fn restart(&self, process: &mut Process) -> Result<()> {
        if process.alive() {
            bail!(
                "{} is still running: it cannot be started again",
                process.name
            );
        }
        process.reap();
        let extra = std::mem::take(&mut process.extra);
        *process = self.spawn(process.spec, process.name, extra, true)?;
        Ok(())
    }

    fn spawn(
        &self,
        spec: &'static ServiceSpec,
        name: &'static str,
        extra: Vec<(String, String)>,
        append: bool,
    ) -> Result<Process> {
        use std::os::unix::process::CommandExt;
        let logs = self.paths.tools.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{}{name}.log", self.log_prefix));
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let addr = extra
            .iter()
            .find(|(n, _)| n == spec.addr_env)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| self.env.get(spec.addr_env));
        let mut command = service_command(&self.paths, self.profile, spec.bin);
        self.env.apply(&mut command);
        command
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.paths.repo)
            // Its own group: Ctrl-C reaches xtask alone, which then stops the
            // services in order and waits for them to drain.
            .process_group(0);
        let pumped = self.echo == Echo::Terminal;
        if pumped {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else {
            command.stdout(file.try_clone()?).stderr(file.try_clone()?);
        }
        if !append || pumped {
            println!("xtask: starting {name} on {addr}");
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        let mut pumps = Vec::new();
        if pumped {
            let stdout = child.stdout.take().expect("piped");
            let stderr = child.stderr.take().expect("piped");
            pumps.push(pump_lines(stdout, name, file.try_clone()?));
            pumps.push(pump_lines(stderr, name, file));
        }
        Ok(Process {
            spec,
            name,
            child,
            log,
            addr: dial_addr(&addr),
            extra,
            pumps,
        })
    }
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls its gRPC health until it reports SERVING (the gateway: its
    /// readiness URL until it answers 200), failing if it exits meanwhile.
    pub async fn wait_healthy(&mut self) -> Result<()> {
        let Self {
            spec,
            name,
            child,
            log,
            addr,
            ..
        } = self;
        match spec.probe {
            Probe::Grpc => {
                wait_ready(child, name, log, "report SERVING", || {
                    health::serving_channel(addr)
                })
                .await?;
            }
            Probe::Http(path) => {
                let url = format!("http://{addr}{path}");
                let client = reqwest::Client::new();
                wait_ready(
                    child,
                    name,
                    log,
                    &format!("answer 200 on {url}"),
                    || async { health::http_ok(&client, &url).await.then_some(()) },
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, as a crash or an OOM kill would end it: no drain.
    pub fn kill(&mut self) {
        if self.alive() {
            signal_group(self.pid(), libc::SIGKILL);
        }
        self.reap();
    }

    /// Waits for the exited process and the threads copying its output.
    fn reap(&mut self) {
        let _ = self.child.wait();
        for pump in self.pumps.drain(..) {
            let _ = pump.join();
        }
    }
}

/// A process is never left running after its handle is gone: an error or
/// Ctrl-C that unwinds past its owner kills it (a no-op once it was reaped).
impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops the gateway first, so the webhooks it is still handing on can finish
/// against live services, then every gRPC service at once: SIGTERM (each
/// drains in-flight requests), then SIGKILL to whatever is still up after the
/// grace period.
pub fn stop_all(processes: &mut Vec<Process>) {
    let (front, back): (Vec<&mut Process>, Vec<&mut Process>) = processes
        .iter_mut()
        .partition(|process| process.spec.probe != Probe::Grpc);
    stop_together(front);
    stop_together(back);
    for mut process in processes.drain(..) {
        process.reap();
    }
}

fn stop_together(processes: Vec<&mut Process>) {
    let running: Vec<&mut Process> = processes
        .into_iter()
        .filter_map(|process| process.alive().then_some(process))
        .collect();
    for process in &running {
        println!("xtask: stopping {}", process.name);
        signal_group(process.pid(), libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    for process in running {
        while process.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if process.alive() {
            println!(
                "xtask: {} still running after {}s: killing it",
                process.name,
                STOP_GRACE.as_secs()
            );
            // Only while it is unreaped: its pid (the group id) is still ours.
            signal_group(process.pid(), libc::SIGKILL);
        }
        let _ = process.child.wait();
    }
}

/// A listen address made dialable: a wildcard host means "this machine".
pub fn dial_addr(addr: &str) -> String {
    if let Some(port) = addr.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = addr.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        addr.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_dialled_on_loopback() {
        assert_eq!(dial_addr("0.0.0.0:50051"), "127.0.0.1:50051");
        assert_eq!(dial_addr("[::]:8080"), "[::1]:8080");
        assert_eq!(dial_addr("10.0.0.7:50052"), "10.0.0.7:50052");
    }

    #[test]
    fn every_service_listens_on_a_known_address() {
        for spec in SERVICES {
            assert!(
                ADDRESSES.iter().any(|(name, _)| *name == spec.addr_env),
                "{}",
                spec.name
            );
        }
        // The gateway waits for the services it calls: it starts last.
        assert_eq!(SERVICES.last().map(|s| s.name), Some("gateway"));
    }

    #[test]
    fn an_isolated_environment_derives_every_url_from_the_addresses() {
        let env = ServiceEnv::isolated(vec![
            ("USERS_ADDR".into(), "127.0.0.1:61001".into()),
            ("MEMORY_ADDR".into(), "0.0.0.0:61003".into()),
            ("MESH_AUTH_TOKEN".into(), "chaos".into()),
        ])
        .complete("postgres://postgres@127.0.0.1:5/postgres", "mesh", None)
        .unwrap();
        assert_eq!(env.get("MESH_AUTH_TOKEN"), "chaos");
        assert_eq!(env.get("GATEWAY_USERS_URL"), "http://127.0.0.1:61001");
        assert_eq!(env.get("USERS_MEMORY_URL"), "http://127.0.0.1:61003");
        // Unset addresses take the documented defaults.
        assert_eq!(env.get("USERS_BILLING_URL"), "http://127.0.0.1:50055");
        assert_eq!(
            env.get("USERS_DATABASE_URL"),
            "postgres://mesh_users@127.0.0.1:5/mesh"
        );
    }
}

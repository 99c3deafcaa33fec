//! `cargo xtask up`: builds the services and the gateway, starts a local
//! Postgres (unless DATABASE_URL names one), starts every service and waits for
//! its gRPC health, then the gateway and waits for its /readyz, prints how to
//! reach it all (with a signed sample WhatsApp webhook to post), and stops it
//! all on Ctrl-C or SIGTERM.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    health::{self, wait_ready},
    postgres::{self, Install, Postgres, Source},
    process::{Signals, die_with_parent, pump_lines, shell_quote, signal_group, tail},
    tools::{self, Paths},
    whatsapp,
};
use mesh_runtime::{config::optional, setup::CONTEXTS};

/// Where each process of the mesh listens unless its variable says otherwise
/// (DESIGN.md, "Runtime"). All are given to every service, so any service can
/// find any other.
const ADDRESSES: &[(&str, &str)] = &[
    ("USERS_ADDR", "127.0.0.1:50051"),
    ("CONVERSATIONS_ADDR", "127.0.0.1:50052"),
    ("MEMORY_ADDR", "127.0.0.1:50053"),
    ("SCHEDULER_ADDR", "127.0.0.1:50054"),
    ("BILLING_ADDR", "127.0.0.1:50055"),
    ("GATEWAY_ADDR", "127.0.0.1:8080"),
];

/// The one database all five schemas live in locally.
const DATABASE: &str = "mesh";

const DEV_TOKEN: &str = "dev-token";
/// The gateway's webhook secrets under `up`, each unless already set: with
/// them the webhooks are accepted (without, the gateway refuses them).
const DEV_SECRETS: &[(&str, &str)] = &[
    ("WHATSAPP_VERIFY_TOKEN", "dev-verify-token"),
    ("WHATSAPP_APP_SECRET", "dev-app-secret"),
    ("TELEGRAM_SECRET_TOKEN", "dev-telegram-secret"),
    ("LEMONSQUEEZY_SIGNING_SECRET", "dev-lemonsqueezy-secret"),
];
/// The sample WhatsApp delivery `up` prints a curl line for: a fixed message
/// id, so posting it again shows the idempotency (`"duplicates":1`). The
/// sender is README's example user.
const SAMPLE_WA_ID: &str = "573001234567";
const SAMPLE_WAMID: &str = "wamid.HBgLNTczMDAxMjM0NTY3FQIAEhggQ0E=";
const DEFAULT_PG_PORT: u16 = 54320;
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A process `up` builds and runs.
struct ServiceSpec {
    /// Short name, for log prefixes and log file names.
    name: &'static str,
    package: &'static str,
    /// Binary name under target/release.
    bin: &'static str,
    /// The variable holding its listen address (one of [`ADDRESSES`]).
    addr_env: &'static str,
    /// How `up` knows it is ready.
    probe: Probe,
    /// RPCs and JSON bodies printed as ready-to-paste grpcurl lines, the same
    /// as in README.md. They must work on every run, and the database is kept
    /// between runs: hence a fixed `request_id`, so a repeated create returns
    /// the first answer.
    examples: &'static [(&'static str, &'static str)],
}

/// How a process tells it is ready.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// gRPC health (`grpc.health.v1.Health/Check`) says SERVING.
    Grpc,
    /// `GET <path>` over HTTP answers 200.
    Http(&'static str),
}

/// What `up` runs, in start order: one line per service with a binary.
const SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        name: "users",
        package: "mesh-users",
        bin: "users",
        addr_env: "USERS_ADDR",
        probe: Probe::Grpc,
        examples: &[
            (
                "mesh.users.v1.UsersService/CreateUser",
                r#"{"user":{"phone":"+573001234567","display_name":"Ana"},"request_id":"readme-example"}"#,
            ),
            (
                "mesh.users.v1.UsersService/GetUserByPhone",
                r#"{"phone":"573001234567"}"#,
            ),
        ],
    },
    // After users: it asks the users service for recipients (CONVERSATIONS_USERS_URL).
    ServiceSpec {
        name: "conversations",
        package: "mesh-conversations",
        bin: "conversations",
        addr_env: "CONVERSATIONS_ADDR",
        probe: Probe::Grpc,
        examples: &[
            // User ids are not checked here: README's fixed one gives the
            // same active conversation on every run.
            (
                "mesh.conversations.v1.ConversationsService/GetOrCreateActiveConversation",
                r#"{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f","channel":"CHANNEL_WHATSAPP"}"#,
            ),
            (
                "mesh.conversations.v1.ConversationsService/GetMessagingWindow",
                r#"{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f"}"#,
            ),
        ],
    },
    // Embeds with the local model unless EMBEDDER says otherwise
    // (MEMORY_MODEL_DIR: see `local_model_dir`). README's fixed user id, and
    // a fixed request id: the same memory on every run.
    ServiceSpec {
        name: "memory",
        package: "mesh-memory",
        bin: "memory",
        addr_env: "MEMORY_ADDR",
        probe: Probe::Grpc,
        examples: &[
            (
                "mesh.memory.v1.MemoryService/CreateMemory",
                r#"{"memory":{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f","kind":"MEMORY_KIND_FACT","content":"Is allergic to peanuts","importance":0.9},"request_id":"readme-memory"}"#,
            ),
            (
                "mesh.memory.v1.MemoryService/SearchMemories",
                r#"{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f","query":"food allergy"}"#,
            ),
        ],
    },
    // After users and conversations: its dispatcher asks users for time
    // zones and quiet hours and sends through conversations
    // (SCHEDULER_USERS_URL, SCHEDULER_CONVERSATIONS_URL). README's fixed
    // user id and request id: the same reminder on every run.
    ServiceSpec {
        name: "scheduler",
        package: "mesh-scheduler",
        bin: "scheduler",
        addr_env: "SCHEDULER_ADDR",
        probe: Probe::Grpc,
        examples: &[
            (
                "mesh.scheduler.v1.SchedulerService/CreateReminder",
                r#"{"reminder":{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f","title":"Call the pharmacy","time_zone":"America/Bogota"},"local_time":"2030-01-15T09:00","request_id":"readme-reminder"}"#,
            ),
            (
                "mesh.scheduler.v1.SchedulerService/ListReminders",
                r#"{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f"}"#,
            ),
        ],
    },
    // After users: it asks users for time zones and owned workspaces
    // (BILLING_USERS_URL); README's example user is unknown there, so it is
    // counted in UTC on the free plan. Fixed request ids: the consumption
    // happens once, and a repeat answers the first result.
    ServiceSpec {
        name: "billing",
        package: "mesh-billing",
        bin: "billing",
        addr_env: "BILLING_ADDR",
        probe: Probe::Grpc,
        examples: &[
            (
                "mesh.billing.v1.BillingService/GetEntitlements",
                r#"{"owner":{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f"}}"#,
            ),
            (
                "mesh.billing.v1.BillingService/ConsumeQuota",
                r#"{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f","feature":"FEATURE_INBOUND_MESSAGES","amount":1,"request_id":"readme-quota"}"#,
            ),
            (
                "mesh.billing.v1.BillingService/CheckRateLimit",
                r#"{"key":"+573001234567","endpoint":"readme","limit":60,"window":"60s"}"#,
            ),
        ],
    },
    // Last: it hands webhooks on to users and conversations
    // (GATEWAY_USERS_URL, GATEWAY_CONVERSATIONS_URL) and Lemon Squeezy's to
    // billing (GATEWAY_BILLING_URL), and its /readyz is 200 only once users
    // and conversations report SERVING. Its examples are curl lines
    // (print_gateway), not grpcurl ones.
    ServiceSpec {
        name: "gateway",
        package: "mesh-gateway",
        bin: "gateway",
        addr_env: "GATEWAY_ADDR",
        probe: Probe::Http("/readyz"),
        examples: &[],
    },
];

pub async fn run() -> Result<()> {
    let paths = Paths::discover()?;
    let grpcurl = tools::ensure(&paths, &tools::GRPCURL)?;
    let model_dir = local_model_dir(&paths)?;
    let source = Source::from_env(&paths)?;
    // Before any signal handler: Ctrl-C during a build just ends everything.
    let all: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
    build(&paths, &all)?;

    let mut signals = Signals::new()?;
    let mut mesh = Mesh::default();
    let admin_url = match source {
        Source::External(url) => url,
        Source::Local(binary) => {
            let postgres = start_local_postgres(&paths, &binary)?;
            let url = postgres.url("postgres");
            mesh.postgres = Some(postgres);
            url
        }
    };
    prepare_database(&admin_url).await?;
    let env = service_env(&admin_url, model_dir.as_deref())?;
    tokio::select! {
        started = start_all(&mut mesh, &paths, &env) => started?,
        signal = signals.recv() => {
            println!("xtask: {signal} during start-up: stopping");
            return Ok(());
        }
    }
    let sample = write_sample(&paths)?;
    print_banner(&mesh, &env, &admin_url, &grpcurl, &sample);

    tokio::select! {
        signal = signals.recv() => println!("\nxtask: {signal}: stopping the mesh"),
        died = watch(&mut mesh.services) => return Err(died),
    }
    Ok(())
}

/// Starts the services in table order, each once the previous is healthy.
async fn start_all(mesh: &mut Mesh, paths: &Paths, env: &[(String, String)]) -> Result<()> {
    let logs = paths.tools.join("logs");
    std::fs::create_dir_all(&logs)?;
    for spec in SERVICES {
        mesh.services.push(start(paths, spec, env, &logs)?);
        let service = mesh.services.last_mut().expect("just pushed");
        wait_healthy(service, env).await?;
    }
    Ok(())
}

/// Builds the named services (`up`: all of them) in one cargo run, so shared
/// dependencies build once.
pub(crate) fn build(paths: &Paths, names: &[&str]) -> Result<()> {
    let specs: Vec<&ServiceSpec> = SERVICES
        .iter()
        .filter(|spec| names.contains(&spec.name))
        .collect();
    if specs.len() != names.len() {
        bail!("unknown service among {names:?}");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release"])
        .current_dir(&paths.repo);
    for spec in &specs {
        command.args(["-p", spec.package]);
    }
    println!(
        "xtask: building {} (release)",
        specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
    );
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    Ok(())
}

fn start_local_postgres(paths: &Paths, binary: &Path) -> Result<Postgres> {
    let port = match optional("MESH_PG_PORT") {
        None => DEFAULT_PG_PORT,
        Some(text) => text
            .trim()
            .parse()
            .with_context(|| format!("MESH_PG_PORT={text:?} is not a port number"))?,
    };
    let install = Install::prepare(binary)?;
    let state = install.persistent_state_dir(&paths.tools, &paths.repo);
    println!(
        "xtask: starting Postgres 18 on 127.0.0.1:{port} (data kept in {})",
        state.display()
    );
    Postgres::persistent(install, &state, port)
}

/// Creates the mesh database, gives it its roles and schemas, and sets the
/// roles' password when one is asked for.
async fn prepare_database(admin_url: &str) -> Result<()> {
    if postgres::create_database(admin_url, DATABASE).await? {
        println!("xtask: created database {DATABASE}");
    }
    postgres::bootstrap(admin_url, DATABASE).await?;
    if let Some(password) = optional("MESH_DB_PASSWORD") {
        postgres::set_passwords(admin_url, &password).await?;
    }
    Ok(())
}

/// The directory of the memory service's local model ([`tools::model_dir`]);
/// None when EMBEDDER names another embedder, which needs no model.
fn local_model_dir(paths: &Paths) -> Result<Option<PathBuf>> {
    if optional("EMBEDDER").is_some_and(|embedder| embedder != "local") {
        return Ok(None);
    }
    tools::model_dir(paths).map(Some)
}

/// The variables `up` adds to its own environment for the services: a dev
/// default for each that is unset, and nothing for those already set (but
/// MEMORY_MODEL_DIR, see below).
fn service_env(admin_url: &str, model_dir: Option<&Path>) -> Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    default(&mut env, "MESH_AUTH_TOKEN", DEV_TOKEN.to_owned());
    for (name, value) in DEV_SECRETS {
        default(&mut env, name, (*value).to_owned());
    }
    default(&mut env, "RUST_LOG", "info".to_owned());
    for (name, addr) in ADDRESSES {
        default(&mut env, name, (*addr).to_owned());
    }
    // Unset provider credentials (WHATSAPP_ACCESS_TOKEN, TELEGRAM_BOT_TOKEN,
    // ...) stay unset: sends on that channel are refused rather than reaching
    // a real provider from a dev machine; set them to send for real.
    let users_url = format!("http://{}", dial_addr(&effective(&env, "USERS_ADDR")));
    let conversations_url = format!(
        "http://{}",
        dial_addr(&effective(&env, "CONVERSATIONS_ADDR"))
    );
    default(&mut env, "CONVERSATIONS_USERS_URL", users_url.clone());
    default(&mut env, "SCHEDULER_USERS_URL", users_url.clone());
    default(
        &mut env,
        "SCHEDULER_CONVERSATIONS_URL",
        conversations_url.clone(),
    );
    default(&mut env, "BILLING_USERS_URL", users_url.clone());
    default(&mut env, "GATEWAY_USERS_URL", users_url);
    default(&mut env, "GATEWAY_CONVERSATIONS_URL", conversations_url);
    let billing_url = format!("http://{}", dial_addr(&effective(&env, "BILLING_ADDR")));
    default(&mut env, "GATEWAY_BILLING_URL", billing_url);
    // Even when xtask's own is set: this is it made absolute, and the
    // services run in the repository, not in xtask's directory.
    if let Some(dir) = model_dir {
        env.push((
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
            DATABASE,
        )?;
        default(
            &mut env,
            &format!("{}_DATABASE_URL", context.to_uppercase()),
            url,
        );
    }
    Ok(env)
}

/// Adds `name=value` to `env` unless xtask's own environment sets `name`.
fn default(env: &mut Vec<(String, String)>, name: &str, value: String) {
    if optional(name).is_none() {
        env.push((name.to_owned(), value));
    }
}

/// The value a service sees for `name`: xtask's own, else the default.
fn effective(env: &[(String, String)], name: &str) -> String {
    optional(name)
        .or_else(|| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()))
        .unwrap_or_default()
}

/// Everything `up` started; dropping it stops the services, then Postgres,
/// so an error anywhere (or a crash of a service) leaves nothing behind.
#[derive(Default)]
struct Mesh {
    services: Vec<Service>,
    postgres: Option<Postgres>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        stop_all(&mut self.services);
        if let Some(postgres) = self.postgres.take() {
            println!("xtask: stopping Postgres");
            drop(postgres);
        }
        println!("xtask: everything stopped");
    }
}

/// One running service process.
struct Service {
    spec: &'static ServiceSpec,
    child: Child,
    log: PathBuf,
    /// Threads copying its output to the terminal and the log file.
    pumps: Vec<std::thread::JoinHandle<()>>,
}

/// target/release/`bin` as a child of xtask: without xtask's DATABASE_URL
/// (the superuser's is xtask's business: each service gets its own role),
/// without stdin, and sent SIGTERM should xtask die.
pub(crate) fn service_command(paths: &Paths, bin: &str) -> Command {
    let mut command = Command::new(paths.target.join("release").join(bin));
    command.env_remove("DATABASE_URL").stdin(Stdio::null());
    die_with_parent(&mut command);
    command
}

fn start(
    paths: &Paths,
    spec: &'static ServiceSpec,
    env: &[(String, String)],
    logs: &Path,
) -> Result<Service> {
    use std::os::unix::process::CommandExt;
    let log = logs.join(format!("{}.log", spec.name));
    let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = service_command(paths, spec.bin);
    command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&paths.repo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: Ctrl-C reaches xtask alone, which then stops the
        // services in order and waits for them to drain.
        .process_group(0);
    println!(
        "xtask: starting {} on {}",
        spec.name,
        effective(env, spec.addr_env)
    );
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let pumps = vec![
        pump_lines(stdout, spec.name, file.try_clone()?),
        pump_lines(stderr, spec.name, file),
    ];
    Ok(Service {
        spec,
        child,
        log,
        pumps,
    })
}

/// Polls the service's gRPC health until it reports SERVING (the gateway:
/// its readiness URL until it answers 200).
async fn wait_healthy(service: &mut Service, env: &[(String, String)]) -> Result<()> {
    let addr = dial_addr(&effective(env, service.spec.addr_env));
    let Service {
        spec, child, log, ..
    } = service;
    match spec.probe {
        Probe::Grpc => {
            wait_ready(child, spec.name, log, "report SERVING", || {
                health::serving_channel(&addr)
            })
            .await?;
            println!("xtask: {} is SERVING on {addr}", spec.name);
        }
        Probe::Http(path) => {
            let url = format!("http://{addr}{path}");
            let client = reqwest::Client::new();
            wait_ready(
                child,
                spec.name,
                log,
                &format!("answer 200 on {url}"),
                || async { health::http_ok(&client, &url).await.then_some(()) },
            )
            .await?;
            println!("xtask: {} is ready ({url} answers 200)", spec.name);
        }
    }
    Ok(())
}

/// A listen address made dialable: a wildcard host means "this machine".
fn dial_addr(addr: &str) -> String {
    if let Some(port) = addr.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = addr.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        addr.to_owned()
    }
}

/// Resolves when a running service exits on its own, with what it said last.
async fn watch(services: &mut [Service]) -> anyhow::Error {
    loop {
        for service in services.iter_mut() {
            match service.child.try_wait() {
                Ok(Some(status)) => {
                    return anyhow::anyhow!(
                        "{} exited ({status}); its log ({}) ends with:\n{}",
                        service.spec.name,
                        service.log.display(),
                        tail(&service.log, 30)
                    );
                }
                Ok(None) => {}
                Err(e) => return anyhow::Error::new(e).context("checking on services"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Stops the gateway first, so the webhooks it is still handing on can finish
/// against live services, then every gRPC service at once: SIGTERM (each
/// drains in-flight requests), then SIGKILL to whatever is still up after the
/// grace period.
fn stop_all(services: &mut Vec<Service>) {
    let (front, back): (Vec<&mut Service>, Vec<&mut Service>) = services
        .iter_mut()
        .partition(|service| service.spec.probe != Probe::Grpc);
    stop_together(front);
    stop_together(back);
    for service in services.drain(..) {
        for pump in service.pumps {
            let _ = pump.join();
        }
    }
}

fn stop_together(services: Vec<&mut Service>) {
    let mut running: Vec<&mut Service> = Vec::new();
    for service in services {
        if matches!(service.child.try_wait(), Ok(None)) {
            running.push(service);
        }
    }
    for service in &running {
        println!("xtask: stopping {}", service.spec.name);
        signal_group(service.child.id(), libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    for service in running {
        while matches!(service.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if matches!(service.child.try_wait(), Ok(None)) {
            println!(
                "xtask: {} still running after {}s: killing it",
                service.spec.name,
                STOP_GRACE.as_secs()
            );
            // Only while it is unreaped: its pid (the group id) is still ours.
            signal_group(service.child.id(), libc::SIGKILL);
        }
        let _ = service.child.wait();
    }
}

fn print_banner(
    mesh: &Mesh,
    env: &[(String, String)],
    admin_url: &str,
    grpcurl: &Path,
    sample: &Sample,
) {
    println!("\nxtask: the mesh is up; Ctrl-C stops it all.\n");
    for service in &mesh.services {
        let addr = effective(env, service.spec.addr_env);
        let protocol = match service.spec.probe {
            Probe::Grpc => "grpc",
            Probe::Http(_) => "http",
        };
        println!(
            "  {:<14} {protocol} {addr:<22} log {}",
            service.spec.name,
            service.log.display()
        );
    }
    print_database(mesh, env, admin_url);
    if optional("MEMORY_MODEL_DIR").is_none()
        && let Some((_, dir)) = env.iter().find(|(name, _)| name == "MEMORY_MODEL_DIR")
    {
        println!(
            "  MEMORY_MODEL_DIR={dir} (all-MiniLM-L6-v2, the memory service's local embedder)"
        );
    }
    let token = effective(env, "MESH_AUTH_TOKEN");
    for name in std::iter::once("MESH_AUTH_TOKEN").chain(DEV_SECRETS.iter().map(|(n, _)| *n)) {
        if optional(name).is_none() {
            println!(
                "  {name}={} (the dev default; set {name} to choose another)",
                effective(env, name)
            );
        }
    }
    let grpcurl_dir = grpcurl.parent().unwrap_or(Path::new("."));
    println!("\nTry it (grpcurl is not on PATH; this puts the one xtask installed there):");
    println!(
        "  export PATH={}:$PATH",
        shell_quote(&grpcurl_dir.to_string_lossy())
    );
    for service in &mesh.services {
        if service.spec.probe != Probe::Grpc {
            continue;
        }
        let addr = dial_addr(&effective(env, service.spec.addr_env));
        println!("  grpcurl -plaintext {addr} list");
        println!("  grpcurl -plaintext {addr} grpc.health.v1.Health/Check");
        for (method, body) in service.spec.examples {
            println!(
                "  grpcurl -plaintext -H {} -d {} {addr} {method}",
                shell_quote(&format!("authorization: Bearer {token}")),
                shell_quote(body)
            );
        }
    }
    print_gateway(env, &token, sample);
    println!();
}

/// The sample WhatsApp delivery of the banner's curl line: the file curl
/// posts, and its bytes (which the printed signature is of).
struct Sample {
    path: PathBuf,
    body: Vec<u8>,
}

/// Writes the sample WhatsApp delivery for the banner's curl line.
fn write_sample(paths: &Paths) -> Result<Sample> {
    let dir = paths.target.join("mesh-up");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("sample-whatsapp.json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let body = whatsapp::TextMessage {
        wa_id: SAMPLE_WA_ID,
        profile_name: "Ana",
        wamid: SAMPLE_WAMID,
        timestamp: now,
        text: "Hola, ¿me recuerdas la cita de mañana a las 10?",
    }
    .body();
    std::fs::write(&path, &body).with_context(|| format!("writing {}", path.display()))?;
    Ok(Sample { path, body })
}

/// The gateway's endpoints, a curl line posting the signed sample delivery,
/// and grpcurl lines showing where it was stored.
fn print_gateway(env: &[(String, String)], token: &str, sample: &Sample) {
    let base = format!("http://{}", dial_addr(&effective(env, "GATEWAY_ADDR")));
    let verify_token = effective(env, "WHATSAPP_VERIFY_TOKEN");
    let telegram_token = effective(env, "TELEGRAM_SECRET_TOKEN");
    println!("\nThe gateway (HTTP):");
    println!(
        "  POST {base}/webhooks/whatsapp  deliveries, signed with WHATSAPP_APP_SECRET (X-Hub-Signature-256)"
    );
    println!(
        "  GET  {base}/webhooks/whatsapp  Meta's handshake: curl -sS {}",
        shell_quote(&format!(
            "{base}/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={verify_token}&hub.challenge=1158201444"
        ))
    );
    println!(
        "  POST {base}/webhooks/telegram  updates, with X-Telegram-Bot-Api-Secret-Token: {telegram_token}"
    );
    println!(
        "  POST {base}/webhooks/lemonsqueezy  subscription events, signed with LEMONSQUEEZY_SIGNING_SECRET (X-Signature; README's \"The gateway\" has a signed curl line)"
    );
    println!("  GET  {base}/healthz  {base}/readyz  {base}/metrics");

    let signature = whatsapp::signature(&effective(env, "WHATSAPP_APP_SECRET"), &sample.body);
    println!(
        "\nPost a signed sample WhatsApp text from {SAMPLE_WA_ID} ({}); it answers \"stored\":1, \
         then \"duplicates\":1 when posted again (its message id is fixed, across runs too):",
        sample.path.display()
    );
    println!(
        "  curl -sS {base}/webhooks/whatsapp -H 'Content-Type: application/json' -H {} --data-binary @{}",
        shell_quote(&format!("{}: {signature}", whatsapp::SIGNATURE_HEADER)),
        shell_quote(&sample.path.to_string_lossy())
    );
    let auth = shell_quote(&format!("authorization: Bearer {token}"));
    let users = dial_addr(&effective(env, "USERS_ADDR"));
    let conversations = dial_addr(&effective(env, "CONVERSATIONS_ADDR"));
    let first_id = r#"sed -n 's/^ *"id": "\([^"]*\)".*/\1/p' | head -n 1"#;
    println!("See it stored (the user, their newest WhatsApp conversation, its last messages):");
    println!(
        "  USER_ID=$(grpcurl -plaintext -H {auth} -d {} {users} mesh.users.v1.UsersService/GetUserByPhone | {first_id})",
        shell_quote(&format!(r#"{{"phone":"{SAMPLE_WA_ID}"}}"#)),
    );
    println!(
        r#"  CONVERSATION_ID=$(grpcurl -plaintext -H {auth} -d "{{\"user_id\":\"$USER_ID\",\"channel\":\"CHANNEL_WHATSAPP\",\"page_size\":1}}" {conversations} mesh.conversations.v1.ConversationsService/ListConversations | {first_id})"#
    );
    println!(
        r#"  grpcurl -plaintext -H {auth} -d "{{\"conversation_id\":\"$CONVERSATION_ID\",\"descending\":true,\"page_size\":3}}" {conversations} mesh.conversations.v1.ConversationsService/ListMessages"#
    );
}

fn print_database(mesh: &Mesh, env: &[(String, String)], admin_url: &str) {
    let mesh_url = postgres::with_database(admin_url, DATABASE)
        .map(|url| postgres::redact(&url))
        .unwrap_or_else(|_| postgres::redact(admin_url));
    match &mesh.postgres {
        Some(pg) => {
            println!("  {:<14} {mesh_url} (superuser)", "postgres");
            println!("  {:<14} {}", "postgres data", pg.data_dir().display());
            println!("  {:<14} {}", "postgres log", pg.log_path().display());
            let psql = pg.install().bin().join("psql");
            println!("  {:<14} {} {mesh_url}", "psql", psql.display());
        }
        None => println!("  {:<14} {mesh_url} (from DATABASE_URL)", "postgres"),
    }
    for context in CONTEXTS {
        let name = format!("{}_DATABASE_URL", context.to_uppercase());
        println!("  {name}={}", postgres::redact(&effective(env, &name)));
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
}

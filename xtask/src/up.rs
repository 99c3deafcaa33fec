//! `cargo xtask up`: builds the services and the gateway, starts a local
//! Postgres (unless DATABASE_URL names one), starts every service and waits for
//! its gRPC health, then the gateway and waits for its /readyz, prints how to
//! reach it all (with a signed sample WhatsApp webhook to post), and stops it
//! all on Ctrl-C or SIGTERM.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    launch::{
        self, DEV_SECRETS, Echo, Launcher, Probe, Process, Profile, SERVICES, ServiceEnv, dial_addr,
    },
    postgres::{self, Install, Postgres, Source},
    process::{Signals, shell_quote, tail},
    tools::{self, Paths},
    whatsapp,
};
use mesh_runtime::{config::optional, setup::CONTEXTS};

/// The one database all five schemas live in locally.
const DATABASE: &str = "mesh";

/// The sample WhatsApp delivery `up` prints a curl line for: a fixed message
/// id, so posting it again shows the idempotency (`"duplicates":1`). The
/// sender is README's example user.
const SAMPLE_WA_ID: &str = "573001234567";
const SAMPLE_WAMID: &str = "wamid.HBgLNTczMDAxMjM0NTY3FQIAEhggQ0E=";
const DEFAULT_PG_PORT: u16 = 54320;

/// RPCs and JSON bodies the banner prints as ready-to-paste grpcurl lines,
/// per service, the same as in README.md. They must work on every run, and
/// the database is kept between runs: hence a fixed `request_id`, so a
/// repeated create returns the first answer. (The gateway's examples are
/// curl lines: see `print_gateway`.)
const EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    (
        "users",
        &[
            (
                "mesh.users.v1.UsersService/CreateUser",
                r#"{"user":{"phone":"+573001234567","display_name":"Ana"},"request_id":"readme-example"}"#,
            ),
            (
                "mesh.users.v1.UsersService/GetUserByPhone",
                r#"{"phone":"573001234567"}"#,
            ),
        ],
    ),
    // User ids are not checked here: README's fixed one gives the same
    // active conversation on every run.
    (
        "conversations",
        &[
            (
                "mesh.conversations.v1.ConversationsService/GetOrCreateActiveConversation",
                r#"{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f","channel":"CHANNEL_WHATSAPP"}"#,
            ),
            (
                "mesh.conversations.v1.ConversationsService/GetMessagingWindow",
                r#"{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f"}"#,
            ),
        ],
    ),
    // README's fixed user id, and a fixed request id: the same memory on every run.
    (
        "memory",
        &[
            (
                "mesh.memory.v1.MemoryService/CreateMemory",
                r#"{"memory":{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f","kind":"MEMORY_KIND_FACT","content":"Is allergic to peanuts","importance":0.9},"request_id":"readme-memory"}"#,
            ),
            (
                "mesh.memory.v1.MemoryService/SearchMemories",
                r#"{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f","query":"food allergy"}"#,
            ),
        ],
    ),
    // README's fixed user id and request id: the same reminder on every run.
    (
        "scheduler",
        &[
            (
                "mesh.scheduler.v1.SchedulerService/CreateReminder",
                r#"{"reminder":{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f","title":"Call the pharmacy","time_zone":"America/Bogota"},"local_time":"2030-01-15T09:00","request_id":"readme-reminder"}"#,
            ),
            (
                "mesh.scheduler.v1.SchedulerService/ListReminders",
                r#"{"user_id":"0196f1c2-7a5e-7c3a-9d1e-3f2b8c4d5e6f"}"#,
            ),
        ],
    ),
    // README's example user is unknown to users, so billing counts it in UTC
    // on the free plan. Fixed request ids: the consumption happens once, and
    // a repeat answers the first result.
    (
        "billing",
        &[
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
    ),
];

/// The grpcurl examples of the service named `name`.
fn examples(name: &str) -> &'static [(&'static str, &'static str)] {
    EXAMPLES
        .iter()
        .find(|(service, _)| *service == name)
        .map_or(&[], |(_, examples)| examples)
}

pub async fn run() -> Result<()> {
    let paths = Paths::discover()?;
    let grpcurl = tools::ensure(&paths, &tools::GRPCURL)?;
    let model_dir = local_model_dir(&paths)?;
    let source = Source::from_env(&paths)?;
    // Before any signal handler: Ctrl-C during a build just ends everything.
    let all: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
    launch::build(&paths, &all, Profile::Release)?;

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
    if postgres::prepare_mesh_database(&admin_url, DATABASE).await? {
        println!("xtask: created database {DATABASE}");
    }
    let launcher = Launcher {
        paths,
        profile: Profile::Release,
        env: ServiceEnv::inheriting().complete(&admin_url, DATABASE, model_dir.as_deref())?,
        echo: Echo::Terminal,
        log_prefix: "",
    };
    tokio::select! {
        started = start_all(&mut mesh, &launcher) => started?,
        signal = signals.recv() => {
            println!("xtask: {signal} during start-up: stopping");
            return Ok(());
        }
    }
    let sample = write_sample(&launcher.paths)?;
    print_banner(&mesh, &launcher.env, &admin_url, &grpcurl, &sample);

    tokio::select! {
        signal = signals.recv() => println!("\nxtask: {signal}: stopping the mesh"),
        died = watch(&mut mesh.services) => return Err(died),
    }
    Ok(())
}

/// Starts the services in table order, each once the previous is healthy.
async fn start_all(mesh: &mut Mesh, launcher: &Launcher) -> Result<()> {
    for spec in SERVICES {
        mesh.services.push(launcher.start(spec)?);
        let service = mesh.services.last_mut().expect("just pushed");
        service.wait_healthy().await?;
        match spec.probe {
            Probe::Grpc => println!("xtask: {} is SERVING on {}", spec.name, service.addr),
            Probe::Http(path) => println!(
                "xtask: {} is ready (http://{}{path} answers 200)",
                spec.name, service.addr
            ),
        }
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

/// The directory of the memory service's local model ([`tools::model_dir`]);
/// None when EMBEDDER names another embedder, which needs no model.
fn local_model_dir(paths: &Paths) -> Result<Option<PathBuf>> {
    if optional("EMBEDDER").is_some_and(|embedder| embedder != "local") {
        return Ok(None);
    }
    tools::model_dir(paths).map(Some)
}

/// Everything `up` started; dropping it stops the services, then Postgres,
/// so an error anywhere (or a crash of a service) leaves nothing behind.
#[derive(Default)]
struct Mesh {
    services: Vec<Process>,
    postgres: Option<Postgres>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        launch::stop_all(&mut self.services);
        if let Some(postgres) = self.postgres.take() {
            println!("xtask: stopping Postgres");
            drop(postgres);
        }
        println!("xtask: everything stopped");
    }
}

/// Resolves when a running service exits on its own, with what it said last.
async fn watch(services: &mut [Process]) -> anyhow::Error {
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

fn print_banner(mesh: &Mesh, env: &ServiceEnv, admin_url: &str, grpcurl: &Path, sample: &Sample) {
    println!("\nxtask: the mesh is up; Ctrl-C stops it all.\n");
    for service in &mesh.services {
        let addr = env.get(service.spec.addr_env);
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
        && let Some((_, dir)) = env
            .vars()
            .iter()
            .find(|(name, _)| name == "MEMORY_MODEL_DIR")
    {
        println!(
            "  MEMORY_MODEL_DIR={dir} (all-MiniLM-L6-v2, the memory service's local embedder)"
        );
    }
    let token = env.get("MESH_AUTH_TOKEN");
    for name in std::iter::once("MESH_AUTH_TOKEN").chain(DEV_SECRETS.iter().map(|(n, _)| *n)) {
        if !env.set_by_caller(name) {
            println!(
                "  {name}={} (the dev default; set {name} to choose another)",
                env.get(name)
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
        let addr = dial_addr(&env.get(service.spec.addr_env));
        println!("  grpcurl -plaintext {addr} list");
        println!("  grpcurl -plaintext {addr} grpc.health.v1.Health/Check");
        for (method, body) in examples(service.spec.name) {
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
fn print_gateway(env: &ServiceEnv, token: &str, sample: &Sample) {
    let base = format!("http://{}", dial_addr(&env.get("GATEWAY_ADDR")));
    let verify_token = env.get("WHATSAPP_VERIFY_TOKEN");
    let telegram_token = env.get("TELEGRAM_SECRET_TOKEN");
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

    let signature = whatsapp::signature(&env.get("WHATSAPP_APP_SECRET"), &sample.body);
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
    let users = dial_addr(&env.get("USERS_ADDR"));
    let conversations = dial_addr(&env.get("CONVERSATIONS_ADDR"));
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

fn print_database(mesh: &Mesh, env: &ServiceEnv, admin_url: &str) {
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
        println!("  {name}={}", postgres::redact(&env.get(&name)));
    }
}

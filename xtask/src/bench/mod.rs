//! `cargo xtask bench <name>`: load from this process over loopback against a
//! service running as its own release-built process, next to the same work
//! done straight against Postgres in the same run (for the gateway: the same
//! gRPC calls made without it), so the ratio between them can be read. Prints
//! a Markdown table and the machine it ran on.

mod billing;
mod conversations;
mod gateway;
mod memory;
mod scheduler;
mod users;

use std::{
    fs::File,
    future::Future,
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use mesh_proto::mesh::{
    billing::v1::billing_service_client::BillingServiceClient,
    conversations::v1::conversations_service_client::ConversationsServiceClient,
    users::v1::users_service_client::UsersServiceClient,
};
use sqlx::{
    PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tonic::transport::Channel;

use crate::{
    health::{self, wait_ready},
    postgres::{self, Source},
    tools::Paths,
};

pub use crate::clients::{Auth, BillingClient, ConversationsClient, TOKEN, UsersClient, bearer};

/// Runs the named benchmark.
pub async fn run(args: &[String]) -> Result<()> {
    let Some((name, rest)) = args.split_first() else {
        bail!(
            "usage: cargo xtask bench <name> [--requests N] [--concurrency C]; names: users, conversations, gateway, memory, scheduler, billing"
        );
    };
    let defaults = match name.as_str() {
        "memory" => memory::DEFAULTS,
        "scheduler" => scheduler::DEFAULTS,
        _ => Options::DEFAULTS,
    };
    let options = Options::parse_with(defaults, rest)?;
    match name.as_str() {
        "users" => users::run(&options).await,
        "conversations" => conversations::run(&options).await,
        "gateway" => gateway::run(&options).await,
        "memory" => memory::run(&options).await,
        "scheduler" => scheduler::run(&options).await,
        "billing" => billing::run(&options).await,
        other => bail!(
            "unknown bench {other:?}; names: users, conversations, gateway, memory, scheduler, billing"
        ),
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Measured requests per workload (after a warm-up of a tenth as many).
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Options {
    /// What a bench runs with unless told otherwise.
    pub const DEFAULTS: Self = Self {
        requests: 20_000,
        concurrency: 16,
    };

    /// Warm-up requests before each measured workload.
    pub fn warm_up(&self) -> usize {
        (self.requests / 10).max(self.concurrency)
    }

    #[cfg(test)]
    fn parse(args: &[String]) -> Result<Self> {
        Self::parse_with(Self::DEFAULTS, args)
    }

    /// `defaults` with what `args` sets.
    fn parse_with(mut options: Self, args: &[String]) -> Result<Self> {
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().map(|v| v.parse::<usize>());
            match (flag.as_str(), value) {
                ("--requests", Some(Ok(n))) if n > 0 => options.requests = n,
                ("--concurrency", Some(Ok(n))) if n > 0 => options.concurrency = n,
                _ => bail!("bad argument {flag:?}: expected --requests N or --concurrency C"),
            }
        }
        Ok(options)
    }
}

/// Builds `services` (release), then on a multi-threaded runtime of its own
/// (xtask's own runtime is single-threaded, which would cap the load
/// generator): takes a server (DATABASE_URL's or a throwaway one), creates
/// and bootstraps `database` on it, runs `measure_all(paths, roles, options)`,
/// and drops the database again whatever happened.
pub async fn run_bench<F>(
    options: &Options,
    services: &[&str],
    database: &'static str,
    measure_all: F,
) -> Result<()>
where
    F: AsyncFnOnce(&Paths, &Roles, Options) -> Result<()> + Send + 'static,
{
    let paths = Paths::discover()?;
    let source = Source::from_env(&paths)?;
    crate::launch::build(&paths, services, crate::launch::Profile::Release)?;
    let options = *options;
    crate::process::on_multi_thread_runtime(move || async move {
        let (_server, admin_url) = source.throwaway()?;
        if !postgres::create_database(&admin_url, database).await? {
            bail!("database {database} already exists on that server: drop it first");
        }
        let outcome = async {
            let roles = Roles::prepare(&admin_url, database).await?;
            measure_all(&paths, &roles, options).await
        }
        .await;
        // Best effort: a failure here must not hide the bench's own outcome.
        let _ = postgres::drop_database(&admin_url, database).await;
        outcome
    })
    .await
}

/// How the services log in to the bench database.
pub struct Roles {
    admin_url: String,
    password: Option<String>,
    database: &'static str,
}

impl Roles {
    /// Bootstraps `database` (roles, schemas) and sets the roles' password
    /// when MESH_DB_PASSWORD asks for one.
    async fn prepare(admin_url: &str, database: &'static str) -> Result<Self> {
        postgres::bootstrap(admin_url, database).await?;
        let password = mesh_runtime::config::optional("MESH_DB_PASSWORD");
        if let Some(password) = &password {
            postgres::set_passwords(admin_url, password).await?;
        }
        Ok(Self {
            admin_url: admin_url.to_owned(),
            password,
            database,
        })
    }

    /// A URL logging in as `context`'s service role to the bench database.
    fn url(&self, context: &str) -> Result<String> {
        postgres::with_login(
            &self.admin_url,
            &format!("mesh_{context}"),
            self.password.as_deref(),
            self.database,
        )
    }

    /// The superuser, connected to the bench database (seeding, checks).
    pub async fn superuser(&self) -> Result<PgConnection> {
        postgres::connect(&self.admin_url, Some(self.database)).await
    }

    /// `size` connections as `context`'s service role, its schema first on
    /// the search path, as the service has them: the direct reference.
    pub async fn pool(&self, context: &str, size: usize) -> Result<PgPool> {
        let options = self
            .url(context)?
            .parse::<PgConnectOptions>()?
            .options([("search_path", format!("{context},public"))]);
        Ok(PgPoolOptions::new()
            .max_connections(size as u32)
            .connect_with(options)
            .await?)
    }
}

/// The i-th request's index among `n` keys, spreading requests over all of them.
pub fn spread(i: usize, n: usize) -> usize {
    i.wrapping_mul(7919) % n
}

/// The users service on the bench database, its pool as large as the load;
/// SERVING, with a client.
pub async fn start_users_service(
    paths: &Paths,
    roles: &Roles,
    options: Options,
) -> Result<(Service, UsersClient)> {
    let mut service = Service::start(
        paths,
        "users",
        &[
            ("USERS_DATABASE_URL", roles.url("users")?),
            ("USERS_DB_MAX_CONNECTIONS", options.concurrency.to_string()),
        ],
    )?;
    let channel = service.wait_serving().await?;
    Ok((
        service,
        UsersServiceClient::with_interceptor(channel, bearer as Auth),
    ))
}

/// The conversations service on the bench database, configured with `users`
/// (asked for recipients), its pool one larger than the load (the event
/// listener holds one), and `extra` on top (later entries win); SERVING,
/// with a client.
pub async fn start_conversations_service(
    paths: &Paths,
    roles: &Roles,
    options: Options,
    users: &Service,
    extra: &[(&str, String)],
) -> Result<(Service, ConversationsClient)> {
    let mut env = vec![
        ("CONVERSATIONS_DATABASE_URL", roles.url("conversations")?),
        (
            "CONVERSATIONS_DB_MAX_CONNECTIONS",
            (options.concurrency + 1).to_string(),
        ),
        ("CONVERSATIONS_USERS_URL", format!("http://{}", users.addr)),
    ];
    env.extend(extra.iter().cloned());
    let mut service = Service::start(paths, "conversations", &env)?;
    let channel = service.wait_serving().await?;
    Ok((
        service,
        ConversationsServiceClient::with_interceptor(channel, bearer as Auth),
    ))
}

/// The billing service on the bench database, configured with `users`
/// (asked for time zones and owned workspaces), its pool as large as the
/// load, and `extra` on top (later entries win); SERVING, with a client.
pub async fn start_billing_service(
    paths: &Paths,
    roles: &Roles,
    options: Options,
    users: &Service,
    extra: &[(&str, String)],
) -> Result<(Service, BillingClient)> {
    let mut env = vec![
        ("BILLING_DATABASE_URL", roles.url("billing")?),
        (
            "BILLING_DB_MAX_CONNECTIONS",
            options.concurrency.to_string(),
        ),
        ("BILLING_USERS_URL", format!("http://{}", users.addr)),
    ];
    env.extend(extra.iter().cloned());
    let mut service = Service::start(paths, "billing", &env)?;
    let channel = service.wait_serving().await?;
    Ok((
        service,
        BillingServiceClient::with_interceptor(channel, bearer as Auth),
    ))
}

/// `n` with commas between thousands: 1000 -> "1,000".
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The notes line giving a service's peak resident memory so far.
pub fn peak_rss_note(name: &str, pid: u32) -> String {
    format!("{name} service (release) peak RSS: {}", peak_rss(pid))
}

/// A process's peak resident memory so far: `12.9 MiB`, or `unknown`.
pub fn peak_rss(pid: u32) -> String {
    peak_rss_mib(pid).map_or("unknown".into(), |mib| format!("{mib:.1} MiB"))
}

/// What one workload measured.
pub struct Measurement {
    pub workload: String,
    pub via: &'static str,
    pub requests: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
    /// CPU time the measured service spent on this workload, when known.
    pub service_cpu: Option<Duration>,
}

impl Measurement {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Runs `call(i)` for i in 0..requests with `concurrency` calls in flight,
/// after a warm-up; every call's latency is recorded.
pub async fn measure<F, Fut>(
    workload: &str,
    via: &'static str,
    options: Options,
    call: F,
) -> Result<Measurement>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let call = Arc::new(call);
    let warm_up = options.warm_up();
    // Warm-up requests use indices past the measured ones, so a workload that
    // creates rows never repeats a key.
    drive(
        call.clone(),
        options.requests..options.requests + warm_up,
        options.concurrency,
    )
    .await?;
    let started = Instant::now();
    let (latency_us, errors) = drive(call, 0..options.requests, options.concurrency).await?;
    let elapsed = started.elapsed();
    println!(
        "xtask: {workload} via {via}: {} req/s",
        rate(options.requests as f64 / elapsed.as_secs_f64())
    );
    Ok(Measurement {
        workload: workload.to_owned(),
        via,
        requests: options.requests,
        errors,
        elapsed,
        latency_us,
        service_cpu: None,
    })
}

async fn drive<F, Fut>(
    call: Arc<F>,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> Result<(Histogram<u64>, usize)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(range.start));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (call, next, end) = (call.clone(), next.clone(), range.end);
        workers.push(tokio::spawn(async move {
            let mut histogram = latency_histogram();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                let started = Instant::now();
                if call(i).await.is_err() {
                    errors += 1;
                }
                histogram.saturating_record((started.elapsed().as_micros() as u64).max(1));
            }
            (histogram, errors)
        }));
    }
    let mut total = latency_histogram();
    let mut errors = 0;
    for worker in workers {
        let (histogram, worker_errors) = worker.await?;
        total.add(histogram)?;
        errors += worker_errors;
    }
    Ok((total, errors))
}

/// Runs a gRPC workload and records the CPU time the service spent on it
/// (warm-up included, so the per-request figure errs high by about a tenth).
pub async fn with_service_cpu(
    pid: u32,
    workload: impl Future<Output = Result<Measurement>>,
) -> Result<Measurement> {
    let before = cpu_time(pid);
    let mut measurement = workload.await?;
    measurement.service_cpu = before.zip(cpu_time(pid)).map(|(b, a)| a.saturating_sub(b));
    Ok(measurement)
}

/// A release-built service as its own process, listening on a free port,
/// its output in `.tools/logs/bench-<name>.log`; killed when dropped.
pub struct Service {
    pub child: Child,
    pub addr: String,
    name: &'static str,
    log: std::path::PathBuf,
}

impl Service {
    /// Starts target/release/`name` with `<NAME>_ADDR`, the bench token and `env`.
    pub fn start(paths: &Paths, name: &'static str, env: &[(&str, String)]) -> Result<Self> {
        let port = postgres::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let log = paths.tools.join("logs").join(format!("bench-{name}.log"));
        std::fs::create_dir_all(log.parent().expect("has a parent"))?;
        let file = File::create(&log)?;
        let mut command =
            crate::launch::service_command(paths, crate::launch::Profile::Release, name);
        command
            .env(format!("{}_ADDR", name.to_uppercase()), &addr)
            .env("MESH_AUTH_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = command
            .spawn()
            .with_context(|| format!("starting target/release/{name}"))?;
        println!("xtask: {name} service (pid {}) on {addr}", child.id());
        Ok(Self {
            child,
            addr,
            name,
            log,
        })
    }

    /// Waits until its gRPC health reports SERVING; a channel to it.
    pub async fn wait_serving(&mut self) -> Result<Channel> {
        let addr = &self.addr;
        wait_ready(
            &mut self.child,
            self.name,
            &self.log,
            "report SERVING",
            || health::serving_channel(addr),
        )
        .await
    }

    /// Waits until `GET http://<addr><path>` answers 200 (the gateway's
    /// /readyz: once the services it calls report SERVING).
    pub async fn wait_http_ok(&mut self, client: &reqwest::Client, path: &str) -> Result<()> {
        let url = format!("http://{}{path}", self.addr);
        let what = format!("answer 200 on {path}");
        wait_ready(&mut self.child, self.name, &self.log, &what, || async {
            health::http_ok(client, &url).await.then_some(())
        })
        .await
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Microseconds from 1 µs to 60 s at 3 significant digits. Fixed bounds: an
/// auto-resizing histogram clamps rather than grows when recording saturates.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// The Markdown table: each gRPC row is followed by its direct-Postgres
/// reference, and the ratio says how many times slower the gRPC path is.
pub fn print_table(title: &str, rows: &[(Measurement, Measurement)], notes: &[String]) {
    print_table_with(title, "direct/gRPC throughput", rows, notes);
}

/// [`print_table`] with the ratio column (reference throughput over measured
/// throughput) named `ratio`.
pub fn print_table_with(
    title: &str,
    ratio: &str,
    rows: &[(Measurement, Measurement)],
    notes: &[String],
) {
    println!("\n### {title}\n");
    println!("{HEADER} {ratio} |");
    println!("{ALIGNMENT}---:|");
    for (grpc, direct) in rows {
        for m in [grpc, direct] {
            let ratio = if std::ptr::eq(m, grpc) {
                format!("{:.2}x", direct.throughput() / grpc.throughput())
            } else {
                String::new()
            };
            println!("{} {ratio} |", row(m));
        }
    }
    print_notes(notes);
}

/// The table of [`print_table`] for workloads without a reference to
/// compare with: one row each, no ratio column.
pub fn print_measurements(title: &str, rows: &[Measurement], notes: &[String]) {
    println!("\n### {title}\n");
    println!("{HEADER}");
    println!("{ALIGNMENT}");
    for m in rows {
        println!("{}", row(m));
    }
    print_notes(notes);
}

/// The columns every bench table starts with.
const HEADER: &str = "| workload | via | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) | service CPU per request (µs) |";
const ALIGNMENT: &str = "|---|---|---:|---:|---:|---:|---:|---:|";

/// A measurement in the columns of [`HEADER`].
fn row(m: &Measurement) -> String {
    let cpu = m.service_cpu.map_or(String::new(), |cpu| {
        format!("{:.0}", cpu.as_secs_f64() * 1e6 / m.requests as f64)
    });
    format!(
        "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {} |",
        m.workload,
        m.via,
        m.requests,
        m.errors,
        rate(m.throughput()),
        m.ms(0.5),
        m.ms(0.99),
        cpu,
    )
}

/// Requests per second: whole numbers, but two decimals below 10 (a
/// workload of seconds per request would otherwise show 0 or 1).
fn rate(per_second: f64) -> String {
    if per_second < 10.0 {
        format!("{per_second:.2}")
    } else {
        format!("{per_second:.0}")
    }
}

/// The notes under a table, and the machine it ran on.
fn print_notes(notes: &[String]) {
    println!();
    for note in notes {
        println!("- {note}");
    }
    println!("- machine: {}", machine());
}

pub use crate::host::machine;

/// Peak resident memory (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    crate::host::memory_mib(pid, "VmHWM")
}

/// User plus system CPU time a process has used so far (from /proc/PID/stat).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, in clock ticks.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = clock_ticks_per_second();
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

fn clock_ticks_per_second() -> u64 {
    // sysconf(_SC_CLK_TCK): 100 on every Linux this runs on, but ask.
    #[allow(unsafe_code)]
    // SAFETY: sysconf reads a constant and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options_default_and_parse() {
        let default = Options::parse(&[]).unwrap();
        assert_eq!((default.requests, default.concurrency), (20_000, 16));
        assert_eq!(default.warm_up(), 2_000);
        let set = Options::parse(&args("--concurrency 4 --requests 30")).unwrap();
        assert_eq!((set.requests, set.concurrency), (30, 4));
        // At least one warm-up request per worker.
        assert_eq!(set.warm_up(), 4);
        for bad in ["--requests", "--requests 0", "--requests x", "--workers 2"] {
            assert!(Options::parse(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn slow_rates_keep_two_decimals() {
        assert_eq!(rate(0.54), "0.54");
        assert_eq!(rate(7.0), "7.00");
        assert_eq!(rate(3230.4), "3230");
    }

    #[test]
    fn thousands_get_commas() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn spread_reaches_every_key() {
        let mut seen = [false; 1_000];
        for i in 0..1_000 {
            seen[spread(i, 1_000)] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}

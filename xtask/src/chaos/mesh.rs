//! The whole mesh as the chaos suite runs it: a throwaway Postgres, a fake
//! WhatsApp Cloud API, and the five services and the gateway as debug-built
//! processes on free ports, each of which a scenario may kill and start
//! again. Dropping it stops the processes, then Postgres.

use anyhow::{Context, Result};
use mesh_fake_providers::FakeWhatsApp;
use sqlx::PgConnection;

use crate::{
    clients::{self, TOKEN},
    health::{self, ServingStatus},
    host,
    launch::{self, ADDRESSES, Echo, Launcher, Probe, Process, Profile, SERVICES, ServiceEnv},
    postgres::{self, Install, Postgres},
    tools::{self, Paths},
};

const DATABASE: &str = "mesh_chaos";
/// The gateway's webhook secrets under chaos.
pub const APP_SECRET: &str = "chaos-app-secret";
pub const TELEGRAM_SECRET: &str = "chaos-telegram-secret";
pub const LEMONSQUEEZY_SECRET: &str = "chaos-lemonsqueezy-secret";
/// The largest document the memory service takes, set rather than left
/// to the default so the barrage knows its decoding limit.
pub const MEMORY_MAX_DOCUMENT_BYTES: usize = 10 * 1024 * 1024;
/// The scheduler's lease: a killed replica's claims return to the others
/// this long after its last claim (30 s by default; short, so a run waits less).
const SCHEDULER_LEASE_SECONDS: &str = "5";
/// The gateway's deadline on each downstream call (5 s by default), pinned
/// and generous: while a debug build restarts on two cores a live service
/// can take seconds to answer, and a 5xx from that would be noise, not the
/// outage under test. Below the load's 30 s HTTP timeout, so the gateway
/// still answers before the client gives up.
const GATEWAY_DOWNSTREAM_TIMEOUT_SECONDS: &str = "20";

pub struct Mesh {
    pub launcher: Launcher,
    /// In [`SERVICES`] order.
    pub processes: Vec<Process>,
    pub whatsapp: FakeWhatsApp,
    admin_url: String,
    /// Last: dropped after [`Drop::drop`] stopped the processes.
    pub postgres: Postgres,
}

impl Mesh {
    /// Starts Postgres, the fake WhatsApp API, and every process in
    /// [`SERVICES`] order, each once the previous is ready.
    pub async fn start(paths: &Paths) -> Result<Self> {
        let model_dir = tools::model_dir(paths)?;
        let binary = tools::ensure(paths, &tools::POSTGRES)?;
        let postgres = tokio::task::block_in_place(|| {
            Install::prepare(&binary).and_then(Postgres::throwaway)
        })?;
        println!(
            "xtask: chaos: throwaway Postgres 18 on 127.0.0.1:{}",
            postgres.port()
        );
        let admin_url = postgres.url("postgres");
        postgres::prepare_mesh_database(&admin_url, DATABASE).await?;
        let whatsapp = mesh_fake_providers::whatsapp().await;

        let mut vars = vec![
            ("MESH_AUTH_TOKEN".to_owned(), TOKEN.to_owned()),
            ("WHATSAPP_APP_SECRET".to_owned(), APP_SECRET.to_owned()),
            (
                "TELEGRAM_SECRET_TOKEN".to_owned(),
                TELEGRAM_SECRET.to_owned(),
            ),
            (
                "LEMONSQUEEZY_SIGNING_SECRET".to_owned(),
                LEMONSQUEEZY_SECRET.to_owned(),
            ),
            ("WHATSAPP_API_BASE".to_owned(), whatsapp.url()),
            (
                "WHATSAPP_ACCESS_TOKEN".to_owned(),
                mesh_fake_providers::WHATSAPP_TOKEN.to_owned(),
            ),
            (
                "WHATSAPP_PHONE_NUMBER_ID".to_owned(),
                mesh_fake_providers::WHATSAPP_PHONE_NUMBER_ID.to_owned(),
            ),
            (
                "SCHEDULER_LEASE_SECONDS".to_owned(),
                SCHEDULER_LEASE_SECONDS.to_owned(),
            ),
            (
                "GATEWAY_DOWNSTREAM_TIMEOUT_SECONDS".to_owned(),
                GATEWAY_DOWNSTREAM_TIMEOUT_SECONDS.to_owned(),
            ),
            // Two replicas run at once: each picks a free port for /metrics.
            (
                "SCHEDULER_METRICS_ADDR".to_owned(),
                "127.0.0.1:0".to_owned(),
            ),
            (
                "MEMORY_MAX_DOCUMENT_BYTES".to_owned(),
                MEMORY_MAX_DOCUMENT_BYTES.to_string(),
            ),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ];
        for ((name, _), port) in ADDRESSES.iter().zip(postgres::free_ports(ADDRESSES.len())?) {
            vars.push(((*name).to_owned(), format!("127.0.0.1:{port}")));
        }
        let launcher = Launcher {
            paths: paths.clone(),
            profile: Profile::Debug,
            env: ServiceEnv::isolated(vars).complete(&admin_url, DATABASE, Some(&model_dir))?,
            echo: Echo::LogOnly,
            log_prefix: "chaos-",
        };
        let mut mesh = Self {
            launcher,
            processes: Vec::new(),
            whatsapp,
            admin_url,
            postgres,
        };
        for spec in SERVICES {
            let process = mesh.launcher.start(spec)?;
            mesh.processes.push(process);
            let process = mesh.processes.last_mut().expect("just pushed");
            process.wait_healthy().await?;
        }
        println!(
            "xtask: chaos: the mesh is up (logs in {})",
            mesh.launcher.paths.tools.join("logs").display()
        );
        Ok(mesh)
    }

    pub fn process(&mut self, name: &str) -> &mut Process {
        self.processes
            .iter_mut()
            .find(|process| process.name == name)
            .expect("every service is in the mesh")
    }

    /// Where the process named `name` is dialled.
    pub fn addr(&self, name: &str) -> String {
        self.processes
            .iter()
            .find(|process| process.name == name)
            .map(|process| process.addr.clone())
            .expect("every service is in the mesh")
    }

    /// `http://<gateway><path>`.
    pub fn gateway_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr("gateway"))
    }

    /// A lazily connecting channel to `name`, which reconnects after a restart.
    pub fn channel(&self, name: &str) -> tonic::transport::Channel {
        clients::lazy_channel(&self.addr(name))
    }

    /// The superuser on the chaos database (counting rows).
    pub async fn db(&self) -> Result<PgConnection> {
        postgres::connect(&self.admin_url, Some(DATABASE)).await
    }

    /// Kills `name` with SIGKILL, as a crash or the OOM killer would: no drain.
    pub fn kill(&mut self, name: &str) {
        println!("xtask: chaos: SIGKILL {name}");
        self.process(name).kill();
    }

    /// Starts the killed process `name` again and waits until it is ready.
    pub async fn restart(&mut self, name: &str) -> Result<()> {
        let index = self
            .processes
            .iter()
            .position(|process| process.name == name)
            .context("no such process")?;
        let process = &mut self.processes[index];
        self.launcher.restart(process)?;
        process.wait_healthy().await
    }

    /// What is wrong with the mesh now: a process that exited, a service
    /// not SERVING, a gateway not ready. Empty when all is well.
    pub async fn problems(&mut self) -> Vec<String> {
        let http = reqwest::Client::new();
        let mut problems = Vec::new();
        for process in &mut self.processes {
            if !process.alive() {
                problems.push(format!("{} is not running", process.name));
                continue;
            }
            let ready = match process.spec.probe {
                Probe::Grpc => health::status(&process.addr).await == Some(ServingStatus::Serving),
                Probe::Http(path) => {
                    health::http_ok(&http, &format!("http://{}{path}", process.addr)).await
                }
            };
            if !ready {
                problems.push(format!("{} is running but not ready", process.name));
            }
        }
        problems
    }

    /// Each process's resident memory now, in MiB.
    pub fn resident_mib(&self) -> Vec<(&'static str, Option<f64>)> {
        self.processes
            .iter()
            .map(|process| (process.name, host::memory_mib(process.pid(), "VmRSS")))
            .collect()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        launch::stop_all(&mut self.processes);
        println!("xtask: chaos: stopping Postgres");
    }
}

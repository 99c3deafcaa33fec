//! `cargo xtask chaos`: the faults the mesh must survive, against the whole
//! mesh as real processes (debug builds, which `cargo test` has already
//! built) on a throwaway Postgres of its own (never DATABASE_URL's: it is
//! stopped and started again), with a fake WhatsApp Cloud API:
//!
//! 1. each process killed with SIGKILL and started again under load
//!    (kills.rs);
//! 2. Postgres stopped and started again (postgres_outage.rs);
//! 3. one of two scheduler replicas killed mid-dispatch (scheduler_replica.rs);
//! 4. malformed, oversized and unauthenticated requests to every service
//!    and webhook route (barrage.rs).
//!
//! Prints a Markdown table (report.rs) and fails when any check did.

mod barrage;
mod kills;
mod load;
mod mesh;
mod postgres_outage;
mod report;
mod scheduler_replica;
mod workloads;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{
    launch::{self, Profile, SERVICES},
    process::{Signals, on_multi_thread_runtime},
    tools::Paths,
};
use mesh::Mesh;
use report::Report;

/// Whether the debug binaries need building first.
pub enum Binaries {
    /// `cargo xtask chaos`: build them (a no-op when they are current).
    Build,
    /// `cargo xtask test`: `cargo test --workspace` just built every one
    /// (each package has integration tests, which makes cargo build its
    /// binaries). A `cargo build` here could build them all again: its
    /// feature set differs from the tests' (no dev-dependencies).
    AlreadyBuilt,
}

pub async fn run(binaries: Binaries) -> Result<()> {
    let paths = Paths::discover()?;
    if let Binaries::Build = binaries {
        let all: Vec<&str> = SERVICES.iter().map(|spec| spec.name).collect();
        launch::build(&paths, &all, Profile::Debug)?;
    }
    on_multi_thread_runtime(move || async move {
        let mut signals = Signals::new()?;
        tokio::select! {
            outcome = suite(&paths) => outcome,
            signal = signals.recv() => bail!("chaos: interrupted by {signal}"),
        }
    })
    .await
}

async fn suite(paths: &Paths) -> Result<()> {
    let started = Instant::now();
    let mut mesh = Mesh::start(paths).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut report = Report::default();
    let outcome = scenarios(&mut mesh, &mut report, &http).await;
    drop(mesh);
    if let Err(error) = &outcome {
        report
            .failures
            .push(format!("a scenario could not run to its end: {error:#}"));
    }
    report.print(started.elapsed());
    if !report.failures.is_empty() {
        bail!(
            "chaos: {} checks failed (listed above)",
            report.failures.len()
        );
    }
    Ok(())
}

async fn scenarios(mesh: &mut Mesh, report: &mut Report, http: &reqwest::Client) -> Result<()> {
    println!("xtask: chaos: killing each process in turn under load");
    kills::run(mesh, report, http).await?;
    println!("xtask: chaos: restarting Postgres under load");
    postgres_outage::run(mesh, report, http).await?;
    println!("xtask: chaos: killing a scheduler replica mid-dispatch");
    scheduler_replica::run(mesh, report).await?;
    println!("xtask: chaos: malformed, oversized and unauthenticated requests");
    barrage::run(mesh, report, http).await
}

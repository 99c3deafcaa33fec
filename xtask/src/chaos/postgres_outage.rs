//! Postgres is stopped and started again (same data directory and port)
//! while WhatsApp deliveries go through the gateway. Every service must
//! say NOT_SERVING on gRPC health while the database is away (the runtime's
//! health task pings it), reconnect by itself, and say SERVING again, all
//! without a restart; every acknowledged delivery is then stored once.
//! (How many deliveries are refused meanwhile is reported, not checked: a
//! service holds a request while it waits for a pool connection, so most
//! are answered late rather than refused.)

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{
    load::{self, Outage, stored_row},
    mesh::{APP_SECRET, Mesh},
    report::{Report, seconds},
    workloads,
};
use crate::{
    health::{self, ServingStatus},
    launch::Probe,
};

const BEFORE: Duration = Duration::from_millis(1000);
const AFTER: Duration = Duration::from_millis(1500);
/// How long the services get to notice either change; the health task
/// pings every 5 s while serving.
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
const WEBHOOK_SENDERS: usize = 3;

pub async fn run(mesh: &mut Mesh, report: &mut Report, http: &reqwest::Client) -> Result<()> {
    let fault = "Postgres stopped, started again";
    let pids: Vec<u32> = mesh.processes.iter().map(|p| p.pid()).collect();
    let outage = Outage::default();
    let deliveries = load::start(
        workloads::webhooks(
            http,
            &mesh.gateway_url("/webhooks/whatsapp"),
            APP_SECRET,
            "postgres",
        ),
        WEBHOOK_SENDERS,
        &outage,
    );
    tokio::time::sleep(BEFORE).await;

    outage.begin();
    println!("xtask: chaos: stopping Postgres");
    let stopped = Instant::now();
    tokio::task::block_in_place(|| mesh.postgres.stop())?;
    let noticed = wait_for_all(mesh, ServingStatus::NotServing).await;
    let noticed_after = stopped.elapsed();
    println!("xtask: chaos: starting Postgres again");
    let started = Instant::now();
    tokio::task::block_in_place(|| mesh.postgres.start())?;
    let recovered = wait_for_all(mesh, ServingStatus::Serving).await;
    let recovery = started.elapsed();
    outage.end();
    println!(
        "xtask: chaos: every service NOT_SERVING {} after the stop, SERVING {} after the start",
        seconds(noticed_after),
        seconds(recovery)
    );
    tokio::time::sleep(AFTER).await;

    report.check(noticed.is_empty(), || {
        format!(
            "{fault}: not NOT_SERVING within {}s: {}",
            DEADLINE.as_secs(),
            noticed.join(", ")
        )
    });
    report.check(recovered.is_empty(), || {
        format!(
            "{fault}: not SERVING again within {}s: {}",
            DEADLINE.as_secs(),
            recovered.join(", ")
        )
    });
    let restarted: Vec<&str> = mesh
        .processes
        .iter_mut()
        .zip(&pids)
        .filter_map(|(process, pid)| {
            (process.pid() != *pid || !process.alive()).then_some(process.name)
        })
        .collect();
    report.check(restarted.is_empty(), || {
        format!("{fault}: these exited or were restarted: {restarted:?}")
    });

    let (workload, tally) = deliveries.finish().await?;
    let mut db = mesh.db().await?;
    let recovery_text = format!(
        "NOT_SERVING within {} of the stop; SERVING {} after the start",
        seconds(noticed_after),
        seconds(recovery)
    );
    let row = stored_row(&mut db, report, fault, &workload, &tally, &recovery_text).await?;
    report.rows.push(row);
    let problems = mesh.problems().await;
    report.check(problems.is_empty(), || {
        format!("{fault}: afterwards {}", problems.join("; "))
    });
    Ok(())
}

/// Polls every gRPC service's health until each has reported `wanted`
/// (once is enough) or the deadline passes; the names of those that did not.
async fn wait_for_all(mesh: &Mesh, wanted: ServingStatus) -> Vec<&'static str> {
    let mut waiting: Vec<(&'static str, String)> = mesh
        .processes
        .iter()
        .filter(|process| process.spec.probe == Probe::Grpc)
        .map(|process| (process.name, process.addr.clone()))
        .collect();
    let deadline = Instant::now() + DEADLINE;
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for (name, addr) in waiting {
            if health::status(&addr).await != Some(wanted) {
                still.push((name, addr));
            }
        }
        waiting = still;
        tokio::time::sleep(POLL).await;
    }
    waiting.into_iter().map(|(name, _)| name).collect()
}

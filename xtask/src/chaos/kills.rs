//! Each process in turn is killed with SIGKILL and started again while
//! WhatsApp deliveries go through the gateway (and, for a gRPC service, its
//! own callers create rows on it). Meta's side retries every delivery not
//! answered 200, a caller every create not answered OK; at the end every
//! acknowledged item must be stored exactly once.
//!
//! What an outage looks like from Meta's side depends on the process
//! (README, "The gateway"): without users or conversations a delivery cannot
//! be stored and is answered 5xx; without billing it is stored without the
//! quota check and answered 200; memory and the scheduler are not on the
//! webhook path at all; without the gateway nothing answers.

use std::time::{Duration, Instant};

use anyhow::Result;
use mesh_proto::mesh::{
    billing::v1::billing_service_client::BillingServiceClient,
    memory::v1::memory_service_client::MemoryServiceClient,
    scheduler::v1::scheduler_service_client::SchedulerServiceClient,
    users::v1::users_service_client::UsersServiceClient,
};

use super::{
    load::{self, Outage, Tally, Workload, stored_row},
    mesh::{APP_SECRET, Mesh},
    report::{Report, seconds},
    workloads,
};
use crate::clients::{Auth, bearer};

/// The load runs this long before the kill, the process stays down this
/// long (deliveries keep coming meanwhile), and the load goes on this long
/// after the process is back.
const BEFORE: Duration = Duration::from_millis(1000);
const DOWN: Duration = Duration::from_millis(2000);
const AFTER: Duration = Duration::from_millis(1500);
/// Concurrent senders: Meta's, and the killed service's own callers.
const WEBHOOK_SENDERS: usize = 3;
const GRPC_CALLERS: usize = 2;

/// What Meta sees while a process is down.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Meta {
    /// 5xx: the delivery cannot be stored without it.
    Refused,
    /// Nothing: every delivery is answered 200 at the first try.
    Unaffected,
    /// No answer: the gateway itself is down.
    Unreachable,
}

/// The processes killed, in this order, and what Meta sees meanwhile.
const TARGETS: &[(&str, Meta)] = &[
    ("users", Meta::Refused),
    ("conversations", Meta::Refused),
    ("billing", Meta::Unaffected),
    ("memory", Meta::Unaffected),
    ("scheduler", Meta::Unaffected),
    ("gateway", Meta::Unreachable),
];

pub async fn run(mesh: &mut Mesh, report: &mut Report, http: &reqwest::Client) -> Result<()> {
    for (round, (name, meta)) in TARGETS.iter().enumerate() {
        let own_callers = own_callers(mesh, name, round as u8);
        kill_and_restart(mesh, report, http, name, *meta, own_callers).await?;
    }
    report.notes.push(
        "kills and Postgres: stored = acknowledged items found in the database; duplicates = rows beyond one per key, shown only where a second row could exist (memories by content, reminders by title); `–` where a UNIQUE key makes it impossible (messages' (channel, provider_message_id), users.phone, billing.ai_usage.request_id). The outage check counts only the tries started and answered while the process was dead; errors lists every failed try".into(),
    );
    Ok(())
}

/// The creates the killed service's own callers keep sending, if it has
/// any besides the gateway. The user ids are made up: memory, the
/// scheduler and billing take them as given.
fn own_callers(mesh: &Mesh, name: &str, round: u8) -> Option<Workload> {
    let user_id = uuid::Uuid::new_v4().to_string();
    let channel = mesh.channel(name);
    let auth = bearer as Auth;
    match name {
        "users" => Some(workloads::create_users(
            &UsersServiceClient::with_interceptor(channel, auth),
            round,
        )),
        "memory" => Some(workloads::create_memories(
            &MemoryServiceClient::with_interceptor(channel, auth),
            &user_id,
            name,
        )),
        "scheduler" => Some(workloads::create_reminders(
            &SchedulerServiceClient::with_interceptor(channel, auth),
            &user_id,
            name,
        )),
        "billing" => Some(workloads::record_ai_usage(
            &BillingServiceClient::with_interceptor(channel, auth),
            &user_id,
            name,
        )),
        _ => None,
    }
}

async fn kill_and_restart(
    mesh: &mut Mesh,
    report: &mut Report,
    http: &reqwest::Client,
    name: &'static str,
    meta: Meta,
    own_callers: Option<Workload>,
) -> Result<()> {
    let outage = Outage::default();
    let unchecked_before = unchecked_quota_checks(http, mesh).await;
    let deliveries = load::start(
        workloads::webhooks(
            http,
            &mesh.gateway_url("/webhooks/whatsapp"),
            APP_SECRET,
            &format!("kill-{name}"),
        ),
        WEBHOOK_SENDERS,
        &outage,
    );
    let own_callers = own_callers.map(|workload| load::start(workload, GRPC_CALLERS, &outage));
    tokio::time::sleep(BEFORE).await;

    // The outage is the time the process is dead: tries started and answered
    // in it are held to what Meta should see; a try started before the kill
    // may still succeed, one still running at the restart may meet the new
    // process, one started once it is starting again may get anything.
    mesh.kill(name);
    outage.begin();
    tokio::time::sleep(DOWN).await;
    outage.end();
    let restarted = Instant::now();
    mesh.restart(name).await?;
    let recovery = restarted.elapsed();
    println!(
        "xtask: chaos: {name} ready again {} after its restart",
        seconds(recovery)
    );
    tokio::time::sleep(AFTER).await;

    let fault = format!("SIGKILL {name}");
    let recovery_text = format!("ready {} after restart", seconds(recovery));
    let mut db = mesh.db().await?;
    let (workload, deliveries) = deliveries.finish().await?;
    let row = stored_row(
        &mut db,
        report,
        &fault,
        &workload,
        &deliveries,
        &recovery_text,
    )
    .await?;
    report.rows.push(row);
    check_meta(report, &fault, meta, &deliveries);
    if let Some(own_callers) = own_callers {
        let (workload, calls) = own_callers.finish().await?;
        let row = stored_row(&mut db, report, &fault, &workload, &calls, &recovery_text).await?;
        report.rows.push(row);
        report.check(calls.during_outage.keys().any(|code| code != "OK"), || {
            format!("{fault}: its callers saw no error while it was down")
        });
    }
    if name == "billing" {
        let unchecked = unchecked_quota_checks(http, mesh)
            .await
            .saturating_sub(unchecked_before);
        report.check(unchecked > 0, || {
            format!("{fault}: the gateway counted no unchecked quota while billing was down")
        });
        report.notes.push(format!(
            "while billing was down the gateway stored {unchecked} messages without the quota check (gateway_inbound_quota_checks_total{{result=\"unchecked\"}}), answering 200"
        ));
    }
    let problems = mesh.problems().await;
    report.check(problems.is_empty(), || {
        format!("{fault}: afterwards {}", problems.join("; "))
    });
    Ok(())
}

/// Holds the deliveries' answers to what Meta should see during the outage:
/// only tries started and answered while the process was dead count (the table's errors
/// column lists every other failure, which decides nothing here).
fn check_meta(report: &mut Report, fault: &str, meta: Meta, deliveries: &Tally) {
    let during = &deliveries.during_outage;
    let tries: usize = during.values().sum();
    let (wanted, ok) = match meta {
        Meta::Refused => ("5xx", deliveries.during_outage_starting("HTTP 5") == tries),
        Meta::Unaffected => ("200", deliveries.during_outage_starting("OK") == tries),
        Meta::Unreachable => (
            "no connection",
            deliveries.during_outage_starting("connection") == tries,
        ),
    };
    report.check(tries > 0 && ok, || {
        format!(
            "{fault}: deliveries tried while it was down were not all answered {wanted}: {during:?}"
        )
    });
}

/// The gateway's count of messages stored without a quota check (billing
/// away), from its /metrics; 0 when it cannot be read.
async fn unchecked_quota_checks(http: &reqwest::Client, mesh: &Mesh) -> u64 {
    let Ok(answer) = http.get(mesh.gateway_url("/metrics")).send().await else {
        return 0;
    };
    let text = answer.text().await.unwrap_or_default();
    text.lines()
        .filter(|line| {
            line.starts_with("gateway_inbound_quota_checks_total")
                && line.contains("result=\"unchecked\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

//! Two scheduler replicas (the mesh's and a second one on another port,
//! same database) dispatch reminders that come due over a few seconds; one
//! is killed with SIGKILL mid-dispatch. No reminder may be lost (all end
//! `sent`) and none sent twice (the fake WhatsApp API received each once).
//!
//! What the design guarantees (services/scheduler/src/dispatcher): a
//! claimed reminder is leased, so the survivor takes the killed replica's
//! claims once their lease runs out; every attempt sends with the
//! reminder's `send_token` as SendMessage's request_id, and conversations
//! answers a repeated request_id from the stored message (waiting for a
//! send still in flight) instead of calling the provider again, on a task
//! that finishes even when the caller is gone. A kill between the provider
//! call and the scheduler's own write therefore still sends once: exactly
//! once at the provider is what is asserted. (Killing conversations itself
//! between its provider call and its write is a different fault: it stores
//! the send as an unknown outcome and does not retry it.)

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use mesh_proto::mesh::{
    conversations::v1::conversations_service_client::ConversationsServiceClient,
    users::v1::users_service_client::UsersServiceClient,
};

use super::{
    mesh::Mesh,
    report::{Report, Row, seconds},
};
use crate::{
    clients::{Auth, bearer},
    due_reminders::{insert_due_reminders, round_status, seed_reachable_users},
    launch,
};

/// Reminders, recipients, and when they come due: over `SPREAD`, the
/// first `LEAD` from now.
const REMINDERS: usize = 600;
const RECIPIENTS: usize = 40;
const LEAD: Duration = Duration::from_secs(2);
const SPREAD: Duration = Duration::from_secs(4);
/// The kill comes once this share of the reminders is sent.
const KILL_AT_SENT: usize = REMINDERS / 5;
const DEADLINE: Duration = Duration::from_secs(90);
const ROUND: &str = "chaos-replica-kill";
const TITLE: &str = "Chaos reminder";

pub async fn run(mesh: &mut Mesh, report: &mut Report) -> Result<()> {
    let fault = "SIGKILL one of two scheduler replicas mid-dispatch";
    let (mut users, mut conversations) = (
        UsersServiceClient::with_interceptor(mesh.channel("users"), bearer as Auth),
        ConversationsServiceClient::with_interceptor(mesh.channel("conversations"), bearer as Auth),
    );
    let recipients = seed_reachable_users(
        &mut users,
        &mut conversations,
        RECIPIENTS,
        "chaos-scheduler",
    )
    .await?;
    let port = super::mesh::free_ports(1)?[0];
    let mut second = mesh.launcher.start_replica(
        launch::spec("scheduler")?,
        "scheduler-b",
        vec![("SCHEDULER_ADDR".into(), format!("127.0.0.1:{port}"))],
    )?;
    second.wait_healthy().await?;

    let mut db = mesh.db().await?;
    let already = mesh.whatsapp.requests().len();
    insert_due_reminders(&mut db, &recipients, ROUND, TITLE, REMINDERS, LEAD, SPREAD).await?;
    println!(
        "xtask: chaos: {REMINDERS} reminders due over {}s from {}s now; two scheduler replicas",
        SPREAD.as_secs(),
        LEAD.as_secs()
    );
    let started = Instant::now();
    while sent(&mut db).await? < KILL_AT_SENT as i64 {
        if started.elapsed() > DEADLINE {
            bail!("{fault}: not {KILL_AT_SENT} reminders sent within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (in_flight, sent_at_kill) = (leased(&mut db).await?, sent(&mut db).await?);
    mesh.kill("scheduler");
    let killed = Instant::now();
    loop {
        let (pending, _) = round_status(&mut db, ROUND).await?;
        if pending == 0 {
            break;
        }
        if killed.elapsed() > DEADLINE || !second.alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_final = killed.elapsed();
    let survivor_alive = second.alive();
    launch::stop_all(&mut vec![second]);
    mesh.restart("scheduler").await?;

    let statuses: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM scheduler.reminders \
         WHERE metadata->>'round' = $1 GROUP BY status ORDER BY status",
    )
    .bind(ROUND)
    .fetch_all(&mut db)
    .await?;
    let count_of = |wanted: &str| {
        statuses
            .iter()
            .find(|(status, _)| status == wanted)
            .map_or(0, |(_, n)| *n as usize)
    };
    let mut per_text: HashMap<String, usize> = HashMap::new();
    for request in &mesh.whatsapp.requests()[already..] {
        let text = request.body["text"]["body"].as_str().unwrap_or_default();
        if text.contains(TITLE) {
            *per_text.entry(text.to_owned()).or_default() += 1;
        }
    }
    let provider_requests: usize = per_text.values().sum();
    let duplicates = provider_requests - per_text.len();

    report.check(survivor_alive, || {
        format!("{fault}: the surviving replica exited")
    });
    report.check(count_of("sent") == REMINDERS, || {
        format!("{fault}: of {REMINDERS} reminders, by status: {statuses:?}")
    });
    report.check(per_text.len() == REMINDERS, || {
        format!(
            "{fault}: the provider received {} of {REMINDERS} reminders",
            per_text.len()
        )
    });
    report.check(duplicates == 0, || {
        format!("{fault}: {duplicates} reminders reached the provider twice")
    });
    report.rows.push(Row {
        fault: format!("{fault} (reminders due → fake WhatsApp API)"),
        sent: REMINDERS,
        acknowledged: Some(count_of("sent")),
        stored: Some(per_text.len()),
        duplicates: Some(duplicates),
        errors: statuses
            .iter()
            .filter(|(status, _)| status != "sent")
            .map(|(status, n)| (format!("reminder {status}"), *n as usize))
            .collect(),
        recovery: format!("all sent {} after the kill", seconds(all_final)),
    });
    report.notes.push(format!(
        "scheduler replicas: {REMINDERS} reminders for {RECIPIENTS} WhatsApp users, due over {} s; one replica killed with {sent_at_kill} sent and {in_flight} leased (claimed, in flight); the survivor took the killed replica's claims when their {} s lease ran out. Columns: acknowledged = reminders `sent`, stored = distinct reminders the fake WhatsApp API received, duplicates = requests beyond one per reminder",
        SPREAD.as_secs(),
        mesh.launcher.env.get("SCHEDULER_LEASE_SECONDS")
    ));
    let problems = mesh.problems().await;
    report.check(problems.is_empty(), || {
        format!("{fault}: afterwards {}", problems.join("; "))
    });
    Ok(())
}

async fn sent(db: &mut sqlx::PgConnection) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM scheduler.reminders \
         WHERE metadata->>'round' = $1 AND status = 'sent'",
    )
    .bind(ROUND)
    .fetch_one(db)
    .await?)
}

/// Reminders of the round claimed by a replica right now.
async fn leased(db: &mut sqlx::PgConnection) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM scheduler.reminders \
         WHERE metadata->>'round' = $1 AND status = 'pending' AND lease_expire_time > now()",
    )
    .bind(ROUND)
    .fetch_one(db)
    .await?)
}

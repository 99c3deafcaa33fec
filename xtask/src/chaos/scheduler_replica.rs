//! Two scheduler replicas (the mesh's and a second one on another port,
//! same database) dispatch reminders that come due over a few seconds; one
//! is killed with SIGKILL mid-dispatch. No reminder may be lost (all end
//! `sent`) and none sent twice (the fake WhatsApp API received each once).
//! "Mid-dispatch" is checked, not assumed: right after the kill, the
//! reminders still pending under the killed replica's lease are read (its
//! id is in its log); a kill that found none is no test, and the round is
//! run again, up to [`ATTEMPTS`] times. Those claims must each end `sent`
//! and reach the provider exactly once.
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
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use mesh_proto::mesh::{
    conversations::v1::conversations_service_client::ConversationsServiceClient,
    users::v1::users_service_client::UsersServiceClient,
};
use sqlx::PgConnection;

use super::{
    mesh::Mesh,
    report::{Report, Row, seconds},
};
use crate::{
    clients::{Auth, bearer},
    due_reminders::{insert_due_reminders, round_status, seed_reachable_users},
    launch::{self, Process},
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
/// Rounds tried until a kill lands while the killed replica holds claims.
const ATTEMPTS: usize = 3;
const ROUND: &str = "chaos-replica-kill";
const TITLE: &str = "Chaos reminder";
const FAULT: &str = "SIGKILL one of two scheduler replicas mid-dispatch";

/// One round: its reminders, and what the kill found and left.
struct Round {
    tag: String,
    /// Reminders are titled `<title> #<i>`, which is the text sent.
    title: String,
    /// WhatsApp API requests before the round, to count its own.
    already: usize,
    sent_at_kill: i64,
    /// The titles of the reminders the killed replica held, pending, at the kill.
    claimed: Vec<String>,
    all_final: Duration,
    survivor_alive: bool,
}

pub async fn run(mesh: &mut Mesh, report: &mut Report) -> Result<()> {
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
    let port = crate::postgres::free_port()?;
    // Dropped (killed) on an early return; stopped in order at the end.
    let mut second = mesh.launcher.start_replica(
        launch::spec("scheduler")?,
        "scheduler-b",
        vec![("SCHEDULER_ADDR".into(), format!("127.0.0.1:{port}"))],
    )?;
    second.wait_healthy().await?;
    let mut db = mesh.db().await?;
    let mut rounds_run = 0;
    let round = loop {
        rounds_run += 1;
        let round = kill_mid_dispatch(mesh, &mut second, &mut db, &recipients, rounds_run).await?;
        if !round.claimed.is_empty() || rounds_run == ATTEMPTS || !round.survivor_alive {
            break round;
        }
        println!(
            "xtask: chaos: the killed replica held no claim at the kill: not mid-dispatch; round {} of {ATTEMPTS}",
            rounds_run + 1
        );
    };
    launch::stop_all(&mut vec![second]);
    report.check(!round.claimed.is_empty(), || {
        format!(
            "{FAULT}: in {rounds_run} rounds no kill landed while the killed replica held a claim"
        )
    });
    check_round(mesh, report, &mut db, &round).await?;
    report.notes.push(format!(
        "scheduler replicas: {REMINDERS} reminders for {RECIPIENTS} WhatsApp users, due over {} s; one replica killed with {} sent, holding {} claimed and still pending (read from the table by its replica id right after the kill; rounds run until one such kill: {rounds_run}); the survivor took them when their {} s lease ran out. Columns: acknowledged = reminders `sent`, stored = distinct reminders the fake WhatsApp API received, duplicates = requests beyond one per reminder",
        SPREAD.as_secs(),
        round.sent_at_kill,
        round.claimed.len(),
        mesh.launcher.env.get("SCHEDULER_LEASE_SECONDS")
    ));
    let problems = mesh.problems().await;
    report.check(problems.is_empty(), || {
        format!("{FAULT}: afterwards {}", problems.join("; "))
    });
    Ok(())
}

/// Loads a round of due reminders, kills the mesh's scheduler once a share
/// is sent, notes what it held, waits for the survivor to finish the round,
/// and starts the killed one again.
async fn kill_mid_dispatch(
    mesh: &mut Mesh,
    second: &mut Process,
    db: &mut PgConnection,
    recipients: &[uuid::Uuid],
    attempt: usize,
) -> Result<Round> {
    let tag = format!("{ROUND}-{attempt}");
    let title = format!("{TITLE} {attempt}");
    let already = mesh.whatsapp.requests().len();
    insert_due_reminders(db, recipients, &tag, &title, REMINDERS, LEAD, SPREAD).await?;
    println!(
        "xtask: chaos: {REMINDERS} reminders due over {}s from {}s now; two scheduler replicas",
        SPREAD.as_secs(),
        LEAD.as_secs()
    );
    let started = Instant::now();
    while sent(db, &tag).await? < KILL_AT_SENT as i64 {
        if started.elapsed() > DEADLINE {
            bail!("{FAULT}: not {KILL_AT_SENT} reminders sent within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replica = replica_id(&mesh.process("scheduler").log)?;
    let sent_at_kill = sent(db, &tag).await?;
    mesh.kill("scheduler");
    let killed = Instant::now();
    let claimed: Vec<String> = sqlx::query_scalar(
        "SELECT title FROM scheduler.reminders \
         WHERE metadata->>'round' = $1 AND status = 'pending' \
           AND lease_owner = $2::uuid AND lease_expire_time > now()",
    )
    .bind(&tag)
    .bind(&replica)
    .fetch_all(&mut *db)
    .await?;
    while round_status(db, &tag).await?.0 > 0 && killed.elapsed() < DEADLINE && second.alive() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_final = killed.elapsed();
    let survivor_alive = second.alive();
    mesh.restart("scheduler").await?;
    Ok(Round {
        tag,
        title,
        already,
        sent_at_kill,
        claimed,
        all_final,
        survivor_alive,
    })
}

/// Every reminder of the round, and each the killed replica held, must be
/// `sent` and have reached the provider exactly once.
async fn check_round(
    mesh: &Mesh,
    report: &mut Report,
    db: &mut PgConnection,
    round: &Round,
) -> Result<()> {
    let statuses: Vec<(String, String)> = sqlx::query_as(
        "SELECT title, status FROM scheduler.reminders WHERE metadata->>'round' = $1",
    )
    .bind(&round.tag)
    .fetch_all(&mut *db)
    .await?;
    let status_of: HashMap<&str, &str> = statuses
        .iter()
        .map(|(title, status)| (title.as_str(), status.as_str()))
        .collect();
    let mut by_status: HashMap<&str, usize> = HashMap::new();
    for status in status_of.values() {
        *by_status.entry(status).or_default() += 1;
    }
    let sent = by_status.get("sent").copied().unwrap_or(0);
    // The text sent is the title: the round's own start with `<title> #`.
    let ours = format!("{} #", round.title);
    let mut per_text: HashMap<String, usize> = HashMap::new();
    for request in &mesh.whatsapp.requests()[round.already..] {
        let text = request.body["text"]["body"].as_str().unwrap_or_default();
        if text.starts_with(&ours) {
            *per_text.entry(text.to_owned()).or_default() += 1;
        }
    }
    let provider_requests: usize = per_text.values().sum();
    let duplicates = provider_requests - per_text.len();
    let claims_not_once: Vec<(&str, &str, usize)> = round
        .claimed
        .iter()
        .map(|title| {
            let status = status_of.get(title.as_str()).copied().unwrap_or("missing");
            (
                title.as_str(),
                status,
                per_text.get(title).copied().unwrap_or(0),
            )
        })
        .filter(|(_, status, received)| *status != "sent" || *received != 1)
        .collect();

    report.check(round.survivor_alive, || {
        format!("{FAULT}: the surviving replica exited")
    });
    report.check(sent == REMINDERS, || {
        format!("{FAULT}: of {REMINDERS} reminders, by status: {by_status:?}")
    });
    report.check(per_text.len() == REMINDERS, || {
        format!(
            "{FAULT}: the provider received {} of {REMINDERS} reminders",
            per_text.len()
        )
    });
    report.check(duplicates == 0, || {
        format!("{FAULT}: {duplicates} reminders reached the provider twice")
    });
    report.check(claims_not_once.is_empty(), || {
        format!(
            "{FAULT}: of the {} claims the killed replica held, not sent exactly once (title, status, provider requests): {claims_not_once:?}",
            round.claimed.len()
        )
    });
    report.rows.push(Row {
        fault: format!("{FAULT} (reminders due → fake WhatsApp API)"),
        sent: REMINDERS,
        acknowledged: Some(sent),
        stored: Some(per_text.len()),
        duplicates: Some(duplicates),
        errors: by_status
            .iter()
            .filter(|(status, _)| **status != "sent")
            .map(|(status, n)| (format!("reminder {status}"), *n))
            .collect(),
        recovery: format!(
            "{} claims of the killed replica taken over; all sent {} after the kill",
            round.claimed.len(),
            seconds(round.all_final)
        ),
    });
    Ok(())
}

/// The replica id the dispatcher in `log` last started with (the log is
/// appended to across restarts): `dispatcher started replica=<uuid>`.
fn replica_id(log: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    text.lines()
        .rev()
        .find_map(|line| {
            let (_, rest) = line.split_once("dispatcher started replica=")?;
            let id: String = rest
                .chars()
                .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
                .collect();
            uuid::Uuid::parse_str(&id).ok().map(|_| id)
        })
        .with_context(|| format!("no `dispatcher started replica=` in {}", log.display()))
}

async fn sent(db: &mut PgConnection, round: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM scheduler.reminders \
         WHERE metadata->>'round' = $1 AND status = 'sent'",
    )
    .bind(round)
    .fetch_one(db)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_id_is_the_last_dispatcher_start_in_the_log() {
        let log = std::env::temp_dir().join(format!("replica-id-{}.log", std::process::id()));
        std::fs::write(
            &log,
            "x INFO mesh_scheduler::dispatcher: dispatcher started replica=903bf380-bd7a-4da8-a008-8ecbc18724c4 config=A\n\
             x INFO mesh_scheduler::dispatcher: dispatcher started replica=7905d5b2-0966-4099-a605-069954a0bff1 config=B\n\
             x INFO other line\n",
        )
        .unwrap();
        let id = replica_id(&log);
        std::fs::remove_file(&log).unwrap();
        assert_eq!(id.unwrap(), "7905d5b2-0966-4099-a605-069954a0bff1");
    }
}

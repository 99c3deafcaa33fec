//! `cargo xtask bench scheduler`: how fast the dispatcher sends due reminders
//! and how late they go out, with one scheduler replica and then with three.
//!
//! Each round loads 50,000 reminders (`--requests`) due within one minute,
//! spread evenly, straight into the scheduler's table (the bench measures
//! dispatch, not CreateReminder), for users whose WhatsApp window is open and
//! who have no quiet hours. The replicas (release builds, each its own
//! process) send them through the real conversations service (and the users
//! service it asks for recipients) to a local fake WhatsApp Cloud API. A round
//! ends when every reminder is sent; its figures come from the rows:
//! lateness = sent_time - scheduled_time, throughput = reminders / (time from
//! the first due time to the last send). Exactly-once is checked too: the
//! fake must have received one request per reminder.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use uuid::Uuid;

use super::{
    ConversationsClient, Options, Roles, Service, machine, peak_rss, run_bench,
    start_conversations_service, start_users_service,
};
use crate::{
    due_reminders::{insert_due_reminders, round_status, seed_reachable_users},
    tools::Paths,
};

const DATABASE: &str = "mesh_bench_scheduler";
/// Recipients the reminders are spread over.
const USERS: usize = 1_000;
/// Reminders come due over this long.
const DUE_SPREAD: Duration = Duration::from_secs(60);
/// The first comes due this long after loading, so every replica is polling.
const LEAD: Duration = Duration::from_secs(5);

pub const DEFAULTS: Options = Options {
    requests: 50_000,
    concurrency: 16,
};

pub async fn run(options: &Options) -> Result<()> {
    run_bench(
        options,
        &["users", "conversations", "scheduler"],
        DATABASE,
        measure_all,
    )
    .await
}

/// One round's figures (the provider's counts are filled in by the caller,
/// which holds the fake).
struct Round {
    replicas: usize,
    reminders: i64,
    sent: i64,
    provider_requests: usize,
    duplicates: usize,
    elapsed: Duration,
    lateness_ms: [f64; 3],
    peak_rss: Vec<String>,
}

async fn measure_all(paths: &Paths, roles: &Roles, options: Options) -> Result<()> {
    let whatsapp = mesh_fake_providers::whatsapp().await;
    let (users_service, mut users) = start_users_service(paths, roles, options).await?;
    let (conversations_service, mut conversations) =
        start_conversations_with_whatsapp(paths, roles, options, &users_service, &whatsapp.url())
            .await?;
    println!("xtask: creating {USERS} users with open WhatsApp windows and no quiet hours");
    let recipients =
        seed_reachable_users(&mut users, &mut conversations, USERS, "bench-scheduler").await?;

    let mut rounds = Vec::new();
    for replicas in [1, 3] {
        let already = whatsapp.requests().len();
        let mut round = dispatch_round(
            paths,
            roles,
            &users_service,
            &conversations_service,
            &recipients,
            replicas,
            options.requests,
        )
        .await?;
        // What the provider received in this round, and how many texts twice.
        let received = whatsapp.requests();
        let mut per_text: HashMap<String, usize> = HashMap::new();
        for request in &received[already..] {
            let text = request.body["text"]["body"].as_str().unwrap_or_default();
            *per_text.entry(text.to_owned()).or_default() += 1;
        }
        round.provider_requests = received.len() - already;
        round.duplicates = per_text.values().map(|n| n.saturating_sub(1)).sum();
        rounds.push(round);
    }
    print_rounds(&rounds, options);
    Ok(())
}

async fn start_conversations_with_whatsapp(
    paths: &Paths,
    roles: &Roles,
    options: Options,
    users: &Service,
    whatsapp_url: &str,
) -> Result<(Service, ConversationsClient)> {
    let extra = [
        ("WHATSAPP_API_BASE", whatsapp_url.to_owned()),
        (
            "WHATSAPP_ACCESS_TOKEN",
            mesh_fake_providers::WHATSAPP_TOKEN.to_owned(),
        ),
        (
            "WHATSAPP_PHONE_NUMBER_ID",
            mesh_fake_providers::WHATSAPP_PHONE_NUMBER_ID.to_owned(),
        ),
        // Three replicas' sends at once, plus the bench's own seeding.
        ("CONVERSATIONS_DB_MAX_CONNECTIONS", "64".to_owned()),
    ];
    start_conversations_service(paths, roles, options, users, &extra).await
}

/// Starts `replicas` schedulers, loads the reminders, waits until all are
/// sent, and reads the figures from the rows.
async fn dispatch_round(
    paths: &Paths,
    roles: &Roles,
    users: &Service,
    conversations: &Service,
    recipients: &[Uuid],
    replicas: usize,
    reminders: usize,
) -> Result<Round> {
    let mut schedulers = Vec::new();
    for _ in 0..replicas {
        let mut service = Service::start(
            paths,
            "scheduler",
            &[
                ("SCHEDULER_DATABASE_URL", roles.url("scheduler")?),
                ("SCHEDULER_DB_MAX_CONNECTIONS", "20".to_owned()),
                ("SCHEDULER_USERS_URL", format!("http://{}", users.addr)),
                (
                    "SCHEDULER_CONVERSATIONS_URL",
                    format!("http://{}", conversations.addr),
                ),
                ("SCHEDULER_METRICS_ADDR", "127.0.0.1:0".to_owned()),
            ],
        )?;
        service.wait_serving().await?;
        schedulers.push(service);
    }
    let round = Uuid::now_v7().to_string();
    let mut db = roles.superuser().await?;
    insert_due_reminders(
        &mut db,
        recipients,
        &round,
        &format!("Bench reminder {round}"),
        reminders,
        LEAD,
        DUE_SPREAD,
    )
    .await?;
    println!(
        "xtask: {reminders} reminders due over {}s from {}s now; {replicas} scheduler replica(s) sending",
        DUE_SPREAD.as_secs(),
        LEAD.as_secs()
    );

    let started = Instant::now();
    let deadline = DUE_SPREAD + LEAD + Duration::from_secs(1800);
    let mut last_report = Instant::now();
    loop {
        let (pending, failed) = round_status(&mut db, &round).await?;
        if pending == 0 {
            if failed > 0 {
                bail!("{failed} reminders failed: see .tools/logs/bench-scheduler.log");
            }
            break;
        }
        if started.elapsed() > deadline {
            bail!("{pending} reminders still pending after {deadline:?}");
        }
        for service in &mut schedulers {
            if let Some(status) = service.child.try_wait()? {
                bail!("a scheduler replica exited ({status}): see .tools/logs/bench-scheduler.log");
            }
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("xtask: {pending} of {reminders} still pending");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let (sent, first_due, last_sent, p50, p99, max): (i64, f64, f64, f64, f64, f64) =
        sqlx::query_as(
            "SELECT count(*), \
                    extract(epoch FROM min(scheduled_time))::float8, \
                    extract(epoch FROM max(sent_time))::float8, \
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY lateness), \
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY lateness), \
                    max(lateness) \
             FROM (SELECT scheduled_time, sent_time, \
                          extract(epoch FROM sent_time - scheduled_time)::float8 * 1000 AS lateness \
                   FROM scheduler.reminders \
                   WHERE metadata->>'round' = $1 AND status = 'sent') AS s",
        )
        .bind(&round)
        .fetch_one(&mut db)
        .await?;
    let peak_rss = schedulers.iter().map(|s| peak_rss(s.child.id())).collect();
    for mut service in schedulers {
        service.stop();
    }
    Ok(Round {
        replicas,
        reminders: reminders as i64,
        sent,
        provider_requests: 0,
        duplicates: 0,
        elapsed: Duration::from_secs_f64((last_sent - first_due).max(0.001)),
        lateness_ms: [p50, p99, max],
        peak_rss,
    })
}

fn print_rounds(rounds: &[Round], options: Options) {
    println!("\n### cargo xtask bench scheduler\n");
    println!(
        "| replicas | reminders | sent | provider requests | duplicates | dispatch (sends/s) | lateness p50 (ms) | p99 (ms) | max (ms) | scheduler peak RSS |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for round in rounds {
        let [p50, p99, max] = round.lateness_ms;
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {p50:.0} | {p99:.0} | {max:.0} | {} |",
            round.replicas,
            round.reminders,
            round.sent,
            round.provider_requests,
            round.duplicates,
            round.sent as f64 / round.elapsed.as_secs_f64(),
            round.peak_rss.join(", "),
        );
    }
    println!(
        "\n- {} reminders per round due evenly over {} s ({:.0}/s offered), spread over {USERS} WhatsApp users with open windows and no quiet hours",
        options.requests,
        DUE_SPREAD.as_secs(),
        options.requests as f64 / DUE_SPREAD.as_secs_f64()
    );
    println!(
        "- each send: the scheduler asks users (cached 30 s per user) and conversations (GetMessagingWindow, SendMessage), conversations asks users for the phone and calls the fake WhatsApp API; all processes (release) and Postgres share the machine"
    );
    println!(
        "- dispatch = reminders / (last send - first due time); lateness = sent_time - scheduled_time"
    );
    println!("- machine: {}", machine());
}

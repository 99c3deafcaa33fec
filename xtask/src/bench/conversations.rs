//! `cargo xtask bench conversations`: RecordInboundMessage through the
//! conversations service over loopback gRPC, spread over many conversations
//! and all on one hot conversation, each next to the same transaction sent
//! straight to Postgres in the same run; and the event stream's delivery lag,
//! from just before a write to its event reaching a WatchEvents subscriber,
//! next to Postgres's own commit-to-LISTEN lag.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use mesh_proto::mesh::conversations::v1 as pb;
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::watch;
use uuid::Uuid;

use super::{
    ConversationsClient as Client, Measurement, Options, Roles, latency_histogram, measure,
    peak_rss_note, print_table, run_bench, spread, start_conversations_service,
    start_users_service, thousands, with_service_cpu,
};
use crate::tools::Paths;

const DATABASE: &str = "mesh_bench_conversations";
/// Conversations (each its own user) the spread workload writes to.
const CONVERSATIONS: usize = 1_000;
/// Writes measured one at a time for the idle delivery lag.
const LAG_SAMPLES: usize = 1_000;
/// What the event stream's writers notify on (services/conversations/src/events.rs).
const NOTIFY_CHANNEL: &str = "conversation_events";

pub async fn run(options: &Options) -> Result<()> {
    // The conversations service is configured with the users service.
    run_bench(options, &["users", "conversations"], DATABASE, measure_all).await
}

async fn measure_all(paths: &Paths, roles: &Roles, options: Options) -> Result<()> {
    // Only SendMessage asks the users service (for recipients), but the
    // conversations service is configured with it, as in production.
    let (mut users, _) = start_users_service(paths, roles, options).await?;
    let (mut service, client) =
        start_conversations_service(paths, roles, options, &users, &[]).await?;
    let spread = Arc::new(start_conversations(&client, CONVERSATIONS).await?);
    let hot = Arc::new(start_conversations(&client, 1).await?);
    let direct = roles.pool("conversations", options.concurrency).await?;
    println!(
        "xtask: measuring {} requests per workload, {} in flight",
        options.requests, options.concurrency
    );
    let spread_workload = format!(
        "RecordInboundMessage ({} conversations)",
        thousands(CONVERSATIONS)
    );
    let loaded = format!(
        "{} writers, {} conversations",
        options.concurrency,
        thousands(CONVERSATIONS)
    );

    // The gRPC side: one WatchEvents subscriber for all of it.
    let pid = service.child.id();
    let grpc_lag = LagProbe::new();
    let subscriber = tokio::spawn(subscribe(client.clone(), grpc_lag.clone()));
    let spread_grpc = with_service_cpu(
        pid,
        inbound_grpc(&spread_workload, &client, &spread, Some(&grpc_lag), options),
    )
    .await?;
    let loaded_grpc = grpc_lag.finish(expected_writes(options)).await;
    let hot_grpc = with_service_cpu(
        pid,
        inbound_grpc(
            "RecordInboundMessage (one hot conversation)",
            &client,
            &hot,
            None,
            options,
        ),
    )
    .await?;
    let idle_grpc = idle_lag_grpc(&client, &spread, &grpc_lag).await?;
    subscriber.abort();
    let replay = replay_rate(&client, &direct).await?;

    // The same transactions straight to Postgres, with a LISTEN of our own.
    let direct_lag = LagProbe::new();
    let mut listener = PgListener::connect_with(&roles.pool("conversations", 1).await?).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    let listening = tokio::spawn(listen(listener, direct_lag.clone()));
    let spread_direct = inbound_direct(
        &spread_workload,
        &direct,
        &spread,
        Some(&direct_lag),
        options,
    )
    .await?;
    let loaded_direct = direct_lag.finish(expected_writes(options)).await;
    let hot_direct = inbound_direct(
        "RecordInboundMessage (one hot conversation)",
        &direct,
        &hot,
        None,
        options,
    )
    .await?;
    let idle_direct = idle_lag_direct(&direct, &spread, &direct_lag).await?;
    listening.abort();

    let rss = peak_rss_note("conversations", pid);
    service.stop();
    users.stop();
    print_table(
        "cargo xtask bench conversations",
        &[(spread_grpc, spread_direct), (hot_grpc, hot_direct)],
        &[
            rss,
            format!(
                "{} requests in flight; service pool {} connections (one is the event listener's), direct pool {}; client, services and Postgres share the machine; Postgres runs with fsync=off and synchronous_commit=off",
                options.concurrency,
                options.concurrency + 1,
                options.concurrency
            ),
            "direct = the service's statements for one inbound WhatsApp text (duplicate check; then in one transaction: conversation row lock and count, message insert, window upsert, and the one statement that takes the event head, inserts the event and notifies), sent by sqlx straight to Postgres as the same role".into(),
            "every write emits an event under the single event_head row lock, held to commit: all writes serialize on it for the length of their commit".into(),
            format!(
                "WatchEvents from_oldest replays {:.0} events/s to one client ({} events)",
                replay.0, replay.1
            ),
        ],
    );
    print_lag(&[
        (
            "one write at a time",
            "gRPC: RecordInbound → WatchEvents",
            &idle_grpc,
        ),
        (
            "one write at a time",
            "Postgres: transaction → LISTEN",
            &idle_direct,
        ),
        (&loaded, "gRPC: RecordInbound → WatchEvents", &loaded_grpc),
        (&loaded, "Postgres: transaction → LISTEN", &loaded_direct),
    ]);
    Ok(())
}

/// Measured plus warm-up requests of one workload.
fn expected_writes(options: Options) -> usize {
    options.requests + options.warm_up()
}

/// `n` WhatsApp conversations, each of a new user id.
async fn start_conversations(client: &Client, n: usize) -> Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let conversation = client
            .clone()
            .get_or_create_active_conversation(pb::GetOrCreateActiveConversationRequest {
                user_id: Uuid::now_v7().to_string(),
                channel: pb::Channel::Whatsapp as i32,
                ..Default::default()
            })
            .await?
            .into_inner()
            .conversation
            .context("no conversation")?;
        ids.push(conversation.id.parse()?);
    }
    Ok(ids)
}

fn inbound_request(conversation: Uuid, provider_id: &str) -> pb::RecordInboundMessageRequest {
    pb::RecordInboundMessageRequest {
        conversation_id: conversation.to_string(),
        message: Some(pb::Message {
            r#type: pb::MessageType::Text as i32,
            role: pb::MessageRole::User as i32,
            content: "Hola, ¿me recuerdas la cita de mañana a las 10?".into(),
            provider_message_id: provider_id.into(),
            ..Default::default()
        }),
        referral: None,
    }
}

fn provider_id(workload: &str, via: &str, i: usize) -> String {
    let slug: String = workload
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("wamid.bench.{slug}.{via}.{i}")
}

/// The i-th request's conversation, spreading requests over all of them.
fn pick(conversations: &[Uuid], i: usize) -> Uuid {
    conversations[spread(i, conversations.len())]
}

async fn inbound_grpc(
    workload: &str,
    client: &Client,
    conversations: &Arc<Vec<Uuid>>,
    lag: Option<&Arc<LagProbe>>,
    options: Options,
) -> Result<Measurement> {
    let (client, conversations, lag) = (client.clone(), conversations.clone(), lag.cloned());
    let name = workload.to_owned();
    measure(workload, "gRPC", options, move |i| {
        let mut client = client.clone();
        let provider_id = provider_id(&name, "grpc", i);
        let request = inbound_request(pick(&conversations, i), &provider_id);
        if let Some(lag) = &lag {
            lag.start(provider_id);
        }
        async move {
            let answer = client.record_inbound_message(request).await?.into_inner();
            if answer.duplicate {
                bail!("a new message was taken for a duplicate");
            }
            Ok(())
        }
    })
    .await
}

async fn inbound_direct(
    workload: &str,
    pool: &PgPool,
    conversations: &Arc<Vec<Uuid>>,
    lag: Option<&Arc<LagProbe>>,
    options: Options,
) -> Result<Measurement> {
    let (pool, conversations, lag) = (pool.clone(), conversations.clone(), lag.cloned());
    let name = workload.to_owned();
    measure(workload, "Postgres", options, move |i| {
        let (pool, lag) = (pool.clone(), lag.clone());
        let conversation = pick(&conversations, i);
        let provider_id = provider_id(&name, "direct", i);
        async move {
            insert_inbound(&pool, conversation, &provider_id, lag.as_deref()).await?;
            Ok(())
        }
    })
    .await
}

/// The service's statements for one inbound WhatsApp text message
/// (services/conversations/src/messages.rs `record_inbound`). With `lag`,
/// the time just before is recorded under the event's sequence number.
async fn insert_inbound(
    pool: &PgPool,
    conversation: Uuid,
    provider_id: &str,
    lag: Option<&LagProbe>,
) -> Result<()> {
    let started = Instant::now();
    let duplicate = sqlx::query(
        "SELECT * FROM messages WHERE provider_message_id = $2
           AND channel = (SELECT channel FROM conversations WHERE id = $1)",
    )
    .bind(conversation)
    .bind(provider_id)
    .fetch_optional(pool)
    .await?;
    if duplicate.is_some() {
        bail!("{provider_id} is already stored");
    }
    let mut tx = pool.begin().await?;
    let (user_id, channel, sequence_number): (Uuid, String, i64) = sqlx::query_as(
        "WITH locked AS (
             UPDATE conversations SET message_count = message_count + 1, last_message_time = now()
             WHERE id = $1 AND status = 'active' RETURNING *)
         SELECT user_id, channel, message_count FROM locked",
    )
    .bind(conversation)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, user_id, channel, sequence_number, direction,
            role, type, content, provider_message_id)
         VALUES ($1, $2, $3, $4, $5, 'inbound', 'user', 'text', $6, $7)
         RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(conversation)
    .bind(user_id)
    .bind(&channel)
    .bind(sequence_number)
    .bind("Hola, ¿me recuerdas la cita de mañana a las 10?")
    .bind(provider_id)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO messaging_windows (user_id, last_inbound_time) VALUES ($1, now())
         ON CONFLICT (user_id) DO UPDATE SET
            last_inbound_time = GREATEST(messaging_windows.last_inbound_time, EXCLUDED.last_inbound_time),
            update_time = now()",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    // events::emit: the head, the event and the notification in one statement.
    let seq: i64 = sqlx::query_scalar(
        "WITH head AS (
             UPDATE event_head SET last_seq = last_seq + 1 RETURNING last_seq),
         stored AS (
             INSERT INTO events (seq, type, user_id, conversation_id, payload)
             SELECT last_seq, 'message_received', $1, $2, $3 FROM head
             RETURNING seq)
         SELECT seq FROM stored CROSS JOIN LATERAL pg_notify($4, seq::text)",
    )
    .bind(user_id)
    .bind(conversation)
    // About the size of the service's encoded event for this message.
    .bind(vec![0x2au8; 280])
    .bind(NOTIFY_CHANNEL)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(lag) = lag {
        lag.start_at(seq.to_string(), started);
    }
    tx.commit().await?;
    Ok(())
}

/// Arrival times of events, matched to when their write began.
struct LagProbe {
    starts: Mutex<HashMap<String, Instant>>,
    histogram: Mutex<Histogram<u64>>,
    recorded: watch::Sender<usize>,
}

impl LagProbe {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            starts: Mutex::new(HashMap::new()),
            histogram: Mutex::new(latency_histogram()),
            recorded: watch::channel(0).0,
        })
    }

    fn start(&self, key: String) {
        self.start_at(key, Instant::now());
    }

    fn start_at(&self, key: String, at: Instant) {
        self.starts.lock().expect("not poisoned").insert(key, at);
    }

    fn arrived(&self, key: &str) {
        let started = self.starts.lock().expect("not poisoned").remove(key);
        if let Some(started) = started {
            let lag = (started.elapsed().as_micros() as u64).max(1);
            self.histogram
                .lock()
                .expect("not poisoned")
                .saturating_record(lag);
            self.recorded.send_modify(|n| *n += 1);
        }
    }

    /// Waits for `n` arrivals (at most 30 s more), then hands over what was
    /// recorded and starts afresh.
    async fn finish(&self, n: usize) -> Histogram<u64> {
        let mut recorded = self.recorded.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(30), recorded.wait_for(|r| *r >= n)).await;
        self.starts.lock().expect("not poisoned").clear();
        self.recorded.send_replace(0);
        std::mem::replace(
            &mut *self.histogram.lock().expect("not poisoned"),
            latency_histogram(),
        )
    }
}

/// A WatchEvents subscriber that reports each message event to `lag`.
async fn subscribe(mut client: Client, lag: Arc<LagProbe>) -> Result<()> {
    let mut stream = client
        .watch_events(pb::WatchEventsRequest {
            types: vec![pb::EventType::MessageReceived as i32],
            ..Default::default()
        })
        .await?
        .into_inner();
    while let Some(response) = stream.message().await? {
        if let Some(message) = response.event.and_then(|e| e.message) {
            lag.arrived(&message.provider_message_id);
        }
    }
    Ok(())
}

/// A LISTEN of our own that reports each notification to `lag`.
async fn listen(mut listener: PgListener, lag: Arc<LagProbe>) -> Result<()> {
    loop {
        let notification = listener.recv().await?;
        lag.arrived(notification.payload());
    }
}

/// One write at a time, each waiting for its event before the next.
async fn idle_lag_grpc(
    client: &Client,
    conversations: &[Uuid],
    lag: &LagProbe,
) -> Result<Histogram<u64>> {
    let mut recorded = lag.recorded.subscribe();
    for i in 0..LAG_SAMPLES {
        let provider_id = provider_id("idle", "grpc", i);
        lag.start(provider_id.clone());
        client
            .clone()
            .record_inbound_message(inbound_request(pick(conversations, i), &provider_id))
            .await?;
        wait_arrival(&mut recorded, i + 1).await?;
    }
    Ok(lag.finish(LAG_SAMPLES).await)
}

async fn idle_lag_direct(
    pool: &PgPool,
    conversations: &[Uuid],
    lag: &LagProbe,
) -> Result<Histogram<u64>> {
    let mut recorded = lag.recorded.subscribe();
    for i in 0..LAG_SAMPLES {
        let provider_id = provider_id("idle", "direct", i);
        insert_inbound(pool, pick(conversations, i), &provider_id, Some(lag)).await?;
        wait_arrival(&mut recorded, i + 1).await?;
    }
    Ok(lag.finish(LAG_SAMPLES).await)
}

async fn wait_arrival(recorded: &mut watch::Receiver<usize>, n: usize) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(10), recorded.wait_for(|r| *r >= n))
        .await
        .context("an event did not arrive within 10 s")??;
    Ok(())
}

/// Events per second one WatchEvents client reads from the oldest to the
/// head, and how many.
async fn replay_rate(client: &Client, pool: &PgPool) -> Result<(f64, i64)> {
    let head: i64 = sqlx::query_scalar("SELECT last_seq FROM event_head")
        .fetch_one(pool)
        .await?;
    let started = Instant::now();
    let mut stream = client
        .clone()
        .watch_events(pb::WatchEventsRequest {
            from_oldest: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut read = 0;
    while read < head {
        if stream.message().await?.is_none() {
            bail!("the replay ended after {read} of {head} events");
        }
        read += 1;
    }
    Ok((head as f64 / started.elapsed().as_secs_f64(), head))
}

fn print_lag(rows: &[(&str, &str, &Histogram<u64>)]) {
    println!("\n#### Event delivery lag (from just before the write to the event's arrival)\n");
    println!("| load | path | events | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---:|---:|---:|---:|");
    for (load, path, histogram) in rows {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {load} | {path} | {} | {:.2} | {:.2} | {:.2} |",
            histogram.len(),
            ms(0.5),
            ms(0.99),
            histogram.max() as f64 / 1000.0
        );
    }
    println!();
}

//! `cargo xtask bench gateway`: signed WhatsApp text webhooks (a unique
//! message id each, from 1,000 senders) posted over loopback HTTP to the
//! gateway, which hands each on to the users, billing (the inbound quota) and
//! conversations services (all four release-built processes of their own);
//! next to the same five gRPC calls per message made directly by this
//! process, in the same run, so the
//! gateway's overhead can be read. Afterwards every acknowledged message is
//! looked up in the database, and a sample is posted again to show a
//! duplicate is not stored twice. Exits non-zero when what was acknowledged
//! and what was stored differ.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use mesh_proto::mesh::{billing::v1 as billing, conversations::v1 as conv, users::v1 as users};

use super::{
    BillingClient as Billing, ConversationsClient as Conversations, Measurement, Options, Roles,
    Service, UsersClient as Users, cpu_time, drive, measure, peak_rss, print_table_with, run_bench,
    spread, start_billing_service, start_conversations_service, start_users_service,
};
use crate::{tools::Paths, whatsapp};

const DATABASE: &str = "mesh_bench_gateway";
/// Distinct senders (users, hence conversations) the messages come from.
const SENDERS: usize = 1_000;
/// The gateway's WHATSAPP_APP_SECRET, which every body is signed with.
const APP_SECRET: &str = "bench-app-secret";
/// One acknowledged webhook in this many is posted again (5%).
const DUPLICATE_EVERY: usize = 20;
/// Message texts, taken in turn; most are not ASCII.
const TEXTS: &[&str] = &[
    "¿Mañana a las 9? 👍",
    "Hola, ¿me recuerdas la cita de mañana a las 10?",
    "Perfecto, gracias",
    "Ça marche, à demain 🙂",
    "Can we move it to Friday?",
];

const WORKLOAD: &str = "WhatsApp text webhook (1,000 senders)";
const VIA_GATEWAY: &str = "gateway (HTTP)";
const VIA_GRPC: &str = "gRPC, no gateway";

pub async fn run(options: &Options) -> Result<()> {
    run_bench(
        options,
        &["users", "conversations", "billing", "gateway"],
        DATABASE,
        measure_all,
    )
    .await
}

async fn measure_all(paths: &Paths, roles: &Roles, options: Options) -> Result<()> {
    let (mut users, users_client) = start_users_service(paths, roles, options).await?;
    let (mut conversations, conversations_client) =
        start_conversations_service(paths, roles, options, &users, &[]).await?;
    // Every inbound message is counted against its sender's quota first,
    // under a plan no run reaches: the quota is checked, never refused, so
    // both paths do the same work at any --requests.
    let scratch = tempfile::tempdir()?;
    let plans = scratch.path().join("plans.json");
    std::fs::write(
        &plans,
        r#"{"plans": [{"id": "free", "limits": {"inbound_messages": 1000000000}}]}"#,
    )?;
    let (mut billing, billing_client) = start_billing_service(
        paths,
        roles,
        options,
        &users,
        &[("BILLING_PLANS_FILE", plans.to_string_lossy().into_owned())],
    )
    .await?;
    let mut gateway = Service::start(
        paths,
        "gateway",
        &[
            ("GATEWAY_USERS_URL", format!("http://{}", users.addr)),
            (
                "GATEWAY_CONVERSATIONS_URL",
                format!("http://{}", conversations.addr),
            ),
            ("GATEWAY_BILLING_URL", format!("http://{}", billing.addr)),
            ("WHATSAPP_APP_SECRET", APP_SECRET.to_owned()),
        ],
    )?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    gateway.wait_http_ok(&http, "/readyz").await?;

    // Unique to this run, so the database count below is this run's alone.
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let prefix = format!("wamid.bench.{run_id}.");
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let messages = Arc::new(Messages {
        gateway_prefix: format!("{prefix}gw."),
        grpc_prefix: format!("{prefix}grpc."),
        timestamp,
    });
    seed_senders(&users_client, &conversations_client, options).await?;
    println!(
        "xtask: measuring {} webhooks per path, {} in flight, message ids {prefix}*",
        options.requests, options.concurrency
    );

    let pids = [
        ("gateway", gateway.child.id()),
        ("users", users.child.id()),
        ("conversations", conversations.child.id()),
        ("billing", billing.child.id()),
    ];
    let gateway_url = format!("http://{}/webhooks/whatsapp", gateway.addr);
    let via_gateway_tally = Arc::new(Tally::default());
    let before = cpu_all(&pids);
    let mut via_gateway =
        post_webhooks(&http, &gateway_url, &messages, &via_gateway_tally, options).await?;
    let via_gateway_cpu = cpu_since(&pids, &before);
    // The table's service CPU column: the gateway's (pids[0]).
    via_gateway.service_cpu = via_gateway_cpu[0];

    let direct_tally = Arc::new(Tally::default());
    let before = cpu_all(&pids);
    let direct = call_directly(
        &users_client,
        &billing_client,
        &conversations_client,
        &messages,
        &direct_tally,
        options,
    )
    .await?;
    let direct_cpu = cpu_since(&pids, &before);

    // What was acknowledged, against what the database holds.
    let mut db = roles.superuser().await?;
    let via_gateway_check =
        check_stored(&mut db, &messages.gateway_prefix, &via_gateway_tally).await?;
    let direct_check = check_stored(&mut db, &messages.grpc_prefix, &direct_tally).await?;

    // A sample of acknowledged webhooks posted again, byte for byte.
    let duplicates = repost(&http, &gateway_url, &messages, &via_gateway_tally, options).await?;
    let after_duplicates = stored_ids(&mut db, &messages.gateway_prefix).await?.len();

    let rss: Vec<String> = pids
        .iter()
        .map(|(name, pid)| format!("{name} {}", peak_rss(*pid)))
        .collect();
    // Both paths must have done the quota check: a gateway that skipped it
    // (billing away) would look cheaper than it is.
    let metrics = http
        .get(format!("http://{}/metrics", gateway.addr))
        .send()
        .await?
        .text()
        .await?;
    gateway.stop();
    conversations.stop();
    billing.stop();
    users.stop();

    let answers = via_gateway_tally.statuses();
    let per_message = |cpu: &[Option<Duration>], n: usize| -> Vec<String> {
        pids.iter()
            .zip(cpu)
            .map(|((name, _), cpu)| {
                cpu.map_or(format!("{name} unknown"), |cpu| {
                    format!("{name} {:.0}", cpu.as_secs_f64() * 1e6 / n as f64)
                })
            })
            .collect()
    };
    let all = options.requests + options.warm_up();
    let duplicate_verdict = if duplicates.answered_duplicate == duplicates.posted
        && after_duplicates == via_gateway_check.stored
    {
        "not stored twice"
    } else {
        "NOT AS EXPECTED"
    };
    print_table_with(
        "cargo xtask bench gateway",
        "gRPC/gateway throughput",
        &[(via_gateway, direct)],
        &[
            format!("gateway answers to the measured webhooks, by status: {answers}"),
            format!(
                "acknowledged vs stored (warm-up included; stored = rows of conversations.messages with this run's message id prefix): via the gateway {} acknowledged (200, \"stored\":1), {} stored; gRPC without the gateway {} acknowledged, {} stored",
                via_gateway_check.acknowledged,
                via_gateway_check.stored,
                direct_check.acknowledged,
                direct_check.stored
            ),
            format!(
                "duplicates: {} acknowledged webhooks ({}%) posted again byte for byte: {} answered 200 with \"duplicates\":1 (p50 {:.2} ms, p99 {:.2} ms); stored count after them {} ({duplicate_verdict})",
                duplicates.posted,
                100 / DUPLICATE_EVERY,
                duplicates.answered_duplicate,
                duplicates.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
                duplicates.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                after_duplicates
            ),
            format!("peak RSS (release builds): {}", rss.join(", ")),
            format!(
                "CPU per message (µs, warm-up included): via the gateway: {}; without it: {}",
                per_message(&via_gateway_cpu, all).join(", "),
                per_message(&direct_cpu, all).join(", ")
            ),
            format!(
                "{} requests in flight; each message: users.UpsertUserByPhone, billing.ConsumeQuota, conversations.GetOrCreateActiveConversation, then RecordInboundMessage and users.TouchLastMessage at once, as the gateway does; {SENDERS} senders, each made a user with an active WhatsApp conversation before measuring (the path of a known contact writing again)",
                options.concurrency
            ),
            "load client: reqwest over HTTP/1.1 keep-alive (a connection per request in flight), the body signed (HMAC-SHA256) per request; the gateway and the gRPC reference each use one HTTP/2 channel per service; client, gateway, services and Postgres share the machine; Postgres runs with fsync=off and synchronous_commit=off".into(),
        ],
    );
    let mut problems = Vec::new();
    for line in metrics.lines().filter(|l| {
        l.starts_with("gateway_inbound_quota_checks_total")
            && !l.contains("result=\"within\"")
            && !l.ends_with(" 0")
    }) {
        problems.push(format!("the gateway did not check every quota: {line}"));
    }
    for (path, check) in [
        ("via the gateway", &via_gateway_check),
        ("without the gateway", &direct_check),
    ] {
        if let Some(problem) = check.problem() {
            problems.push(format!("{path}: {problem}"));
        }
    }
    if duplicates.answered_duplicate != duplicates.posted {
        problems.push(format!(
            "{} of {} re-posted webhooks were not answered 200 with \"duplicates\":1",
            duplicates.posted - duplicates.answered_duplicate,
            duplicates.posted
        ));
    }
    if after_duplicates != via_gateway_check.stored {
        problems.push(format!(
            "re-posting acknowledged webhooks changed the stored count from {} to {after_duplicates}",
            via_gateway_check.stored
        ));
    }
    if !problems.is_empty() {
        bail!(
            "acknowledged and stored differ:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// The run's messages: the i-th of a path is a function of i alone, so a
/// webhook can be rebuilt byte for byte to be posted again.
struct Messages {
    gateway_prefix: String,
    grpc_prefix: String,
    timestamp: i64,
}

impl Messages {
    /// The i-th message's sender: its WhatsApp id (E.164 digits) and profile name.
    fn sender(i: usize) -> (String, String) {
        Self::nth_sender(spread(i, SENDERS))
    }

    fn nth_sender(sender: usize) -> (String, String) {
        (format!("5730{sender:08}"), format!("Sender {sender}"))
    }

    fn text(i: usize) -> &'static str {
        TEXTS[i % TEXTS.len()]
    }

    /// The i-th webhook of the gateway path: its body and signature header.
    fn webhook(&self, i: usize) -> (Vec<u8>, String) {
        let (wa_id, profile_name) = Self::sender(i);
        let wamid = format!("{}{i}", self.gateway_prefix);
        let body = whatsapp::TextMessage {
            wa_id: &wa_id,
            profile_name: &profile_name,
            wamid: &wamid,
            timestamp: self.timestamp,
            text: Self::text(i),
        }
        .body();
        let signature = whatsapp::signature(APP_SECRET, &body);
        (body, signature)
    }
}

/// What one path's calls answered.
#[derive(Default)]
struct Tally {
    /// Answers to measured requests, by HTTP status (or "transport error").
    statuses: Mutex<BTreeMap<String, usize>>,
    /// Indices (warm-up included) acknowledged: 200 from the gateway, every
    /// call OK without it.
    acknowledged: Mutex<Vec<usize>>,
}

impl Tally {
    fn answered(&self, measured: bool, status: &str) {
        if measured {
            *self
                .statuses
                .lock()
                .expect("not poisoned")
                .entry(status.to_owned())
                .or_default() += 1;
        }
    }

    fn acknowledge(&self, i: usize) {
        self.acknowledged.lock().expect("not poisoned").push(i);
    }

    fn acknowledged(&self) -> Vec<usize> {
        let mut all = self.acknowledged.lock().expect("not poisoned").clone();
        all.sort_unstable();
        all
    }

    /// `200 × 20000, 503 × 3`.
    fn statuses(&self) -> String {
        let statuses = self.statuses.lock().expect("not poisoned");
        if statuses.is_empty() {
            return "none".into();
        }
        statuses
            .iter()
            .map(|(status, n)| format!("{status} × {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Posts the i-th signed webhook for i in the measured range (and the warm-up).
async fn post_webhooks(
    http: &reqwest::Client,
    url: &str,
    messages: &Arc<Messages>,
    tally: &Arc<Tally>,
    options: Options,
) -> Result<Measurement> {
    let (http, url, messages, tally) = (
        http.clone(),
        Arc::new(url.to_owned()),
        messages.clone(),
        tally.clone(),
    );
    measure(WORKLOAD, VIA_GATEWAY, options, move |i| {
        let (http, url, tally) = (http.clone(), url.clone(), tally.clone());
        let (body, signature) = messages.webhook(i);
        let measured = i < options.requests;
        async move {
            let summary = match whatsapp::post_delivery(&http, &url, body, signature).await {
                Ok((status, summary)) => {
                    tally.answered(measured, status.as_str());
                    if status != reqwest::StatusCode::OK {
                        bail!("answered {status}");
                    }
                    summary
                }
                Err(e) => {
                    tally.answered(measured, "transport error");
                    return Err(e);
                }
            };
            // A 200 is the gateway's word that the message is in: the
            // provider would never send it again. The database check holds
            // it to that.
            tally.acknowledge(i);
            if summary.stored != 1 {
                bail!("a new message was not stored: {summary:?}");
            }
            Ok(())
        }
    })
    .await
}

/// The gateway's work for the i-th message, done from here over gRPC.
async fn call_directly(
    users: &Users,
    billing: &Billing,
    conversations: &Conversations,
    messages: &Arc<Messages>,
    tally: &Arc<Tally>,
    options: Options,
) -> Result<Measurement> {
    let (users, billing, conversations, messages, tally) = (
        users.clone(),
        billing.clone(),
        conversations.clone(),
        messages.clone(),
        tally.clone(),
    );
    measure(WORKLOAD, VIA_GRPC, options, move |i| {
        let (mut users, mut billing, mut conversations, tally) = (
            users.clone(),
            billing.clone(),
            conversations.clone(),
            tally.clone(),
        );
        let (wa_id, profile_name) = Messages::sender(i);
        let provider_message_id = format!("{}{i}", messages.grpc_prefix);
        let time = prost_types::Timestamp {
            seconds: messages.timestamp,
            nanos: 0,
        };
        async move {
            let user = users
                .upsert_user_by_phone(users::UpsertUserByPhoneRequest {
                    phone: wa_id,
                    profile_name,
                })
                .await?
                .into_inner()
                .user
                .context("UpsertUserByPhone answered no user")?;
            // The gateway's inbound quota (gateway/src/inbound/quota.rs).
            let quota = billing
                .consume_quota(billing::ConsumeQuotaRequest {
                    user_id: user.id.clone(),
                    feature: billing::Feature::InboundMessages.into(),
                    amount: 1,
                    request_id: format!("inbound:whatsapp:{provider_message_id}"),
                })
                .await;
            // Under the bench's plan the quota is never used up.
            quota?;
            let conversation = conversations
                .get_or_create_active_conversation(conv::GetOrCreateActiveConversationRequest {
                    user_id: user.id.clone(),
                    channel: conv::Channel::Whatsapp.into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .conversation
                .context("GetOrCreateActiveConversation answered no conversation")?;
            // What the gateway sends for a WhatsApp text (gateway/src/inbound/whatsapp.rs).
            let metadata = mesh_runtime::convert::json_to_struct(&serde_json::json!({
                "whatsapp": {"phone_number_id": whatsapp::PHONE_NUMBER_ID, "type": "text"}
            }));
            let mut touch_users = users.clone();
            let record = conversations.record_inbound_message(conv::RecordInboundMessageRequest {
                conversation_id: conversation.id,
                message: Some(conv::Message {
                    r#type: conv::MessageType::Text.into(),
                    content: Messages::text(i).to_owned(),
                    provider_message_id,
                    metadata: Some(metadata),
                    provider_time: Some(time),
                    ..Default::default()
                }),
                referral: None,
            });
            let touch = touch_users.touch_last_message(users::TouchLastMessageRequest {
                user_id: user.id,
                message_time: Some(time),
            });
            let (recorded, touched) = tokio::join!(record, touch);
            touched?;
            if recorded?.into_inner().duplicate {
                bail!("a new message was taken for a duplicate");
            }
            tally.acknowledge(i);
            Ok(())
        }
    })
    .await
}

/// Makes every sender a user with an active WhatsApp conversation, so both
/// paths measure the same thing: a known contact writing again.
async fn seed_senders(
    users: &Users,
    conversations: &Conversations,
    options: Options,
) -> Result<()> {
    let (users, conversations) = (users.clone(), conversations.clone());
    let seed = move |sender: usize| {
        let (mut users, mut conversations) = (users.clone(), conversations.clone());
        let (phone, profile_name) = Messages::nth_sender(sender);
        async move {
            let user = users
                .upsert_user_by_phone(users::UpsertUserByPhoneRequest {
                    phone,
                    profile_name,
                })
                .await?
                .into_inner()
                .user
                .context("UpsertUserByPhone answered no user")?;
            conversations
                .get_or_create_active_conversation(conv::GetOrCreateActiveConversationRequest {
                    user_id: user.id,
                    channel: conv::Channel::Whatsapp.into(),
                    ..Default::default()
                })
                .await?;
            Ok(())
        }
    };
    let (_, errors) = drive(Arc::new(seed), 0..SENDERS, options.concurrency).await?;
    if errors > 0 {
        bail!("{errors} of {SENDERS} senders could not be seeded");
    }
    Ok(())
}

/// Acknowledged against stored, for one path.
struct Check {
    acknowledged: usize,
    stored: usize,
    /// Acknowledged ids the database does not have (the first few).
    missing: Vec<String>,
    missing_count: usize,
}

impl Check {
    fn problem(&self) -> Option<String> {
        if self.acknowledged == self.stored && self.missing_count == 0 {
            return None;
        }
        Some(format!(
            "{} acknowledged, {} stored; {} acknowledged but not stored (e.g. {:?})",
            self.acknowledged, self.stored, self.missing_count, self.missing
        ))
    }
}

async fn check_stored(db: &mut sqlx::PgConnection, prefix: &str, tally: &Tally) -> Result<Check> {
    let stored = stored_ids(db, prefix).await?;
    let acknowledged = tally.acknowledged();
    let missing: Vec<String> = acknowledged
        .iter()
        .map(|i| format!("{prefix}{i}"))
        .filter(|id| !stored.contains(id))
        .collect();
    Ok(Check {
        acknowledged: acknowledged.len(),
        stored: stored.len(),
        missing_count: missing.len(),
        missing: missing.into_iter().take(5).collect(),
    })
}

/// The provider message ids stored under `prefix`.
async fn stored_ids(db: &mut sqlx::PgConnection, prefix: &str) -> Result<HashSet<String>> {
    // The prefix has no LIKE wildcards (`%`, `_`): letters, digits and dots.
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT provider_message_id FROM conversations.messages WHERE provider_message_id LIKE $1",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(db)
    .await?;
    Ok(ids.into_iter().collect())
}

struct Duplicates {
    posted: usize,
    answered_duplicate: usize,
    latency_us: hdrhistogram::Histogram<u64>,
}

/// Posts every [`DUPLICATE_EVERY`]th acknowledged webhook again.
async fn repost(
    http: &reqwest::Client,
    url: &str,
    messages: &Arc<Messages>,
    tally: &Tally,
    options: Options,
) -> Result<Duplicates> {
    let sample: Arc<Vec<usize>> = Arc::new(
        tally
            .acknowledged()
            .into_iter()
            .step_by(DUPLICATE_EVERY)
            .collect(),
    );
    let call = {
        let (http, url, messages, sample) = (
            http.clone(),
            Arc::new(url.to_owned()),
            messages.clone(),
            sample.clone(),
        );
        move |k: usize| {
            let (http, url) = (http.clone(), url.clone());
            let (body, signature) = messages.webhook(sample[k]);
            async move {
                let (status, summary) =
                    whatsapp::post_delivery(&http, &url, body, signature).await?;
                if status != reqwest::StatusCode::OK
                    || summary.duplicates != 1
                    || summary.stored != 0
                {
                    bail!("a duplicate was answered {status} {summary:?}");
                }
                Ok(())
            }
        }
    };
    println!(
        "xtask: posting {} acknowledged webhooks again",
        sample.len()
    );
    // Every call that did not fail was answered as a duplicate.
    let (latency_us, errors) = drive(Arc::new(call), 0..sample.len(), options.concurrency).await?;
    Ok(Duplicates {
        posted: sample.len(),
        answered_duplicate: sample.len() - errors,
        latency_us,
    })
}

/// CPU time so far of each process.
fn cpu_all(pids: &[(&str, u32)]) -> Vec<Option<Duration>> {
    pids.iter().map(|(_, pid)| cpu_time(*pid)).collect()
}

/// CPU time of each process since `before`.
fn cpu_since(pids: &[(&str, u32)], before: &[Option<Duration>]) -> Vec<Option<Duration>> {
    cpu_all(pids)
        .into_iter()
        .zip(before)
        .map(|(after, before)| after.zip(*before).map(|(a, b)| a.saturating_sub(b)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_is_rebuilt_byte_for_byte_and_signed() {
        let messages = Messages {
            gateway_prefix: "wamid.bench.x.gw.".into(),
            grpc_prefix: "wamid.bench.x.grpc.".into(),
            timestamp: 1_732_270_000,
        };
        let (body, signature) = messages.webhook(7);
        // What the re-post relies on: the same index gives the same bytes.
        assert_eq!(messages.webhook(7), (body.clone(), signature.clone()));
        assert_ne!(messages.webhook(8).0, body);
        assert_eq!(signature, whatsapp::signature(APP_SECRET, &body));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let message = &value["entry"][0]["changes"][0]["value"]["messages"][0];
        assert_eq!(message["id"], "wamid.bench.x.gw.7");
        assert_eq!(message["from"], Messages::sender(7).0);
    }

    #[test]
    fn a_check_fails_when_acknowledged_and_stored_differ() {
        let check = |acknowledged, stored, missing: &[&str]| Check {
            acknowledged,
            stored,
            missing: missing.iter().map(|id| id.to_string()).collect(),
            missing_count: missing.len(),
        };
        assert_eq!(check(3, 3, &[]).problem(), None);
        let lost = check(3, 2, &["wamid.bench.x.gw.1"]).problem().unwrap();
        assert!(lost.contains("1 acknowledged but not stored"), "{lost}");
        // As many rows as acknowledgements, but not the acknowledged ones.
        assert!(check(3, 3, &["wamid.bench.x.gw.1"]).problem().is_some());
        // More stored than acknowledged (a webhook answered 5xx yet stored).
        assert!(check(3, 4, &[]).problem().is_some());
    }

    #[test]
    fn the_tally_counts_measured_answers_only_and_sorts_acknowledgements() {
        let tally = Tally::default();
        assert_eq!(tally.statuses(), "none");
        tally.answered(true, "200 OK");
        tally.answered(true, "200 OK");
        tally.answered(false, "200 OK");
        tally.answered(true, "503 Service Unavailable");
        assert_eq!(tally.statuses(), "200 OK × 2, 503 Service Unavailable × 1");
        for i in [5, 1, 3] {
            tally.acknowledge(i);
        }
        assert_eq!(tally.acknowledged(), [1, 3, 5]);
    }
}

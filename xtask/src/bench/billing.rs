//! `cargo xtask bench billing`: ConsumeQuota and RecordAiUsage through the
//! billing service over loopback gRPC, each with every caller on one hot user
//! and spread over 1,000 users. The users are made through the users service
//! (release, its own process), which billing asks for a user's time zone and
//! owned workspaces on their first call and then caches
//! (BILLING_PROFILE_CACHE_SECONDS). Every call has a request_id of its own.
//! The bench's free plan (BILLING_PLANS_FILE) has finite limits no run
//! reaches, so the limit check runs on every call and nothing is refused;
//! refusals are counted all the same.
//!
//! Then correctness: the hot user's counters, read back through
//! GetEntitlements, must equal what the successful calls consumed; answered
//! request_ids sent again must consume nothing; and the callers racing for a
//! limit of 1,000 on one user must get exactly 1,000 through and the rest
//! refused with RESOURCE_EXHAUSTED. Exits non-zero when a check fails.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use anyhow::{Context, Result, bail};
use mesh_proto::mesh::{billing::v1 as pb, users::v1 as users_pb};
use tonic::Code;
use uuid::Uuid;

use super::{
    BillingClient as Client, Measurement, Options, Roles, UsersClient, measure, peak_rss_note,
    print_measurements, rate, run_bench, spread, start_billing_service, start_users_service,
    thousands, with_service_cpu,
};
use crate::tools::Paths;

const DATABASE: &str = "mesh_bench_billing";
/// Users the spread workloads are spread over.
const USERS: usize = 1_000;
/// The users' time zones, taken in turn (the hot user's is the first).
const ZONES: &[&str] = &[
    "America/Bogota",
    "America/Mexico_City",
    "Europe/Madrid",
    "Asia/Kolkata",
    "UTC",
];
/// The free plan's documents limit, which the race check's callers race for.
const DOCUMENTS_LIMIT: usize = 1_000;
/// Calls racing for it (measured; a warm-up of a tenth more comes first).
const RACE_CALLS: usize = 3 * DOCUMENTS_LIMIT;
/// Answered requests of each hot workload sent again, byte for byte.
const REPEATS: usize = 100;
/// Each RecordAiUsage call's tokens, priced from the built-in table.
const PROVIDER: &str = "openai";
const MODEL: &str = "gpt-4o-mini";
const INPUT_TOKENS: i64 = 1_200;
const OUTPUT_TOKENS: i64 = 300;

pub async fn run(options: &Options) -> Result<()> {
    // The billing service is configured with the users service.
    run_bench(options, &["users", "billing"], DATABASE, measure_all).await
}

/// The bench's one plan: every limit finite, none reached by the
/// throughput runs (inbound messages, tokens, cost), documents small for the
/// race check.
fn plans_file() -> String {
    format!(
        r#"{{"plans": [{{"id": "free", "display_name": "Bench",
  "limits": {{"inbound_messages": 1000000000, "ai_tokens": 1000000000000,
             "ai_cost_usd": "1000000", "memories": 1000000000,
             "documents": {DOCUMENTS_LIMIT}}}}}]}}"#
    )
}

async fn measure_all(paths: &Paths, roles: &Roles, options: Options) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let plans = scratch.path().join("plans.json");
    std::fs::write(&plans, plans_file())?;

    let (mut users_service, mut users) = start_users_service(paths, roles, options).await?;
    let (mut service, client) = start_billing_service(
        paths,
        roles,
        options,
        &users_service,
        &[("BILLING_PLANS_FILE", plans.to_string_lossy().into_owned())],
    )
    .await?;
    println!(
        "xtask: creating {} users in {} time zones through the users service",
        USERS + 2,
        ZONES.len()
    );
    let spread_users = Arc::new(create_users(&mut users, "spread", 0, USERS).await?);
    let hot = Arc::new(create_users(&mut users, "hot", 1, 1).await?);
    let racer = create_users(&mut users, "race", 2, 1).await?.remove(0);
    println!(
        "xtask: measuring {} requests per workload, {} in flight",
        options.requests, options.concurrency
    );

    // Unique to this run: every request_id is `bench-<run>-<workload>-<i>`.
    let run = Uuid::now_v7().simple().to_string();
    let many = format!("{} users", thousands(USERS));
    let pid = service.child.id();
    let mut checks = Checks::default();

    let before = quota(&client, &hot[0], pb::Feature::InboundMessages).await?;
    let consume_hot = Workload::consume(&run, "consume-hot", hot.clone());
    let (consume_hot_m, consume_hot_n) = with_outcomes(pid, &consume_hot, &client, options).await?;
    checks
        .counter(
            &client,
            &consume_hot.name,
            &hot[0],
            pb::Feature::InboundMessages,
            &before,
            consume_hot_n.ok(),
            1,
        )
        .await?;
    checks
        .repeats(&client, &consume_hot, &hot[0], options)
        .await?;

    let consume_many = Workload::consume(&run, "consume-many", spread_users.clone());
    let (consume_many_m, consume_many_n) =
        with_outcomes(pid, &consume_many, &client, options).await?;

    let before = quota(&client, &hot[0], pb::Feature::AiTokens).await?;
    let record_hot = Workload::record(&run, "record-hot", hot.clone());
    let (record_hot_m, record_hot_n) = with_outcomes(pid, &record_hot, &client, options).await?;
    checks
        .counter(
            &client,
            &record_hot.name,
            &hot[0],
            pb::Feature::AiTokens,
            &before,
            record_hot_n.ok(),
            (INPUT_TOKENS + OUTPUT_TOKENS) as u64,
        )
        .await?;
    checks
        .repeats(&client, &record_hot, &hot[0], options)
        .await?;

    let record_many = Workload::record(&run, "record-many", spread_users.clone());
    let (record_many_m, record_many_n) = with_outcomes(pid, &record_many, &client, options).await?;

    let race = race(pid, &client, &run, &racer, options, &mut checks).await?;

    let rss = peak_rss_note("billing", pid);
    service.stop();
    users_service.stop();

    let rows = [
        (consume_hot_m, consume_hot_n),
        (consume_many_m, consume_many_n),
        (record_hot_m, record_hot_n),
        (record_many_m, record_many_n),
    ];
    let rows_refused: Vec<usize> = rows.iter().map(|(_, n)| n.refused()).collect();
    let refused = rows
        .iter()
        .map(|(m, n)| format!("{} {}", m.workload, n.refused()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut notes = vec![
        rss,
        format!(
            "{} callers; billing pool {} connections; each call a request_id of its own, whose idempotency row is written in the call's transaction; client, users, billing and Postgres share the machine; Postgres runs with fsync=off and synchronous_commit=off",
            options.concurrency, options.concurrency
        ),
        format!(
            "ConsumeQuota: FEATURE_INBOUND_MESSAGES, amount 1; RecordAiUsage: {PROVIDER}/{MODEL}, {} + {OUTPUT_TOKENS} tokens, cost from the price table (a ledger row, then AI_TOKENS and AI_COST_USD added to)",
            thousands(INPUT_TOKENS as usize)
        ),
        format!(
            "the plan's limits are finite (the check runs on every call) but out of reach: refused (RESOURCE_EXHAUSTED), warm-up included: {refused}"
        ),
        format!(
            "{many} (and the hot user) made through the users service, in {} time zones; billing asks users for a user's time zone and workspaces on their first call and caches them 300 s, {}",
            ZONES.len(),
            if options.warm_up() >= USERS {
                "so after the warm-up (which reaches every user) measured calls make no call on users"
            } else {
                "and the warm-up is too short to reach every user: some measured calls ask users"
            }
        ),
        race,
    ];
    notes.extend(checks.lines.iter().cloned());
    let rows: Vec<Measurement> = rows.into_iter().map(|(m, _)| m).collect();
    print_measurements("cargo xtask bench billing", &rows, &notes);
    // A refusal is a cheap rollback: counted as a success it would flatter
    // the throughput, so the out-of-reach limits must have held.
    let refusals: usize = rows_refused.iter().sum();
    if checks.failed > 0 || refusals > 0 {
        bail!(
            "{} correctness check(s) failed and {refusals} throughput call(s) refused: see above",
            checks.failed
        );
    }
    Ok(())
}

/// `n` users, with phones +5732`range`0000000 on and a time zone of
/// [`ZONES`] each in turn; their ids.
async fn create_users(
    users: &mut UsersClient,
    tag: &str,
    range: u8,
    n: usize,
) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let user = users
            .create_user(users_pb::CreateUserRequest {
                user: Some(users_pb::User {
                    phone: Some(format!("+5732{range}{i:07}")),
                    timezone: ZONES[i % ZONES.len()].into(),
                    ..Default::default()
                }),
                request_id: format!("bench-billing-{tag}-{i}"),
            })
            .await?
            .into_inner()
            .user
            .context("CreateUser answered no user")?;
        ids.push(user.id);
    }
    Ok(ids)
}

/// Calls answered, and calls refused with RESOURCE_EXHAUSTED, warm-up
/// included (anything else is an error of the measurement).
#[derive(Default)]
struct Outcomes {
    ok: AtomicUsize,
    refused: AtomicUsize,
}

impl Outcomes {
    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    fn count<T>(&self, answer: Result<T, tonic::Status>) -> Result<()> {
        match answer {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(status) => Err(status.into()),
        }
    }
}

/// One workload: which RPC, on which users, and the i-th call's request.
#[derive(Clone)]
struct Workload {
    name: String,
    rpc: Rpc,
    users: Arc<Vec<String>>,
    /// Every request_id starts with it.
    prefix: String,
}

#[derive(Clone, Copy)]
enum Rpc {
    /// ConsumeQuota of this feature, amount 1.
    Consume(pb::Feature),
    RecordAiUsage,
}

impl Workload {
    fn consume(run: &str, tag: &str, users: Arc<Vec<String>>) -> Self {
        Self::new(
            "ConsumeQuota",
            Rpc::Consume(pb::Feature::InboundMessages),
            run,
            tag,
            users,
        )
    }

    fn record(run: &str, tag: &str, users: Arc<Vec<String>>) -> Self {
        Self::new("RecordAiUsage", Rpc::RecordAiUsage, run, tag, users)
    }

    fn new(rpc_name: &str, rpc: Rpc, run: &str, tag: &str, users: Arc<Vec<String>>) -> Self {
        let on = match users.len() {
            1 => "one hot user".to_owned(),
            n => format!("{} users", thousands(n)),
        };
        Self {
            name: format!("{rpc_name} ({on})"),
            rpc,
            users,
            prefix: format!("bench-{run}-{tag}"),
        }
    }

    /// The i-th call: the same every time it is asked for, so it can be
    /// sent again.
    async fn call(&self, client: &Client, i: usize) -> Result<(), tonic::Status> {
        let mut client = client.clone();
        let user_id = self.users[spread(i, self.users.len())].clone();
        let request_id = format!("{}-{i}", self.prefix);
        match self.rpc {
            Rpc::Consume(feature) => {
                client
                    .consume_quota(pb::ConsumeQuotaRequest {
                        user_id,
                        feature: feature as i32,
                        amount: 1,
                        request_id,
                    })
                    .await?;
            }
            Rpc::RecordAiUsage => {
                client
                    .record_ai_usage(pb::RecordAiUsageRequest {
                        request_id,
                        user_id,
                        provider: PROVIDER.into(),
                        model: MODEL.into(),
                        task_type: pb::TaskType::Chat as i32,
                        input_tokens: INPUT_TOKENS,
                        output_tokens: OUTPUT_TOKENS,
                        latency: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: 850_000_000,
                        }),
                        ..Default::default()
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

/// Measures `workload` (with the service's CPU), counting its answers.
async fn with_outcomes(
    pid: u32,
    workload: &Workload,
    client: &Client,
    options: Options,
) -> Result<(Measurement, Arc<Outcomes>)> {
    let outcomes = Arc::new(Outcomes::default());
    let (work, client, counted) = (workload.clone(), client.clone(), outcomes.clone());
    let measured = with_service_cpu(
        pid,
        measure(&workload.name, "gRPC", options, move |i| {
            let (work, client, counted) = (work.clone(), client.clone(), counted.clone());
            async move { counted.count(work.call(&client, i).await) }
        }),
    )
    .await?;
    Ok((measured, outcomes))
}

/// `user`'s quota of `feature` now, read through GetEntitlements.
async fn quota(client: &Client, user: &str, feature: pb::Feature) -> Result<pb::Quota> {
    client
        .clone()
        .get_entitlements(pb::GetEntitlementsRequest {
            owner: Some(pb::Owner {
                kind: Some(pb::owner::Kind::UserId(user.to_owned())),
            }),
        })
        .await?
        .into_inner()
        .quotas
        .into_iter()
        .find(|q| q.feature == feature as i32)
        .with_context(|| format!("GetEntitlements has no {} quota", feature.as_str_name()))
}

/// A counted feature's `used`: a whole number.
fn used(quota: &pb::Quota) -> Result<u64> {
    quota.used.parse().with_context(|| {
        format!(
            "{}'s used is {:?}, not a whole number",
            pb::Feature::try_from(quota.feature).map_or("?", |f| f.as_str_name()),
            quota.used
        )
    })
}

/// The correctness lines under the table, and how many failed.
#[derive(Default)]
struct Checks {
    lines: Vec<String>,
    failed: usize,
}

impl Checks {
    fn record(&mut self, passed: bool, line: String) {
        if !passed {
            self.failed += 1;
        }
        let verdict = if passed { "ok" } else { "FAILED" };
        self.lines.push(format!("check, {line}: {verdict}"));
    }

    /// After a hot workload: `user`'s counter of `feature` grew by what the
    /// successful calls consumed (`ok` calls of `per_call` each), unless the
    /// period changed during the run (midnight in the user's time zone).
    #[allow(clippy::too_many_arguments)]
    async fn counter(
        &mut self,
        client: &Client,
        what: &str,
        user: &str,
        feature: pb::Feature,
        before: &pb::Quota,
        ok: usize,
        per_call: u64,
    ) -> Result<()> {
        let after = quota(client, user, feature).await?;
        let name = feature.as_str_name();
        if after.reset_time != before.reset_time {
            self.lines.push(format!(
                "check, {what}: not made, the user's day changed during the run ({name} restarted)"
            ));
            return Ok(());
        }
        let grown = used(&after)? - used(before)?;
        let expected = ok as u64 * per_call;
        self.record(
            grown == expected,
            format!(
                "{what}: {name} counter (GetEntitlements; limit {}) grew by {grown}, for {ok} successful calls (warm-up included) × {per_call} = {expected}",
                after.limit
            ),
        );
        Ok(())
    }

    /// The first [`REPEATS`] measured calls of a hot workload sent again,
    /// byte for byte: each answered, and the counter unchanged.
    async fn repeats(
        &mut self,
        client: &Client,
        workload: &Workload,
        user: &str,
        options: Options,
    ) -> Result<()> {
        let repeats = REPEATS.min(options.requests);
        let feature = match workload.rpc {
            Rpc::Consume(feature) => feature,
            Rpc::RecordAiUsage => pb::Feature::AiTokens,
        };
        let before = quota(client, user, feature).await?;
        let mut errors = 0;
        for i in 0..repeats {
            if workload.call(client, i).await.is_err() {
                errors += 1;
            }
        }
        let after = quota(client, user, feature).await?;
        self.record(
            errors == 0 && after.used == before.used,
            format!(
                "{}: {repeats} answered request_ids sent again: {} answered, {} counter {} before and {} after",
                workload.name,
                repeats - errors,
                feature.as_str_name(),
                before.used,
                after.used
            ),
        );
        Ok(())
    }
}

/// Every caller on one user, ConsumeQuota of documents amount 1 each, far
/// more calls than the plan's limit: exactly the limit may get through. The
/// note line with what it measured.
async fn race(
    pid: u32,
    client: &Client,
    run: &str,
    user: &str,
    options: Options,
    checks: &mut Checks,
) -> Result<String> {
    let race_options = Options {
        requests: RACE_CALLS,
        ..options
    };
    let mut workload = Workload::new(
        "ConsumeQuota",
        Rpc::Consume(pb::Feature::Documents),
        run,
        "race",
        Arc::new(vec![user.to_owned()]),
    );
    workload.name = "ConsumeQuota (one user racing for a limit)".into();
    let (measured, outcomes) = with_outcomes(pid, &workload, client, race_options).await?;
    let counter = used(&quota(client, user, pb::Feature::Documents).await?)?;
    let calls = RACE_CALLS + race_options.warm_up();
    let (ok, refused, errors) = (outcomes.ok(), outcomes.refused(), measured.errors);
    checks.record(
        ok == DOCUMENTS_LIMIT && counter == DOCUMENTS_LIMIT as u64 && ok + refused == calls,
        format!(
            "race for a limit: {calls} calls: {ok} consumed, {refused} refused (RESOURCE_EXHAUSTED), {errors} failed otherwise; FEATURE_DOCUMENTS counter (GetEntitlements) {counter}, limit {DOCUMENTS_LIMIT}"
        ),
    );
    Ok(format!(
        "race for a limit: {} callers on one user, ConsumeQuota FEATURE_DOCUMENTS amount 1, limit {}, {} calls (warm-up included; most refused): {} calls/s, p50 {:.2} ms, p99 {:.2} ms",
        options.concurrency,
        thousands(DOCUMENTS_LIMIT),
        thousands(calls),
        rate(measured.throughput()),
        measured.ms(0.5),
        measured.ms(0.99),
    ))
}

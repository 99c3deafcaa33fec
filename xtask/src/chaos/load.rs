//! The load a scenario keeps up while it breaks something. Every item is
//! delivered the way its sender would: a WhatsApp delivery is posted again
//! until the gateway answers 200 (Meta retries any other answer for days), a
//! gRPC create is sent again with the same request id until it succeeds (a
//! caller retrying UNAVAILABLE). Each item has a key that lands in a database
//! column, so what was acknowledged can be looked up afterwards, and a key
//! found twice is a duplicate.

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use sqlx::PgConnection;
use tokio::task::JoinHandle;

use super::report::{Report, Row};

/// How long a sender waits before trying a failed item again (Meta backs
/// off for days; a scenario has seconds).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The pause between one worker's items, so the load leaves the two cores
/// room for the restarts it is measured against.
const PACE: Duration = Duration::from_millis(20);
/// An item not acknowledged within this long is given up on, and the
/// scenario fails: the outage it met never ended.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One try at delivering item `i`: Ok when acknowledged, else the answer's
/// code (`HTTP 503`, `UNAVAILABLE`, `connection refused`).
pub type Attempt = Arc<dyn Fn(usize) -> BoxFuture<Result<(), String>> + Send + Sync>;

/// A kind of item, how it is sent, and where it is stored.
pub struct Workload {
    /// What the table calls it: `webhooks via the gateway`, `memory.CreateMemory`.
    pub label: String,
    /// Item `i`'s key is [`key`]`(prefix, i)`.
    pub prefix: String,
    /// Selects the stored keys: one text column, `$1` a LIKE pattern.
    pub stored_sql: &'static str,
    /// The key column is UNIQUE: a second row cannot exist, so counting
    /// duplicates would say 0 by construction; the table shows `–` instead.
    pub unique_key: bool,
    pub attempt: Attempt,
}

/// Item `i`'s key: the prefix and `i` in six digits (a phone number stays
/// one, and keys sort as sent).
pub fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:06}")
}

/// Whether the fault is in force. A try started and answered meanwhile has
/// its answer counted apart ([`Tally::during_outage`]); one that outlives the
/// outage may meet the restarted process, so it says nothing about it.
#[derive(Clone, Default)]
pub struct Outage(Arc<AtomicBool>);

impl Outage {
    pub fn begin(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn end(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    fn on(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What one workload's senders saw.
#[derive(Default)]
pub struct Tally {
    /// Every try, retries included.
    pub attempts: usize,
    /// Items acknowledged, each once.
    pub acknowledged: Vec<usize>,
    /// Items still not acknowledged after [`GIVE_UP_AFTER`].
    pub given_up: usize,
    /// Failed tries by code.
    pub errors: BTreeMap<String, usize>,
    /// The answers to every try started and answered while the fault was in
    /// force, `OK` included.
    pub during_outage: BTreeMap<String, usize>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.attempts += other.attempts;
        self.acknowledged.extend(other.acknowledged);
        self.given_up += other.given_up;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        for (code, n) in other.during_outage {
            *self.during_outage.entry(code).or_default() += n;
        }
    }

    /// Answers during the outage whose code starts with `prefix`.
    pub fn during_outage_starting(&self, prefix: &str) -> usize {
        self.during_outage
            .iter()
            .filter(|(code, _)| code.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

/// A workload being sent.
pub struct Running {
    workload: Arc<Workload>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

/// Starts `workers` senders of `workload`, each taking the next item once
/// the previous one is acknowledged.
pub fn start(workload: Workload, workers: usize, outage: &Outage) -> Running {
    let workload = Arc::new(workload);
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..workers)
        .map(|_| {
            tokio::spawn(send(
                workload.clone(),
                next.clone(),
                stop.clone(),
                outage.clone(),
            ))
        })
        .collect();
    Running {
        workload,
        stop,
        workers,
    }
}

impl Running {
    /// Stops taking new items, waits for the items in hand to be
    /// acknowledged (or given up on), and returns what the senders saw.
    pub async fn finish(self) -> Result<(Arc<Workload>, Tally)> {
        self.stop.store(true, Ordering::SeqCst);
        let mut tally = Tally::default();
        for worker in self.workers {
            tally.merge(worker.await?);
        }
        tally.acknowledged.sort_unstable();
        Ok((self.workload, tally))
    }
}

async fn send(
    workload: Arc<Workload>,
    next: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    outage: Outage,
) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::SeqCst) {
        let i = next.fetch_add(1, Ordering::SeqCst);
        let first_try = Instant::now();
        loop {
            tally.attempts += 1;
            let started_in_outage = outage.on();
            let answer = (workload.attempt)(i).await;
            if started_in_outage && outage.on() {
                let code = answer.as_ref().err().map_or("OK", String::as_str);
                *tally.during_outage.entry(code.to_owned()).or_default() += 1;
            }
            match answer {
                Ok(()) => {
                    tally.acknowledged.push(i);
                    break;
                }
                Err(code) => *tally.errors.entry(code).or_default() += 1,
            }
            if first_try.elapsed() > GIVE_UP_AFTER {
                tally.given_up += 1;
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        tokio::time::sleep(PACE).await;
    }
    tally
}

/// What the database holds of a workload's items.
pub struct Stored {
    /// Rows with one of its keys.
    pub rows: usize,
    /// Distinct keys among them.
    pub distinct: usize,
    /// Acknowledged keys the database does not have (the first few), and how many.
    pub missing: Vec<String>,
    pub missing_count: usize,
}

impl Stored {
    pub fn duplicates(&self) -> usize {
        self.rows - self.distinct
    }
}

/// Looks the acknowledged items of `workload` up in the database.
pub async fn count_stored(
    db: &mut PgConnection,
    workload: &Workload,
    acknowledged: &[usize],
) -> Result<Stored> {
    // Prefixes hold no LIKE wildcards (`%`, `_`): letters, digits, `.+- #`.
    let keys: Vec<String> = sqlx::query_scalar(workload.stored_sql)
        .bind(format!("{}%", workload.prefix))
        .fetch_all(db)
        .await?;
    let distinct: HashSet<&String> = keys.iter().collect();
    let missing: Vec<String> = acknowledged
        .iter()
        .map(|&i| key(&workload.prefix, i))
        .filter(|key| !distinct.contains(key))
        .collect();
    Ok(Stored {
        rows: keys.len(),
        distinct: distinct.len(),
        missing_count: missing.len(),
        missing: missing.into_iter().take(5).collect(),
    })
}

/// The row of one workload, after checking that every acknowledged item is
/// stored exactly once and that none was given up on.
pub async fn stored_row(
    db: &mut PgConnection,
    report: &mut Report,
    fault: &str,
    workload: &Workload,
    tally: &Tally,
    recovery: &str,
) -> Result<Row> {
    let stored = count_stored(db, workload, &tally.acknowledged).await?;
    let what = format!("{fault} ({})", workload.label);
    report.check(tally.given_up == 0, || {
        format!("{what}: {} items never acknowledged", tally.given_up)
    });
    report.check(stored.missing_count == 0, || {
        format!(
            "{what}: {} acknowledged but not stored, e.g. {:?}",
            stored.missing_count, stored.missing
        )
    });
    report.check(stored.duplicates() == 0, || {
        format!("{what}: {} stored twice", stored.duplicates())
    });
    report.check(
        tally.errors.keys().all(|code| !code.starts_with("HTTP 4")),
        || format!("{what}: answered 4xx: {:?}", tally.errors),
    );
    Ok(Row {
        fault: what,
        sent: tally.attempts,
        acknowledged: Some(tally.acknowledged.len()),
        stored: Some(tally.acknowledged.len() - stored.missing_count),
        duplicates: (!workload.unique_key).then(|| stored.duplicates()),
        errors: tally.errors.clone(),
        recovery: recovery.to_owned(),
    })
}

/// A gRPC status code as the gRPC spec spells it: `UNAVAILABLE`.
pub fn grpc_code(status: &tonic::Status) -> String {
    let mut name = String::new();
    for (i, c) in format!("{:?}", status.code()).chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// A failed HTTP exchange, named by what went wrong.
pub fn http_failure(error: &reqwest::Error) -> String {
    if error.is_connect() {
        "connection refused".into()
    } else if error.is_timeout() {
        "HTTP timeout".into()
    } else {
        "connection lost".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_spelled_as_grpc_spells_them() {
        assert_eq!(grpc_code(&tonic::Status::unavailable("x")), "UNAVAILABLE");
        assert_eq!(
            grpc_code(&tonic::Status::invalid_argument("x")),
            "INVALID_ARGUMENT"
        );
        assert_eq!(grpc_code(&tonic::Status::out_of_range("x")), "OUT_OF_RANGE");
    }

    #[test]
    fn keys_keep_six_digits() {
        assert_eq!(key("+5732", 42), "+5732000042");
    }

    #[test]
    fn tallies_add_up() {
        let mut total = Tally::default();
        let mut one = Tally {
            attempts: 3,
            acknowledged: vec![2],
            ..Default::default()
        };
        one.errors.insert("HTTP 503".into(), 2);
        one.during_outage.insert("HTTP 503".into(), 2);
        total.merge(one);
        total.merge(Tally {
            attempts: 1,
            acknowledged: vec![1],
            ..Default::default()
        });
        assert_eq!(total.attempts, 4);
        assert_eq!(total.acknowledged.len(), 2);
        assert_eq!(total.during_outage_starting("HTTP 5"), 2);
    }
}

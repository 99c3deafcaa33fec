//! The scheduler service's configuration: the shared service settings, the
//! services it calls, and the dispatcher's pace, retries and retention.

use std::{net::SocketAddr, time::Duration};

use mesh_runtime::config::{self, ConfigError, ServiceConfig, positive, positive_seconds};

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    /// The users service: time zones, quiet hours, channels (`SCHEDULER_USERS_URL`).
    pub users_url: String,
    /// The conversations service: windows and sends (`SCHEDULER_CONVERSATIONS_URL`).
    pub conversations_url: String,
    /// One call to either's deadline (`SCHEDULER_CALL_TIMEOUT_SECONDS`, 10).
    pub call_timeout: Duration,
    pub dispatcher: DispatcherConfig,
    /// Read notifications older than this are deleted
    /// (`SCHEDULER_NOTIFICATION_RETENTION_DAYS`, 30).
    pub notification_retention: Duration,
    /// A pending check-in still without content this long after its time is
    /// skipped with reason "no_content" (`SCHEDULER_CHECKIN_CONTENT_GRACE_MINUTES`, 120).
    pub checkin_content_grace: Duration,
    /// Where `/metrics` is served (`SCHEDULER_METRICS_ADDR`, 127.0.0.1:9054);
    /// port 0 picks a free one.
    pub metrics_addr: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Whether this replica dispatches at all (`SCHEDULER_DISPATCHER`, on).
    pub enabled: bool,
    /// The longest the dispatcher sleeps between looks for due items, when
    /// nothing wakes it sooner (`SCHEDULER_POLL_INTERVAL_MS`, 1000).
    pub poll_interval: Duration,
    /// Items claimed at once (`SCHEDULER_BATCH_SIZE`, 100).
    pub batch_size: i64,
    /// Sends in flight at once per replica (`SCHEDULER_SEND_CONCURRENCY`, 16).
    pub concurrency: usize,
    /// How long a claim lasts: a replica that died holding it loses its
    /// items to another after this (`SCHEDULER_LEASE_SECONDS`, 30).
    pub lease: Duration,
    /// Attempts of a send the provider may yet take before the item fails
    /// and is dead-lettered (`SCHEDULER_MAX_RETRIES`, 5).
    pub max_retries: i32,
    /// The first retry's wait, doubled for each later one, with jitter
    /// (`SCHEDULER_RETRY_BASE_MS`, 2000).
    pub retry_base: Duration,
    /// The longest wait between retries (`SCHEDULER_RETRY_MAX_MS`, 300000).
    pub retry_max: Duration,
}

pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9054";

impl Config {
    pub fn from_env(default_addr: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceConfig::from_env("SCHEDULER", default_addr)?,
            users_url: config::http_url("SCHEDULER_USERS_URL", "http://127.0.0.1:50051")?,
            conversations_url: config::http_url(
                "SCHEDULER_CONVERSATIONS_URL",
                "http://127.0.0.1:50052",
            )?,
            call_timeout: positive_seconds(
                "SCHEDULER_CALL_TIMEOUT_SECONDS",
                Duration::from_secs(10),
            )?,
            dispatcher: DispatcherConfig::from_env()?,
            notification_retention: Duration::from_secs(
                24 * 3600 * positive::<u64>("SCHEDULER_NOTIFICATION_RETENTION_DAYS", 30)?,
            ),
            checkin_content_grace: Duration::from_secs(
                60 * positive::<u64>("SCHEDULER_CHECKIN_CONTENT_GRACE_MINUTES", 120)?,
            ),
            metrics_addr: config::parsed_or(
                "SCHEDULER_METRICS_ADDR",
                DEFAULT_METRICS_ADDR.parse().expect("a valid default"),
            )?,
        })
    }
}

impl DispatcherConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let enabled = match config::optional("SCHEDULER_DISPATCHER").as_deref() {
            None | Some("on" | "true" | "1") => true,
            Some("off" | "false" | "0") => false,
            Some(other) => {
                return Err(config::invalid(
                    "SCHEDULER_DISPATCHER",
                    other,
                    "must be on or off",
                ));
            }
        };
        Ok(Self {
            enabled,
            poll_interval: Duration::from_millis(positive("SCHEDULER_POLL_INTERVAL_MS", 1000)?),
            batch_size: positive("SCHEDULER_BATCH_SIZE", 100)?,
            concurrency: positive("SCHEDULER_SEND_CONCURRENCY", 16)?,
            lease: positive_seconds("SCHEDULER_LEASE_SECONDS", Duration::from_secs(30))?,
            max_retries: positive("SCHEDULER_MAX_RETRIES", 5)?,
            retry_base: Duration::from_millis(positive("SCHEDULER_RETRY_BASE_MS", 2000)?),
            retry_max: Duration::from_millis(positive("SCHEDULER_RETRY_MAX_MS", 300_000)?),
        })
    }
}

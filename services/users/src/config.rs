//! The users service's configuration: the shared service settings and what
//! an erasure needs to reach the other contexts.

use std::time::Duration;

use mesh_runtime::config::{self, ConfigError, ServiceConfig, positive_seconds};

use crate::erasure::Context;

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    pub erasure: ErasureConfig,
}

#[derive(Clone, Debug)]
pub struct ErasureConfig {
    /// The contexts an erasure purges, with their gRPC URLs
    /// (`USERS_<CONTEXT>_URL`). Without any, an erasure removes only what this
    /// service holds: a users service on its own, as its tests run it.
    pub contexts: Vec<(Context, String)>,
    /// One PurgeUser call's deadline (`USERS_PURGE_TIMEOUT_SECONDS`, 30).
    pub purge_timeout: Duration,
    /// The longest wait between two calls to a context that did not answer
    /// (`USERS_ERASURE_RETRY_MAX_SECONDS`, 60).
    pub retry_max: Duration,
    /// How long after every context answered they are all asked once more
    /// (`USERS_ERASURE_SETTLE_SECONDS`, 30; 0 asks again at once): longer
    /// than any caller's deadline, so a write that looked the user up just
    /// before the erasure began has landed, and goes too.
    pub settle: Duration,
}

impl ErasureConfig {
    pub const DEFAULT_PURGE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(60);
    pub const DEFAULT_SETTLE: Duration = Duration::from_secs(30);
}

impl Config {
    pub fn from_env(default_addr: &str) -> Result<Self, ConfigError> {
        let contexts = Context::ALL
            .iter()
            .map(|&context| {
                Ok((
                    context,
                    config::http_url(context.url_var(), context.default_url())?,
                ))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            service: ServiceConfig::from_env("USERS", default_addr)?,
            erasure: ErasureConfig {
                contexts,
                purge_timeout: positive_seconds(
                    "USERS_PURGE_TIMEOUT_SECONDS",
                    ErasureConfig::DEFAULT_PURGE_TIMEOUT,
                )?,
                retry_max: positive_seconds(
                    "USERS_ERASURE_RETRY_MAX_SECONDS",
                    ErasureConfig::DEFAULT_RETRY_MAX,
                )?,
                settle: Duration::from_secs(config::parsed_or(
                    "USERS_ERASURE_SETTLE_SECONDS",
                    ErasureConfig::DEFAULT_SETTLE.as_secs(),
                )?),
            },
        })
    }
}

/// The service settings alone: erasures reach no other context. What the
/// other services' tests use when they run a users service next to theirs.
impl From<&ServiceConfig> for Config {
    fn from(service: &ServiceConfig) -> Self {
        Self {
            service: service.clone(),
            erasure: ErasureConfig {
                contexts: Vec::new(),
                purge_timeout: ErasureConfig::DEFAULT_PURGE_TIMEOUT,
                retry_max: ErasureConfig::DEFAULT_RETRY_MAX,
                settle: Duration::ZERO,
            },
        }
    }
}

//! The billing service's configuration: the shared service settings, the
//! users service it asks for time zones and workspaces, and the plans and
//! prices files.

use std::time::Duration;

use mesh_runtime::config::{self, ConfigError, ServiceConfig, from_file, positive_seconds};

use crate::plans::{Plans, Prices};

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    /// The users service: time zones and owned workspaces (`BILLING_USERS_URL`).
    pub users_url: String,
    /// One call's deadline (`BILLING_CALL_TIMEOUT_SECONDS`, 5).
    pub call_timeout: Duration,
    /// How long a user's time zone and workspaces are remembered
    /// (`BILLING_PROFILE_CACHE_SECONDS`, 300).
    pub profile_cache: Duration,
    /// `BILLING_PLANS_FILE`, or the built-in free and pro plans.
    pub plans: Plans,
    /// `BILLING_PRICES_FILE`, or the built-in list prices.
    pub prices: Prices,
}

impl Config {
    pub fn from_env(default_addr: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceConfig::from_env("BILLING", default_addr)?,
            users_url: config::http_url("BILLING_USERS_URL", "http://127.0.0.1:50051")?,
            call_timeout: positive_seconds("BILLING_CALL_TIMEOUT_SECONDS", Duration::from_secs(5))?,
            profile_cache: positive_seconds(
                "BILLING_PROFILE_CACHE_SECONDS",
                Duration::from_secs(300),
            )?,
            plans: from_file("BILLING_PLANS_FILE", Plans::parse)?.unwrap_or_else(Plans::builtin),
            prices: from_file("BILLING_PRICES_FILE", Prices::parse)?
                .unwrap_or_else(Prices::builtin),
        })
    }
}

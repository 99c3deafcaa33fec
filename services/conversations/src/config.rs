//! The conversations service's configuration: the shared service settings plus
//! the reuse policy, the event retention, the users service it asks for
//! recipients, and the providers' send APIs.

use std::time::Duration;

use mesh_runtime::config::{self, ConfigError, ServiceConfig, positive_seconds};

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    /// A conversation idle this long is closed by the next
    /// GetOrCreateActiveConversation (`CONVERSATIONS_IDLE_GAP_SECONDS`).
    pub idle_gap: Duration,
    /// Events older than this are deleted (`CONVERSATIONS_EVENT_RETENTION_HOURS`).
    pub event_retention: Duration,
    /// The users service, for recipients' phones and Telegram ids (`CONVERSATIONS_USERS_URL`).
    pub users_url: String,
    /// How long one call to a provider may take (`CONVERSATIONS_PROVIDER_TIMEOUT_SECONDS`).
    pub provider_timeout: Duration,
    pub whatsapp: WhatsAppConfig,
    pub telegram: TelegramConfig,
}

#[derive(Clone, Debug)]
pub struct WhatsAppConfig {
    /// `WHATSAPP_API_BASE`, default `https://graph.facebook.com`.
    pub api_base: String,
    /// `WHATSAPP_API_VERSION`, default `v21.0`.
    pub api_version: String,
    /// `WHATSAPP_ACCESS_TOKEN`; WhatsApp sends are refused while unset.
    pub access_token: Option<String>,
    /// `WHATSAPP_PHONE_NUMBER_ID`: which of our numbers sends.
    pub phone_number_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct TelegramConfig {
    /// `TELEGRAM_API_BASE`, default `https://api.telegram.org`.
    pub api_base: String,
    /// `TELEGRAM_BOT_TOKEN`; Telegram sends are refused while unset.
    pub bot_token: Option<String>,
}

pub const DEFAULT_IDLE_GAP: Duration = Duration::from_secs(6 * 60 * 60);
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

impl Config {
    pub fn from_env(default_addr: &str) -> Result<Self, ConfigError> {
        let idle_gap = positive_seconds("CONVERSATIONS_IDLE_GAP_SECONDS", DEFAULT_IDLE_GAP)?;
        let retention_hours = config::positive::<u64>(
            "CONVERSATIONS_EVENT_RETENTION_HOURS",
            DEFAULT_EVENT_RETENTION.as_secs() / 3600,
        )?;
        let users_url = config::http_url("CONVERSATIONS_USERS_URL", "http://127.0.0.1:50051")?;
        let whatsapp = WhatsAppConfig {
            api_base: config::http_url("WHATSAPP_API_BASE", "https://graph.facebook.com")?,
            api_version: config::optional("WHATSAPP_API_VERSION").unwrap_or_else(|| "v21.0".into()),
            access_token: config::optional("WHATSAPP_ACCESS_TOKEN"),
            phone_number_id: config::optional("WHATSAPP_PHONE_NUMBER_ID"),
        };
        let telegram = TelegramConfig {
            api_base: config::http_url("TELEGRAM_API_BASE", "https://api.telegram.org")?,
            bot_token: config::optional("TELEGRAM_BOT_TOKEN"),
        };
        Ok(Self {
            service: ServiceConfig::from_env("CONVERSATIONS", default_addr)?,
            idle_gap,
            event_retention: Duration::from_secs(retention_hours * 3600),
            users_url,
            provider_timeout: positive_seconds(
                "CONVERSATIONS_PROVIDER_TIMEOUT_SECONDS",
                Duration::from_secs(10),
            )?,
            whatsapp,
            telegram,
        })
    }
}

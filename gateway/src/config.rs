//! The gateway's configuration, from the environment (through the mesh's one
//! config loader, so a bad value names its variable).

use std::{net::SocketAddr, time::Duration};

use mesh_runtime::config::{
    ConfigError, Pem, drain_grace, invalid, optional, parsed_or, positive_seconds, required, tls_ca,
};

pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_USERS_URL: &str = "http://127.0.0.1:50051";
pub const DEFAULT_CONVERSATIONS_URL: &str = "http://127.0.0.1:50052";
pub const DEFAULT_BILLING_URL: &str = "http://127.0.0.1:50055";
/// Each downstream call gets this long; a webhook runs a few in a row, well
/// inside the time Meta and Telegram wait for an answer.
pub const DEFAULT_DOWNSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Config {
    /// Where HTTP listens (`GATEWAY_ADDR`).
    pub addr: SocketAddr,
    /// `GATEWAY_USERS_URL`.
    pub users_url: String,
    /// `GATEWAY_CONVERSATIONS_URL`.
    pub conversations_url: String,
    /// `GATEWAY_BILLING_URL`: Lemon Squeezy events, and the inbound-message quota.
    pub billing_url: String,
    /// The bearer token presented to the services (`MESH_AUTH_TOKEN`).
    pub auth_token: String,
    /// The CA trusted on `https://` service URLs (`MESH_TLS_CA_FILE`).
    pub tls_ca: Option<Pem>,
    /// The deadline of each downstream call (`GATEWAY_DOWNSTREAM_TIMEOUT_SECONDS`).
    pub downstream_timeout: Duration,
    /// How long requests in flight may finish after SIGTERM (`MESH_DRAIN_SECONDS`).
    pub drain_grace: Duration,
    /// `WHATSAPP_VERIFY_TOKEN`: the GET handshake answers 403 without it.
    pub whatsapp_verify_token: Option<String>,
    /// `WHATSAPP_APP_SECRET`: WhatsApp deliveries are refused (401) without it.
    pub whatsapp_app_secret: Option<String>,
    /// `TELEGRAM_SECRET_TOKEN`: Telegram updates are refused (401) without it.
    pub telegram_secret_token: Option<String>,
    /// `LEMONSQUEEZY_SIGNING_SECRET`: Lemon Squeezy events are refused (401) without it.
    pub lemonsqueezy_signing_secret: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let telegram_secret_token = optional("TELEGRAM_SECRET_TOKEN");
        if let Some(token) = &telegram_secret_token
            && !crate::signature::is_telegram_token(token)
        {
            return Err(invalid(
                "TELEGRAM_SECRET_TOKEN",
                "(hidden)",
                "Telegram accepts 1 to 256 characters of A-Z a-z 0-9 _ -",
            ));
        }
        Ok(Self {
            addr: parsed_or("GATEWAY_ADDR", DEFAULT_ADDR.parse().expect("valid"))?,
            users_url: optional("GATEWAY_USERS_URL").unwrap_or_else(|| DEFAULT_USERS_URL.into()),
            conversations_url: optional("GATEWAY_CONVERSATIONS_URL")
                .unwrap_or_else(|| DEFAULT_CONVERSATIONS_URL.into()),
            billing_url: optional("GATEWAY_BILLING_URL")
                .unwrap_or_else(|| DEFAULT_BILLING_URL.into()),
            auth_token: required(
                "MESH_AUTH_TOKEN",
                "the bearer token the services expect (cargo xtask up uses dev-token)",
            )?,
            tls_ca: tls_ca()?,
            downstream_timeout: positive_seconds(
                "GATEWAY_DOWNSTREAM_TIMEOUT_SECONDS",
                DEFAULT_DOWNSTREAM_TIMEOUT,
            )?,
            drain_grace: drain_grace()?,
            whatsapp_verify_token: optional("WHATSAPP_VERIFY_TOKEN"),
            whatsapp_app_secret: optional("WHATSAPP_APP_SECRET"),
            telegram_secret_token,
            lemonsqueezy_signing_secret: optional("LEMONSQUEEZY_SIGNING_SECRET"),
        })
    }

    /// Says at start-up which webhooks will be refused for want of a secret.
    pub fn warn_missing_secrets(&self) {
        for (name, value) in [
            ("WHATSAPP_VERIFY_TOKEN", &self.whatsapp_verify_token),
            ("WHATSAPP_APP_SECRET", &self.whatsapp_app_secret),
            ("TELEGRAM_SECRET_TOKEN", &self.telegram_secret_token),
            (
                "LEMONSQUEEZY_SIGNING_SECRET",
                &self.lemonsqueezy_signing_secret,
            ),
        ] {
            if value.is_none() {
                tracing::warn!(
                    variable = name,
                    "not set: the webhooks that need it are refused"
                );
            }
        }
    }
}

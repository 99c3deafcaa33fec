//! One `Embedder` trait and its implementations: the local model on the CPU
//! (the default), an OpenAI-compatible HTTP endpoint, and none at all (callers
//! send their own vectors). Every vector the service stores records
//! `Embedder::model`, and searches compare only vectors of the same model.

mod local;
mod openai;

use std::sync::Arc;

use mesh_runtime::ApiError;

use crate::config::EmbedderConfig;

pub use local::LocalEmbedder;
pub use openai::OpenAiEmbedder;

#[tonic::async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// The model's name, stored beside every vector it makes.
    fn model(&self) -> &str;
    /// The length of every vector it makes.
    fn dimensions(&self) -> usize;
    /// How many tokens `text` takes (the model's tokenizer when there is one,
    /// else an estimate); chunking and context budgets count with it.
    fn count_tokens(&self, text: &str) -> usize;
    /// The most tokens of a text (as [`Embedder::count_tokens`] counts them)
    /// the model reads; the rest does not shape the vector. Chunks are cut
    /// to fit it.
    fn max_tokens(&self) -> usize {
        usize::MAX
    }
    /// Whether [`Embedder::embed`] makes vectors at all: false for
    /// EMBEDDER=supplied, where every vector comes from a caller.
    fn makes_vectors(&self) -> bool {
        true
    }
    /// One unit-length vector per text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The service makes no vectors (EMBEDDER=supplied): the caller must send one.
    #[error("this service has no embedder (EMBEDDER=supplied): send the vector")]
    NoEmbedder,
    /// The endpoint is down or refused for now (after retries): try again later.
    #[error("the embedding endpoint is unavailable: {0}")]
    Unavailable(String),
    /// The endpoint or model answered something unusable.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl From<EmbedError> for ApiError {
    fn from(error: EmbedError) -> Self {
        match error {
            EmbedError::NoEmbedder => ApiError::FailedPrecondition(error.to_string()),
            EmbedError::Unavailable(_) => ApiError::Unavailable(error.to_string()),
            EmbedError::Failed(error) => ApiError::Internal(error),
        }
    }
}

/// Builds the configured embedder (loading the local model reads ~90 MB).
pub fn from_config(config: &EmbedderConfig) -> anyhow::Result<Arc<dyn Embedder>> {
    Ok(match config {
        EmbedderConfig::Local { model_dir } => Arc::new(LocalEmbedder::load(model_dir)?),
        EmbedderConfig::OpenAi(config) => Arc::new(OpenAiEmbedder::new(config.clone())?),
        EmbedderConfig::Supplied { model, dimensions } => Arc::new(SuppliedVectors {
            model: model.clone(),
            dimensions: *dimensions,
        }),
    })
}

/// EMBEDDER=supplied: vectors come only from callers.
pub struct SuppliedVectors {
    pub model: String,
    pub dimensions: usize,
}

#[tonic::async_trait]
impl Embedder for SuppliedVectors {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn count_tokens(&self, text: &str) -> usize {
        estimate_tokens(text)
    }

    fn makes_vectors(&self) -> bool {
        false
    }

    async fn embed(&self, _texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Err(EmbedError::NoEmbedder)
    }
}

/// About 4 characters a token for English with BPE-style tokenizers (OpenAI's
/// rule of thumb), never less than one token a word.
pub fn estimate_tokens(text: &str) -> usize {
    let by_chars = text.chars().count().div_ceil(4);
    by_chars.max(text.split_whitespace().count())
}

/// Scales `vector` to unit length (a zero vector stays as it is).
pub fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
}

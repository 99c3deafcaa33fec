//! sentence-transformers/all-MiniLM-L6-v2 in process on the CPU: candle's
//! BERT, mean pooling over the real tokens, then unit length; the same
//! vectors sentence-transformers makes for this model.
//!
//! Inference takes the CPU it is given, so it runs on tokio's blocking pool,
//! one batch at a time: a second forward pass at once would only slow both.
//! Callers queue (first come, first served) between batches rather than
//! between calls, so a one-line search never waits behind a whole document.

use std::{path::Path, sync::Arc};

use anyhow::{Context, anyhow, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::{EmbedError, Embedder, normalize};

/// Texts per forward pass: big enough to keep the matrix products efficient,
/// small enough that a waiting caller is not held up for long.
const BATCH_SIZE: usize = 32;

pub struct LocalEmbedder {
    model: Arc<Model>,
    /// One forward pass at a time; tokio's mutex queues the waiters in order.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// The tokenizer as it counts: no truncation, no special tokens.
    counter: Tokenizer,
    max_tokens: usize,
}

struct Model {
    bert: BertModel,
    /// Truncates to `max_tokens`, special tokens included; no padding (each
    /// batch is padded to its own longest text).
    tokenizer: Tokenizer,
    pad_id: u32,
    device: Device,
}

impl LocalEmbedder {
    /// The name stored beside every vector this embedder makes.
    pub const MODEL: &'static str = "sentence-transformers/all-MiniLM-L6-v2";
    /// The length of its vectors.
    pub const DIMENSIONS: usize = 384;

    /// Loads the model from `dir`: `model.safetensors`, `tokenizer.json` and
    /// `config.json` (and `sentence_bert_config.json` when there, for the
    /// length sentence-transformers truncates to). Reads ~90 MB.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let file = |name: &str| {
            let path = dir.join(name);
            if !path.is_file() {
                bail!(
                    "{} is missing: the model directory must hold all-MiniLM-L6-v2's \
                     model.safetensors, tokenizer.json and config.json",
                    path.display()
                );
            }
            Ok(path)
        };
        let (weights, tokenizer, config) = (
            file("model.safetensors")?,
            file("tokenizer.json")?,
            file("config.json")?,
        );

        let config: Config = serde_json::from_slice(
            &std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?,
        )
        .with_context(|| format!("{} is not a BERT configuration", config.display()))?;
        if config.hidden_size != Self::DIMENSIONS {
            bail!(
                "{} describes a model of {} dimensions: all-MiniLM-L6-v2 has {}",
                dir.display(),
                config.hidden_size,
                Self::DIMENSIONS
            );
        }
        let max_tokens = max_seq_length(dir)?
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);

        let mut counter = Tokenizer::from_file(&tokenizer)
            .map_err(|e| anyhow!("reading {}: {e}", tokenizer.display()))?;
        // tokenizer.json ships truncation and padding to a fixed 128; counting
        // must see the whole text, and padding is done per batch.
        counter
            .with_truncation(None)
            .map_err(|e| anyhow!("configuring the tokenizer: {e}"))?;
        counter.with_padding(None);
        let mut truncating = counter.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("configuring the tokenizer: {e}"))?;

        let device = Device::Cpu;
        // Read, not memory-mapped: mapping is unsafe should the file change
        // under the service, and the weights are copied into tensors anyway.
        let bytes =
            std::fs::read(&weights).with_context(|| format!("reading {}", weights.display()))?;
        let bert = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device)
            .and_then(|weights| BertModel::load(weights, &config))
            .with_context(|| format!("loading {}", weights.display()))?;

        Ok(Self {
            model: Arc::new(Model {
                bert,
                tokenizer: truncating,
                pad_id: u32::try_from(config.pad_token_id).context("pad_token_id")?,
                device,
            }),
            gate: Arc::new(tokio::sync::Mutex::new(())),
            counter,
            max_tokens,
        })
    }
}

/// `max_seq_length` from sentence-transformers' own configuration, if present.
fn max_seq_length(dir: &Path) -> anyhow::Result<Option<usize>> {
    #[derive(serde::Deserialize)]
    struct SentenceBertConfig {
        max_seq_length: Option<usize>,
    }
    let path = dir.join("sentence_bert_config.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let config: SentenceBertConfig =
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?;
    Ok(config.max_seq_length.filter(|&n| n > 0))
}

#[tonic::async_trait]
impl Embedder for LocalEmbedder {
    fn model(&self) -> &str {
        Self::MODEL
    }

    fn dimensions(&self) -> usize {
        Self::DIMENSIONS
    }

    fn count_tokens(&self, text: &str) -> usize {
        match self.counter.encode_fast(text, false) {
            Ok(encoding) => encoding.len(),
            Err(_) => super::estimate_tokens(text),
        }
    }

    /// 256 as sentence-transformers reads this model, less [CLS] and [SEP]
    /// (which `count_tokens` leaves out).
    fn max_tokens(&self) -> usize {
        self.max_tokens.saturating_sub(2)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let model = self.model.clone();
        let owned = texts.to_vec();
        let mut ids = blocking(move || model.tokenize(owned)).await?;

        // Similar lengths together: a batch is padded to its longest text.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut vectors = vec![Vec::new(); ids.len()];
        for batch in order.chunks(BATCH_SIZE) {
            let batch_ids: Vec<Vec<u32>> =
                batch.iter().map(|&i| std::mem::take(&mut ids[i])).collect();
            // Owned and moved into the pass: should the caller give up, the
            // pass still finishes before the next one starts.
            let turn = self.gate.clone().lock_owned().await;
            let model = self.model.clone();
            let embedded = blocking(move || {
                let _turn = turn;
                model.embed(&batch_ids)
            })
            .await?;
            for (&i, vector) in batch.iter().zip(embedded) {
                vectors[i] = vector;
            }
        }
        Ok(vectors)
    }
}

impl Model {
    /// Token ids per text, [CLS] and [SEP] included, truncated.
    fn tokenize(&self, texts: Vec<String>) -> anyhow::Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch_fast(texts, true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(encodings
            .into_iter()
            .map(|encoding| encoding.get_ids().to_vec())
            .collect())
    }

    /// One forward pass over `batch`, then mean pooling over each text's own
    /// tokens (padding excluded) and unit length.
    fn embed(&self, batch: &[Vec<u32>]) -> anyhow::Result<Vec<Vec<f32>>> {
        let rows = batch.len();
        let width = batch.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for row in batch {
            let padding = width - row.len();
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(self.pad_id, padding));
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.extend(std::iter::repeat_n(0u32, padding));
        }
        let ids = Tensor::from_vec(ids, (rows, width), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, width), &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.bert.forward(&ids, &token_types, Some(&mask))?;

        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?;
        let mut vectors = summed.broadcast_div(&counts)?.to_vec2::<f32>()?;
        vectors.iter_mut().for_each(|vector| normalize(vector));
        Ok(vectors)
    }
}

/// Runs CPU-bound `work` on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, EmbedError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(EmbedError::Failed),
        Err(e) => Err(EmbedError::Failed(anyhow!("the local model failed: {e}"))),
    }
}

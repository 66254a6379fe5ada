//! The embedding port and its local adapter.
//!
//! [`Embedder`] is what retrieval and the embed pipeline depend on; Amazon Bedrock (Titan Text
//! Embeddings V2) will be one adapter, [`LocalEmbedder`] is the other: deterministic, offline,
//! for the embedded mode and tests, and named as such wherever it is reported.

use std::future::Future;
use std::pin::Pin;

/// all-MiniLM-L6-v2's dimension (`minilm`, the embedded mode's model), for code that must know
/// it without loading the model.
pub const MINILM_DIMS: usize = 384;

/// Why texts could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// Worth retrying later (throttling, a timeout).
    #[error("embedding temporarily unavailable: {0}")]
    Retryable(String),
    /// Will not succeed as asked (bad input, bad configuration).
    #[error("embedding failed: {0}")]
    Fatal(String),
}

/// A boxed embedding future.
pub type EmbedFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send + 'a>>;

/// Turns texts into unit-length vectors of [`dims`](Embedder::dims) dimensions.
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// The model's name, recorded with every vector and reported in responses.
    fn model(&self) -> &str;
    /// The vectors' dimension.
    fn dims(&self) -> usize;
    /// One vector per text, in order.
    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a>;
}

/// A deterministic, offline embedder: hashed word unigrams and bigrams plus character trigrams,
/// signed, L2-normalized. Similar wording lands close together; it knows no synonyms. Named
/// `local-hashed-ngrams-v1` so nobody mistakes it for a language model.
#[derive(Clone, Debug)]
pub struct LocalEmbedder {
    dims: usize,
}

impl LocalEmbedder {
    /// The model name it reports.
    pub const MODEL: &'static str = "local-hashed-ngrams-v1";

    /// An embedder producing `dims`-dimensional vectors (at least 8).
    pub fn new(dims: usize) -> Self {
        Self { dims: dims.max(8) }
    }

    /// Embeds one text synchronously.
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dims];
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let mut add = |feature: &str, weight: f32| {
            let h = fnv1a(feature.as_bytes());
            let bucket = (h % self.dims as u64) as usize;
            let sign = if (h >> 63) == 0 { 1.0 } else { -1.0 };
            v[bucket] += sign * weight;
        };
        for w in &words {
            add(w, 1.0);
            let padded: Vec<char> = format!("<{w}>").chars().collect();
            for tri in padded.windows(3) {
                add(&tri.iter().collect::<String>(), 0.3);
            }
        }
        for pair in words.windows(2) {
            add(&format!("{} {}", pair[0], pair[1]), 0.7);
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

impl Embedder for LocalEmbedder {
    fn model(&self) -> &str {
        Self::MODEL
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move { Ok(texts.iter().map(|t| self.vector(t)).collect()) })
    }
}

/// 64-bit FNV-1a: stable across platforms and releases (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A vector in pgvector's text form (`[0.1,0.2,...]`), for a `$n::vector` parameter.
pub fn to_pgvector(v: &[f32]) -> String {
    let mut out = String::with_capacity(v.len() * 10 + 2);
    out.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{x}"));
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_are_deterministic_normalized_and_similarity_follows_wording() {
        let e = LocalEmbedder::new(256);
        let a = e.vector("The parcel arrived dented; refund requested.");
        assert_eq!(a, e.vector("The parcel arrived dented; refund requested."));
        assert_eq!(a.len(), 256);
        assert!((cos(&a, &a) - 1.0).abs() < 1e-5);
        let near = e.vector("refund requested for a dented parcel");
        let far = e.vector("Quarterly revenue grew in the APAC region.");
        assert!(
            cos(&a, &near) > cos(&a, &far) + 0.2,
            "{} vs {}",
            cos(&a, &near),
            cos(&a, &far)
        );
        assert!(e.vector("").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn pgvector_text_form() {
        assert_eq!(to_pgvector(&[0.5, -1.0, 0.0]), "[0.5,-1,0]");
    }
}

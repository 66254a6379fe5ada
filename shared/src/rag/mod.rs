//! Per-tenant retrieval and answers: chunking record text, embedding it, finding the chunks that
//! answer a question and answering from them with citations, all under the same RLS as every
//! other row.
//!
//! - [`split`]: split long text into chunks at paragraph and sentence boundaries, with overlap.
//! - [`embed`]: the [`embed::Embedder`] port and its local, deterministic adapter.
//! - `minilm` (feature `minilm`): all-MiniLM-L6-v2 in-process, the embedded mode's real model.
//! - `bedrock` (feature `bedrock`): the Bedrock adapters of the embedder and answerer ports.
//! - [`chunks`]: keeping `app.chunks` in step with records, and embedding what is pending.
//! - [`queue`]: the embed queue port (SQS in AWS, in-process locally) and the embed worker.
//! - [`search`]: hybrid retrieval (vector + full text, fused by reciprocal rank).
//! - [`tenant_index`]: HNSW indexes of their own for large tenants, built in the background.
//! - [`answer`]: the answerer port, citation policing and the sanitizer of answers and snippets.
//!
//! Its settings ([`RagConfig`]) are read from the environment here.

pub mod answer;
#[cfg(feature = "bedrock")]
pub mod bedrock;
pub mod chunks;
pub mod embed;
#[cfg(feature = "minilm")]
pub mod minilm;
pub mod queue;
pub mod search;
pub mod split;
pub mod tenant_index;

use std::path::PathBuf;

use crate::env::{ConfigError, Env};

/// Retrieval settings.
#[derive(Clone, Debug)]
pub struct RagConfig {
    /// Embedding dimension: 256, 512 or 1024 (what Titan Text Embeddings V2 offers).
    pub embed_dims: usize,
    /// Bedrock embedding model (e.g. `amazon.titan-embed-text-v2:0`); unset: a local embedder.
    pub embed_model_id: Option<String>,
    /// A sentence-transformers directory holding all-MiniLM-L6-v2, embedded in-process (where
    /// the `minilm` feature is linked); unset, and no Bedrock model: the hashed local embedder.
    pub embed_model_dir: Option<PathBuf>,
    /// Bedrock calls in flight per embedding batch.
    pub embed_concurrency: usize,
    /// Bedrock Converse model for answers; unset: the local extractive answerer.
    pub answer_model_id: Option<String>,
    /// Bedrock Converse model that plans queries for questions about figures (tool use); unset:
    /// the local planner.
    pub planner_model_id: Option<String>,
    /// Hits less relevant than this (0..1, see [`search::Hit::relevance`]) are not answered from.
    pub min_relevance: f64,
    /// Most tokens an answer may have.
    pub answer_max_tokens: i32,
    /// SQS queue for embedding work; unset: embed in-process.
    pub embed_queue_url: Option<String>,
    /// Tenants with at most this many chunks get an exact vector scan; larger ones the HNSW index.
    pub exact_max_chunks: i64,
    /// `hnsw.ef_search` for the approximate path (candidate list size; higher: better recall).
    pub hnsw_ef_search: u32,
    /// Which tenants get a vector index of their own ([`tenant_index`]).
    pub tenant_index: tenant_index::TenantIndexConfig,
}

impl RagConfig {
    /// `EMBED_DIMS`, `BEDROCK_EMBED_MODEL_ID`, `EMBED_MODEL_DIR`, `BEDROCK_EMBED_CONCURRENCY`,
    /// `BEDROCK_ANSWER_MODEL_ID`, `BEDROCK_PLANNER_MODEL_ID`, `BEDROCK_ANSWER_MAX_TOKENS`,
    /// `EMBED_QUEUE_URL`, `RAG_EXACT_MAX_CHUNKS`, `RAG_HNSW_EF_SEARCH`, `RAG_MIN_RELEVANCE`, and
    /// the `RAG_TENANT_INDEX_*` settings ([`tenant_index::TenantIndexConfig::from_env`]).
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let embed_model_id = env.var("BEDROCK_EMBED_MODEL_ID");
        let embed_model_dir = env.var("EMBED_MODEL_DIR").map(PathBuf::from);
        if embed_model_id.is_some() && embed_model_dir.is_some() {
            return Err(ConfigError::Invalid {
                name: "EMBED_MODEL_DIR",
                reason: "set this or BEDROCK_EMBED_MODEL_ID, not both".into(),
            });
        }
        Ok(Self {
            embed_dims: match env.parse("EMBED_DIMS", 256)? {
                d @ (256 | 512 | 1024) => d,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "EMBED_DIMS",
                        reason: "use 256, 512 or 1024".into(),
                    });
                }
            },
            embed_model_id,
            embed_model_dir,
            embed_concurrency: env.parse("BEDROCK_EMBED_CONCURRENCY", 4)?,
            answer_model_id: env.var("BEDROCK_ANSWER_MODEL_ID"),
            planner_model_id: env.var("BEDROCK_PLANNER_MODEL_ID"),
            min_relevance: match env.parse("RAG_MIN_RELEVANCE", 0.25)? {
                r if (0.0..=1.0).contains(&r) => r,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "RAG_MIN_RELEVANCE",
                        reason: "use 0 to 1".into(),
                    });
                }
            },
            answer_max_tokens: env.parse("BEDROCK_ANSWER_MAX_TOKENS", 800)?,
            embed_queue_url: env.var("EMBED_QUEUE_URL"),
            exact_max_chunks: env.parse("RAG_EXACT_MAX_CHUNKS", 5_000)?,
            hnsw_ef_search: match env.parse("RAG_HNSW_EF_SEARCH", 100)? {
                n @ 1..=1000 => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "RAG_HNSW_EF_SEARCH",
                        reason: "use 1 to 1000 (pgvector's range)".into(),
                    });
                }
            },
            tenant_index: tenant_index::TenantIndexConfig::from_env(env)?,
        })
    }
}

//! Per-tenant retrieval (groundwork for the RAG issue): chunking record text, embedding it, and
//! finding the chunks that answer a question, all under the same RLS as every other row.
//!
//! - [`chunk`]: split long text at paragraph and sentence boundaries, with overlap.
//! - [`embed`]: the [`embed::Embedder`] port and its local, deterministic adapter.
//! - [`chunks`]: keeping `app.chunks` in step with records, and embedding what is pending.
//! - [`search`]: hybrid retrieval (vector + full text, fused by reciprocal rank).

pub mod answer;
pub mod bedrock;
pub mod chunk;
pub mod chunks;
pub mod embed;
pub mod queue;
pub mod search;

//! Per-tenant retrieval and answers: chunking record text, embedding it, finding the chunks that
//! answer a question and answering from them with citations, all under the same RLS as every
//! other row.
//!
//! - [`split`]: split long text into chunks at paragraph and sentence boundaries, with overlap.
//! - [`embed`]: the [`embed::Embedder`] port and its local, deterministic adapter.
//! - `bedrock` (feature `bedrock`): the Bedrock adapters of the embedder and answerer ports.
//! - [`chunks`]: keeping `app.chunks` in step with records, and embedding what is pending.
//! - [`queue`]: the embed queue port (SQS in AWS, in-process locally) and the embed worker.
//! - [`search`]: hybrid retrieval (vector + full text, fused by reciprocal rank).
//! - [`answer`]: the answerer port, citation policing and the sanitizer of answers and snippets.

pub mod answer;
#[cfg(feature = "bedrock")]
pub mod bedrock;
pub mod chunks;
pub mod embed;
pub mod queue;
pub mod search;
pub mod split;

//! Hybrid retrieval: vector similarity and full-text rank, fused by reciprocal rank, in the
//! tenant's transaction (so RLS decides what can be found at all).
//!
//! Vector candidates come from an exact scan of the tenant's chunks (every tenant gets its k
//! nearest when it has k embedded chunks). The HNSW indexes in `0005_chunks.sql` are there for the
//! approximate path for large tenants, which needs recall measured against this one first.

use serde::Serialize;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::embed::{EmbedError, Embedder, to_pgvector};
use crate::db::{DbError, TenantTx};

/// Reciprocal-rank-fusion constant (the usual 60).
const RRF_K: f64 = 60.0;

/// A retrieved chunk.
#[derive(Clone, Debug, Serialize)]
pub struct Hit {
    /// Its dataset.
    pub dataset_id: Uuid,
    /// The record it was cut from.
    pub record_key: String,
    /// The record version it quotes.
    pub record_version: i32,
    /// Its position in the record.
    pub chunk_no: i32,
    /// The text column it came from.
    pub column: String,
    /// The text.
    pub content: String,
    /// Fused score (higher is better).
    pub score: f64,
    /// Rank among vector candidates (1-based), if it was one.
    pub vector_rank: Option<i64>,
    /// Rank among full-text candidates (1-based), if it was one.
    pub text_rank: Option<i64>,
}

/// The question's embedding, for [`search`].
pub async fn embed_question(
    embedder: &dyn Embedder,
    question: &str,
) -> Result<Vec<f32>, EmbedError> {
    Ok(embedder
        .embed(&[question.to_owned()])
        .await?
        .pop()
        .unwrap_or_default())
}

/// Finds the `k` chunks of the tenant that best match `question`, optionally within `datasets`.
///
/// `vector` is the question's embedding, made by the caller *before* the transaction begins, so
/// no connection sits idle in a transaction while an embedding model answers.
pub async fn search(
    tx: &mut TenantTx,
    question: &str,
    vector: &[f32],
    k: usize,
    datasets: Option<&[Uuid]>,
) -> Result<Vec<Hit>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let q = to_pgvector(vector);
    let dims = vector.len() as i32;
    // More candidates than results, so fusion has something to choose from.
    let candidates = (k as i64 * 4).max(20);
    let limit = k as i64;
    let datasets: Option<Vec<Uuid>> = datasets.map(<[Uuid]>::to_vec);
    let rows = tx
        .query(
            "WITH vec AS ( \
               SELECT dataset_id, record_key, chunk_no, row_number() OVER (ORDER BY dist, record_key, chunk_no) AS rank FROM ( \
                 SELECT c.dataset_id, c.record_key, c.chunk_no, c.embedding <=> $2::vector AS dist \
                 FROM app.chunks c \
                 WHERE c.tenant_id = $1 AND c.embedding IS NOT NULL AND vector_dims(c.embedding) = $3 \
                   AND ($5::uuid[] IS NULL OR c.dataset_id = ANY($5)) \
                 ORDER BY dist, c.record_key, c.chunk_no LIMIT $4) v \
             ), fts AS ( \
               SELECT dataset_id, record_key, chunk_no, row_number() OVER (ORDER BY r DESC, record_key, chunk_no) AS rank FROM ( \
                 SELECT c.dataset_id, c.record_key, c.chunk_no, ts_rank_cd(c.tsv, q) AS r \
                 FROM app.chunks c, websearch_to_tsquery('english', $6) q \
                 WHERE c.tenant_id = $1 AND c.tsv @@ q AND ($5::uuid[] IS NULL OR c.dataset_id = ANY($5)) \
                 ORDER BY r DESC, c.record_key, c.chunk_no LIMIT $4) f \
             ) \
             SELECT c.dataset_id, c.record_key, c.record_version, c.chunk_no, c.column_name, c.content, \
                    coalesce(1.0 / ($7 + m.vrank), 0) + coalesce(1.0 / ($7 + m.trank), 0) AS score, \
                    m.vrank, m.trank \
             FROM (SELECT dataset_id, record_key, chunk_no, vec.rank AS vrank, fts.rank AS trank \
                   FROM vec FULL JOIN fts USING (dataset_id, record_key, chunk_no)) m \
             JOIN app.chunks c ON c.tenant_id = $1 AND c.dataset_id = m.dataset_id \
               AND c.record_key = m.record_key AND c.chunk_no = m.chunk_no \
             ORDER BY score DESC, c.record_key, c.chunk_no LIMIT $8",
            &[
                (&tenant, Type::UUID),
                (&q, Type::TEXT),
                (&dims, Type::INT4),
                (&candidates, Type::INT8),
                (&datasets, Type::UUID_ARRAY),
                (&question, Type::TEXT),
                (&RRF_K, Type::FLOAT8),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Hit {
            dataset_id: r.get(0),
            record_key: r.get(1),
            record_version: r.get(2),
            chunk_no: r.get(3),
            column: r.get(4),
            content: r.get(5),
            score: r.get(6),
            vector_rank: r.get(7),
            text_rank: r.get(8),
        })
        .collect())
}

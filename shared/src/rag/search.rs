//! Hybrid retrieval: vector similarity and full-text rank, fused by reciprocal rank, in the
//! tenant's transaction (so RLS decides what can be found at all).
//!
//! Vector candidates come from one of two paths:
//! - **exact**: a scan of the tenant's chunks ordered by distance. Every tenant gets its true
//!   nearest neighbours; the cost grows with the tenant's chunk count.
//! - **approximate**: the HNSW index of the embedding's dimension (`0005_chunks.sql`), with
//!   `hnsw.ef_search` and pgvector's iterative index scan set in the transaction
//!   ([`TxSettings::hnsw_ef_search`](crate::db::TxSettings)), for tenants with more chunks than
//!   [`SearchRequest::exact_max_chunks`]. The index is shared by all tenants and filtered by RLS
//!   and the tenant predicate, so the iterative scan keeps going until it has enough rows or hits
//!   `hnsw.max_scan_tuples`, unless the tenant has an index of its own
//!   ([`super::tenant_index`]), which the planner then takes: for such a tenant the statement
//!   names the tenant as a literal, so the partial index's predicate is provable, and runs with
//!   [`SearchRequest::own_index_ef_search`]. When the approximate path comes
//!   back short, the exact scan runs instead: the tenant gets its candidates whenever it has them.
//!
//! Full-text candidates come from a scan of the tenant's chunks under RLS (which keeps any GIN
//! index from serving `@@`, not a LEAKPROOF operator), or, for a tenant with a full-text index
//! of its own, from `app.text_candidates`, which reads that index as the owner
//! (`0019_tenant_vector_indexes.sql`); either way the chunks themselves are read under RLS.

use serde::Serialize;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::embed::{EmbedError, Embedder, to_pgvector};
use crate::analytics::query::CompiledFilter;
use crate::db::{DbError, Params, TenantTx};

/// Reciprocal-rank-fusion constant (the usual 60).
const RRF_K: f64 = 60.0;

/// A retrieved chunk.
#[derive(Clone, Debug, Serialize)]
pub struct Hit {
    /// Its dataset.
    pub dataset_id: Uuid,
    /// Its dataset's name.
    pub dataset: String,
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
    /// Cosine similarity of its embedding to the question's (None while it has none).
    pub similarity: Option<f64>,
    /// How relevant it is to the question, 0 to 1 ([`relevance`]).
    pub relevance: f64,
}

/// A hit's relevance, 0 to 1, comparable across questions (unlike the fused score, a rank):
/// the mean of its cosine similarity to the question (below 0 counted as 0) and the share of
/// the question's topic words (stemmed, function words left out) its text contains. A chunk
/// that shares no topic word with the question is at most half relevant, however close its
/// vector; what `RAG_MIN_RELEVANCE` lets through is set against the answers benchmark.
pub fn relevance(question: &str, content: &str, similarity: Option<f64>) -> f64 {
    let wanted = crate::words::topic_stems(question);
    let coverage = if wanted.is_empty() {
        0.0
    } else {
        let have = crate::words::topic_stems(content);
        wanted.iter().filter(|w| have.contains(w)).count() as f64 / wanted.len() as f64
    };
    (similarity.unwrap_or(0.0).clamp(0.0, 1.0) + coverage) / 2.0
}

/// What to search for.
#[derive(Debug)]
pub struct SearchRequest<'a> {
    /// The question, for full-text search.
    pub question: &'a str,
    /// The question's embedding, made by the caller *before* the transaction begins, so no
    /// connection sits idle in a transaction while an embedding model answers.
    pub vector: &'a [f32],
    /// Results wanted.
    pub k: usize,
    /// Only these datasets (None: all of the tenant's).
    pub datasets: Option<&'a [Uuid]>,
    /// Only chunks whose record matches this condition on `r` (an `app.records` row); the
    /// search binds its own parameters after the filter's.
    pub filter: Option<&'a CompiledFilter>,
    /// Tenants with more chunks than this take the approximate path (the transaction must then
    /// have been begun with `hnsw_ef_search` set).
    pub exact_max_chunks: i64,
    /// `hnsw.ef_search` for a tenant with a vector index of its own ([`super::tenant_index`]):
    /// its graph holds only its chunks, so a longer candidate list buys recall at a cost still
    /// below the shared index's (None: the transaction's setting).
    pub own_index_ef_search: Option<u32>,
    /// Hits less [`relevance`] than this are left out *before* the `k` best are taken, so an
    /// irrelevant chunk that fuses high never pushes out a relevant one (0: keep all).
    pub min_relevance: f64,
}

impl SearchRequest<'_> {
    /// Vector candidates fetched before fusion: more than `k`, so fusion has a choice.
    pub fn candidates(&self) -> i64 {
        (self.k as i64 * 4).max(20)
    }
}

/// What a search found, and how.
#[derive(Clone, Debug)]
pub struct Retrieved {
    /// At most `k` hits at least `min_relevance` relevant, best first.
    pub hits: Vec<Hit>,
    /// Vector and full-text candidates considered before fusion (distinct chunks).
    pub candidates: usize,
    /// Whether the vector candidates came from an exact scan.
    pub exact: bool,
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

/// Finds the `k` chunks of the tenant that best match the request.
pub async fn search(tx: &mut TenantTx, req: &SearchRequest<'_>) -> Result<Retrieved, DbError> {
    let size = tenant_size(tx, req).await?;
    if size.large {
        let approximate = fused(tx, req, Path::approximate(size)).await?;
        if approximate.1 >= req.candidates() {
            return Ok(approximate.0);
        }
        tracing::debug!(
            found = approximate.1,
            "approximate search came back short; exact scan"
        );
    }
    Ok(fused(tx, req, Path::exact(size)).await?.0)
}

/// What the search knows of the tenant before it searches.
#[derive(Clone, Copy, Debug)]
struct Size {
    /// More chunks than `exact_max_chunks`.
    large: bool,
    /// A valid full-text index of its own ([`super::tenant_index`]) this transaction may use.
    own_text_index: bool,
    /// A valid vector index of its own for these vectors.
    own_vector_index: bool,
}

/// How one search runs.
#[derive(Clone, Copy, Debug)]
struct Path {
    /// Vector candidates by an exact scan (else by the planner's choice of HNSW index).
    exact: bool,
    /// Full-text candidates from `app.text_candidates` (the tenant's own GIN index), else from
    /// a scan of the tenant's chunks under RLS.
    own_text_index: bool,
    /// The tenant named as a literal in the vector candidates' query, so the planner can prove
    /// its own index's predicate; a bind parameter otherwise (a literal made the other tenants'
    /// plans slower: BENCHMARKS.md, `minilm`).
    tenant_literal: bool,
}

impl Path {
    fn exact(size: Size) -> Self {
        Self {
            exact: true,
            own_text_index: size.own_text_index,
            tenant_literal: false,
        }
    }

    fn approximate(size: Size) -> Self {
        Self {
            exact: false,
            own_text_index: size.own_text_index,
            tenant_literal: size.own_vector_index,
        }
    }
}

/// Whether the tenant has more than `limit` chunks (counting stops at `limit + 1`), and whether
/// it has a valid full-text index of its own that this transaction may use, in one statement;
/// where it has a valid vector index of its own for these vectors, the same statement sets
/// `hnsw.ef_search` to [`SearchRequest::own_index_ef_search`] for the rest of the transaction.
async fn tenant_size(tx: &mut TenantTx, req: &SearchRequest<'_>) -> Result<Size, DbError> {
    use super::tenant_index::{Kind, index_name};
    let tenant = tx.tenant_id().as_uuid();
    let fetch = req.exact_max_chunks.saturating_add(1);
    let text_index = format!("app.{}", index_name(tenant, Kind::Text));
    let vector_index = format!(
        "app.{}",
        index_name(tenant, Kind::Vectors(req.vector.len()))
    );
    let ef_search = req.own_index_ef_search.map(|n| n.to_string());
    let row = tx
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM app.chunks WHERE tenant_id = $1 LIMIT $2) c), \
                    coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($3)), false), \
                    v.valid, \
                    CASE WHEN v.valid AND $5::text IS NOT NULL \
                         THEN set_config('hnsw.ef_search', $5, true) END \
             FROM (SELECT coalesce((SELECT indisvalid FROM pg_index \
                                    WHERE indexrelid = to_regclass($4)), false) AS valid) v",
            &[
                (&tenant, Type::UUID),
                (&fetch, Type::INT8),
                (&text_index, Type::TEXT),
                (&vector_index, Type::TEXT),
                (&ef_search, Type::TEXT),
            ],
        )
        .await?;
    Ok(Size {
        large: row.get::<_, i64>(0) > req.exact_max_chunks,
        // A read-only support session reads as tenantry_impersonation, under the restrictive
        // policies of 0012, which app.text_candidates (the owner's) would not apply: it is not
        // granted to that role, and the scan under RLS serves such a session.
        own_text_index: row.get::<_, bool>(1) && !tx.is_read_only_impersonation(),
        own_vector_index: row.get(2),
    })
}

/// The plan Postgres chooses for the search's statement on one path (`EXPLAIN`, without costs):
/// which index serves the vector candidates, for operators and tests.
pub async fn explain(
    tx: &mut TenantTx,
    req: &SearchRequest<'_>,
    exact: bool,
) -> Result<String, DbError> {
    let size = tenant_size(tx, req).await?;
    let path = match exact {
        true => Path::exact(size),
        false => Path::approximate(size),
    };
    let (sql, params) = statement(tx.tenant_id().as_uuid(), req, path);
    let rows = tx
        .query(&format!("EXPLAIN (COSTS OFF) {sql}"), &params.as_params())
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// One fused search; also returns how many vector candidates were found.
async fn fused(
    tx: &mut TenantTx,
    req: &SearchRequest<'_>,
    path: Path,
) -> Result<(Retrieved, i64), DbError> {
    let exact = path.exact;
    let (sql, params) = statement(tx.tenant_id().as_uuid(), req, path);
    let rows = tx.query(&sql, &params.as_params()).await?;
    let vector_found = rows.first().map_or(0, |r| r.get::<_, i64>(10));
    let considered = rows.first().map_or(0, |r| r.get::<_, i64>(11));
    // Every fused candidate (at most twice `candidates`) is read, its relevance computed, and
    // only then are the `k` best relevant ones kept.
    let hits = rows
        .iter()
        .map(|r| {
            let content: String = r.get(6);
            let similarity: Option<f64> = r.get(12);
            Hit {
                relevance: relevance(req.question, &content, similarity),
                similarity,
                dataset_id: r.get(0),
                dataset: r.get(1),
                record_key: r.get(2),
                record_version: r.get(3),
                chunk_no: r.get(4),
                column: r.get(5),
                content,
                score: r.get(7),
                vector_rank: r.get(8),
                text_rank: r.get(9),
            }
        })
        .filter(|h| h.relevance >= req.min_relevance)
        .take(req.k)
        .collect();
    Ok((
        Retrieved {
            hits,
            candidates: considered as usize,
            exact,
        },
        vector_found,
    ))
}

/// The search's statement on one path, with its parameters.
fn statement(tenant_id: Uuid, req: &SearchRequest<'_>, path: Path) -> (String, Params) {
    let exact = path.exact;
    // The filter's parameters come first; the search's own are bound after them.
    let mut params = req.filter.map(|f| f.params.clone()).unwrap_or_default();
    let tenant = params.bind(tenant_id, Type::UUID);
    let question_vector = params.bind(to_pgvector(req.vector), Type::TEXT);
    let candidates = params.bind(req.candidates(), Type::INT8);
    let datasets = params.bind(req.datasets.map(<[Uuid]>::to_vec), Type::UUID_ARRAY);
    let question = params.bind(req.question.to_owned(), Type::TEXT);
    let rrf_k = params.bind(RRF_K, Type::FLOAT8);
    // The dimension is ours (the embedder's), never a client's: a literal, so the planner can
    // prove the shared index's predicate; so is the tenant (a UUID) where it has a vector index
    // of its own ([`Path::tenant_literal`]).
    let dims = req.vector.len();
    let vector_tenant = match path.tenant_literal {
        true => format!("'{tenant_id}'::uuid"),
        false => tenant.clone(),
    };
    let record_filter = match req.filter {
        Some(f) => format!(
            " AND EXISTS (SELECT 1 FROM app.records r WHERE r.tenant_id = c.tenant_id \
               AND r.dataset_id = c.dataset_id AND r.key = c.record_key AND {})",
            f.sql
        ),
        None => String::new(),
    };
    let distance = if exact {
        format!("c.embedding <=> {question_vector}::vector({dims})")
    } else {
        format!("c.embedding::vector({dims}) <=> {question_vector}::vector({dims})")
    };
    // The approximate path orders by distance alone (what the index serves); ties are
    // broken after fusion.
    let order = if exact {
        "dist, c.record_key, c.chunk_no"
    } else {
        "dist"
    };
    // Full-text candidates: from the tenant's own GIN index through `app.text_candidates`
    // where it has one (RLS keeps any GIN index from an app-role search; see
    // 0019_tenant_vector_indexes.sql), unless a record filter must apply before the limit.
    let fts = match (path.own_text_index, req.filter) {
        (true, None) => format!(
            "SELECT dataset_id, record_key, chunk_no, \
                    row_number() OVER (ORDER BY rank DESC, record_key, chunk_no) AS rank \
             FROM app.text_candidates({question}, {datasets}, {candidates})"
        ),
        _ => format!(
            "SELECT dataset_id, record_key, chunk_no, \
                    row_number() OVER (ORDER BY r DESC, record_key, chunk_no) AS rank FROM ( \
               SELECT c.dataset_id, c.record_key, c.chunk_no, ts_rank_cd(c.tsv, q) AS r \
               FROM app.chunks c, websearch_to_tsquery('english', {question}) q \
               WHERE c.tenant_id = {tenant} AND c.tsv @@ q \
                 AND ({datasets}::uuid[] IS NULL OR c.dataset_id = ANY({datasets})){record_filter} \
               ORDER BY r DESC, c.record_key, c.chunk_no LIMIT {candidates}) f"
        ),
    };
    let sql = format!(
        "WITH vec AS MATERIALIZED ( \
           SELECT c.dataset_id, c.record_key, c.chunk_no, {distance} AS dist \
           FROM app.chunks c \
           WHERE c.tenant_id = {vector_tenant} AND vector_dims(c.embedding) = {dims} \
             AND ({datasets}::uuid[] IS NULL OR c.dataset_id = ANY({datasets})){record_filter} \
           ORDER BY {order} LIMIT {candidates} \
         ), vrank AS ( \
           SELECT dataset_id, record_key, chunk_no, \
                  row_number() OVER (ORDER BY dist, record_key, chunk_no) AS rank FROM vec \
         ), fts AS ({fts} \
         ), m AS ( \
           SELECT dataset_id, record_key, chunk_no, vrank.rank AS vrank, fts.rank AS trank \
           FROM vrank FULL JOIN fts USING (dataset_id, record_key, chunk_no) \
         ) \
         SELECT c.dataset_id, d.name, c.record_key, c.record_version, c.chunk_no, c.column_name, \
                c.content, \
                coalesce(1.0 / ({rrf_k} + m.vrank), 0) + coalesce(1.0 / ({rrf_k} + m.trank), 0) \
                  AS score, \
                m.vrank, m.trank, (SELECT count(*) FROM vec), (SELECT count(*) FROM m), \
                CASE WHEN vector_dims(c.embedding) = {dims} \
                  THEN 1 - (c.embedding <=> {question_vector}::vector({dims})) END \
         FROM m \
         JOIN app.chunks c ON c.tenant_id = {tenant} AND c.dataset_id = m.dataset_id \
           AND c.record_key = m.record_key AND c.chunk_no = m.chunk_no \
         JOIN app.datasets d ON d.tenant_id = {tenant} AND d.dataset_id = c.dataset_id \
         ORDER BY score DESC, c.record_key, c.chunk_no"
    );
    (sql, params)
}

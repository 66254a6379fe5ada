//! `app.chunks`: kept in step with records by ingest, embedded under a lease
//! ([`claim_pending`], then [`store_vectors`]) with no transaction open while the model works.

use serde_json::Value;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::embed::{EmbedError, to_pgvector};
use super::split::{ChunkSpec, split};
use crate::analytics::Dataset;
use crate::db::{DbError, TenantTx};

/// A record whose text changed: its key, new version and data.
#[derive(Debug)]
pub struct ChangedRecord<'a> {
    /// The record's key.
    pub key: &'a str,
    /// Its version after the write.
    pub version: i32,
    /// Its data after the write.
    pub data: &'a Value,
    /// Whether the write created it (then it has no chunks to remove).
    pub new: bool,
}

/// Replaces the chunks of changed records with chunks of their current text columns (embedding
/// pending). Returns how many chunks were written. Old versions' chunks are gone in the same
/// transaction, so a superseded version is never retrieved or cited again.
pub async fn replace(
    tx: &mut TenantTx,
    dataset: &Dataset,
    changed: &[ChangedRecord<'_>],
) -> Result<usize, DbError> {
    if dataset.text_columns.is_empty() || changed.is_empty() {
        return Ok(0);
    }
    let tenant = tx.tenant_id().as_uuid();
    // A record the write created has no chunks yet (they go with their record: ON DELETE
    // CASCADE), so only updated ones are looked up.
    let keys: Vec<&str> = changed.iter().filter(|r| !r.new).map(|r| r.key).collect();
    if !keys.is_empty() {
        tx.execute(
            "DELETE FROM app.chunks WHERE tenant_id = $1 AND dataset_id = $2 AND record_key = ANY($3)",
            &[
                (&tenant, Type::UUID),
                (&dataset.id, Type::UUID),
                (&keys, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    }
    let (mut k, mut n, mut v, mut c, mut t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for record in changed {
        let mut no = 0i32;
        for column in &dataset.text_columns {
            let Some(text) = record.data.get(column).and_then(Value::as_str) else {
                continue;
            };
            for piece in split(text, ChunkSpec::default()) {
                k.push(record.key);
                n.push(no);
                v.push(record.version);
                c.push(column.as_str());
                t.push(piece);
                no += 1;
            }
        }
    }
    if k.is_empty() {
        return Ok(0);
    }
    tx.execute(
        "INSERT INTO app.chunks (tenant_id, dataset_id, record_key, chunk_no, record_version, column_name, content) \
         SELECT $1, $2, u.k, u.n, u.v, u.c, u.t \
         FROM unnest($3::text[], $4::int4[], $5::int4[], $6::text[], $7::text[]) AS u(k, n, v, c, t)",
        &[
            (&tenant, Type::UUID),
            (&dataset.id, Type::UUID),
            (&k, Type::TEXT_ARRAY),
            (&n, Type::INT4_ARRAY),
            (&v, Type::INT4_ARRAY),
            (&c, Type::TEXT_ARRAY),
            (&t, Type::TEXT_ARRAY),
        ],
    )
    .await?;
    Ok(k.len())
}

/// What embedding pending chunks can fail on.
#[derive(Debug, thiserror::Error)]
pub enum EmbedPendingError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The embedder.
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

/// A pending chunk claimed under a lease.
#[derive(Clone, Debug)]
pub struct Claimed {
    dataset_id: Uuid,
    record_key: String,
    chunk_no: i32,
    /// Its text, to embed.
    pub content: String,
}

/// Claims up to `limit` chunks of the transaction's tenant that have no vector and no live
/// lease, under `lease` for `lease_for`. Commit before embedding: the claim is what keeps
/// other workers off them, not a row lock held across the model call.
pub async fn claim_pending(
    tx: &mut TenantTx,
    lease: Uuid,
    limit: i64,
    lease_for: std::time::Duration,
) -> Result<Vec<Claimed>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let secs = lease_for.as_secs_f64();
    let rows = tx
        .query(
            // Materialized: picked once. As a plain subquery in FROM, a nested-loop plan may
            // rescan it, each rescan taking up to `limit` more rows.
            "WITH p AS MATERIALIZED ( \
               SELECT dataset_id, record_key, chunk_no FROM app.chunks \
               WHERE tenant_id = $1 AND embedding IS NULL \
                 AND (embed_lease_until IS NULL OR embed_lease_until < clock_timestamp()) \
               ORDER BY created_at, record_key, chunk_no LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE app.chunks c SET embed_lease = $2, \
               embed_lease_until = clock_timestamp() + make_interval(secs => $4) \
             FROM p WHERE c.tenant_id = $1 AND c.dataset_id = p.dataset_id \
               AND c.record_key = p.record_key AND c.chunk_no = p.chunk_no \
             RETURNING c.dataset_id, c.record_key, c.chunk_no, c.content",
            &[
                (&tenant, Type::UUID),
                (&lease, Type::UUID),
                (&limit, Type::INT8),
                (&secs, Type::FLOAT8),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Claimed {
            dataset_id: r.get(0),
            record_key: r.get(1),
            chunk_no: r.get(2),
            content: r.get(3),
        })
        .collect())
}

/// Writes the vectors of `claimed` (in order) where `lease` still holds them; returns how many
/// were written. A chunk whose lease was lost, or that was replaced, keeps what it has.
pub async fn store_vectors(
    tx: &mut TenantTx,
    lease: Uuid,
    claimed: &[Claimed],
    vectors: &[Vec<f32>],
    model: &str,
) -> Result<usize, EmbedPendingError> {
    if vectors.len() != claimed.len() {
        return Err(EmbedError::Fatal(format!(
            "{} vectors for {} texts",
            vectors.len(),
            claimed.len()
        ))
        .into());
    }
    let tenant = tx.tenant_id().as_uuid();
    let datasets: Vec<Uuid> = claimed.iter().map(|c| c.dataset_id).collect();
    let keys: Vec<String> = claimed.iter().map(|c| c.record_key.clone()).collect();
    let nos: Vec<i32> = claimed.iter().map(|c| c.chunk_no).collect();
    let vecs: Vec<String> = vectors.iter().map(|v| to_pgvector(v)).collect();
    let model = model.to_owned();
    let n = tx
        .execute(
            "UPDATE app.chunks c SET embedding = u.e::vector, embedding_model = $2, \
               embed_lease = NULL, embed_lease_until = NULL \
             FROM unnest($3::uuid[], $4::text[], $5::int4[], $6::text[]) AS u(d, k, n, e) \
             WHERE c.tenant_id = $1 AND c.dataset_id = u.d AND c.record_key = u.k \
               AND c.chunk_no = u.n AND c.embed_lease = $7 AND c.embedding IS NULL",
            &[
                (&tenant, Type::UUID),
                (&model, Type::TEXT),
                (&datasets, Type::UUID_ARRAY),
                (&keys, Type::TEXT_ARRAY),
                (&nos, Type::INT4_ARRAY),
                (&vecs, Type::TEXT_ARRAY),
                (&lease, Type::UUID),
            ],
        )
        .await?;
    Ok(n as usize)
}

/// Gives up `lease` (after a failed embedding), so the chunks can be claimed again at once.
pub async fn release(tx: &mut TenantTx, lease: Uuid) -> Result<u64, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    tx.execute(
        "UPDATE app.chunks SET embed_lease = NULL, embed_lease_until = NULL \
         WHERE tenant_id = $1 AND embed_lease = $2",
        &[(&tenant, Type::UUID), (&lease, Type::UUID)],
    )
    .await
}

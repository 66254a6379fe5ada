//! `app.chunks`: kept in step with records by ingest, embedded by [`embed_pending`].

use serde_json::Value;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::embed::{EmbedError, Embedder, to_pgvector};
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
    let keys: Vec<&str> = changed.iter().map(|r| r.key).collect();
    tx.execute(
        "DELETE FROM app.chunks WHERE tenant_id = $1 AND dataset_id = $2 AND record_key = ANY($3)",
        &[
            (&tenant, Type::UUID),
            (&dataset.id, Type::UUID),
            (&keys, Type::TEXT_ARRAY),
        ],
    )
    .await?;
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

/// Embeds up to `limit` chunks of the transaction's tenant that have no vector yet; returns how
/// many. Rows are locked (`SKIP LOCKED`) so concurrent workers share the work.
pub async fn embed_pending(
    tx: &mut TenantTx,
    embedder: &dyn Embedder,
    limit: i64,
) -> Result<usize, EmbedPendingError> {
    let tenant = tx.tenant_id().as_uuid();
    let rows = tx
        .query(
            "SELECT dataset_id, record_key, chunk_no, content FROM app.chunks \
             WHERE tenant_id = $1 AND embedding IS NULL ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[(&tenant, Type::UUID), (&limit, Type::INT8)],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let texts: Vec<String> = rows.iter().map(|r| r.get(3)).collect();
    let vectors = embedder.embed(&texts).await?;
    if vectors.len() != rows.len() {
        return Err(EmbedError::Fatal(format!(
            "{} vectors for {} texts",
            vectors.len(),
            rows.len()
        ))
        .into());
    }
    let datasets: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let keys: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    let nos: Vec<i32> = rows.iter().map(|r| r.get(2)).collect();
    let vecs: Vec<String> = vectors.iter().map(|v| to_pgvector(v)).collect();
    let model = embedder.model().to_owned();
    tx.execute(
        "UPDATE app.chunks c SET embedding = u.e::vector, embedding_model = $2 \
         FROM unnest($3::uuid[], $4::text[], $5::int4[], $6::text[]) AS u(d, k, n, e) \
         WHERE c.tenant_id = $1 AND c.dataset_id = u.d AND c.record_key = u.k AND c.chunk_no = u.n",
        &[
            (&tenant, Type::UUID),
            (&model, Type::TEXT),
            (&datasets, Type::UUID_ARRAY),
            (&keys, Type::TEXT_ARRAY),
            (&nos, Type::INT4_ARRAY),
            (&vecs, Type::TEXT_ARRAY),
        ],
    )
    .await?;
    Ok(rows.len())
}

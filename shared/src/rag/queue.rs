//! The embedding work queue port. Ingest commits chunks with no vector and then asks for them to
//! be embedded; the pending chunks in the database are the truth, the queue only says "look".
//! The in-process adapter serves the local runner; an SQS adapter and the `embed` function are the
//! AWS side (next step of the RAG issue).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::chunks::{EmbedPendingError, embed_pending};
use super::embed::Embedder;
use crate::TenantId;
use crate::db::{Access, Db, TenantContext};

/// Why work could not be queued.
#[derive(Debug, thiserror::Error)]
#[error("could not queue embedding work: {0}")]
pub struct QueueError(pub String);

/// A boxed enqueue future.
pub type EnqueueFuture<'a> = Pin<Box<dyn Future<Output = Result<(), QueueError>> + Send + 'a>>;

/// Where "embed this tenant's pending chunks" goes.
pub trait EmbedQueue: Send + Sync + std::fmt::Debug {
    /// Which adapter, for the startup log.
    fn kind(&self) -> &'static str;
    /// Asks for the tenant's pending chunks to be embedded.
    fn enqueue(&self, tenant: TenantId) -> EnqueueFuture<'_>;
}

/// Embeds every pending chunk of `tenant`, in batches, each batch its own transaction. Returns
/// how many were embedded. This is the worker's whole job, wherever the request came from.
pub async fn drain(
    db: &Db,
    embedder: &dyn Embedder,
    tenant: TenantId,
) -> Result<usize, EmbedPendingError> {
    let ctx = TenantContext {
        tenant_id: tenant,
        actor_id: "system:embed".into(),
    };
    let mut total = 0;
    loop {
        let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
        let n = embed_pending(&mut tx, embedder, 64).await?;
        tx.commit().await?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
    }
}

/// Embeds in a background task of this process (local runner, tests).
#[derive(Debug)]
pub struct InProcessEmbedQueue {
    db: Db,
    embedder: Arc<dyn Embedder>,
}

impl InProcessEmbedQueue {
    /// A queue that embeds with `embedder` through `db`.
    pub fn new(db: Db, embedder: Arc<dyn Embedder>) -> Self {
        Self { db, embedder }
    }
}

impl EmbedQueue for InProcessEmbedQueue {
    fn kind(&self) -> &'static str {
        "in-process"
    }

    fn enqueue(&self, tenant: TenantId) -> EnqueueFuture<'_> {
        let (db, embedder) = (self.db.clone(), Arc::clone(&self.embedder));
        Box::pin(async move {
            tokio::spawn(async move {
                match drain(&db, embedder.as_ref(), tenant).await {
                    Ok(n) => {
                        tracing::info!(tenant_id = %tenant, embedded = n, "embedded pending chunks")
                    }
                    Err(e) => {
                        tracing::warn!(tenant_id = %tenant, error = %e, "embedding failed; chunks stay pending")
                    }
                }
            });
            Ok(())
        })
    }
}

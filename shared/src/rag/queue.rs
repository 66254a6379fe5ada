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

/// Embeds in this process: in a background task (local runner, tests), or, inside Lambda, before
/// the request returns, since a frozen execution environment would never finish a background task.
#[derive(Debug)]
pub struct InProcessEmbedQueue {
    db: Db,
    embedder: Arc<dyn Embedder>,
    inline: bool,
}

impl InProcessEmbedQueue {
    /// A queue that embeds with `embedder` through `db`; inline when running in Lambda.
    pub fn new(db: Db, embedder: Arc<dyn Embedder>) -> Self {
        let inline = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
        Self {
            db,
            embedder,
            inline,
        }
    }
}

impl EmbedQueue for InProcessEmbedQueue {
    fn kind(&self) -> &'static str {
        "in-process"
    }

    fn enqueue(&self, tenant: TenantId) -> EnqueueFuture<'_> {
        let (db, embedder) = (self.db.clone(), Arc::clone(&self.embedder));
        let work = async move {
            match drain(&db, embedder.as_ref(), tenant).await {
                Ok(n) => {
                    tracing::info!(tenant_id = %tenant, embedded = n, "embedded pending chunks")
                }
                Err(e) => {
                    tracing::warn!(tenant_id = %tenant, error = %e, "embedding failed; chunks stay pending")
                }
            }
        };
        let inline = self.inline;
        Box::pin(async move {
            if inline {
                work.await;
            } else {
                tokio::spawn(work);
            }
            Ok(())
        })
    }
}

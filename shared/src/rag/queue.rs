//! The embedding work queue port. Ingest commits chunks with no vector and then asks for them to
//! be embedded; the pending chunks in the database are the truth, the queue only says "look".
//! The in-process adapter serves the local runner; the SQS adapter and the `embed` function are the
//! AWS side. A scheduled sweep re-queues tenants whose chunks waited too long, so a lost message
//! delays embedding but never loses it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::chunks::{EmbedPendingError, claim_pending, release, store_vectors};
use super::embed::{EmbedError, Embedder};
use crate::TenantId;
use crate::db::{Access, Db, TenantContext};
use crate::runtime::Work;

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

/// Chunks claimed per batch.
pub const EMBED_BATCH: i64 = 64;
/// How long a claim keeps other workers off its chunks (a worker that dies loses them after it).
pub const EMBED_LEASE: Duration = Duration::from_secs(300);

/// Embeds every pending chunk of `tenant`, in batches. Returns how many were embedded. This is
/// the worker's whole job, wherever the request came from.
///
/// Each batch is claimed under a lease in one short transaction, embedded with **no transaction
/// open** (a connection never waits in a transaction on the model), and written back in a
/// second one where the lease still holds. A failed embedding gives the lease up.
pub async fn drain(
    db: &Db,
    embedder: &dyn Embedder,
    tenant: TenantId,
) -> Result<usize, EmbedPendingError> {
    drain_batches(db, embedder, tenant, usize::MAX)
        .await
        .map(|(n, _)| n)
}

/// Like [`drain`], but at most `batches` batches; also says whether it stopped at that limit
/// after a full batch (the tenant may have more pending).
async fn drain_batches(
    db: &Db,
    embedder: &dyn Embedder,
    tenant: TenantId,
    batches: usize,
) -> Result<(usize, bool), EmbedPendingError> {
    let ctx = TenantContext {
        tenant_id: tenant,
        actor_id: "system:embed".into(),
    };
    let mut total = 0;
    let mut full = false;
    for _ in 0..batches {
        let lease = Uuid::new_v4();
        let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
        let claimed = claim_pending(&mut tx, lease, EMBED_BATCH, EMBED_LEASE).await?;
        tx.commit().await?;
        if claimed.is_empty() {
            return Ok((total, false));
        }
        full = claimed.len() as i64 == EMBED_BATCH;
        let texts: Vec<String> = claimed.iter().map(|c| c.content.clone()).collect();
        // A vector count that does not match is a failed embedding too: the lease is given up.
        let embedded = embedder.embed(&texts).await.and_then(|v| {
            if v.len() == texts.len() {
                Ok(v)
            } else {
                Err(EmbedError::Fatal(format!(
                    "{} vectors for {} texts",
                    v.len(),
                    texts.len()
                )))
            }
        });
        let vectors = match embedded {
            Ok(v) => v,
            Err(e) => {
                let released = async {
                    let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
                    release(&mut tx, lease).await?;
                    tx.commit().await
                };
                if let Err(r) = released.await {
                    tracing::warn!(error = %r, "could not release an embedding lease; it expires");
                }
                return Err(e.into());
            }
        };
        let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
        total += store_vectors(&mut tx, lease, &claimed, &vectors, embedder.model()).await?;
        tx.commit().await?;
    }
    Ok((total, full))
}

/// Embeds in this process: in one background worker (local runner, tests), or, inside Lambda,
/// before the request returns, since a frozen execution environment would never finish a
/// background task.
///
/// In the background, work is coalesced: a tenant queued again before the worker reached it is
/// queued once, and one worker gives the tenants waiting a turn each (at most
/// `BATCHES_PER_TURN` batches; a tenant with more goes to the back of the line). A burst of ingests therefore
/// costs one embedding stream (and one writer into the HNSW index) rather than a task per
/// request competing with the ingests for the cores.
#[derive(Debug)]
pub struct InProcessEmbedQueue {
    db: Db,
    embedder: Arc<dyn Embedder>,
    work: Work,
    backlog: Arc<Mutex<Backlog>>,
}

/// Tenants waiting for the background worker, in order, and whether it runs.
#[derive(Debug, Default)]
struct Backlog {
    waiting: VecDeque<TenantId>,
    running: bool,
}

impl InProcessEmbedQueue {
    /// A queue that embeds with `embedder` through `db`, run as `work` says.
    pub fn new(db: Db, embedder: Arc<dyn Embedder>, work: Work) -> Self {
        Self {
            db,
            embedder,
            work,
            backlog: Arc::default(),
        }
    }
}

/// Batches a tenant gets per turn of the background worker before the next tenant waiting has
/// its turn (one tenant loading steadily never starves the others).
const BATCHES_PER_TURN: usize = 8;

/// One turn: whether the tenant may have more pending (then it queues again, at the back).
async fn turn(db: &Db, embedder: &dyn Embedder, tenant: TenantId, batches: usize) -> bool {
    match drain_batches(db, embedder, tenant, batches).await {
        Ok((n, more)) => {
            tracing::info!(tenant_id = %tenant, embedded = n, "embedded pending chunks");
            more
        }
        Err(e) => {
            tracing::warn!(tenant_id = %tenant, error = %e, "embedding failed; chunks stay pending");
            false
        }
    }
}

/// The background worker: gives the tenants waiting a turn each, in order, until none is left.
/// Stops under the same lock that `enqueue` checks, so a tenant queued meanwhile is never
/// stranded.
async fn work_through(db: Db, embedder: Arc<dyn Embedder>, backlog: Arc<Mutex<Backlog>>) {
    // Should the worker end any other way (a panic, its runtime shutting down), the next enqueue
    // starts one again rather than finding one "running" forever.
    struct Running {
        backlog: Arc<Mutex<Backlog>>,
        stopped: bool,
    }
    impl Drop for Running {
        fn drop(&mut self) {
            if !self.stopped
                && let Ok(mut b) = self.backlog.lock()
            {
                b.running = false;
            }
        }
    }
    let mut running = Running {
        backlog: Arc::clone(&backlog),
        stopped: false,
    };
    let mut again = None;
    loop {
        let next = {
            let Ok(mut b) = backlog.lock() else { return };
            if let Some(t) = again.take()
                && !b.waiting.contains(&t)
            {
                b.waiting.push_back(t);
            }
            let next = b.waiting.pop_front();
            if next.is_none() {
                b.running = false;
                running.stopped = true;
            }
            next
        };
        let Some(tenant) = next else { return };
        if turn(&db, embedder.as_ref(), tenant, BATCHES_PER_TURN).await {
            again = Some(tenant);
        }
    }
}

impl EmbedQueue for InProcessEmbedQueue {
    fn kind(&self) -> &'static str {
        "in-process"
    }

    fn enqueue(&self, tenant: TenantId) -> EnqueueFuture<'_> {
        Box::pin(async move {
            match self.work {
                Work::Inline => {
                    turn(&self.db, self.embedder.as_ref(), tenant, usize::MAX).await;
                }
                Work::Background => {
                    let start = {
                        let mut b = self
                            .backlog
                            .lock()
                            .map_err(|_| QueueError("the embedding backlog is poisoned".into()))?;
                        if !b.waiting.contains(&tenant) {
                            b.waiting.push_back(tenant);
                        }
                        !std::mem::replace(&mut b.running, true)
                    };
                    if start {
                        tokio::spawn(work_through(
                            self.db.clone(),
                            Arc::clone(&self.embedder),
                            Arc::clone(&self.backlog),
                        ));
                    }
                }
            }
            Ok(())
        })
    }
}

/// The queue message: which tenant has pending chunks.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedJob {
    /// The tenant.
    pub tenant_id: TenantId,
}

/// Sends embedding work to the SQS queue the `embed` function consumes.
#[cfg(feature = "sqs")]
#[derive(Debug)]
pub struct SqsEmbedQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

#[cfg(feature = "sqs")]
impl SqsEmbedQueue {
    /// A queue adapter for `queue_url`.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }
}

#[cfg(feature = "sqs")]
impl EmbedQueue for SqsEmbedQueue {
    fn kind(&self) -> &'static str {
        "sqs"
    }

    fn enqueue(&self, tenant: TenantId) -> EnqueueFuture<'_> {
        Box::pin(async move {
            let job = EmbedJob { tenant_id: tenant };
            crate::sqs::send_json(&self.client, &self.queue_url, &job)
                .await
                .map_err(QueueError)
        })
    }
}

/// The `embed` function's scheduled input: re-queue tenants whose chunks have waited too long.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepInput {
    /// Chunks pending longer than this many seconds count as lost work.
    pub older_than_secs: u64,
}

/// What a sweep did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SweepOutcome {
    /// Tenants found with stale pending chunks.
    pub tenants: usize,
    /// Of those, queued again.
    pub queued: usize,
    /// Of those, whose enqueue failed (they are found again by the next sweep).
    pub failed: usize,
}

/// Finds tenants whose chunks have waited longer than `input.older_than_secs` (an enqueue that
/// failed after ingest committed, a message that reached the dead-letter queue) and queues each
/// again. Pending chunks in the database are the truth, so this is all recovery takes.
pub async fn sweep(
    db: &Db,
    queue: &dyn EmbedQueue,
    input: &SweepInput,
) -> Result<SweepOutcome, crate::db::DbError> {
    let tenants = db
        .tenants_with_pending_chunks(std::time::Duration::from_secs(input.older_than_secs))
        .await?;
    let mut outcome = SweepOutcome {
        tenants: tenants.len(),
        ..SweepOutcome::default()
    };
    for tenant in tenants {
        match queue.enqueue(tenant).await {
            Ok(()) => outcome.queued += 1,
            Err(e) => {
                tracing::warn!(tenant_id = %tenant, error = %e, "sweep could not queue");
                outcome.failed += 1;
            }
        }
    }
    tracing::info!(
        tenants = outcome.tenants,
        queued = outcome.queued,
        failed = outcome.failed,
        "embed sweep done"
    );
    Ok(outcome)
}

/// What the `embed` function is invoked with: SQS batches, or the scheduler's sweep input.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum EmbedEvent {
    /// `{"sweep": {"older_than_secs": 300}}` from EventBridge Scheduler.
    Sweep {
        /// The sweep's parameters.
        sweep: SweepInput,
    },
    /// A batch from the embed queue.
    Sqs(aws_lambda_events::event::sqs::SqsEvent),
}

/// The `embed` function's handler: drains each message's tenant and names exactly the messages
/// that failed (malformed ones included, so they reach the dead-letter queue instead of vanishing).
pub async fn handle_sqs(
    db: &Db,
    embedder: &dyn Embedder,
    event: aws_lambda_events::event::sqs::SqsEvent,
) -> aws_lambda_events::event::sqs::SqsBatchResponse {
    use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
    let mut failures = Vec::new();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let job: Result<EmbedJob, _> =
            serde_json::from_str(record.body.as_deref().unwrap_or_default());
        let outcome = match job {
            Ok(job) => drain(db, embedder, job.tenant_id)
                .await
                .map(|n| (job.tenant_id, n))
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("malformed message: {e}")),
        };
        match outcome {
            Ok((tenant, n)) => {
                tracing::info!(message_id = %id, tenant_id = %tenant, embedded = n, "embed job done")
            }
            Err(reason) => {
                tracing::warn!(message_id = %id, reason, "embed job failed");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                failures.push(failure);
            }
        }
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures;
    response
}

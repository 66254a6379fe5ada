//! The usage queue port and [`emit`]: how a billable request makes its usage durable.
//!
//! A request's usage goes to the queue (SQS in AWS; the `usage-meter` function writes it to the
//! ledger). If the queue cannot take it, the event is written to the ledger directly, in the
//! tenant's transaction. If neither works, the request fails: usage is never silently dropped.
//! Ingest writes its event inside its own transaction instead (see `api::records`), so the count
//! of changed records and the records themselves commit together; so does a query, in the flight
//! that runs it (see `api::query`), so it is billed exactly when it answers. What remains here is
//! a question's usage (`api::ask`, which runs several transactions).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{UsageEvent, ledger};
use crate::TenantId;
use crate::billing::BillingSink;
#[cfg(feature = "sqs")]
use crate::billing::meter::UsageMessage;
use crate::billing::meter::{MeterConfig, flush_tenants, record_events};
use crate::db::{Access, Db, DbError, TenantContext};
use crate::runtime::Work;

/// Why the queue did not take the events.
#[derive(Debug, thiserror::Error)]
#[error("could not queue usage: {0}")]
pub struct UsageQueueError(pub String);

/// A boxed send future.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), UsageQueueError>> + Send + 'a>>;

/// Where usage events go on their way to the ledger.
pub trait UsageQueue: Send + Sync + std::fmt::Debug {
    /// Which adapter, for the startup log.
    fn kind(&self) -> &'static str;
    /// Queues the events; Ok means they are durable (queued or recorded).
    fn send<'a>(&'a self, events: &'a [UsageEvent]) -> SendFuture<'a>;
}

/// The SQS adapter: one message per call, consumed by `usage-meter`.
#[cfg(feature = "sqs")]
#[derive(Debug)]
pub struct SqsUsageQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

#[cfg(feature = "sqs")]
impl SqsUsageQueue {
    /// An adapter for `queue_url`.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }
}

#[cfg(feature = "sqs")]
impl UsageQueue for SqsUsageQueue {
    fn kind(&self) -> &'static str {
        "sqs"
    }

    fn send<'a>(&'a self, events: &'a [UsageEvent]) -> SendFuture<'a> {
        Box::pin(async move {
            let message = UsageMessage {
                events: events.to_vec(),
            };
            crate::sqs::send_json(&self.client, &self.queue_url, &message)
                .await
                .map_err(UsageQueueError)
        })
    }
}

/// The in-process adapter (local runner, tests): records the events in the ledger before
/// returning (so they are as durable as with SQS), then flushes the tenant through the same meter
/// code `usage-meter` runs — in the background, or inline inside Lambda.
#[derive(Debug)]
pub struct InProcessUsageQueue {
    db: Db,
    sink: Arc<dyn BillingSink>,
    cfg: MeterConfig,
    work: Work,
}

impl InProcessUsageQueue {
    /// A queue writing through `db` and flushing to `sink`, the flush run as `work` says.
    pub fn new(db: Db, sink: Arc<dyn BillingSink>, cfg: MeterConfig, work: Work) -> Self {
        Self {
            db,
            sink,
            cfg,
            work,
        }
    }
}

impl UsageQueue for InProcessUsageQueue {
    fn kind(&self) -> &'static str {
        "in-process"
    }

    fn send<'a>(&'a self, events: &'a [UsageEvent]) -> SendFuture<'a> {
        Box::pin(async move {
            let results = record_events(&self.db, self.cfg.window_secs, events.to_vec()).await;
            let mut tenants: Vec<TenantId> = Vec::new();
            for (tenant, r) in results {
                r.map_err(|e| UsageQueueError(e.to_string()))?;
                tenants.push(tenant);
            }
            let (db, sink, cfg) = (self.db.clone(), Arc::clone(&self.sink), self.cfg.clone());
            let flush = async move {
                flush_tenants(&db, sink.as_ref(), &cfg, &tenants).await;
            };
            self.work.run(flush).await;
            Ok(())
        })
    }
}

/// Why usage could not be made durable.
#[derive(Debug, thiserror::Error)]
#[error("usage not recorded: queue: {queue}; ledger: {ledger}")]
pub struct EmitError {
    /// The queue's error.
    pub queue: UsageQueueError,
    /// The ledger fallback's error.
    pub ledger: DbError,
}

/// Makes `events` (all of `tenant`) durable: the queue, or else the ledger directly.
pub async fn emit(
    queue: &dyn UsageQueue,
    db: &Db,
    window_secs: i64,
    ctx: &TenantContext,
    events: &[UsageEvent],
) -> Result<(), EmitError> {
    let queue_error = match queue.send(events).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    tracing::warn!(error = %queue_error, "usage queue unavailable; writing the ledger directly");
    let direct = async {
        let mut tx = db.begin(ctx, Access::ReadWrite).await?;
        ledger::record(&mut tx, events, window_secs).await?;
        tx.commit().await
    }
    .await;
    direct.map_err(|ledger| EmitError {
        queue: queue_error,
        ledger,
    })
}

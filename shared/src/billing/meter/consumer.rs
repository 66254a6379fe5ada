//! The usage queue's consumer, `usage-meter`'s handler: each message's events written to the
//! ledger (one transaction per tenant, idempotent by event id), then a flush of the tenants that
//! have had a window close since this environment last flushed them.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use chrono::Utc;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

use super::{FlushMemo, MeterConfig, flush_tenants};
use crate::TenantId;
use crate::billing::BillingSink;
use crate::db::{Access, Db, DbError, TenantContext};
use crate::usage::{UsageEvent, ledger};

/// The usage queue's message: the events of one request (or several).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageMessage {
    /// The events.
    pub events: Vec<UsageEvent>,
}

/// Writes events to the ledger, one transaction per tenant (`concurrency` at a time). Returns,
/// per tenant, whether it succeeded (and how many events were new).
pub async fn record_events(
    db: &Db,
    window_secs: i64,
    events: Vec<UsageEvent>,
) -> Vec<(TenantId, Result<u64, DbError>)> {
    record_events_with(db, window_secs, events, 1).await
}

/// As [`record_events`], with up to `concurrency` tenants' transactions in flight.
pub async fn record_events_with(
    db: &Db,
    window_secs: i64,
    events: Vec<UsageEvent>,
    concurrency: usize,
) -> Vec<(TenantId, Result<u64, DbError>)> {
    let mut by_tenant: std::collections::BTreeMap<TenantId, Vec<UsageEvent>> = Default::default();
    for e in events {
        by_tenant.entry(e.tenant_id).or_default().push(e);
    }
    let by_tenant: Vec<(TenantId, Vec<UsageEvent>)> = by_tenant.into_iter().collect();
    let mut out = Vec::with_capacity(by_tenant.len());
    for group in by_tenant.chunks(concurrency.max(1)) {
        let results = join_all(group.iter().map(|(tenant, list)| async move {
            let ctx = TenantContext {
                tenant_id: *tenant,
                actor_id: "system:usage-meter".into(),
            };
            let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
            let n = ledger::record(&mut tx, list, window_secs).await?;
            tx.commit().await?;
            Ok::<_, DbError>(n)
        }))
        .await;
        out.extend(group.iter().map(|(t, _)| *t).zip(results));
    }
    out
}

/// The `usage-meter` function's handler: every message's events into the ledger (idempotent by
/// event id), failing exactly the messages whose events could not be recorded (malformed ones
/// included, so they reach the dead-letter queue), then a flush of each tenant seen that has had
/// a window close since this environment last flushed it (see [`FlushMemo`]).
pub async fn handle_sqs(
    db: &Db,
    sink: &dyn BillingSink,
    cfg: &MeterConfig,
    memo: &FlushMemo,
    event: SqsEvent,
) -> SqsBatchResponse {
    let now = Utc::now();
    let skew = chrono::Duration::minutes(5);
    let mut failed: Vec<String> = Vec::new();
    let mut accepted: Vec<(String, Vec<UsageEvent>)> = Vec::new();
    for record in event.records {
        let id = record.message_id.unwrap_or_default();
        let parsed = serde_json::from_str::<UsageMessage>(record.body.as_deref().unwrap_or(""))
            .map_err(|e| format!("malformed message: {e}"))
            .and_then(|m| {
                m.events
                    .iter()
                    .try_for_each(|e| e.validate(now, skew))
                    .map(|()| m.events)
            });
        match parsed {
            Ok(events) => accepted.push((id, events)),
            Err(reason) => {
                tracing::warn!(message_id = %id, reason, "usage message refused");
                failed.push(id);
            }
        }
    }
    let all: Vec<UsageEvent> = accepted.iter().flat_map(|(_, e)| e.clone()).collect();
    let results = record_events_with(db, cfg.window_secs, all, cfg.concurrency).await;
    let mut ok_tenants = Vec::new();
    for (tenant, r) in &results {
        match r {
            Ok(n) => {
                tracing::info!(tenant_id = %tenant, new_events = n, "usage recorded");
                ok_tenants.push(*tenant);
            }
            Err(e) => {
                tracing::warn!(tenant_id = %tenant, error = %e, "usage not recorded");
                for (id, events) in &accepted {
                    if events.iter().any(|e| e.tenant_id == *tenant) && !failed.contains(id) {
                        failed.push(id.clone());
                    }
                }
            }
        }
    }
    let due = memo.due(cfg, now, &ok_tenants);
    flush_tenants(db, sink, cfg, &due).await;
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    response
}

//! `billing-reconcile`: the scheduled check that the provider bills exactly what the ledger says.
//!
//! Tenant by tenant (each in its own TenantTx, under RLS), a full run:
//! 1. writes today's storage and seat snapshots to the ledger (one per tenant, meter and day:
//!    deterministic event ids, so reruns add nothing);
//! 2. flushes unsent windows ([`flush_tenant`]);
//! 3. reads the tenant's billing periods (repairing missed webhooks from the provider,
//!    [`periods::sync`]) and the provider's totals per meter and day from the oldest open
//!    period's first day (the current UTC month for a tenant without subscription periods),
//!    then — under the tenant's billing lock, so no planner or other run interleaves — compares
//!    them with what was delivered for each day; a difference with nothing in flight (no delivery
//!    pending, none settled since shortly before the provider answered) becomes a repair
//!    delivery (positive or negative, deterministic identifier) sent by a second flush;
//!    Late usage (billed in the next open period, see [`periods`]) counts on the day it is
//!    billed, not the day it happened; repairs are never stamped in a finalized period;
//! 4. records each (meter, day) whose outcome changed since its last record (with its period) in
//!    `app.billing_reconciliations`, folds the run into the tenant's summary for the day
//!    (`app.billing_reconciliation_days`: runs, the last run's counts and the pairs not in sync),
//!    and deletes both past `BILLING_RECONCILIATION_RETENTION_DAYS`.
//!
//! A `flush` run only does step 2 (scheduled more often, so closed windows do not wait for the
//! daily run).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::BillingSink;
use super::customers::{EnsureError, Ensured, ensure_customer};
use super::meter::{FlushOutcome, MeterConfig, flush_tenant};
use super::periods;
use super::plans::{self, PlanConfig};
use crate::TenantId;
use crate::db::{Access, Db, DbError, TenantContext};
use crate::usage::{METERS, Meter, UsageEvent, ledger};

/// The scheduler's input, and the body of a fan-out message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileInput {
    /// `reconcile` (default) or `flush`.
    #[serde(default)]
    pub mode: Mode,
    /// Only these tenants (a fan-out message); unset: every tenant (the schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<TenantId>>,
    /// The run the tenants belong to (the dispatching run's id, which their records carry);
    /// unset: a new run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
    /// Which attempt at these tenants this batch is (a batch's failed tenants are queued again,
    /// up to [`MAX_ATTEMPTS`]); unset: the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

/// Attempts at a fan-out batch's tenants before the run gives up on them (logged with
/// [`GAVE_UP_ALERT`]; the next hourly run tries them again).
pub const MAX_ATTEMPTS: u32 = 3;

/// How long a batch of failed tenants waits in the queue before its next attempt.
pub const RETRY_DELAY_SECS: u32 = 300;

/// The log message when a run gives up on tenants (the template alarms on it).
pub const GAVE_UP_ALERT: &str = "reconciliation gave up on tenants";

impl ReconcileInput {
    /// Every tenant, in `mode`.
    pub fn all(mode: Mode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }
}

/// What a run does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Snapshots, flush, compare and repair.
    #[default]
    Reconcile,
    /// Flush closed windows only.
    Flush,
}

/// What a run did, over all tenants.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunOutcome {
    /// The run's id (records in `billing_reconciliations` carry it).
    pub run_id: Uuid,
    /// Tenants visited.
    pub tenants: usize,
    /// Tenants whose run failed (logged; the next run tries again).
    pub tenant_errors: usize,
    /// (meter, day) pairs compared.
    pub days_checked: usize,
    /// Of those, in sync.
    pub in_sync: usize,
    /// Of those, repaired.
    pub repaired: usize,
    /// Of those, explained by usage still on its way.
    pub in_flight: usize,
    /// Deliveries made by the flushes.
    pub flush: FlushOutcome,
    /// Provider calls made to read billing periods (the repair for missed webhooks).
    pub period_calls: u64,
    /// Reconciliation records past their retention, deleted.
    pub pruned: u64,
    /// Tenants created from their organization whose billing customer was made by this run.
    pub customers_linked: usize,
    /// Tenants still waiting for their billing customer (the provider failed again).
    pub customers_pending: usize,
    /// Closed tenants whose data this run deleted (their retention period was over).
    pub tenants_data_deleted: usize,
    /// Messages queued for the fan-out (a dispatching run visits no tenant itself).
    pub batches_queued: usize,
    /// The tenants whose run failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_tenants: Vec<TenantId>,
}

impl RunOutcome {
    fn add(&mut self, r: &TenantReport) {
        self.days_checked += r.days_checked;
        self.in_sync += r.in_sync;
        self.repaired += r.repaired;
        self.in_flight += r.in_flight;
        self.period_calls += r.period_calls;
        self.pruned += r.pruned;
        self.flush.add(&r.flush);
    }
}

/// Why a run stopped before visiting its tenants (a tenant's own failure never stops it).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The fan-out queue did not take every batch (the schedule's retry sends them all again;
    /// reconciling a tenant twice changes nothing).
    #[error("reconciliation batches not queued: {0}")]
    Queue(String),
    /// An event that is neither the schedule's input nor the fan-out queue's batch.
    #[error("not a billing-reconcile event: {0}")]
    Event(String),
}

/// Where a scheduled reconciliation sends its batches of tenants.
pub trait ReconcileQueue: Send + Sync + std::fmt::Debug {
    /// Queues every batch, each delivered `delay_secs` from now at the earliest; Ok only if all
    /// were taken.
    fn send<'a>(&'a self, batches: &'a [ReconcileInput], delay_secs: u32) -> QueueFuture<'a>;
}

/// A boxed [`ReconcileQueue::send`] future.
pub type QueueFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// The SQS adapter: a message per batch, consumed by `billing-reconcile` itself.
#[cfg(feature = "sqs")]
#[derive(Debug)]
pub struct SqsReconcileQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

#[cfg(feature = "sqs")]
impl SqsReconcileQueue {
    /// An adapter for `queue_url`.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }
}

#[cfg(feature = "sqs")]
impl ReconcileQueue for SqsReconcileQueue {
    fn send<'a>(&'a self, batches: &'a [ReconcileInput], delay_secs: u32) -> QueueFuture<'a> {
        Box::pin(crate::sqs::send_json_batch(
            &self.client,
            &self.queue_url,
            batches,
            delay_secs,
        ))
    }
}

/// The `billing-reconcile` function's handler. Three events:
/// - the schedule's `{"mode": "reconcile"}` with a queue: deletes expired tenants' data, then
///   queues every tenant in batches of `reconcile_batch` ([`dispatch`]) and visits none itself;
/// - the queue's messages (an SQS event): each message's tenants reconciled under its run id;
///   tenants whose run failed are queued again on their own ([`retry_failed`]); a message
///   that is malformed, or whose run failed as a whole (the database), is reported back to SQS,
///   to be delivered again (and, past the queue's receive limit, dead-lettered);
/// - anything else the schedule sends (`flush`, or any run without a queue): [`run`].
pub async fn handle_event(
    db: &Db,
    sink: &dyn BillingSink,
    cfg: &MeterConfig,
    plans: &PlanConfig,
    queue: Option<&dyn ReconcileQueue>,
    event: serde_json::Value,
) -> Result<serde_json::Value, RunError> {
    use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
    if event.get("Records").is_some() {
        let event: SqsEvent =
            serde_json::from_value(event).map_err(|e| RunError::Event(e.to_string()))?;
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let id = record.message_id.unwrap_or_default();
            let input =
                serde_json::from_str::<ReconcileInput>(record.body.as_deref().unwrap_or(""))
                    .map_err(|e| e.to_string())
                    .and_then(|i| match i.tenants {
                        Some(_) => Ok(i),
                        None => Err("a queued batch names its tenants".to_owned()),
                    });
            let result = match input {
                Ok(input) => match run(db, sink, cfg, plans, &input).await {
                    Ok(out) if !out.failed_tenants.is_empty() => {
                        retry_failed(queue, &input, out.failed_tenants).await
                    }
                    Ok(_) => Ok(()),
                    // The batch as a whole (the database): SQS delivers it again.
                    Err(e) => Err(e.to_string()),
                },
                // Never valid later either: SQS retries it to the dead-letter queue.
                Err(e) => Err(format!("malformed batch: {e}")),
            };
            if let Err(e) = result {
                tracing::warn!(message_id = %id, error = %e, "reconciliation batch failed");
                let mut f = BatchItemFailure::default();
                f.item_identifier = id;
                response.batch_item_failures.push(f);
            }
        }
        return serde_json::to_value(response).map_err(|e| RunError::Event(e.to_string()));
    }
    let input: ReconcileInput =
        serde_json::from_value(event).map_err(|e| RunError::Event(e.to_string()))?;
    let out = match queue {
        Some(q) if input.mode == Mode::Reconcile && input.tenants.is_none() => {
            dispatch(db, q, cfg).await?
        }
        _ => run(db, sink, cfg, plans, &input).await?,
    };
    serde_json::to_value(out).map_err(|e| RunError::Event(e.to_string()))
}

/// A batch's tenants whose run failed (the database) are queued again on their own, after
/// [`RETRY_DELAY_SECS`], up to [`MAX_ATTEMPTS`] (the batch's other tenants are not reconciled
/// again); then the run gives up on them, loudly ([`GAVE_UP_ALERT`]), and the next hourly run
/// tries them again. If they cannot be queued, the whole message fails and SQS delivers it
/// again.
async fn retry_failed(
    queue: Option<&dyn ReconcileQueue>,
    input: &ReconcileInput,
    failed: Vec<TenantId>,
) -> Result<(), String> {
    let attempt = input.attempt.unwrap_or(1);
    if attempt >= MAX_ATTEMPTS {
        let run_id = input.run_id.map(|r| r.to_string()).unwrap_or_default();
        let ids: Vec<String> = failed.iter().map(ToString::to_string).collect();
        tracing::error!(
            run_id,
            tenants = ids.join(","),
            attempts = attempt,
            "{GAVE_UP_ALERT}"
        );
        return Ok(());
    }
    let Some(queue) = queue else {
        return Err(format!(
            "{} tenants failed, and no queue to retry them on",
            failed.len()
        ));
    };
    let again = ReconcileInput {
        mode: input.mode,
        tenants: Some(failed),
        run_id: input.run_id,
        attempt: Some(attempt + 1),
    };
    queue
        .send(std::slice::from_ref(&again), RETRY_DELAY_SECS)
        .await
        .map_err(|e| format!("failed tenants not queued again: {e}"))
}

/// The scheduled reconciliation's fan-out: expired tenants' data deleted (once per run, here),
/// then every tenant queued, `reconcile_batch` to a message, under one run id.
pub async fn dispatch(
    db: &Db,
    queue: &dyn ReconcileQueue,
    cfg: &MeterConfig,
) -> Result<RunOutcome, RunError> {
    let mut out = RunOutcome {
        run_id: Uuid::now_v7(),
        ..RunOutcome::default()
    };
    let tenants: Vec<TenantId> = every_tenant(db, &mut out)
        .await?
        .into_iter()
        .map(|t| t.tenant_id)
        .collect();
    out.tenants = tenants.len();
    let batches: Vec<ReconcileInput> = tenants
        .chunks(cfg.reconcile_batch.max(1))
        .map(|chunk| ReconcileInput {
            mode: Mode::Reconcile,
            tenants: Some(chunk.to_vec()),
            run_id: Some(out.run_id),
            attempt: None,
        })
        .collect();
    queue.send(&batches, 0).await.map_err(RunError::Queue)?;
    out.batches_queued = batches.len();
    tracing::info!(run_id = %out.run_id, tenants = out.tenants, batches = out.batches_queued,
        "billing run dispatched");
    Ok(out)
}

/// Every tenant, for a scheduled reconciliation: closed tenants past their retention period lose
/// their data first (the billing rows it keeps are then reconciled like any others).
async fn every_tenant(db: &Db, out: &mut RunOutcome) -> Result<Vec<crate::db::TenantRef>, DbError> {
    out.tenants_data_deleted = crate::tenants::delete_expired_data(db).await?.len();
    db.tenant_ids().await
}

/// Runs over every tenant (or the input's), `reconcile_concurrency` at a time.
pub async fn run(
    db: &Db,
    sink: &dyn BillingSink,
    cfg: &MeterConfig,
    plans: &PlanConfig,
    input: &ReconcileInput,
) -> Result<RunOutcome, DbError> {
    use futures_util::StreamExt;
    let mut out = RunOutcome {
        run_id: input.run_id.unwrap_or_else(Uuid::now_v7),
        ..RunOutcome::default()
    };
    let tenants = match (&input.tenants, input.mode) {
        (Some(only), _) => db.tenants_among(only).await?,
        (None, Mode::Reconcile) => every_tenant(db, &mut out).await?,
        (None, Mode::Flush) => db.tenant_ids().await?,
    };
    let run_id = out.run_id;
    let mut visits = futures_util::stream::iter(tenants)
        .map(|t| visit(db, sink, cfg, plans, input.mode, t, run_id))
        .buffer_unordered(cfg.reconcile_concurrency.max(1));
    while let Some(v) = visits.next().await {
        out.tenants += 1;
        match v.customer {
            Customer::Linked => out.customers_linked += 1,
            Customer::Pending => out.customers_pending += 1,
            Customer::Unchanged => {}
        }
        match v.result {
            Ok(r) => out.add(&r),
            Err(()) => {
                out.tenant_errors += 1;
                out.failed_tenants.push(v.tenant);
            }
        }
    }
    tracing::info!(run_id = %out.run_id, tenants = out.tenants, errors = out.tenant_errors,
        days = out.days_checked, in_sync = out.in_sync, repaired = out.repaired,
        in_flight = out.in_flight, "billing run done");
    Ok(out)
}

/// What visiting one tenant did: its billing customer, and its run (failures are logged here).
struct Visit {
    tenant: TenantId,
    customer: Customer,
    result: Result<TenantReport, ()>,
}

/// A visit's check of the tenant's billing customer.
enum Customer {
    /// Nothing to do, or nothing done.
    Unchanged,
    /// Made now (its creation had failed before).
    Linked,
    /// Still not made (the provider failed again).
    Pending,
}

async fn visit(
    db: &Db,
    sink: &dyn BillingSink,
    cfg: &MeterConfig,
    plans: &PlanConfig,
    mode: Mode,
    t: crate::db::TenantRef,
    run_id: Uuid,
) -> Visit {
    let mut customer = Customer::Unchanged;
    // A tenant whose billing customer could not be made when it was created: again now.
    if t.status == "active" {
        match ensure_customer(db, sink, t.tenant_id, "system:billing-reconcile", None).await {
            Ok(Ensured::Created(_)) => customer = Customer::Linked,
            Ok(Ensured::Linked(_) | Ensured::NotPending) => {}
            Err(EnsureError::Db(e)) => {
                tracing::warn!(tenant_id = %t.tenant_id, error = %e, "customer check failed");
                return Visit {
                    tenant: t.tenant_id,
                    customer,
                    result: Err(()),
                };
            }
            Err(e) => {
                customer = Customer::Pending;
                tracing::warn!(tenant_id = %t.tenant_id, error = %e, "billing customer still not created");
            }
        }
    }
    let result = match mode {
        Mode::Flush => flush_tenant(db, sink, cfg, t.tenant_id)
            .await
            .map(|f| TenantReport {
                flush: f,
                ..TenantReport::default()
            }),
        Mode::Reconcile => {
            let active = t.status == "active";
            reconcile_tenant(db, sink, cfg, plans, t.tenant_id, active, run_id).await
        }
    };
    Visit {
        tenant: t.tenant_id,
        customer,
        result: result.map_err(|e| {
            tracing::warn!(tenant_id = %t.tenant_id, run_id = %run_id, error = %e,
                "reconciliation failed for tenant");
        }),
    }
}

/// One tenant's reconciliation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TenantReport {
    /// (meter, day) pairs compared.
    pub days_checked: usize,
    /// In sync.
    pub in_sync: usize,
    /// Repaired.
    pub repaired: usize,
    /// Explained by usage on its way.
    pub in_flight: usize,
    /// What the flushes did.
    pub flush: FlushOutcome,
    /// Provider calls made to read billing periods (the repair for missed webhooks).
    pub period_calls: u64,
    /// Provider calls made to read the invoice preview (the bill's estimate).
    pub estimate_calls: u64,
    /// Reconciliation records past their retention, deleted.
    pub pruned: u64,
}

/// Snapshots, flush, compare, repair and record for one tenant.
pub async fn reconcile_tenant(
    db: &Db,
    sink: &dyn BillingSink,
    cfg: &MeterConfig,
    plans: &PlanConfig,
    tenant: TenantId,
    active: bool,
    run_id: Uuid,
) -> Result<TenantReport, DbError> {
    let now = Utc::now();
    let ctx = TenantContext {
        tenant_id: tenant,
        actor_id: "system:billing-reconcile".into(),
    };
    // A suspended or closed tenant accrues nothing: no storage or seats snapshot. What it used
    // before is still delivered and reconciled.
    if active {
        snapshot(db, &ctx, cfg, now).await?;
        // Counters catch up with the ledger, and soft limits of plans whose requests reserve
        // nothing are checked against it. A failure here is not the reconciliation's.
        let limits = async {
            let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
            plans::reseed(&mut tx, plans).await?;
            plans::notify_soft_limits(&mut tx, plans).await?;
            tx.commit().await
        };
        if let Err(e) = limits.await {
            tracing::warn!(tenant_id = %tenant, error = %e, "plan limits not checked");
        }
    }
    let mut tx = db.begin(&ctx, Access::ReadOnly).await?;
    let customer = super::customers::state(&mut tx)
        .await?
        .map(|s| s.customer_id);
    tx.commit().await?;
    let mut report = TenantReport::default();
    // Webhooks that never came (or not yet): the subscription's periods and finalized invoices,
    // read from the provider when what we know does not cover now — before the flush, so that
    // usage for a period finalized meanwhile is stamped late rather than in that period.
    if let Some(customer) = &customer {
        match periods::sync(db, sink, &ctx, customer, now).await {
            Ok(s) => report.period_calls += s.calls,
            Err(periods::SyncError::Db(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(tenant_id = %tenant, error = %e, "billing periods not read");
            }
        }
    }
    report.flush = flush_tenant(db, sink, cfg, tenant).await?;
    let mut tx = db.begin(&ctx, Access::ReadOnly).await?;
    let known = periods::list(&mut tx).await?;
    tx.commit().await?;
    // What can still be billed where it happened: from the oldest open period's first day (the
    // calendar month, for a tenant without subscription periods); nothing once every period is
    // finalized (the subscription ended).
    let to = day_start(now.date_naive()) + chrono::Duration::days(1);
    let open_from = known.open_from(now);
    // Never earlier than the provider still takes a correction for (a period whose invoice
    // never came must not drag the range past it).
    let oldest = day_start((now - cfg.max_age).date_naive()) + chrono::Duration::days(1);
    let from = match (known.all.is_empty(), open_from) {
        (true, _) => month_start(now),
        (false, Some(start)) => day_start(start.date_naive()).max(oldest),
        (false, None) => to,
    };
    let period_of = |day: NaiveDate| -> Option<DateTime<Utc>> {
        let at = open_from.map_or(day_start(day), |o| day_start(day).max(o));
        known.holding(at).map(|p| p.start)
    };

    // Stripe first: deliveries are read afterwards, under the tenant's billing lock, so any
    // delivery that settled after (or shortly before) Stripe answered counts as in flight and
    // is never "repaired" away.
    let stripe_read_at = Utc::now();
    let mut provider: Vec<(Meter, Result<DayTotals, String>)> = Vec::new();
    if let Some(customer) = customer.as_ref().filter(|_| from < to) {
        for def in METERS {
            let totals = sink
                .day_totals(def.meter, customer, from, to)
                .await
                .map(|days| days.into_iter().collect())
                .map_err(|e| e.to_string());
            provider.push((def.meter, totals));
        }
    }

    let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
    super::meter::lock_customer(&mut tx).await?;
    let ledger_days = ledger::day_totals(&mut tx, from, to).await?;
    let settle_from = stripe_read_at - chrono::Duration::seconds(cfg.settle_secs);
    let deliveries = delivery_days(&mut tx, from, to, settle_from).await?;
    let mut ledger_by: BTreeMap<(Meter, NaiveDate), i64> = BTreeMap::new();
    for (m, d, v) in ledger_days {
        ledger_by.insert((m, d), v);
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut repairs: Vec<(Meter, NaiveDate, i64)> = Vec::new();
    if customer.is_none() {
        for ((m, d), total) in &ledger_by {
            rows.push(Row::new(*m, *d, *total, None, "no_customer", None));
        }
    }
    for (meter, totals) in provider {
        let stripe = match totals {
            Ok(t) => t,
            Err(e) => {
                for ((m, d), total) in ledger_by.iter().filter(|((m, _), _)| *m == meter) {
                    rows.push(Row::new(
                        *m,
                        *d,
                        *total,
                        None,
                        "unavailable",
                        Some(e.clone()),
                    ));
                }
                continue;
            }
        };
        let days: BTreeSet<NaiveDate> = ledger_by
            .keys()
            .filter(|(m, _)| *m == meter)
            .map(|(_, d)| *d)
            .chain(stripe.keys().copied())
            .chain(
                deliveries
                    .keys()
                    .filter(|(m, _)| *m == meter)
                    .map(|(_, d)| *d),
            )
            .collect();
        for day in days {
            let l = ledger_by.get(&(meter, day)).copied().unwrap_or(0);
            let s = stripe.get(&day).copied().unwrap_or(0);
            let dd = deliveries.get(&(meter, day)).cloned().unwrap_or_default();
            // Late usage moves from the day it happened to the day it is billed: what Stripe
            // should show for a day is the ledger's, less what moved out, plus what moved in.
            let e = l - dd.late_out + dd.late_in;
            let (action, detail) = if e == s && !dd.unsettled {
                ("in_sync", dd.late_note())
            } else if dd.ambiguous {
                (
                    "in_flight",
                    Some("a delivery past Stripe's dedupe window awaits support".to_owned()),
                )
            } else if dd.unsettled {
                (
                    "in_flight",
                    Some("deliveries pending or settling".to_owned()),
                )
            } else if dd.window_delivered != s {
                // Every day read is within the 35 days the provider accepts a correction for
                // (`from` is bounded by them).
                let drift = dd.window_delivered - s;
                repairs.push((meter, day, drift));
                let why = match dd.rejected {
                    0 => String::new(),
                    r => format!(" ({r} unit(s) rejected by Stripe after a 200)"),
                };
                ("repaired", Some(format!("correction of {drift} sent{why}")))
            } else if dd.refused > 0 {
                (
                    "rejected",
                    Some(format!(
                        "{} unit(s) refused by the provider or too old to send",
                        dd.refused
                    )),
                )
            } else {
                ("in_flight", Some("windows not yet closed".to_owned()))
            };
            let mut row = Row::new(meter, day, l, Some(s), action, detail);
            row.expected = e;
            rows.push(row);
        }
    }
    for r in &mut rows {
        r.period_start = period_of(r.day);
    }
    // In the same transaction, under the same lock as the meter's planner: repair sequence
    // numbers cannot collide with a window correction, and a concurrent run sees this one's
    // repairs (as in flight) instead of planning them again.
    for (meter, day, value) in &repairs {
        plan_repair(&mut tx, *meter, *day, *value).await?;
    }
    record_rows(&mut tx, run_id, &rows).await?;
    // Records past the operator's retention go (the function keeps at least a week).
    let pruned: i64 = tx
        .query_one(
            "SELECT app.prune_reconciliations($1)",
            &[(&cfg.reconciliation_retention_days, Type::INT4)],
        )
        .await?
        .get(0);
    report.pruned = pruned as u64;
    tx.commit().await?;
    if !repairs.is_empty() {
        let again = flush_tenant(db, sink, cfg, tenant).await?;
        report.flush.add(&again);
    }
    // The current period's bill as Stripe would invoice it now, kept for `/v1/usage`: for an
    // active tenant with a current subscription period (nothing to invoice otherwise).
    let current = known.current(now).filter(|_| active);
    if let (Some(customer), Some(period)) = (&customer, current) {
        report.estimate_calls += 1;
        let preview = sink
            .upcoming_invoice(customer, Some(&period.subscription_id))
            .await;
        match preview {
            Ok(estimate) => {
                let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
                super::customers::store_estimate(&mut tx, estimate.as_ref()).await?;
                tx.commit().await?;
            }
            Err(e) => tracing::warn!(tenant_id = %tenant, error = %e, "invoice preview not read"),
        }
    }
    for r in &rows {
        report.days_checked += 1;
        match r.action {
            "in_sync" => report.in_sync += 1,
            "repaired" => report.repaired += 1,
            "in_flight" => report.in_flight += 1,
            _ => {}
        }
    }
    Ok(report)
}

/// Totals per UTC day.
type DayTotals = BTreeMap<NaiveDate, i64>;

struct Row {
    meter: Meter,
    day: NaiveDate,
    /// The ledger's total for the day (when the usage happened).
    ledger: i64,
    /// What the provider should show for the day: the ledger's, moved by late usage.
    expected: i64,
    stripe: Option<i64>,
    action: &'static str,
    detail: Option<String>,
    /// The billing period the day was compared in.
    period_start: Option<DateTime<Utc>>,
}

impl Row {
    fn new(
        meter: Meter,
        day: NaiveDate,
        ledger: i64,
        stripe: Option<i64>,
        action: &'static str,
        detail: Option<String>,
    ) -> Self {
        Self {
            meter,
            day,
            ledger,
            expected: ledger,
            stripe,
            action,
            // The column holds 500 characters (a provider's error text may be longer).
            detail: detail.map(|d| d.chars().take(500).collect()),
            period_start: None,
        }
    }

    /// What the provider should show less what it shows (unknown without its figure).
    fn drift(&self) -> Option<i64> {
        self.stripe.map(|s| self.expected - s)
    }
}

/// Per (meter, day): what the window deliveries delivered, what was refused, and whether any
/// delivery is pending or settled too recently to trust the provider's totals.
#[derive(Clone, Debug, Default)]
struct DayDeliveries {
    window_delivered: i64,
    refused: i64,
    unsettled: bool,
    /// Late usage billed on this day (it happened in a finalized period).
    late_in: i64,
    /// Usage of this day billed late, on a later day.
    late_out: i64,
    /// Delivered, then rejected by the provider (a meter error report).
    rejected: i64,
    /// A delivery past the provider's dedupe window whose fate the summary could not tell:
    /// support decides, and the day is left alone until then.
    ambiguous: bool,
}

impl DayDeliveries {
    fn late_note(&self) -> Option<String> {
        match (self.late_in, self.late_out) {
            (0, 0) => None,
            (i, 0) => Some(format!(
                "{i} late unit(s) from a finalized period billed on this day"
            )),
            (0, o) => Some(format!(
                "{o} unit(s) of this day billed late, in the next period"
            )),
            (i, o) => Some(format!(
                "{i} late unit(s) billed on this day; {o} unit(s) of it billed in the next period"
            )),
        }
    }
}

async fn delivery_days(
    tx: &mut crate::db::TenantTx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    settled_after: DateTime<Utc>,
) -> Result<BTreeMap<(Meter, NaiveDate), DayDeliveries>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let rows = tx
        .query(
            "SELECT meter, day, sum(delivered)::int8, sum(refused)::int8, bool_or(unsettled), \
                    sum(late_in)::int8, sum(late_out)::int8, sum(rejected)::int8, \
                    bool_or(ambiguous) \
             FROM (SELECT meter, (event_time AT TIME ZONE 'UTC')::date AS day, \
                          CASE WHEN status = 'delivered' AND kind = 'window' THEN value ELSE 0 END AS delivered, \
                          CASE WHEN status IN ('failed', 'expired') AND kind = 'window' THEN value ELSE 0 END AS refused, \
                          status = 'pending' OR (status = 'delivered' AND settled_at > $4) AS unsettled, \
                          CASE WHEN late AND status IN ('delivered', 'pending') THEN value ELSE 0 END AS late_in, \
                          0 AS late_out, \
                          CASE WHEN status = 'delivered' AND rejected IS NOT NULL \
                               THEN value ELSE 0 END AS rejected, \
                          status = 'failed' AND starts_with(reason, $5) AS ambiguous \
                   FROM app.usage_deliveries \
                   WHERE tenant_id = $1 AND event_time >= $2 AND event_time < $3 \
                   UNION ALL \
                   SELECT meter, (window_start AT TIME ZONE 'UTC')::date, 0, 0, false, 0, value, 0, \
                          false \
                   FROM app.usage_deliveries \
                   WHERE tenant_id = $1 AND late AND status IN ('delivered', 'pending') \
                     AND window_start >= $2 AND window_start < $3) x \
             GROUP BY 1, 2",
            &[
                (&tenant, Type::UUID),
                (&from, Type::TIMESTAMPTZ),
                (&to, Type::TIMESTAMPTZ),
                (&settled_after, Type::TIMESTAMPTZ),
                (&super::meter::outbox::AMBIGUOUS_RESEND, Type::TEXT),
            ],
        )
        .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let Some(meter) = Meter::from_name(r.get(0)) else {
            continue;
        };
        out.insert(
            (meter, r.get(1)),
            DayDeliveries {
                window_delivered: r.get(2),
                refused: r.get(3),
                unsettled: r.get(4),
                late_in: r.get(5),
                late_out: r.get(6),
                rejected: r.get(7),
                ambiguous: r.get(8),
            },
        );
    }
    Ok(out)
}

/// A repair: a delivery of `value` (may be negative) at the day's start (or, when that lies in
/// a finalized period, at the next open period's start), in the same sequence as the day's
/// first window, so its identifier is deterministic too.
async fn plan_repair(
    tx: &mut crate::db::TenantTx,
    meter: Meter,
    day: NaiveDate,
    value: i64,
) -> Result<(), DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let at = day_start(day);
    let name = meter.name();
    tx.execute(
        "INSERT INTO app.usage_deliveries \
           (tenant_id, meter, window_start, seq, value, kind, event_time) \
         SELECT $1, $2, $3, s.seq, $4, 'repair', coalesce(app.billable_time($1, $3), $3) \
         FROM (SELECT coalesce(max(seq), -1) + 1 AS seq FROM app.usage_deliveries \
               WHERE tenant_id = $1 AND meter = $2 AND window_start = $3) s \
         ON CONFLICT DO NOTHING",
        &[
            (&tenant, Type::UUID),
            (&name, Type::TEXT),
            (&at, Type::TIMESTAMPTZ),
            (&value, Type::INT8),
        ],
    )
    .await?;
    Ok(())
}

/// Records the (meter, day) pairs whose outcome changed since their last record (action, totals,
/// detail or period; a repair always, being an action), and folds the run into the tenant's
/// summary for today: runs, the last run's counts and the pairs not in sync, the day's repairs.
async fn record_rows(
    tx: &mut crate::db::TenantTx,
    run_id: Uuid,
    rows: &[Row],
) -> Result<(), DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let meters: Vec<&str> = rows.iter().map(|r| r.meter.name()).collect();
    let days: Vec<NaiveDate> = rows.iter().map(|r| r.day).collect();
    let ledger: Vec<i64> = rows.iter().map(|r| r.ledger).collect();
    let stripe: Vec<Option<i64>> = rows.iter().map(|r| r.stripe).collect();
    let drift: Vec<Option<i64>> = rows.iter().map(Row::drift).collect();
    let periods: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.period_start).collect();
    let actions: Vec<&str> = rows.iter().map(|r| r.action).collect();
    let details: Vec<Option<&str>> = rows.iter().map(|r| r.detail.as_deref()).collect();
    tx.execute(
        "WITH u AS ( \
           SELECT * FROM unnest($3::text[], $4::date[], $5::int8[], $6::int8[], $7::int8[], \
                                $8::text[], $9::text[], $10::timestamptz[]) WITH ORDINALITY \
             AS u(meter, day, ledger_total, stripe_total, drift, action, detail, period_start, \
                  ord) \
         ), changed AS ( \
           INSERT INTO app.billing_reconciliations \
             (tenant_id, run_id, meter, day, ledger_total, stripe_total, drift, action, detail, \
              period_start) \
           SELECT $1, $2, u.meter, u.day, u.ledger_total, u.stripe_total, u.drift, u.action, \
                  u.detail, u.period_start \
           FROM u \
           WHERE u.action = 'repaired' OR NOT EXISTS ( \
             SELECT 1 FROM (SELECT r.action, r.ledger_total, r.stripe_total, r.drift, r.detail, \
                                   r.period_start \
                            FROM app.billing_reconciliations r \
                            WHERE r.tenant_id = $1 AND r.meter = u.meter AND r.day = u.day \
                            ORDER BY r.created_at DESC, r.run_id DESC LIMIT 1) last \
             WHERE (last.action, last.ledger_total, last.stripe_total, last.drift, last.detail, \
                    last.period_start) \
                   IS NOT DISTINCT FROM (u.action, u.ledger_total, u.stripe_total, u.drift, \
                                         u.detail, u.period_start)) \
           /* A batch delivered again under its run's id: its first record stands. */ \
           ON CONFLICT (tenant_id, run_id, meter, day) DO NOTHING \
         ) \
         INSERT INTO app.billing_reconciliation_days AS s \
           (tenant_id, day, runs, first_run_at, last_run_at, last_run_id, checked, actions, \
            issues, repaired, drift) \
         /* The run's summary: the pairs compared, a count per action, the pairs not in sync \
            (in the run's order), its repairs and its sum of |drift|. */ \
         SELECT $1, (now() AT TIME ZONE 'UTC')::date, 1, now(), now(), $2, count(*)::int4, \
                coalesce((SELECT jsonb_object_agg(a.action, a.n) \
                          FROM (SELECT action, count(*) AS n FROM u GROUP BY action) a), '{}'), \
                coalesce(jsonb_agg(jsonb_build_object( \
                           'meter', u.meter, 'day', u.day::text, \
                           'ledger_total', u.ledger_total, 'provider_total', u.stripe_total, \
                           'drift', u.drift, 'action', u.action, 'detail', u.detail) \
                         ORDER BY u.ord) FILTER (WHERE u.action <> 'in_sync'), '[]'), \
                (count(*) FILTER (WHERE u.action = 'repaired'))::int4, \
                coalesce(sum(abs(u.drift)), 0)::int8 \
         FROM u \
         ON CONFLICT (tenant_id, day) DO UPDATE \
           SET runs = s.runs + 1, repaired = s.repaired + excluded.repaired, \
               /* The latest run's figures (run ids are time-ordered v7): an older run's batch \
                  delivered late changes none. */ \
               last_run_at = greatest(s.last_run_at, excluded.last_run_at), \
               last_run_id = CASE WHEN excluded.last_run_id >= s.last_run_id \
                                  THEN excluded.last_run_id ELSE s.last_run_id END, \
               checked = CASE WHEN excluded.last_run_id >= s.last_run_id \
                              THEN excluded.checked ELSE s.checked END, \
               actions = CASE WHEN excluded.last_run_id >= s.last_run_id \
                              THEN excluded.actions ELSE s.actions END, \
               issues = CASE WHEN excluded.last_run_id >= s.last_run_id \
                             THEN excluded.issues ELSE s.issues END, \
               drift = CASE WHEN excluded.last_run_id >= s.last_run_id \
                            THEN excluded.drift ELSE s.drift END",
        &[
            (&tenant, Type::UUID),
            (&run_id, Type::UUID),
            (&meters, Type::TEXT_ARRAY),
            (&days, Type::DATE_ARRAY),
            (&ledger, Type::INT8_ARRAY),
            (&stripe, Type::INT8_ARRAY),
            (&drift, Type::INT8_ARRAY),
            (&actions, Type::TEXT_ARRAY),
            (&details, Type::TEXT_ARRAY),
            (&periods, Type::TIMESTAMPTZ_ARRAY),
        ],
    )
    .await?;
    Ok(())
}

/// Today's storage (KiB of record data, rounded up) and seat (members) snapshots, one event per
/// tenant, meter and day (the id is derived from them, so a rerun records nothing new), stamped
/// at the day's start.
async fn snapshot(
    db: &Db,
    ctx: &TenantContext,
    cfg: &MeterConfig,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let mut tx = db.begin(ctx, Access::ReadWrite).await?;
    let tenant = ctx.tenant_id.as_uuid();
    let day = now.date_naive();
    let (storage_id, seats_id) = (
        snapshot_id(ctx.tenant_id, Meter::Storage, day),
        snapshot_id(ctx.tenant_id, Meter::Seats, day),
    );
    // Measured only if today's snapshot is not in the ledger yet (the hourly runs after the
    // first would otherwise size every record again to insert nothing).
    let row = tx
        .query_one(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM app.usage_events \
                                      WHERE tenant_id = $1 AND event_id = $2) THEN NULL \
                    ELSE ceil((coalesce((SELECT sum(pg_column_size(r.data)) \
                                         FROM app.records r WHERE r.tenant_id = $1), 0) \
                             + coalesce((SELECT sum(pg_column_size(v.data)) \
                                         FROM app.record_versions v WHERE v.tenant_id = $1), 0)) \
                               / 1024.0)::int8 END, \
                    CASE WHEN EXISTS (SELECT 1 FROM app.usage_events \
                                      WHERE tenant_id = $1 AND event_id = $3) THEN NULL \
                    ELSE (SELECT count(*) FROM app.members m \
                          WHERE m.tenant_id = $1 AND m.removed_at IS NULL) END",
            &[
                (&tenant, Type::UUID),
                (&storage_id, Type::UUID),
                (&seats_id, Type::UUID),
            ],
        )
        .await?;
    let (storage, seats): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
    let events: Vec<UsageEvent> = [
        (Meter::Storage, storage_id, storage),
        (Meter::Seats, seats_id, seats),
    ]
    .into_iter()
    .filter_map(|(meter, id, q)| Some((meter, id, q.filter(|q| *q > 0)?)))
    .map(|(meter, event_id, quantity)| UsageEvent {
        event_id,
        tenant_id: ctx.tenant_id,
        meter,
        quantity,
        // Stamped at the day's start: the day's one snapshot, in a window that closes early.
        occurred_at: day_start(day),
        source: "snapshot".into(),
    })
    .collect();
    ledger::record(&mut tx, &events, cfg.window_secs).await?;
    tx.commit().await
}

/// A v7-shaped id for (tenant, meter, day): the day's start as its time, the rest from a hash.
pub fn snapshot_id(tenant: TenantId, meter: Meter, day: NaiveDate) -> Uuid {
    let digest = Sha256::digest(format!("{}:{}:{day}", tenant.as_uuid(), meter.name()));
    let mut rand = [0u8; 10];
    rand.copy_from_slice(&digest[..10]);
    let millis = day_start(day).timestamp_millis().max(0) as u64;
    uuid::Builder::from_unix_timestamp_millis(millis, &rand).into_uuid()
}

fn day_start(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    day_start(now.date_naive().with_day(1).unwrap_or(now.date_naive()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_are_deterministic_time_ordered_and_distinct() {
        let t = TenantId::new();
        let d = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        let a = snapshot_id(t, Meter::Seats, d);
        assert_eq!(a, snapshot_id(t, Meter::Seats, d));
        assert_eq!(a.get_version_num(), 7);
        assert_ne!(a, snapshot_id(t, Meter::Storage, d));
        assert!(a < snapshot_id(t, Meter::Seats, d.succ_opt().unwrap()));
        assert_ne!(a, snapshot_id(TenantId::new(), Meter::Seats, d));
    }

    #[test]
    fn inputs_parse_strictly() {
        let i: ReconcileInput = serde_json::from_str("{}").unwrap();
        assert_eq!(i.mode, Mode::Reconcile);
        let i: ReconcileInput = serde_json::from_str(r#"{"mode": "flush"}"#).unwrap();
        assert_eq!(i.mode, Mode::Flush);
        assert_eq!(i.tenants, None);
        // A batch survives its trip through the queue unchanged.
        let batch = ReconcileInput {
            mode: Mode::Reconcile,
            tenants: Some(vec![TenantId::new(), TenantId::new()]),
            run_id: Some(Uuid::now_v7()),
            attempt: Some(2),
        };
        let back: ReconcileInput =
            serde_json::from_str(&serde_json::to_string(&batch).unwrap()).unwrap();
        assert_eq!(back, batch);
        assert!(serde_json::from_str::<ReconcileInput>(r#"{"tenants": ["x"]}"#).is_err());
        assert!(serde_json::from_str::<ReconcileInput>(r#"{"mode": "all"}"#).is_err());
        assert!(serde_json::from_str::<ReconcileInput>(r#"{"x": 1}"#).is_err());
    }
}

//! The outbox: from ledger to provider, exactly once per unit of usage.
//!
//! Per tenant, [`flush_tenant`]:
//! 1. **plans**, in one transaction holding the tenant's billing row lock: for every closed window
//!    whose ledger total exceeds what deliveries already account for, one new delivery row with
//!    the difference — seq 0 for the window's first event, 1, 2, … for corrections (late events).
//!    Its identifier `tnt_<tenant>_<meter>_<window epoch>_<seq>` and value are fixed here, before
//!    any call; windows older than the provider accepts are recorded `expired`, never sent.
//! 2. **claims** the pending deliveries with a lease, only for meters with no live lease, so at
//!    most one caller talks to the provider per customer and meter at a time.
//! 3. **sends** outside any transaction — one meter's deliveries in order, meters in parallel —
//!    retrying 429/5xx with exponential backoff and full jitter; a call without an answer
//!    (timeout) keeps its lease, so nobody calls again for that customer and meter until it runs
//!    out; a duplicate-identifier answer counts as delivered; any other refusal marks the
//!    delivery `failed` with the reason.
//! 4. **settles** what it learned in one statement.
//!
//! A crash anywhere leaves either no delivery (planned again), or a pending one whose lease runs
//! out and which is sent again with the same identifier and value — which the provider reports as
//! a duplicate. Nothing is counted twice and nothing is dropped.
//!
//! [`flush_tenants`] flushes several tenants; [`FlushMemo`] says which tenants a queue batch
//! makes due.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde::Serialize;
use tokio_postgres::types::Type;

use super::MeterConfig;
use crate::TenantId;
use crate::billing::{BillingSink, MeterEvent, Sent, SinkError};
use crate::db::{Access, Db, DbError, TenantContext, TenantTx};
use crate::usage::Meter;

/// What one flush did for one tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlushOutcome {
    /// The tenant has no billing customer: nothing planned or sent.
    pub no_customer: bool,
    /// Deliveries planned this run (including expired ones).
    pub planned: u64,
    /// Delivered (accepted or duplicate).
    pub delivered: u64,
    /// Of those, answered as duplicates.
    pub duplicates: u64,
    /// Refused for good.
    pub failed: u64,
    /// Still pending (provider unavailable, or another sender holds the meter).
    pub pending: u64,
    /// Provider calls made (including retries).
    pub calls: u64,
}

impl FlushOutcome {
    /// Adds another run's counts (not `no_customer`).
    pub fn add(&mut self, o: &FlushOutcome) {
        self.planned += o.planned;
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.failed += o.failed;
        self.pending += o.pending;
        self.calls += o.calls;
    }
}

#[derive(Clone, Debug)]
struct Claimed {
    meter: Meter,
    identifier: String,
    value: i64,
    event_time: DateTime<Utc>,
}

enum Settled {
    Delivered {
        duplicate: bool,
    },
    Failed(String),
    Expired,
    Unsent,
    /// Unsent, and the call may still be in progress: keep the lease.
    InDoubt,
}

/// Plans, claims, sends and settles the tenant's closed windows (see the module docs).
pub async fn flush_tenant(
    db: &Db,
    sink: &dyn BillingSink,
    cfg: &MeterConfig,
    tenant: TenantId,
) -> Result<FlushOutcome, DbError> {
    let ctx = TenantContext {
        tenant_id: tenant,
        actor_id: "system:usage-meter".into(),
    };
    let now = Utc::now();
    let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
    let Some(customer) = lock_customer(&mut tx).await? else {
        // Nothing is planned until the tenant has a customer; its notes wait (a customer linked
        // within 35 days is billed its usage), one per window, none past the horizon.
        compact_notes(&mut tx, cfg, now).await?;
        tx.commit().await?;
        return Ok(FlushOutcome {
            no_customer: true,
            ..FlushOutcome::default()
        });
    };
    let planned = plan(&mut tx, cfg, now).await?;
    let claim_id = uuid::Uuid::now_v7();
    let claimed = claim(&mut tx, cfg, claim_id).await?;
    tx.commit().await?;

    let mut outcome = FlushOutcome {
        planned,
        ..FlushOutcome::default()
    };
    if claimed.is_empty() {
        return Ok(outcome);
    }
    // One sender per meter (the provider allows one call per customer and meter at a time).
    let mut by_meter: Vec<(Meter, Vec<Claimed>)> = Vec::new();
    for c in claimed {
        match by_meter.iter_mut().find(|(m, _)| *m == c.meter) {
            Some((_, list)) => list.push(c),
            None => by_meter.push((c.meter, vec![c])),
        }
    }
    let lease = Lease {
        db,
        ctx: &ctx,
        claim_id,
        secs: cfg.lease_secs as f64,
    };
    let results = join_all(by_meter.into_iter().map(|(_, list)| {
        let (customer, lease) = (customer.clone(), &lease);
        async move { send_in_order(sink, cfg, lease, &customer, list, now).await }
    }))
    .await;

    let mut identifiers = Vec::new();
    let mut statuses = Vec::new();
    let mut reasons: Vec<Option<String>> = Vec::new();
    for (settled, calls) in results {
        outcome.calls += calls;
        for (identifier, s) in settled {
            let (status, reason) = match s {
                Settled::Delivered { duplicate } => {
                    outcome.delivered += 1;
                    outcome.duplicates += u64::from(duplicate);
                    ("delivered", None)
                }
                Settled::Failed(reason) => {
                    outcome.failed += 1;
                    ("failed", Some(reason))
                }
                Settled::Expired => {
                    outcome.failed += 1;
                    (
                        "expired",
                        Some("older than the provider accepts (35 days)".to_owned()),
                    )
                }
                Settled::Unsent => {
                    outcome.pending += 1;
                    ("pending", None)
                }
                Settled::InDoubt => {
                    outcome.pending += 1;
                    ("in_doubt", None)
                }
            };
            identifiers.push(identifier);
            statuses.push(status);
            reasons.push(reason);
        }
    }
    let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
    let tenant_uuid = tenant.as_uuid();
    // Only what this claim still holds: a sender whose lease ran out and was re-claimed by
    // another changes nothing. A call in doubt keeps the meter leased for a whole lease from
    // now, so nobody calls again while the provider may still be processing it.
    tx.execute(
        "UPDATE app.usage_deliveries d \
         SET status = CASE WHEN u.status = 'in_doubt' THEN 'pending' ELSE u.status END, \
             reason = u.reason, \
             lease_until = CASE WHEN u.status = 'in_doubt' \
                                THEN greatest(d.lease_until, clock_timestamp() + make_interval(secs => $6)) END, \
             claim_id = CASE WHEN u.status = 'in_doubt' THEN d.claim_id END, \
             settled_at = CASE WHEN u.status IN ('pending', 'in_doubt') THEN NULL ELSE now() END \
         FROM unnest($2::text[], $3::text[], $4::text[]) AS u(identifier, status, reason) \
         WHERE d.tenant_id = $1 AND d.identifier = u.identifier AND d.status = 'pending' \
           AND d.claim_id = $5",
        &[
            (&tenant_uuid, Type::UUID),
            (&identifiers, Type::TEXT_ARRAY),
            (&statuses, Type::TEXT_ARRAY),
            (&reasons, Type::TEXT_ARRAY),
            (&claim_id, Type::UUID),
            (&lease.secs, Type::FLOAT8),
        ],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant_id = %tenant, planned = outcome.planned, delivered = outcome.delivered,
        duplicates = outcome.duplicates, failed = outcome.failed, pending = outcome.pending,
        calls = outcome.calls, "usage flushed");
    Ok(outcome)
}

/// The tenant's billing customer, locked for this transaction (serializes planners and claimers
/// of the tenant).
pub(crate) async fn lock_customer(tx: &mut TenantTx) -> Result<Option<String>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    Ok(tx
        .query_opt(
            "SELECT stripe_customer_id FROM app.billing_customers WHERE tenant_id = $1 FOR UPDATE",
            &[(&tenant, Type::UUID)],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Inserts one delivery per closed window whose ledger total exceeds what is accounted for,
/// stamped at the window's start, or — when the window lies in a finalized billing period — at
/// the start of the next open period (`late`; not planned yet while none is known, so its note is
/// kept). Only windows noted in `app.usage_window_changes` since the last plan are read: their
/// notes are taken first (one statement), then their totals are read (the next statement, whose
/// snapshot includes every event whose note was taken). (`todo` is materialized so that the stamp
/// is worked out per window, not pushed down to every event.)
async fn plan(tx: &mut TenantTx, cfg: &MeterConfig, now: DateTime<Utc>) -> Result<u64, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let closed_before = cfg.closed_before(now);
    let oldest_sendable = now - cfg.max_age;
    let horizon = horizon(cfg, now);
    let noted = tx
        .query(
            "WITH taken AS ( \
               DELETE FROM app.usage_window_changes \
               WHERE tenant_id = $1 AND window_start <= $2 \
               RETURNING meter, window_start) \
             SELECT DISTINCT meter, window_start FROM taken WHERE window_start >= $3",
            &[
                (&tenant, Type::UUID),
                (&closed_before, Type::TIMESTAMPTZ),
                (&horizon, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    if noted.is_empty() {
        return Ok(0);
    }
    let meters: Vec<&str> = noted.iter().map(|r| r.get(0)).collect();
    let windows: Vec<DateTime<Utc>> = noted.iter().map(|r| r.get(1)).collect();
    let rows = tx
        .query(
            "WITH due AS ( \
               SELECT * FROM unnest($2::text[], $3::timestamptz[]) AS d(meter, window_start) \
             ), totals AS ( \
               SELECT d.meter, d.window_start, \
                      (SELECT coalesce(sum(e.quantity), 0)::int8 FROM app.usage_events e \
                       WHERE e.tenant_id = $1 AND e.meter = d.meter \
                         AND e.window_start = d.window_start) AS total, \
                      (SELECT coalesce(sum(a.value) FILTER (WHERE a.kind = 'window'), 0)::int8 \
                       FROM app.usage_deliveries a WHERE a.tenant_id = $1 AND a.meter = d.meter \
                         AND a.window_start = d.window_start) AS accounted, \
                      (SELECT max(a.seq) FROM app.usage_deliveries a WHERE a.tenant_id = $1 \
                         AND a.meter = d.meter AND a.window_start = d.window_start) AS maxseq \
               FROM due d \
             ), todo AS MATERIALIZED ( \
               SELECT meter, window_start, coalesce(maxseq, -1) + 1 AS seq, total - accounted AS value \
               FROM totals WHERE total > accounted \
             ), stamped AS MATERIALIZED ( \
               SELECT todo.*, app.billable_time($1, window_start) AS bill_at FROM todo \
             ), kept AS ( \
               INSERT INTO app.usage_window_changes (tenant_id, meter, window_start) \
               SELECT $1, meter, window_start FROM stamped WHERE bill_at IS NULL \
             ) \
             INSERT INTO app.usage_deliveries \
               (tenant_id, meter, window_start, seq, value, kind, event_time, status, reason, late) \
             SELECT $1, meter, window_start, seq, value, 'window', bill_at, \
                    CASE WHEN bill_at < $4 THEN 'expired' ELSE 'pending' END, \
                    CASE WHEN bill_at < $4 THEN 'older than the provider accepts (35 days)' END, \
                    bill_at <> window_start \
             FROM stamped WHERE bill_at IS NOT NULL \
             ON CONFLICT DO NOTHING \
             RETURNING 1",
            &[
                (&tenant, Type::UUID),
                (&meters, Type::TEXT_ARRAY),
                (&windows, Type::TIMESTAMPTZ_ARRAY),
                (&oldest_sendable, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    Ok(rows.len() as u64)
}

/// Windows older than this are far older than anything sendable (a whole extra billing period):
/// settled history, whose notes are dropped and for which nothing is planned.
fn horizon(cfg: &MeterConfig, now: DateTime<Utc>) -> DateTime<Utc> {
    now - cfg.max_age - chrono::Duration::days(31)
}

/// For a tenant without a customer (whose notes no planner takes): replaces the notes it sees
/// with one per window, none past the horizon, in one statement. Safe against a planner taking
/// notes meanwhile (a customer just linked): the new notes are not visible to a planner whose
/// snapshot predates them, so they stay and the window is planned again (planning nothing twice),
/// and a note committed after this statement's snapshot is not touched.
async fn compact_notes(
    tx: &mut TenantTx,
    cfg: &MeterConfig,
    now: DateTime<Utc>,
) -> Result<u64, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let horizon = horizon(cfg, now);
    tx.execute(
        "WITH old AS ( \
           DELETE FROM app.usage_window_changes WHERE tenant_id = $1 \
           RETURNING meter, window_start) \
         INSERT INTO app.usage_window_changes (tenant_id, meter, window_start) \
         SELECT DISTINCT $1::uuid, meter, window_start FROM old WHERE window_start >= $2",
        &[(&tenant, Type::UUID), (&horizon, Type::TIMESTAMPTZ)],
    )
    .await
}

/// Leases the tenant's pending deliveries of every meter that no other sender holds, under
/// `claim_id`. (`clock_timestamp()`, not the transaction's start: the lease runs from now.) A
/// delivery never sent (`first_sent_at` unset) whose time fell into a period finalized since it
/// was planned is re-stamped at the next open period's start first (or left for later while
/// none is known): nothing has been sent under its identifier yet, so only its time moves.
async fn claim(
    tx: &mut TenantTx,
    cfg: &MeterConfig,
    claim_id: uuid::Uuid,
) -> Result<Vec<Claimed>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let lease = cfg.lease_secs as f64;
    let rows = tx
        .query(
            "UPDATE app.usage_deliveries d \
             SET lease_until = clock_timestamp() + make_interval(secs => $2), \
                 attempts = attempts + 1, claim_id = $3, \
                 event_time = CASE WHEN d.first_sent_at IS NULL \
                                   THEN app.billable_time($1, d.event_time) ELSE d.event_time END, \
                 late = d.late OR (d.first_sent_at IS NULL \
                                   AND app.billable_time($1, d.event_time) <> d.event_time) \
             WHERE d.tenant_id = $1 AND d.status = 'pending' \
               AND (d.first_sent_at IS NOT NULL \
                    OR app.billable_time($1, d.event_time) IS NOT NULL) \
               AND NOT EXISTS (SELECT 1 FROM app.usage_deliveries o \
                               WHERE o.tenant_id = $1 AND o.meter = d.meter \
                                 AND o.status = 'pending' AND o.lease_until > clock_timestamp()) \
             RETURNING d.meter, d.identifier, d.value, d.event_time, d.window_start, d.seq",
            &[
                (&tenant, Type::UUID),
                (&lease, Type::FLOAT8),
                (&claim_id, Type::UUID),
            ],
        )
        .await?;
    let mut claimed: Vec<(DateTime<Utc>, i32, Claimed)> = rows
        .iter()
        .filter_map(|r| {
            Some((
                r.get(4),
                r.get(5),
                Claimed {
                    meter: Meter::from_name(r.get(0))?,
                    identifier: r.get(1),
                    value: r.get(2),
                    event_time: r.get(3),
                },
            ))
        })
        .collect();
    claimed.sort_by_key(|c| (c.0, c.1));
    Ok(claimed.into_iter().map(|(_, _, c)| c).collect())
}

/// A claim's lease, renewed before each call so a long run of sends never outlives it.
struct Lease<'a> {
    db: &'a Db,
    ctx: &'a TenantContext,
    claim_id: uuid::Uuid,
    secs: f64,
}

impl Lease<'_> {
    /// Extends the lease on `identifier` from now, just before a call, and notes the first
    /// call's time; returns that time, or None if this claim no longer holds the delivery.
    async fn renew(&self, identifier: &str) -> Result<Option<DateTime<Utc>>, DbError> {
        let mut tx = self.db.begin(self.ctx, Access::ReadWrite).await?;
        let tenant = self.ctx.tenant_id.as_uuid();
        let row = tx
            .query_opt(
                "UPDATE app.usage_deliveries \
                 SET lease_until = clock_timestamp() + make_interval(secs => $4), \
                     first_sent_at = coalesce(first_sent_at, clock_timestamp()) \
                 WHERE tenant_id = $1 AND identifier = $2 AND claim_id = $3 AND status = 'pending' \
                 RETURNING first_sent_at",
                &[
                    (&tenant, Type::UUID),
                    (&identifier, Type::TEXT),
                    (&self.claim_id, Type::UUID),
                    (&self.secs, Type::FLOAT8),
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// What the tenant's other deliveries of `meter` stamped in `[from, to)` tell about Stripe's
    /// total there (see [`RangeState`]).
    async fn range_state(
        &self,
        meter: Meter,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        except: &str,
        settle_secs: i64,
    ) -> Result<RangeState, DbError> {
        let mut tx = self.db.begin(self.ctx, Access::ReadOnly).await?;
        let tenant = self.ctx.tenant_id.as_uuid();
        let name = meter.name();
        let settle = settle_secs as f64;
        let row = tx
            .query_one(
                "SELECT coalesce(sum(value) FILTER (WHERE status = 'delivered' AND rejected IS NULL), 0)::int8, \
                        coalesce(bool_or(status = 'delivered' AND rejected IS NULL \
                                         AND settled_at > now() - make_interval(secs => $6)), false), \
                        coalesce(sum(value) FILTER (WHERE status = 'pending' \
                                                    AND first_sent_at IS NOT NULL), 0)::int8 \
                 FROM app.usage_deliveries \
                 WHERE tenant_id = $1 AND meter = $2 AND event_time >= $3 AND event_time < $4 \
                   AND identifier <> $5",
                &[
                    (&tenant, Type::UUID),
                    (&name, Type::TEXT),
                    (&from, Type::TIMESTAMPTZ),
                    (&to, Type::TIMESTAMPTZ),
                    (&except, Type::TEXT),
                    (&settle, Type::FLOAT8),
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(RangeState {
            delivered: row.get(0),
            settling: row.get(1),
            uncertain: row.get(2),
        })
    }

    /// Re-stamps a delivery Stripe is known not to have (as [`claim`] does for one never
    /// sent); returns its time to send with.
    async fn restamp(&self, identifier: &str) -> Result<Option<DateTime<Utc>>, DbError> {
        let mut tx = self.db.begin(self.ctx, Access::ReadWrite).await?;
        let tenant = self.ctx.tenant_id.as_uuid();
        let row = tx
            .query_opt(
                "UPDATE app.usage_deliveries \
                 SET late = late OR app.billable_time($1, event_time) <> event_time, \
                     event_time = app.billable_time($1, event_time) \
                 WHERE tenant_id = $1 AND identifier = $2 AND claim_id = $3 AND status = 'pending' \
                   AND app.billable_time($1, event_time) IS NOT NULL \
                 RETURNING event_time",
                &[
                    (&tenant, Type::UUID),
                    (&identifier, Type::TEXT),
                    (&self.claim_id, Type::UUID),
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// What our other deliveries stamped in a delivery's summary range say.
struct RangeState {
    /// Delivered (and not rejected since): Stripe has these.
    delivered: i64,
    /// Some of those settled within the settle window: Stripe's summary may not show them yet.
    settling: bool,
    /// Pending but called before: Stripe may have these.
    uncertain: i64,
}

/// How long Stripe is sure to refuse an identifier it has already taken: "at least 24 hours",
/// less a margin for the clocks.
pub const DEDUPE_GUARANTEE: chrono::Duration = chrono::Duration::hours(23);

/// What Stripe's summary says about a delivery first sent longer ago than [`DEDUPE_GUARANTEE`].
enum Resend {
    /// Stripe has it: settle as delivered, send nothing.
    AlreadyThere,
    /// Stripe does not: send it (re-stamped, as one never sent).
    Absent,
    /// Not decidable yet (a delivery in the same range was sent this run, or settled within the
    /// settle window): left pending for a later run.
    Wait,
    /// Neither adds up: refuse to guess (recorded as failed, for support).
    Ambiguous(String),
}

/// The start of a `failed` delivery's reason when the check could not tell whether Stripe has
/// it (reconciliation leaves its day alone; support decides).
pub const AMBIGUOUS_RESEND: &str = "past Stripe's dedupe window";

/// Stripe's total for the delivery's range (its time floored to the minute, plus a window,
/// rounded up to a minute as Stripe's summaries require) against our other deliveries there.
async fn check_before_resend(
    sink: &dyn BillingSink,
    cfg: &MeterConfig,
    lease: &Lease<'_>,
    customer: &str,
    c: &Claimed,
    sent_this_run: &[DateTime<Utc>],
) -> Result<Resend, SinkError> {
    let minute = |t: i64| t - t.rem_euclid(60);
    let secs = c.event_time.timestamp();
    let (from_s, to_s) = (minute(secs), minute(secs + cfg.window_secs.max(60) + 59));
    let from = DateTime::from_timestamp(from_s, 0).unwrap_or(c.event_time);
    let to = DateTime::from_timestamp(to_s, 0).unwrap_or(c.event_time);
    if sent_this_run.iter().any(|t| *t >= from && *t < to) {
        return Ok(Resend::Wait);
    }
    let state = lease
        .range_state(c.meter, from, to, &c.identifier, cfg.settle_secs)
        .await
        .map_err(|e| SinkError::Retryable(e.to_string()))?;
    if state.settling {
        return Ok(Resend::Wait);
    }
    let stripe = sink.window_total(c.meter, customer, from, to).await?;
    let extra = stripe - state.delivered;
    Ok(if extra == 0 {
        Resend::Absent
    } else if extra == c.value + state.uncertain || (extra == c.value && state.uncertain == 0) {
        // Everything that may be there is: this one included.
        Resend::AlreadyThere
    } else {
        Resend::Ambiguous(format!(
            "{AMBIGUOUS_RESEND} (first sent over 23 h ago): Stripe shows {stripe} for its range, \
             our settled deliveries there {}, others in doubt {}, this one {}; support decides \
             (retrying it sends it)",
            state.delivered, state.uncertain, c.value
        ))
    })
}

/// Sends one meter's deliveries in order; stops at the first that stays unsent (an outage), so
/// later windows never overtake earlier ones. Returns each outcome and the calls made.
async fn send_in_order(
    sink: &dyn BillingSink,
    cfg: &MeterConfig,
    lease: &Lease<'_>,
    customer: &str,
    list: Vec<Claimed>,
    now: DateTime<Utc>,
) -> (Vec<(String, Settled)>, u64) {
    let mut out = Vec::with_capacity(list.len());
    let mut calls = 0;
    let mut blocked = false;
    // Times of the deliveries this run sent (Stripe may have them before we record it).
    let mut sent: Vec<DateTime<Utc>> = Vec::new();
    for c in list {
        if blocked {
            out.push((c.identifier, Settled::Unsent));
            continue;
        }
        if c.event_time < now - cfg.max_age {
            out.push((c.identifier, Settled::Expired));
            continue;
        }
        // Lost the claim (the lease ran out and another sender took it), or cannot tell: stop
        // calling for this meter; whoever holds it now sends the rest.
        let Ok(Some(first_sent)) = lease.renew(&c.identifier).await else {
            blocked = true;
            out.push((c.identifier, Settled::Unsent));
            continue;
        };
        // First sent longer ago than Stripe dedupes identifiers for: Stripe would take a resend
        // as new. Its summary for the range says whether the first call got through.
        let mut c = c;
        if first_sent < Utc::now() - DEDUPE_GUARANTEE {
            calls += 1;
            match check_before_resend(sink, cfg, lease, customer, &c, &sent).await {
                Ok(Resend::AlreadyThere) => {
                    tracing::info!(identifier = %c.identifier,
                        "past the dedupe window; Stripe's summary has it: settled without a resend");
                    out.push((c.identifier, Settled::Delivered { duplicate: true }));
                    continue;
                }
                Ok(Resend::Absent) => match lease.restamp(&c.identifier).await {
                    Ok(Some(t)) => c.event_time = t,
                    // Lost the claim, or no open period to bill it in yet: later.
                    _ => {
                        blocked = true;
                        out.push((c.identifier, Settled::Unsent));
                        continue;
                    }
                },
                Ok(Resend::Wait) => {
                    blocked = true;
                    out.push((c.identifier, Settled::Unsent));
                    continue;
                }
                Ok(Resend::Ambiguous(reason)) => {
                    tracing::warn!(identifier = %c.identifier, "{reason}");
                    out.push((c.identifier, Settled::Failed(reason)));
                    continue;
                }
                Err(SinkError::Rejected {
                    status, message, ..
                }) => {
                    let reason = format!(
                        "{AMBIGUOUS_RESEND}: its summary could not be read \
                        (HTTP {status}: {message}); support decides (retrying it sends it)"
                    );
                    tracing::warn!(identifier = %c.identifier, "{reason}");
                    out.push((
                        c.identifier,
                        Settled::Failed(reason.chars().take(500).collect()),
                    ));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(identifier = %c.identifier, error = %e,
                        "summary unavailable before a resend past the dedupe window; left pending");
                    blocked = true;
                    out.push((c.identifier, Settled::Unsent));
                    continue;
                }
            }
        }
        let event = MeterEvent {
            event_name: c.meter.def().event_name.to_owned(),
            customer: customer.to_owned(),
            value: c.value,
            identifier: c.identifier.clone(),
            timestamp: c.event_time,
        };
        let (result, n) = send_with_retries(sink, cfg, &event).await;
        calls += n;
        sent.push(c.event_time);
        let settled = match result {
            Ok(Sent::Accepted) => Settled::Delivered { duplicate: false },
            Ok(Sent::Duplicate) => Settled::Delivered { duplicate: true },
            Err(SinkError::Rejected {
                status,
                code,
                message,
            }) => {
                tracing::warn!(identifier = %c.identifier, status, code = ?code, "meter event refused");
                Settled::Failed(
                    format!("{status} {}: {message}", code.unwrap_or_default())
                        .chars()
                        .take(500)
                        .collect(),
                )
            }
            Err(SinkError::Retryable(reason)) => {
                tracing::warn!(identifier = %c.identifier, reason, "provider unavailable; left pending");
                blocked = true;
                Settled::Unsent
            }
            Err(SinkError::InDoubt(reason)) => {
                tracing::warn!(identifier = %c.identifier, reason,
                    "no answer from the provider; resent with the same identifier after the lease");
                blocked = true;
                Settled::InDoubt
            }
        };
        out.push((c.identifier, settled));
    }
    (out, calls)
}

/// One event, retried on retryable errors with exponential backoff and full jitter.
pub async fn send_with_retries(
    sink: &dyn BillingSink,
    cfg: &MeterConfig,
    event: &MeterEvent,
) -> (Result<Sent, SinkError>, u64) {
    let mut calls = 0;
    let mut last = SinkError::Retryable("not attempted".into());
    for attempt in 0..cfg.attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(backoff(cfg, attempt)).await;
        }
        calls += 1;
        match sink.send(event).await {
            Ok(sent) => return (Ok(sent), calls),
            Err(e @ (SinkError::Rejected { .. } | SinkError::InDoubt(_))) => {
                return (Err(e), calls);
            }
            Err(e) => last = e,
        }
    }
    (Err(last), calls)
}

/// Full jitter: uniform in `[0, min(max, base * 2^attempt))`.
fn backoff(cfg: &MeterConfig, attempt: u32) -> Duration {
    let cap = cfg
        .backoff_base
        .saturating_mul(1u32 << attempt.min(16))
        .min(cfg.backoff_max);
    let mut buf = [0u8; 8];
    let r = match getrandom::fill(&mut buf) {
        Ok(()) => u64::from_le_bytes(buf),
        Err(_) => u64::from(Utc::now().timestamp_subsec_nanos()),
    };
    let millis = cap.as_millis().max(1) as u64;
    Duration::from_millis(r % millis)
}

/// Which window boundary each tenant was last flushed at, in this execution environment: a
/// tenant is flushed when a window of its has closed since, not on every batch (the scheduled
/// flush catches the rest).
#[derive(Debug, Default)]
pub struct FlushMemo(std::sync::Mutex<std::collections::HashMap<TenantId, DateTime<Utc>>>);

impl FlushMemo {
    /// The tenants of `tenants` due for a flush at `now` (and notes them as flushed).
    pub fn due(
        &self,
        cfg: &MeterConfig,
        now: DateTime<Utc>,
        tenants: &[TenantId],
    ) -> Vec<TenantId> {
        let boundary = crate::usage::window_start(cfg.closed_before(now), cfg.window_secs);
        let Ok(mut seen) = self.0.lock() else {
            return tenants.to_vec();
        };
        tenants
            .iter()
            .filter(|t| match seen.insert(**t, boundary) {
                Some(previous) => previous < boundary,
                None => true,
            })
            .copied()
            .collect()
    }
}

/// Flushes several tenants, `cfg.concurrency` at a time. Errors are logged per tenant (the
/// ledger is durable; the next flush picks up where this one stopped).
pub async fn flush_tenants(
    db: &Db,
    sink: &dyn BillingSink,
    cfg: &MeterConfig,
    tenants: &[TenantId],
) -> FlushOutcome {
    let mut total = FlushOutcome::default();
    for group in tenants.chunks(cfg.concurrency.max(1)) {
        let results = join_all(group.iter().map(|t| flush_tenant(db, sink, cfg, *t))).await;
        for (tenant, r) in group.iter().zip(results) {
            match r {
                Ok(o) => total.add(&o),
                Err(e) => tracing::warn!(tenant_id = %tenant, error = %e, "flush failed"),
            }
        }
    }
    total
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_flushed_once_per_closed_window_boundary() {
        let cfg = MeterConfig {
            window_secs: 60,
            grace_secs: 0,
            ..MeterConfig::default()
        };
        let memo = FlushMemo::default();
        let (a, b) = (TenantId::new(), TenantId::new());
        let t0 = DateTime::from_timestamp(1_764_115_230, 0).unwrap();
        assert_eq!(memo.due(&cfg, t0, &[a]), [a]);
        assert!(
            memo.due(&cfg, t0 + chrono::Duration::seconds(20), &[a])
                .is_empty()
        );
        assert_eq!(
            memo.due(&cfg, t0 + chrono::Duration::seconds(20), &[a, b]),
            [b]
        );
        // The next window closes: both are due again, once.
        let t1 = t0 + chrono::Duration::seconds(60);
        assert_eq!(memo.due(&cfg, t1, &[a, b]), [a, b]);
        assert!(memo.due(&cfg, t1, &[a, b]).is_empty());
    }

    #[test]
    fn backoff_is_jittered_under_a_growing_cap() {
        let cfg = MeterConfig::default();
        for attempt in 1..8 {
            let cap = cfg
                .backoff_base
                .saturating_mul(1 << attempt)
                .min(cfg.backoff_max);
            for _ in 0..50 {
                assert!(backoff(&cfg, attempt) < cap);
            }
        }
        // And the cap does grow: at the sixth attempt (cap 5 s) waits past the 200 ms base are
        // drawn (each of 200 draws is at most the base with probability 1/25).
        let most = (0..200).map(|_| backoff(&cfg, 6)).max().unwrap();
        assert!(most > cfg.backoff_base, "{most:?}");
    }
}

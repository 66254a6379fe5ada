//! Billing periods as Stripe bills them (`app.billing_periods`).
//!
//! - **Where they come from.** A tenant's periods are its subscription's: every
//!   `customer.subscription.*` webhook carries the current period, and every `invoice.finalized`
//!   carries the period it bills (Stripe's invoice period "looks back one period"). A webhook that
//!   never came, or came out of order, is repaired by reading the subscription and its invoices
//!   ([`sync`], from reconciliation). A tenant without any period (no subscription yet, or the
//!   local adapter) is billed by UTC calendar month, as before.
//! - **Idempotent and order-free.** A period is inserted once (by its start); a period is cut
//!   short by the next period's start (a plan change that resets the billing anchor) or by the
//!   subscription's end, never extended; a finalized period is never changed again. Applying the
//!   same facts in any order gives the same rows.
//! - **Open until finalized.** A period takes usage until Stripe finalizes the invoice that bills
//!   it (about an hour after it ends). Stripe accepts meter events for a finalized period but
//!   never bills them, so usage that arrives for one is **late**: its delivery is stamped at the
//!   start of the next open period, and billed there (`app.billable_time(tenant, at)`, migration
//!   0020, used by the meter's planner and claimer, and by reconciliation's repairs; null while
//!   no open period follows, and the delivery waits).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tokio_postgres::types::Type;

use super::{BillingSink, SinkError};
use crate::audit::{self, Action};
use crate::db::{Access, Db, DbError, TenantContext, TenantTx};

/// One billing period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Period {
    /// The subscription it belongs to.
    pub subscription_id: String,
    /// Its start (inclusive).
    pub start: DateTime<Utc>,
    /// Its end (exclusive).
    pub end: DateTime<Utc>,
    /// The invoice that billed it, once finalized.
    pub invoice_id: Option<String>,
    /// When Stripe finalized that invoice; `None`: still open.
    pub finalized_at: Option<DateTime<Utc>>,
}

impl Period {
    /// Whether it still takes usage.
    pub fn is_open(&self) -> bool {
        self.finalized_at.is_none()
    }
}

/// A subscription's current period, as Stripe reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionPeriod {
    /// `sub_...`
    pub subscription_id: String,
    /// Stripe's status (`active`, `trialing`, `past_due`, `canceled`, ...).
    pub status: String,
    /// The current period's start.
    pub start: DateTime<Utc>,
    /// The current period's end.
    pub end: DateTime<Utc>,
    /// When the subscription ended, if it has.
    pub ended_at: Option<DateTime<Utc>>,
}

impl SubscriptionPeriod {
    /// A subscription's current period from the raw fields of either API shape: on the
    /// subscription (`top`, before 2025-03-31), or else the first of its items that has one
    /// (Tenantry's subscriptions bill every meter on one interval). Times in Unix seconds.
    pub fn from_stripe(
        id: String,
        status: String,
        top: (Option<i64>, Option<i64>),
        items: impl IntoIterator<Item = (Option<i64>, Option<i64>)>,
        ended_at: Option<i64>,
    ) -> Option<Self> {
        let (start, end) = match top {
            (Some(s), Some(e)) => (s, e),
            _ => items.into_iter().find_map(|(s, e)| Some((s?, e?)))?,
        };
        Some(Self {
            subscription_id: id,
            status,
            start: DateTime::from_timestamp(start, 0)?,
            end: DateTime::from_timestamp(end, 0)?,
            ended_at: ended_at.and_then(|e| DateTime::from_timestamp(e, 0)),
        })
    }
}

/// A finalized invoice of a subscription, as Stripe reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalizedInvoice {
    /// `in_...`
    pub invoice_id: String,
    /// `sub_...`
    pub subscription_id: String,
    /// The usage period it bills (start).
    pub period_start: DateTime<Utc>,
    /// The usage period it bills (end).
    pub period_end: DateTime<Utc>,
    /// When Stripe finalized it.
    pub finalized_at: DateTime<Utc>,
}

impl FinalizedInvoice {
    /// A finalized subscription invoice from the raw fields of either API shape (Unix seconds);
    /// None unless it is a subscription's and closes the period it bills ([`closes_period`]).
    pub fn from_stripe(
        invoice_id: Option<String>,
        subscription_id: Option<String>,
        billing_reason: Option<&str>,
        period: (i64, i64),
        finalized_at: DateTime<Utc>,
    ) -> Option<Self> {
        if !closes_period(billing_reason) {
            return None;
        }
        Some(Self {
            invoice_id: invoice_id?,
            subscription_id: subscription_id?,
            period_start: DateTime::from_timestamp(period.0, 0)?,
            period_end: DateTime::from_timestamp(period.1, 0)?,
            finalized_at,
        })
    }
}

/// Whether an invoice with this `billing_reason` closes the period it bills: a renewal, a
/// plan change's or a cancellation's invoice does; a usage-threshold or manual invoice bills
/// mid-period and closes nothing. (Absent: an older event shape; taken as closing.)
pub fn closes_period(billing_reason: Option<&str>) -> bool {
    matches!(
        billing_reason,
        None | Some(
            "subscription_cycle" | "subscription_update" | "subscription_create" | "subscription"
        )
    )
}

/// Whether `id` looks like a Stripe subscription id (what the table's check accepts).
pub fn valid_subscription_id(id: &str) -> bool {
    id.strip_prefix("sub_").is_some_and(|rest| {
        (1..=64).contains(&rest.len())
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Records a subscription's period (and, when the subscription has ended, cuts its open period
/// short at the end), then cuts every open period of the subscription at the next one's start.
/// Returns whether anything changed; changes are in the tenant's audit log.
pub async fn record(
    tx: &mut TenantTx,
    sub: &SubscriptionPeriod,
    source: &str,
    request_id: Option<&str>,
) -> Result<bool, DbError> {
    // A subscription that never started (its first payment failed) bills no period: its
    // periods would never be invoiced, and would stay open for good.
    let never_started = matches!(sub.status.as_str(), "incomplete" | "incomplete_expired");
    if !valid_subscription_id(&sub.subscription_id) || sub.end <= sub.start || never_started {
        return Ok(false);
    }
    let tenant = tx.tenant_id().as_uuid();
    let inserted = tx
        .execute(
            "INSERT INTO app.billing_periods (tenant_id, subscription_id, period_start, period_end, source) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[
                (&tenant, Type::UUID),
                (&sub.subscription_id, Type::TEXT),
                (&sub.start, Type::TIMESTAMPTZ),
                (&sub.end, Type::TIMESTAMPTZ),
                (&source, Type::TEXT),
            ],
        )
        .await?;
    let mut cut = 0;
    if let Some(ended) = sub.ended_at {
        cut += tx
            .execute(
                "UPDATE app.billing_periods SET period_end = $3, updated_at = now() \
                 WHERE tenant_id = $1 AND subscription_id = $2 AND finalized_at IS NULL \
                   AND period_start < $3 AND period_end > $3",
                &[
                    (&tenant, Type::UUID),
                    (&sub.subscription_id, Type::TEXT),
                    (&ended, Type::TIMESTAMPTZ),
                ],
            )
            .await?;
    }
    cut += tx
        .execute(
            "UPDATE app.billing_periods p SET period_end = n.next_start, updated_at = now() \
             FROM (SELECT period_start, \
                          lead(period_start) OVER (ORDER BY period_start) AS next_start \
                   FROM app.billing_periods WHERE tenant_id = $1 AND subscription_id = $2) n \
             WHERE p.tenant_id = $1 AND p.subscription_id = $2 AND p.finalized_at IS NULL \
               AND p.period_start = n.period_start AND n.next_start < p.period_end",
            &[(&tenant, Type::UUID), (&sub.subscription_id, Type::TEXT)],
        )
        .await?;
    if inserted + cut == 0 {
        return Ok(false);
    }
    let details = json!({
        "start": sub.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "end": sub.end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "ended_at": sub.ended_at.map(|e| e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "new": inserted > 0,
        "periods_cut_short": cut,
        "source": source,
    });
    audit::record(
        tx,
        Action::BillingPeriodRecorded,
        Some(&sub.subscription_id),
        details,
        request_id,
    )
    .await?;
    Ok(true)
}

/// Applies a finalized invoice: its period (inserted if unknown) and every earlier open period
/// of its subscription are finalized. Returns how many periods it finalized.
pub async fn finalize(
    tx: &mut TenantTx,
    invoice: &FinalizedInvoice,
    source: &str,
    request_id: Option<&str>,
) -> Result<u64, DbError> {
    if !valid_subscription_id(&invoice.subscription_id)
        || invoice.invoice_id.is_empty()
        || invoice.invoice_id.len() > 128
    {
        return Ok(0);
    }
    let tenant = tx.tenant_id().as_uuid();
    // A subscription's first invoice bills no usage (its period is an instant): nothing to add.
    if invoice.period_end > invoice.period_start {
        record(
            tx,
            &SubscriptionPeriod {
                subscription_id: invoice.subscription_id.clone(),
                status: "active".into(),
                start: invoice.period_start,
                end: invoice.period_end,
                ended_at: None,
            },
            source,
            request_id,
        )
        .await?;
    }
    // The invoice's end is authoritative: a plan change's invoice can arrive before the
    // subscription event that starts the next period, and must still close this one.
    if invoice.period_end > invoice.period_start {
        tx.execute(
            "UPDATE app.billing_periods SET period_end = $4, updated_at = now() \
             WHERE tenant_id = $1 AND subscription_id = $2 AND period_start = $3 \
               AND finalized_at IS NULL AND period_end > $4",
            &[
                (&tenant, Type::UUID),
                (&invoice.subscription_id, Type::TEXT),
                (&invoice.period_start, Type::TIMESTAMPTZ),
                (&invoice.period_end, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    }
    let rows = tx
        .query(
            "UPDATE app.billing_periods SET invoice_id = $3, finalized_at = $4, updated_at = now() \
             WHERE tenant_id = $1 AND subscription_id = $2 AND finalized_at IS NULL \
               AND period_end <= $5 \
             RETURNING period_start, period_end",
            &[
                (&tenant, Type::UUID),
                (&invoice.subscription_id, Type::TEXT),
                (&invoice.invoice_id, Type::TEXT),
                (&invoice.finalized_at, Type::TIMESTAMPTZ),
                (&invoice.period_end, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let periods: Vec<_> = rows
        .iter()
        .map(|r| {
            let (s, e): (DateTime<Utc>, DateTime<Utc>) = (r.get(0), r.get(1));
            json!({
                "start": s.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "end": e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            })
        })
        .collect();
    let details = json!({
        "subscription_id": invoice.subscription_id,
        "periods": periods,
        "source": source,
    });
    audit::record(
        tx,
        Action::BillingPeriodFinalized,
        Some(&invoice.invoice_id),
        details,
        request_id,
    )
    .await?;
    Ok(rows.len() as u64)
}

/// The tenant's periods, oldest first.
pub async fn list(tx: &mut TenantTx) -> Result<Periods, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let rows = tx
        .query(
            "SELECT subscription_id, period_start, period_end, invoice_id, finalized_at \
             FROM app.billing_periods WHERE tenant_id = $1 ORDER BY period_start, subscription_id",
            &[(&tenant, Type::UUID)],
        )
        .await?;
    let all = rows
        .iter()
        .map(|r| Period {
            subscription_id: r.get(0),
            start: r.get(1),
            end: r.get(2),
            invoice_id: r.get(3),
            finalized_at: r.get(4),
        })
        .collect();
    Ok(Periods { all })
}

/// What reconciliation and `/v1/usage` need to know about a tenant's periods at `now`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Periods {
    /// Every period, oldest first.
    pub all: Vec<Period>,
}

impl Periods {
    /// The period holding `now` (open or not).
    pub fn current(&self, now: DateTime<Utc>) -> Option<&Period> {
        self.all
            .iter()
            .rev()
            .find(|p| p.start <= now && now < p.end)
    }

    /// The earliest start of an open period that has begun by `now`: usage from here on can
    /// still be billed (or corrected) where it happened.
    pub fn open_from(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.all
            .iter()
            .filter(|p| p.is_open() && p.start <= now)
            .map(|p| p.start)
            .min()
    }

    /// Open periods that have ended by `now` (their invoice is still to be finalized).
    pub fn awaiting_invoice(&self, now: DateTime<Utc>) -> impl Iterator<Item = &Period> {
        self.all.iter().filter(move |p| p.is_open() && p.end <= now)
    }

    /// The period whose span holds `t`.
    pub fn holding(&self, t: DateTime<Utc>) -> Option<&Period> {
        self.all.iter().rev().find(|p| p.start <= t && t < p.end)
    }
}

/// How long after a period's end Stripe normally finalizes its invoice; after this (and twice
/// this before giving up on the webhook entirely), [`sync`] reads the invoices.
pub const FINALIZE_AFTER: chrono::Duration = chrono::Duration::hours(2);

/// What [`sync`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncOutcome {
    /// Provider calls made.
    pub calls: u64,
    /// Periods added or cut short.
    pub recorded: u64,
    /// Periods finalized.
    pub finalized: u64,
}

/// The repair for missed or late webhooks: reads the customer's subscriptions when no known
/// period holds `now`, and its finalized invoices when it had to read those or an open period
/// ended more than [`FINALIZE_AFTER`] ago; applies what it learns like the webhooks would.
/// Steady state: no calls.
pub async fn sync(
    db: &Db,
    sink: &dyn BillingSink,
    ctx: &TenantContext,
    customer: &str,
    now: DateTime<Utc>,
) -> Result<SyncOutcome, SyncError> {
    let mut tx = db.begin(ctx, Access::ReadOnly).await?;
    let known = list(&mut tx).await?;
    tx.commit().await?;
    let mut out = SyncOutcome::default();
    let subscriptions = if known.current(now).is_none() {
        out.calls += 1;
        sink.subscriptions(customer).await?
    } else {
        Vec::new()
    };
    // Invoices: for a period that should have been finalized by now, and whenever the
    // subscription had to be read (the webhooks that told us of earlier periods may be lost too:
    // the invoices of the last 40 days bring back the periods usage can still be stamped in).
    let overdue = known
        .awaiting_invoice(now)
        .map(|p| p.end)
        .filter(|end| *end + FINALIZE_AFTER <= now)
        .min()
        .map(|end| end - chrono::Duration::days(1));
    let lost = subscriptions
        .iter()
        .map(|s| s.start - chrono::Duration::days(40))
        .min();
    let invoices = match overdue.into_iter().chain(lost).min() {
        Some(since) => {
            out.calls += 1;
            sink.finalized_invoices(customer, since).await?
        }
        None => Vec::new(),
    };
    if subscriptions.is_empty() && invoices.is_empty() {
        return Ok(out);
    }
    let mut tx = db.begin(ctx, Access::ReadWrite).await?;
    for s in &subscriptions {
        out.recorded += u64::from(record(&mut tx, s, "subscription", None).await?);
    }
    for i in &invoices {
        out.finalized += finalize(&mut tx, i, "subscription", None).await?;
    }
    tx.commit().await?;
    Ok(out)
}

/// Why [`sync`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The provider.
    #[error(transparent)]
    Provider(#[from] SinkError),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn period(start: &str, end: &str, finalized: bool) -> Period {
        Period {
            subscription_id: "sub_1".into(),
            start: at(start),
            end: at(end),
            invoice_id: finalized.then(|| "in_1".into()),
            finalized_at: finalized.then(|| at(end)),
        }
    }

    #[test]
    fn the_current_period_the_open_range_and_those_awaiting_their_invoice() {
        let p = Periods {
            all: vec![
                period("2026-09-14T10:20:30Z", "2026-10-14T10:20:30Z", true),
                period("2026-10-14T10:20:30Z", "2026-11-14T10:20:30Z", false),
                period("2026-11-14T10:20:30Z", "2026-12-14T10:20:30Z", false),
            ],
        };
        let now = at("2026-11-14T11:00:00Z");
        assert_eq!(p.current(now).unwrap().start, at("2026-11-14T10:20:30Z"));
        assert_eq!(p.open_from(now), Some(at("2026-10-14T10:20:30Z")));
        let waiting: Vec<_> = p.awaiting_invoice(now).map(|p| p.start).collect();
        assert_eq!(waiting, [at("2026-10-14T10:20:30Z")]);
        assert_eq!(
            p.holding(at("2026-10-01T00:00:00Z"))
                .unwrap()
                .invoice_id
                .as_deref(),
            Some("in_1")
        );
        assert!(p.current(at("2026-12-14T10:20:30Z")).is_none());
        assert_eq!(Periods::default().open_from(now), None);
    }

    #[test]
    fn subscription_ids_are_checked_like_the_table_does() {
        assert!(valid_subscription_id("sub_1NXWPnCo6bFb1KQto6C8OWvE"));
        assert!(valid_subscription_id("sub_stub_0001"));
        for bad in [
            "sub_",
            "cus_1",
            "sub_a-b",
            "sub_ä",
            "",
            &format!("sub_{}", "a".repeat(65)),
        ] {
            assert!(!valid_subscription_id(bad), "{bad}");
        }
    }
}

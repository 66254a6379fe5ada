//! `GET /v1/usage`: the tenant's current billing period (its subscription's, or the calendar
//! month without one) per meter — what the ledger recorded, what the billing provider
//! acknowledged, what is on its way, late usage from finalized periods billed in this one — the
//! periods still waiting for their invoice, and the last reconciliation's result.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use std::sync::Arc;

use axum::extract::State;
use http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_postgres::types::Type;

use crate::App;
use crate::billing::customers;
use crate::billing::periods;
use crate::db::Access;
use crate::http::{Caller, HandlerResult, json_response};
use crate::usage::{METERS, Meter};

#[derive(Default, Serialize)]
struct MeterUsage {
    meter: &'static str,
    unit: &'static str,
    event_name: &'static str,
    /// In the ledger for this period.
    recorded: i64,
    /// Delivered to (and acknowledged by) the billing provider, corrections included.
    acknowledged: i64,
    /// Planned deliveries not yet acknowledged (provider unavailable, or in progress).
    pending: i64,
    /// Recorded but not yet planned: windows still open, or no billing customer.
    unsent: i64,
    /// Refused by the provider, or too old to send: see the reconciliation.
    refused: i64,
    /// Of what is billed in this period, usage from an earlier period whose invoice was already
    /// finalized when it arrived (late usage is billed in the next open period).
    late: i64,
    /// The plan's entitlement on this meter, against this period's use.
    entitlement: Option<EntitlementView>,
}

/// A meter's entitlement under the tenant's plan, this period.
#[derive(Serialize)]
struct EntitlementView {
    /// Included in the plan.
    included: i64,
    /// Counted against the plan this period.
    used: i64,
    /// Of the included quantity, what is left.
    remaining: i64,
    /// Notify past this.
    soft_limit: Option<i64>,
    /// Refuse past this.
    hard_limit: Option<i64>,
    /// Before the hard limit refuses.
    hard_limit_remaining: Option<i64>,
    /// The soft limit was reached this period (an audit event said so).
    soft_limit_reached: bool,
    /// The next request of this meter is refused.
    hard_limit_reached: bool,
}

pub(super) async fn get(State(app): State<Arc<App>>, caller: Caller) -> HandlerResult {
    let now = Utc::now();
    let mut tx = super::begin(&app, &caller, Access::ReadOnly).await?;
    let tenant = tx.tenant_id().as_uuid();
    let billing = customers::state(&mut tx).await?;
    let known = periods::list(&mut tx).await?;
    // The subscription's current period; the calendar month without one.
    let (start, end, period) = match known.current(now) {
        Some(p) => (
            p.start,
            p.end,
            json!({"source": "subscription", "subscription_id": p.subscription_id}),
        ),
        None => {
            let (s, e) = month(now);
            (s, e, json!({"source": "calendar_month"}))
        }
    };
    let mut meters: Vec<MeterUsage> = METERS
        .iter()
        .map(|d| MeterUsage {
            meter: d.name,
            unit: d.unit,
            event_name: d.event_name,
            ..MeterUsage::default()
        })
        .collect();
    let slot = |meters: &mut Vec<MeterUsage>, name: &str| -> Option<usize> {
        let m = Meter::from_name(name)?;
        meters.iter().position(|u| u.meter == m.name())
    };
    // Usage counts in the period holding its window's start, as the meter bills it (a period
    // starts at any second; windows on the hour).
    let recorded = tx
        .query(
            "SELECT meter, sum(quantity)::int8 FROM app.usage_events \
                 WHERE tenant_id = $1 AND window_start >= $2 AND window_start < $3 GROUP BY 1",
            &[
                (&tenant, Type::UUID),
                (&start, Type::TIMESTAMPTZ),
                (&end, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    for r in &recorded {
        if let Some(i) = slot(&mut meters, r.get(0)) {
            meters[i].recorded = r.get(1);
            meters[i].unsent = r.get(1);
        }
    }
    // Deliveries billed in the period (by their time) and those planned for its usage (by their
    // window): they differ by late usage.
    let deliveries = tx
        .query(
            "SELECT meter, status, kind, late, \
                    window_start >= $2 AND window_start < $3, \
                    event_time >= $2 AND event_time < $3, sum(value)::int8 \
             FROM app.usage_deliveries \
             WHERE tenant_id = $1 AND ((event_time >= $2 AND event_time < $3) \
                                       OR (window_start >= $2 AND window_start < $3)) \
             GROUP BY 1, 2, 3, 4, 5, 6",
            &[
                (&tenant, Type::UUID),
                (&start, Type::TIMESTAMPTZ),
                (&end, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    for r in &deliveries {
        let Some(i) = slot(&mut meters, r.get(0)) else {
            continue;
        };
        let (status, kind, late): (&str, &str, bool) = (r.get(1), r.get(2), r.get(3));
        let (window_in, billed_in, value): (bool, bool, i64) = (r.get(4), r.get(5), r.get(6));
        let m = &mut meters[i];
        if kind == "window" && window_in {
            m.unsent -= value;
        }
        if billed_in {
            match status {
                "delivered" => m.acknowledged += value,
                "pending" => m.pending += value,
                _ => m.refused += value,
            }
            if late && !window_in {
                m.late += value;
            }
        }
    }
    let awaiting: Vec<Value> = known
        .awaiting_invoice(now)
        .map(|p| {
            json!({
                "subscription_id": p.subscription_id,
                "start": p.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "end": p.end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            })
        })
        .collect();
    // The plan and what its limits counted this period.
    let plan_rows = tx
        .query(
            "SELECT t.plan, c.meter, c.used, c.soft_notified_at IS NOT NULL \
             FROM app.tenants t LEFT JOIN app.usage_counters c \
               ON c.tenant_id = t.tenant_id AND c.period_start = $2 \
             WHERE t.tenant_id = $1",
            &[(&tenant, Type::UUID), (&start, Type::TIMESTAMPTZ)],
        )
        .await?;
    let plan: String = plan_rows
        .first()
        .map(|r| r.get(0))
        .unwrap_or_else(|| "free".into());
    let plans = &app.config.billing.plans;
    for m in &mut meters {
        let Some(meter) = Meter::from_name(m.meter) else {
            continue;
        };
        let e = plans.get(&plan, meter);
        let counted = plan_rows
            .iter()
            .find(|r| r.get::<_, Option<&str>>(1) == Some(m.meter))
            .map(|r| (r.get::<_, i64>(2), r.get::<_, bool>(3)));
        let limited = e.hard_limit.is_some();
        // Under a hard limit, what admitted requests reserved (which the limit counts); else
        // the ledger (requests reserve nothing). The two agree once every admitted request has
        // recorded its usage.
        let used = match (limited, counted) {
            (true, Some((c, _))) => c,
            (true, None) => 0,
            (false, _) => m.recorded,
        };
        m.entitlement = Some(EntitlementView {
            included: e.included,
            used,
            remaining: (e.included - used).max(0),
            soft_limit: e.soft_limit,
            hard_limit: e.hard_limit,
            hard_limit_remaining: e.hard_limit.map(|h| (h - used).max(0)),
            soft_limit_reached: counted.is_some_and(|(_, n)| n)
                || e.soft_limit.is_some_and(|s| used >= s),
            hard_limit_reached: e.hard_limit.is_some_and(|h| used >= h),
        });
    }
    // The last run's summary (the day's summary row keeps the last run's counts and issues).
    let last = tx
        .query_opt(
            "SELECT last_run_id, last_run_at, checked, actions, issues \
             FROM app.billing_reconciliation_days WHERE tenant_id = $1 \
             ORDER BY day DESC LIMIT 1",
            &[(&tenant, Type::UUID)],
        )
        .await?;
    tx.commit().await?;

    let last_reconciliation = last.map(|r| {
        let at: DateTime<Utc> = r.get(1);
        json!({
            "run_id": r.get::<_, uuid::Uuid>(0),
            "at": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "days_checked": r.get::<_, i32>(2),
            "actions": r.get::<_, Value>(3),
            "issues": r.get::<_, Value>(4),
        })
    });
    json_response(
        StatusCode::OK,
        &json!({
            "period": {
                "start": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "end": end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "source": period["source"],
                "subscription_id": period.get("subscription_id"),
            },
            "awaiting_invoice": awaiting,
            // The preview of this period's invoice only (one of an earlier period is stale).
            "estimate": billing
                .as_ref()
                .and_then(|b| b.estimate.clone())
                .filter(|e| period.get("subscription_id").is_some() && e.period_end == Some(end)),
            "plan": plan,
            "billing": {
                "adapter": app.billing.kind(),
                "customer": billing,
            },
            "meters": meters,
            "last_reconciliation": last_reconciliation,
        }),
    )
}

/// The calendar month (UTC) holding `now`: `[start, end)`.
fn month(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let first = now.date_naive().with_day(1).unwrap_or(now.date_naive());
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .unwrap_or(first);
    let at =
        |d: chrono::NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default());
    (at(first), at(next))
}

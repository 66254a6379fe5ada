//! Plan entitlements: what each plan includes per meter and billing period, and where it stops.
//!
//! - **Plans** (`free`, `team`, `business`, `enterprise`; a tenant's is `app.tenants.plan`, set
//!   by support) carry, per meter, an **included** quantity (shown against usage; billed by
//!   Stripe's prices, not here), an optional **soft limit** (crossing it notifies: an audit
//!   event once per period, and a flag in `/v1/usage`) and an optional **hard limit** (a request
//!   that would exceed it is refused with 429 `quota_exceeded` before it does billable work).
//!   Defaults are [`PlanConfig::defaults`]; `PLAN_ENTITLEMENTS` (JSON, plan → meter → fields)
//!   overrides any of them.
//! - **Counting** is exact under concurrency: a request reserves its quantity in
//!   `app.usage_counters` (tenant, meter, billing period) with one conditional upsert, which
//!   either adds it within the hard limit or adds nothing ([`admit`]). Queries and questions
//!   reserve before their work and give the reservation back if the work fails ([`release`]);
//!   ingest reserves what it changed inside its own transaction, so a refused ingest writes
//!   nothing. The period is the tenant's current billing period (its subscription's, or the UTC
//!   calendar month), so counters reset when a period starts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::types::Type;

use crate::audit::{self, Action};
use crate::db::{DbError, TenantTx};
use crate::env::{ConfigError, Env};
use crate::usage::{METERS, Meter};

/// The plans, in order.
pub const PLANS: [&str; 4] = ["free", "team", "business", "enterprise"];

/// One plan's entitlement on one meter, per billing period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entitlement {
    /// Included in the plan's price.
    #[serde(default)]
    pub included: i64,
    /// Crossing it notifies (once per period).
    #[serde(default)]
    pub soft_limit: Option<i64>,
    /// Never exceeded: the request that would is refused.
    #[serde(default)]
    pub hard_limit: Option<i64>,
}

/// Every plan's entitlements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    entries: BTreeMap<(&'static str, Meter), Entitlement>,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self::defaults()
    }
}

impl PlanConfig {
    /// The defaults: `free` is capped (hard limits on queries, questions and ingested records,
    /// soft limits at 80 %); `team` and `business` include more and only notify at their
    /// included quantity; `enterprise` has neither (its contract is outside the product).
    pub fn defaults() -> Self {
        let mut entries = BTreeMap::new();
        let mut set = |plan: &'static str, meter, included: i64, soft: Option<i64>, hard| {
            entries.insert(
                (plan, meter),
                Entitlement {
                    included,
                    soft_limit: soft,
                    hard_limit: hard,
                },
            );
        };
        use Meter::*;
        set("free", Queries, 1_000, Some(800), Some(1_000));
        set("free", Questions, 100, Some(80), Some(100));
        set("free", IngestedRecords, 10_000, Some(8_000), Some(10_000));
        set("free", Storage, 3_000_000, None, None);
        set("free", Seats, 93, None, None);
        set("team", Queries, 50_000, Some(50_000), None);
        set("team", Questions, 5_000, Some(5_000), None);
        set("team", IngestedRecords, 1_000_000, Some(1_000_000), None);
        set("team", Storage, 300_000_000, None, None);
        set("team", Seats, 310, None, None);
        set("business", Queries, 500_000, Some(500_000), None);
        set("business", Questions, 50_000, Some(50_000), None);
        set(
            "business",
            IngestedRecords,
            10_000_000,
            Some(10_000_000),
            None,
        );
        set("business", Storage, 3_000_000_000, None, None);
        set("business", Seats, 1_550, None, None);
        Self { entries }
    }

    /// [`defaults`](Self::defaults), with `PLAN_ENTITLEMENTS` (JSON: `{"free": {"queries":
    /// {"included": 5, "soft_limit": 4, "hard_limit": 5}}}`) replacing the entitlements it
    /// names. Unknown plans or meters, negative quantities, or a soft limit above the hard one
    /// are configuration errors.
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let mut cfg = Self::defaults();
        let Some(raw) = env.var("PLAN_ENTITLEMENTS") else {
            return Ok(cfg);
        };
        let invalid = |reason: String| ConfigError::Invalid {
            name: "PLAN_ENTITLEMENTS",
            reason,
        };
        let parsed: BTreeMap<String, BTreeMap<String, Entitlement>> =
            serde_json::from_str(&raw).map_err(|e| invalid(e.to_string()))?;
        for (plan, meters) in parsed {
            let plan = PLANS
                .into_iter()
                .find(|p| *p == plan)
                .ok_or_else(|| invalid(format!("unknown plan {plan:?}")))?;
            for (meter, e) in meters {
                let meter = Meter::from_name(&meter)
                    .ok_or_else(|| invalid(format!("unknown meter {meter:?}")))?;
                let negative = e.included < 0
                    || e.soft_limit.is_some_and(|s| s < 0)
                    || e.hard_limit.is_some_and(|h| h < 0);
                let inverted = matches!((e.soft_limit, e.hard_limit), (Some(s), Some(h)) if s > h);
                if negative || inverted {
                    return Err(invalid(format!(
                        "{plan}.{}: quantities are positive and a soft limit is at most the hard one",
                        meter.name()
                    )));
                }
                if meter.def().snapshot && (e.soft_limit.is_some() || e.hard_limit.is_some()) {
                    return Err(invalid(format!(
                        "{plan}.{}: a snapshot meter has no limits (only requests are refused)",
                        meter.name()
                    )));
                }
                cfg.entries.insert((plan, meter), e);
            }
        }
        Ok(cfg)
    }

    /// `plan`'s entitlement on `meter` (nothing included and no limits when not configured).
    pub fn get(&self, plan: &str, meter: Meter) -> Entitlement {
        self.entries
            .iter()
            .find(|((p, m), _)| *p == plan && *m == meter)
            .map(|(_, e)| *e)
            .unwrap_or_default()
    }

    /// Whether any plan limits `meter` (otherwise requests do not count against anything).
    pub fn limits(&self, meter: Meter) -> bool {
        self.entries
            .iter()
            .any(|((_, m), e)| *m == meter && (e.soft_limit.is_some() || e.hard_limit.is_some()))
    }

    /// Per plan, `meter`'s (hard, soft) limits, as the SQL of [`admit`] takes them.
    fn arrays(&self, meter: Meter) -> (Vec<&'static str>, Vec<Option<i64>>, Vec<Option<i64>>) {
        let mut plans = Vec::new();
        let mut hard = Vec::new();
        let mut soft = Vec::new();
        for plan in PLANS {
            let e = self.get(plan, meter);
            plans.push(plan);
            hard.push(e.hard_limit);
            soft.push(e.soft_limit);
        }
        (plans, hard, soft)
    }
}

/// Which plan each tenant was last seen on, for a few seconds (`AUTH_LOOKUP_CACHE_SECS`): a
/// request of a tenant whose plan sets no hard limit on the meter skips the reservation (its
/// soft limit is checked against the ledger by reconciliation instead). A plan change reaches a
/// process within that bound; a tenant seen on a hard-limited plan is always checked.
pub struct PlanGate {
    plans: crate::cache::TtlCache<crate::TenantId, (crate::TenantId, String)>,
}

impl std::fmt::Debug for PlanGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanGate").finish_non_exhaustive()
    }
}

impl PlanGate {
    /// A gate remembering plans for `ttl` (zero: never, so every request reserves).
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            plans: crate::cache::TtlCache::new(ttl, 10_000),
        }
    }

    /// Whether a request of `tenant` on `meter` must reserve: unless its plan is known (recently)
    /// to set no hard limit there.
    pub fn must_reserve(&self, cfg: &PlanConfig, tenant: crate::TenantId, meter: Meter) -> bool {
        match self.plans.get(&tenant) {
            Some((_, plan)) => cfg.get(&plan, meter).hard_limit.is_some(),
            None => true,
        }
    }

    /// Remembers the plan an admission read.
    pub fn saw(&self, tenant: crate::TenantId, plan: &str) {
        self.plans.insert(tenant, (tenant, plan.to_owned()));
    }

    /// Forgets the tenant's plan (it was just changed through this process).
    pub fn forget(&self, tenant: crate::TenantId) {
        self.plans.forget(|(t, _)| *t == tenant);
    }
}

/// A reservation that went through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The meter.
    pub meter: Meter,
    /// What was reserved.
    pub quantity: i64,
    /// The billing period it counts in.
    pub period_start: DateTime<Utc>,
    /// The period's count, this reservation included.
    pub used: i64,
    /// The tenant's plan.
    pub plan: String,
}

/// A request the plan's hard limit refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{plan} plan: {meter:?} hard limit {limit} reached ({used} used)")]
pub struct QuotaExceeded {
    /// The tenant's plan.
    pub plan: String,
    /// The meter.
    pub meter: Meter,
    /// The hard limit.
    pub limit: i64,
    /// Counted this period before the request.
    pub used: i64,
    /// What the request needed.
    pub requested: i64,
    /// When the period ends (and the count starts again).
    pub resets_at: DateTime<Utc>,
}

/// Why [`admit`] refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// Over the hard limit.
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The tenant's current billing period, as SQL over `$1` (the tenant): its subscription's
/// period holding now, or else the UTC calendar month. Columns `s`, `e`.
const PERIOD_SQL: &str = "SELECT coalesce(c.period_start, date_trunc('month', now(), 'UTC')) AS s, \
        coalesce(c.period_end, date_trunc('month', now(), 'UTC') + interval '1 month') AS e \
 FROM (SELECT NULL::int AS x) one \
 LEFT JOIN LATERAL (SELECT period_start, period_end FROM app.billing_periods \
                    WHERE tenant_id = $1 AND period_start <= now() AND now() < period_end \
                    ORDER BY period_start DESC, subscription_id DESC LIMIT 1) c ON true";

/// Reserves `quantity` of `meter` for the transaction's tenant in its current billing period,
/// within its plan's hard limit (one statement: concurrent reservations serialize on the
/// counter's row, so exactly the requests that fit are admitted). Returns `Ok(None)` when no
/// plan limits the meter (nothing is counted). The first reservation to reach the soft limit in
/// a period records `billing.soft_limit_reached` in the tenant's audit log.
pub async fn admit(
    tx: &mut TenantTx,
    plans: &PlanConfig,
    meter: Meter,
    quantity: i64,
    request_id: Option<&str>,
) -> Result<Option<Admitted>, AdmitError> {
    if !plans.limits(meter) || quantity <= 0 {
        return Ok(None);
    }
    let tenant = tx.tenant_id().as_uuid();
    let (names, hard, soft) = plans.arrays(meter);
    let name = meter.name();
    let sql = format!(
        "WITH cfg AS (SELECT * FROM unnest($3::text[], $4::int8[], $5::int8[]) AS c(plan, hard, soft)), \
         lim AS (SELECT t.plan, c.hard, c.soft FROM app.tenants t LEFT JOIN cfg c ON c.plan = t.plan \
                 WHERE t.tenant_id = $1), \
         per AS ({PERIOD_SQL}), \
         ins AS ( \
           INSERT INTO app.usage_counters AS u (tenant_id, meter, period_start, used) \
           SELECT $1, $2, per.s, $6 FROM per, lim WHERE $6 <= lim.hard \
           ON CONFLICT (tenant_id, meter, period_start) DO UPDATE SET used = u.used + EXCLUDED.used \
             WHERE u.used + EXCLUDED.used <= (SELECT hard FROM lim) \
           RETURNING u.used, u.soft_notified_at IS NOT NULL AS notified) \
         SELECT (SELECT used FROM ins), coalesce((SELECT notified FROM ins), false), \
                lim.plan, lim.hard, lim.soft, per.s, per.e, \
                coalesce((SELECT k.used FROM app.usage_counters k \
                          WHERE k.tenant_id = $1 AND k.meter = $2 AND k.period_start = per.s), 0) \
         FROM per, lim"
    );
    let Some(row) = tx
        .query_opt(
            &sql,
            &[
                (&tenant, Type::UUID),
                (&name, Type::TEXT),
                (&names, Type::TEXT_ARRAY),
                (&hard, Type::INT8_ARRAY),
                (&soft, Type::INT8_ARRAY),
                (&quantity, Type::INT8),
            ],
        )
        .await?
    else {
        return Ok(None);
    };
    let used: Option<i64> = row.get(0);
    let notified: bool = row.get(1);
    let plan: String = row.get(2);
    let (hard, soft): (Option<i64>, Option<i64>) = (row.get(3), row.get(4));
    let (period_start, period_end): (DateTime<Utc>, DateTime<Utc>) = (row.get(5), row.get(6));
    // No hard limit on this plan: nothing is counted here (the soft limit is checked against
    // the ledger by reconciliation), only the plan is learnt.
    if hard.is_none() {
        return Ok(Some(Admitted {
            meter,
            quantity: 0,
            period_start,
            used: 0,
            plan,
        }));
    }
    let Some(used) = used else {
        // The statement's snapshot predates the reservations it waited for: read the count now
        // (a refusal only).
        let now_used: i64 = tx
            .query_opt(
                "SELECT used FROM app.usage_counters \
                 WHERE tenant_id = $1 AND meter = $2 AND period_start = $3",
                &[
                    (&tenant, Type::UUID),
                    (&name, Type::TEXT),
                    (&period_start, Type::TIMESTAMPTZ),
                ],
            )
            .await?
            .map_or_else(|| row.get(7), |r| r.get(0));
        return Err(QuotaExceeded {
            plan,
            meter,
            limit: hard.unwrap_or_default(),
            used: now_used,
            requested: quantity,
            resets_at: period_end,
        }
        .into());
    };
    if let Some(soft) = soft.filter(|s| used >= *s && !notified) {
        notify_soft(tx, meter, period_start, &plan, soft, hard, used, request_id).await?;
    }
    Ok(Some(Admitted {
        meter,
        quantity,
        period_start,
        used,
        plan,
    }))
}

/// Records, once per period, that `meter` reached `plan`'s soft limit (`billing.soft_limit_reached`).
#[allow(clippy::too_many_arguments)]
async fn notify_soft(
    tx: &mut TenantTx,
    meter: Meter,
    period_start: DateTime<Utc>,
    plan: &str,
    soft: i64,
    hard: Option<i64>,
    used: i64,
    request_id: Option<&str>,
) -> Result<bool, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let name = meter.name();
    // A counter row is made if the meter had none (a plan without hard limits reserves nothing).
    let first = tx
        .execute(
            "INSERT INTO app.usage_counters AS u (tenant_id, meter, period_start, used, soft_notified_at) \
             VALUES ($1, $2, $3, 0, now()) \
             ON CONFLICT (tenant_id, meter, period_start) DO UPDATE SET soft_notified_at = now() \
               WHERE u.soft_notified_at IS NULL",
            &[
                (&tenant, Type::UUID),
                (&name, Type::TEXT),
                (&period_start, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    if first == 1 {
        let details = json!({
            "plan": plan, "soft_limit": soft, "hard_limit": hard, "used": used,
            "period_start": period_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        audit::record(
            tx,
            Action::SoftLimitReached,
            Some(name),
            details,
            request_id,
        )
        .await?;
    }
    Ok(first == 1)
}

/// For the transaction's tenant, every meter whose ledger total this billing period has
/// reached its plan's soft limit gets its notice (once per period): how plans without hard
/// limits, whose requests reserve nothing, are notified (by reconciliation). Returns how many
/// notices it recorded.
pub async fn notify_soft_limits(tx: &mut TenantTx, plans: &PlanConfig) -> Result<usize, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let sql = format!(
        "WITH per AS ({PERIOD_SQL}) \
         SELECT (SELECT plan FROM app.tenants WHERE tenant_id = $1), per.s, e.meter, \
                coalesce(sum(e.quantity), 0)::int8, \
                bool_or(c.soft_notified_at IS NOT NULL) \
         FROM per JOIN app.usage_events e \
           ON e.tenant_id = $1 AND e.window_start >= per.s AND e.window_start < per.e \
         LEFT JOIN app.usage_counters c \
           ON c.tenant_id = $1 AND c.meter = e.meter AND c.period_start = per.s \
         GROUP BY 1, 2, 3"
    );
    let rows = tx.query(&sql, &[(&tenant, Type::UUID)]).await?;
    let mut notified = 0;
    for r in &rows {
        let (plan, period_start): (Option<String>, DateTime<Utc>) = (r.get(0), r.get(1));
        let Some(meter) = Meter::from_name(r.get(2)) else {
            continue;
        };
        let (used, already): (i64, Option<bool>) = (r.get(3), r.get(4));
        let plan = plan.unwrap_or_default();
        let e = plans.get(&plan, meter);
        if let Some(soft) = e.soft_limit.filter(|s| used >= *s && already != Some(true))
            && notify_soft(
                tx,
                meter,
                period_start,
                &plan,
                soft,
                e.hard_limit,
                used,
                None,
            )
            .await?
        {
            notified += 1;
        }
    }
    Ok(notified)
}

/// Brings the transaction's tenant's counters for its current period up to the ledger's totals
/// (never down: reservations in flight are not in the ledger yet). Run when the plan changes
/// (counting starts under a hard limit with what the period already used) and by
/// reconciliation (a reservation that was never made, as in the seconds a process still knew
/// the old plan). Returns how many counters it raised.
pub async fn reseed(tx: &mut TenantTx, plans: &PlanConfig) -> Result<u64, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    // Only meters some plan limits: no other counter is ever read.
    let limited: Vec<&str> = METERS
        .iter()
        .filter(|d| plans.limits(d.meter))
        .map(|d| d.name)
        .collect();
    let sql = format!(
        "WITH per AS ({PERIOD_SQL}) \
         INSERT INTO app.usage_counters AS u (tenant_id, meter, period_start, used) \
         SELECT $1, e.meter, per.s, sum(e.quantity)::int8 \
         FROM per JOIN app.usage_events e \
           ON e.tenant_id = $1 AND e.window_start >= per.s AND e.window_start < per.e \
              AND e.meter = ANY($2) \
         GROUP BY e.meter, per.s \
         ON CONFLICT (tenant_id, meter, period_start) DO UPDATE SET used = EXCLUDED.used \
           WHERE u.used < EXCLUDED.used"
    );
    tx.execute(&sql, &[(&tenant, Type::UUID), (&limited, Type::TEXT_ARRAY)])
        .await
}

/// Gives a reservation back (its request failed after admission, so nothing was billed).
pub async fn release(tx: &mut TenantTx, admitted: &Admitted) -> Result<(), DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let name = admitted.meter.name();
    tx.execute(
        "UPDATE app.usage_counters SET used = greatest(used - $4, 0) \
         WHERE tenant_id = $1 AND meter = $2 AND period_start = $3",
        &[
            (&tenant, Type::UUID),
            (&name, Type::TEXT),
            (&admitted.period_start, Type::TIMESTAMPTZ),
            (&admitted.quantity, Type::INT8),
        ],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(json: &'static str) -> Result<PlanConfig, ConfigError> {
        PlanConfig::from_env(&Env::new(move |n| {
            (n == "PLAN_ENTITLEMENTS").then(|| json.to_owned())
        }))
    }

    #[test]
    fn defaults_cap_free_and_only_notify_paid_plans() {
        let p = PlanConfig::defaults();
        assert_eq!(p.get("free", Meter::Queries).hard_limit, Some(1_000));
        assert!(p.get("team", Meter::Queries).hard_limit.is_none());
        assert_eq!(p.get("team", Meter::Queries).soft_limit, Some(50_000));
        assert_eq!(p.get("enterprise", Meter::Queries), Entitlement::default());
        assert!(p.limits(Meter::Queries));
        assert!(!p.limits(Meter::Storage));
        for plan in PLANS {
            for (m, e) in METERS.iter().map(|d| (d.meter, p.get(plan, d.meter))) {
                assert!(
                    e.soft_limit <= e.hard_limit || e.hard_limit.is_none(),
                    "{plan} {m:?}"
                );
            }
        }
    }

    #[test]
    fn the_environment_overrides_what_it_names_and_nothing_else() {
        let p = env(r#"{"free": {"queries": {"included": 5, "soft_limit": 4, "hard_limit": 5}}}"#)
            .unwrap();
        let q = p.get("free", Meter::Queries);
        assert_eq!(
            (q.included, q.soft_limit, q.hard_limit),
            (5, Some(4), Some(5))
        );
        assert_eq!(
            p.get("free", Meter::Questions),
            PlanConfig::defaults().get("free", Meter::Questions)
        );
        for bad in [
            r#"{"gold": {}}"#,
            r#"{"free": {"bananas": {}}}"#,
            r#"{"free": {"queries": {"hard_limit": -1}}}"#,
            r#"{"free": {"queries": {"soft_limit": 6, "hard_limit": 5}}}"#,
            r#"{"free": {"storage": {"hard_limit": 5}}}"#,
            r#"{"free": {"queries": {"limit": 5}}}"#,
            "not json",
        ] {
            assert!(
                matches!(
                    env(bad),
                    Err(ConfigError::Invalid {
                        name: "PLAN_ENTITLEMENTS",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}

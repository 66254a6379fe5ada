//! `/admin/v1/...`: the support plane's routes, for staff only (the `admin` function).
//!
//! - `GET /admin/v1/tenants` (`support_read`): the tenant list, searchable, with what support
//!   looks at first: plan, status, members, this month's and this billing period's usage per
//!   meter, billing state, the
//!   last reconciliation's drift, pending and failed deliveries, the embedding backlog, and
//!   whether the tenant still waits for its billing customer.
//! - `GET /admin/v1/tenants/{tenant}` (`support_read`): one tenant, the same fields.
//! - `POST /admin/v1/tenants/{tenant}/suspend` `{reason}`, `.../resume` `{reason}`,
//!   `.../plan` `{plan, reason}` (`support_admin`).
//!
//! Reads go through the support role's pool ([`crate::db::Db::read_across_tenants`]): counts and
//! states of every tenant, never their data. Changes run in the tenant's own transaction as the
//! app role, with the staff member as actor, and are recorded in the tenant's audit log.

use std::sync::Arc;

use axum::extract::State;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::App;
use crate::TenantId;
use crate::audit::Action;
use crate::db::{Access, Db, TenantContext};
use crate::http::{
    ApiError, HandlerResult, Json, PathParams, QueryParams, StaffCaller, json_response,
};

const PLANS: [&str; 4] = ["free", "team", "business", "enterprise"];

/// One tenant as support sees it.
#[derive(Debug, Serialize)]
pub(super) struct TenantView {
    id: Uuid,
    name: String,
    slug: String,
    auth0_org_id: Option<String>,
    plan: String,
    pub(super) status: String,
    created_at: DateTime<Utc>,
    members: i64,
    /// This calendar month (UTC), per meter, as the ledger has it.
    usage_this_month: Value,
    billing: Value,
    last_reconciliation: Value,
    deliveries: Value,
    embedding_backlog: i64,
    /// Whether and how support may impersonate (the tenant owner's setting).
    support_access: String,
    /// When a closed tenant was closed, when its data goes, and when it went.
    lifecycle: Value,
    /// The billing period as the tenant's `/v1/usage` shows it (the subscription's current
    /// period, or the UTC calendar month) and the ledger's totals per meter in it, counted by
    /// window as billed.
    usage_this_period: Value,
}

/// The columns of [`TenantView`], for both routes. `$1`: a tenant id or NULL; `$2`: a search
/// string or NULL; `$3`: a status or NULL; `$4`: the page size; `$5`: a `created_at` cursor;
/// `$6`: the meters' names. Usage is summed per meter over a range of windows (one index range
/// scan each); a window never crosses a day, so windows in a month are the month's usage.
const TENANTS_SQL: &str = "\
    SELECT t.tenant_id, t.name, t.slug, t.auth0_org_id, t.plan, t.status, t.created_at, \
      (SELECT count(*) FROM app.members m WHERE m.tenant_id = t.tenant_id AND m.removed_at IS NULL), \
      (SELECT coalesce(jsonb_object_agg(mt.meter, x.q) FILTER (WHERE x.q IS NOT NULL), '{}') \
       FROM unnest($6::text[]) mt(meter) CROSS JOIN LATERAL ( \
         SELECT sum(u.quantity)::int8 AS q FROM app.usage_events u \
         WHERE u.tenant_id = t.tenant_id AND u.meter = mt.meter \
           AND u.window_start >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' \
           AND u.window_start < (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') \
                                AT TIME ZONE 'UTC') x), \
      jsonb_build_object('customer_id', c.stripe_customer_id, 'status', c.billing_status, \
        'last_invoice_status', c.last_invoice_status, \
        'customer_pending', t.customer_pending, 'customer_error', t.customer_error), \
      (SELECT jsonb_build_object('run_id', r.last_run_id, 'at', r.last_run_at, \
          'drift', r.drift, 'days_not_in_sync', jsonb_array_length(r.issues)) \
       FROM app.billing_reconciliation_days r WHERE r.tenant_id = t.tenant_id \
       ORDER BY r.day DESC LIMIT 1), \
      (SELECT jsonb_build_object( \
          'pending', count(*) FILTER (WHERE d.status = 'pending'), \
          'failed', count(*) FILTER (WHERE d.status = 'failed'), \
          'late_units', coalesce(sum(d.value) FILTER (WHERE d.late), 0)) \
       FROM app.usage_deliveries d WHERE d.tenant_id = t.tenant_id), \
      (SELECT count(*) FROM app.chunks ch \
       WHERE ch.tenant_id = t.tenant_id AND ch.embedding_model IS NULL), \
      t.support_access, \
      jsonb_build_object('closed_at', t.closed_at, 'delete_after', t.delete_after, \
        'data_deleted_at', t.data_deleted_at), \
      (SELECT jsonb_build_object('start', b.s, 'end', b.e, 'source', b.src, \
          'meters', (SELECT coalesce(jsonb_object_agg(mt.meter, x.q) \
                                      FILTER (WHERE x.q IS NOT NULL), '{}') \
             FROM unnest($6::text[]) mt(meter) CROSS JOIN LATERAL ( \
               SELECT sum(u.quantity)::int8 AS q FROM app.usage_events u \
               WHERE u.tenant_id = t.tenant_id AND u.meter = mt.meter \
                 AND u.window_start >= b.s AND u.window_start < b.e) x)) \
       FROM (SELECT coalesce(cp.period_start, m.s) AS s, coalesce(cp.period_end, m.e) AS e, \
                    CASE WHEN cp.period_start IS NULL THEN 'calendar_month' \
                         ELSE 'subscription' END AS src \
             FROM (SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS s, \
                          (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') \
                            AT TIME ZONE 'UTC' AS e) m \
             LEFT JOIN LATERAL (SELECT p.period_start, p.period_end FROM app.billing_periods p \
                                WHERE p.tenant_id = t.tenant_id AND p.period_start <= now() \
                                  AND now() < p.period_end \
                                ORDER BY p.period_start DESC, p.subscription_id DESC \
                                LIMIT 1) cp ON true) b) \
    FROM app.tenants t LEFT JOIN app.billing_customers c ON c.tenant_id = t.tenant_id \
    WHERE ($1::uuid IS NULL OR t.tenant_id = $1) \
      AND ($2::text IS NULL OR strpos(lower(t.name), lower($2)) > 0 \
           OR strpos(t.slug, lower($2)) > 0 OR t.auth0_org_id = $2) \
      AND ($3::text IS NULL OR t.status = $3) \
      AND ($5::timestamptz IS NULL OR t.created_at < $5) \
    ORDER BY t.created_at DESC, t.tenant_id \
    LIMIT $4";

async fn tenants(
    support: &Db,
    id: Option<Uuid>,
    q: Option<&str>,
    status: Option<&str>,
    limit: i64,
    before: Option<DateTime<Utc>>,
) -> Result<Vec<TenantView>, ApiError> {
    let meters: Vec<&str> = crate::usage::METERS.iter().map(|d| d.name).collect();
    let rows = support
        .read_across_tenants(
            TENANTS_SQL,
            &[
                (&id, Type::UUID),
                (&q, Type::TEXT),
                (&status, Type::TEXT),
                (&limit, Type::INT8),
                (&before, Type::TIMESTAMPTZ),
                (&meters, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TenantView {
            id: r.get(0),
            name: r.get(1),
            slug: r.get(2),
            auth0_org_id: r.get(3),
            plan: r.get(4),
            status: r.get(5),
            created_at: r.get(6),
            members: r.get(7),
            usage_this_month: r.get(8),
            billing: r.get(9),
            last_reconciliation: r.get::<_, Option<Value>>(10).unwrap_or(Value::Null),
            deliveries: r.get(11),
            embedding_backlog: r.get(12),
            support_access: r.get(13),
            lifecycle: r.get(14),
            usage_this_period: r.get(15),
        })
        .collect())
}

pub(super) fn support_db(app: &App) -> Result<&Db, ApiError> {
    app.support_db.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "support_plane_not_configured",
            "This deployment has no support database access configured.",
        )
        .expected()
    })
}

/// `GET /admin/v1/tenants`'s query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    q: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    /// The `created_at` of the last tenant of the previous page.
    before: Option<DateTime<Utc>>,
}

pub(super) async fn list(
    State(app): State<Arc<App>>,
    _staff: StaffCaller,
    QueryParams(q): QueryParams<ListQuery>,
) -> HandlerResult {
    let invalid = |d: &str| ApiError::bad_request("invalid_query_parameters", d);
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(invalid("limit is between 1 and 200."));
    }
    if let Some(s) = &q.status
        && !["active", "suspended", "closed"].contains(&s.as_str())
    {
        return Err(invalid("status is active, suspended or closed."));
    }
    let search = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if search.is_some_and(|s| s.chars().count() > 200 || s.contains('\0')) {
        return Err(invalid("q is at most 200 characters."));
    }
    let found = tenants(
        support_db(&app)?,
        None,
        search,
        q.status.as_deref(),
        limit + 1,
        q.before,
    )
    .await?;
    let (page, next) = super::split_page(found, limit, |t| t.created_at);
    json_response(
        StatusCode::OK,
        &json!({"tenants": page, "next_before": next}),
    )
}

/// `{tenant}`: a tenant id.
#[derive(Debug, Deserialize)]
pub(super) struct TenantPath {
    tenant: String,
}

impl TenantPath {
    pub(super) fn id(&self) -> Result<Uuid, ApiError> {
        Uuid::try_parse(&self.tenant).map_err(|_| tenant_not_found())
    }
}

pub(super) fn tenant_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "tenant_not_found", "No such tenant.")
}

pub(super) async fn one(app: &App, id: Uuid) -> Result<TenantView, ApiError> {
    tenants(support_db(app)?, Some(id), None, None, 1, None)
        .await?
        .pop()
        .ok_or_else(tenant_not_found)
}

pub(super) async fn get(
    State(app): State<Arc<App>>,
    _staff: StaffCaller,
    PathParams(path): PathParams<TenantPath>,
) -> HandlerResult {
    json_response(StatusCode::OK, &one(&app, path.id()?).await?)
}

/// Why support changes a tenant: required, recorded in the tenant's audit log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Reason {
    reason: String,
}

/// A plan change, and why.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlanChange {
    plan: String,
    reason: String,
}

pub(super) fn checked_reason(reason: &str) -> Result<String, ApiError> {
    let r = reason.trim();
    if r.chars().count() < 10 || r.chars().count() > 500 || r.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_reason",
            "Give a reason of 10 to 500 characters (it is recorded in the tenant's audit log).",
        ));
    }
    Ok(r.to_owned())
}

/// A tenant column support may change.
#[derive(Clone, Copy)]
enum Field {
    Status,
    Plan,
    /// The status, to `closed`: with when it closed and when its data goes.
    Closed {
        retention_days: u32,
    },
}

impl Field {
    fn column(self) -> &'static str {
        match self {
            Field::Status | Field::Closed { .. } => "status",
            Field::Plan => "plan",
        }
    }

    /// What else the change sets (a number from the configuration, never from the request).
    fn also(self) -> String {
        match self {
            Field::Status | Field::Plan => String::new(),
            Field::Closed { retention_days } => format!(
                ", closed_at = now(), delete_after = now() + make_interval(days => {retention_days})"
            ),
        }
    }
}

/// Changes one field of the tenant, in the tenant's own transaction with the staff member as
/// actor: the row locked, `decide` told the current value (it answers the new one, `None` for no
/// change, or a refusal), and the change recorded in the tenant's audit log with its reason.
async fn change(
    app: &App,
    staff: &StaffCaller,
    id: Uuid,
    field: Field,
    action: Action,
    reason: String,
    decide: impl FnOnce(&str) -> Result<Option<String>, ApiError>,
) -> HandlerResult {
    let ctx = TenantContext {
        tenant_id: TenantId::from(id),
        actor_id: staff.0.actor_id(),
    };
    let column = field.column();
    let mut tx = app.db.begin(&ctx, Access::ReadWrite).await?;
    if matches!(field, Field::Plan) {
        // Under the new plan's hard limits, counting starts from what the period used. First,
        // before the tenant's row and its audit head are locked: requests take the counters
        // before those, so this keeps one lock order.
        crate::billing::plans::reseed(&mut tx, &app.config.billing.plans).await?;
    }
    let current: Option<String> = tx
        .query_opt(
            &format!("SELECT {column} FROM app.tenants WHERE tenant_id = $1 FOR UPDATE"),
            &[(&id, Type::UUID)],
        )
        .await?
        .map(|r| r.get(0));
    let current = current.ok_or_else(tenant_not_found)?;
    if let Some(to) = decide(&current)? {
        let also = field.also();
        tx.execute(
            &format!(
                "UPDATE app.tenants SET {column} = $2{also}, updated_at = now() WHERE tenant_id = $1"
            ),
            &[(&id, Type::UUID), (&to, Type::TEXT)],
        )
        .await?;
        let request_id = crate::http::current_request_id();
        let mut details = json!({"from": current, "to": to, "reason": reason});
        if let Field::Closed { retention_days } = field {
            details["retention_days"] = json!(retention_days);
        }
        crate::audit::record(&mut tx, action, None, details, Some(&request_id)).await?;
        tracing::info!(tenant_id = %id, column, "tenant changed by support");
    }
    tx.commit().await?;
    app.auth.forget_tenant(ctx.tenant_id);
    app.plan_gate.forget(ctx.tenant_id);
    json_response(StatusCode::OK, &one(app, id).await?)
}

/// A status change from one of `from` to `to`; 409 when the tenant is in none of them.
fn transition(
    from: &'static [&'static str],
    to: &'static str,
) -> impl FnOnce(&str) -> Result<Option<String>, ApiError> {
    move |status| {
        if from.contains(&status) {
            Ok(Some(to.to_owned()))
        } else {
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_transition",
                format!(
                    "The tenant is {status}; this needs it {}.",
                    from.join(" or ")
                ),
            ))
        }
    }
}

/// A status change from one of `from` to `to`, with its required reason.
async fn to_status(
    app: &App,
    staff: &StaffCaller,
    path: &TenantPath,
    body: &Reason,
    (field, action): (Field, Action),
    from: &'static [&'static str],
    to: &'static str,
) -> HandlerResult {
    let reason = checked_reason(&body.reason)?;
    let id = path.id()?;
    change(app, staff, id, field, action, reason, transition(from, to)).await
}

pub(super) async fn suspend(
    State(app): State<Arc<App>>,
    staff: StaffCaller,
    PathParams(path): PathParams<TenantPath>,
    Json(body): Json<Reason>,
) -> HandlerResult {
    let what = (Field::Status, Action::TenantSuspended);
    to_status(&app, &staff, &path, &body, what, &["active"], "suspended").await
}

pub(super) async fn resume(
    State(app): State<Arc<App>>,
    staff: StaffCaller,
    PathParams(path): PathParams<TenantPath>,
    Json(body): Json<Reason>,
) -> HandlerResult {
    let what = (Field::Status, Action::TenantResumed);
    to_status(&app, &staff, &path, &body, what, &["suspended"], "active").await
}

/// Closes the tenant: its people may then only export their data, which is deleted after the
/// configured retention period (`CLOSED_TENANT_RETENTION_DAYS`) by the scheduled job. Not undone
/// by an API: reopening a closed tenant is a decision for an operator at the database.
pub(super) async fn close(
    State(app): State<Arc<App>>,
    staff: StaffCaller,
    PathParams(path): PathParams<TenantPath>,
    Json(body): Json<Reason>,
) -> HandlerResult {
    let retention_days = app.config.tenants.retention_days;
    let what = (Field::Closed { retention_days }, Action::TenantClosed);
    let from = &["active", "suspended"];
    to_status(&app, &staff, &path, &body, what, from, "closed").await
}

pub(super) async fn set_plan(
    State(app): State<Arc<App>>,
    staff: StaffCaller,
    PathParams(path): PathParams<TenantPath>,
    Json(body): Json<PlanChange>,
) -> HandlerResult {
    let reason = checked_reason(&body.reason)?;
    if !PLANS.contains(&body.plan.as_str()) {
        return Err(ApiError::bad_request(
            "invalid_plan",
            "plan is free, team, business or enterprise.",
        ));
    }
    let id = path.id()?;
    let plan = body.plan;
    change(
        &app,
        &staff,
        id,
        Field::Plan,
        Action::PlanChanged,
        reason,
        |from| Ok((from != plan).then_some(plan)),
    )
    .await
}

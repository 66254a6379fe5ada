//! Route handlers and the routing table.
//!
//! [`ROUTES`] is the single source of truth: each Lambda function serves its rows, the local runner
//! serves them all, and a test checks the SAM template against it.

mod admin;
mod admin_ops;
mod api_keys;
mod ask;
mod audit;
mod datasets;
mod export;
mod impersonation;
mod me;
mod members;
mod query;
mod records;
mod usage;
mod webhooks;

use http::Method;

use crate::App;
use crate::auth::Permission as P;
use crate::auth::StaffPermission as S;
use crate::db::{Access, TenantTx, TxSettings};
use crate::http::{ApiError, Caller, Endpoint, Needs, Route};

/// A handler as the table holds it: served by axum for the route's method.
macro_rules! endpoint {
    ($handler:path) => {
        |method| ::axum::routing::on(method, $handler)
    };
}
use crate::billing::plans;
use crate::usage::queue::emit;
use crate::usage::{Meter, UsageEvent};

/// Every route of the HTTP API.
pub static ROUTES: &[Route] = &[
    signed_in_route(Method::GET, "/v1/me", "me", endpoint!(me::get)),
    route(
        Method::GET,
        "/v1/members",
        "me",
        P::ManageMembers,
        endpoint!(members::list),
    ),
    route(
        Method::POST,
        "/v1/datasets",
        "datasets",
        P::ManageDatasets,
        endpoint!(datasets::create),
    ),
    route(
        Method::GET,
        "/v1/datasets",
        "datasets",
        P::ReadData,
        endpoint!(datasets::list),
    ),
    route(
        Method::GET,
        "/v1/datasets/{dataset}",
        "datasets",
        P::ReadData,
        endpoint!(datasets::get),
    ),
    route(
        Method::DELETE,
        "/v1/datasets/{dataset}",
        "datasets",
        P::ManageDatasets,
        endpoint!(datasets::delete),
    ),
    route(
        Method::POST,
        "/v1/datasets/{dataset}/records",
        "records",
        P::WriteData,
        endpoint!(records::ingest),
    ),
    route(
        Method::POST,
        "/v1/datasets/{dataset}/imports",
        "records",
        P::WriteData,
        endpoint!(records::import),
    ),
    route(
        Method::GET,
        "/v1/datasets/{dataset}/records",
        "records",
        P::ReadData,
        endpoint!(records::list),
    ),
    route(
        Method::GET,
        "/v1/datasets/{dataset}/records/{key}",
        "records",
        P::ReadData,
        endpoint!(records::get),
    ),
    route(
        Method::GET,
        "/v1/datasets/{dataset}/records/{key}/versions",
        "records",
        P::ReadData,
        endpoint!(records::versions),
    ),
    route(
        Method::DELETE,
        "/v1/datasets/{dataset}/records/{key}",
        "records",
        P::WriteData,
        endpoint!(records::delete),
    ),
    route(
        Method::POST,
        "/v1/query",
        "query",
        P::Query,
        endpoint!(query::run),
    ),
    route(
        Method::POST,
        "/v1/ask",
        "ask",
        P::Query,
        endpoint!(ask::ask),
    ),
    route(
        Method::GET,
        "/v1/export",
        "datasets",
        P::ExportData,
        endpoint!(export::export),
    ),
    route(
        Method::GET,
        "/v1/usage",
        "usage",
        P::ReadBilling,
        endpoint!(usage::get),
    ),
    public_route(
        Method::POST,
        "/v1/webhooks/stripe",
        "stripe-webhook",
        endpoint!(webhooks::stripe),
    ),
    public_route(
        Method::POST,
        "/v1/webhooks/auth0",
        "auth0-webhook",
        endpoint!(webhooks::auth0),
    ),
    route(
        Method::POST,
        "/v1/api-keys",
        "api-keys",
        P::ManageApiKeys,
        endpoint!(api_keys::create),
    ),
    route(
        Method::GET,
        "/v1/api-keys",
        "api-keys",
        P::ManageApiKeys,
        endpoint!(api_keys::list),
    ),
    route(
        Method::DELETE,
        "/v1/api-keys/{key_id}",
        "api-keys",
        P::ManageApiKeys,
        endpoint!(api_keys::revoke),
    ),
    staff_route(
        Method::POST,
        "/admin/v1/tenants",
        S::SupportAdmin,
        endpoint!(admin_ops::create),
    ),
    staff_route(
        Method::GET,
        "/admin/v1/tenants",
        S::SupportRead,
        endpoint!(admin::list),
    ),
    staff_route(
        Method::POST,
        "/admin/v1/tenants/{tenant}/reconcile",
        S::SupportAdmin,
        endpoint!(admin_ops::reconcile),
    ),
    staff_route(
        Method::GET,
        "/admin/v1/deliveries",
        S::SupportRead,
        endpoint!(admin_ops::deliveries),
    ),
    staff_route(
        Method::POST,
        "/admin/v1/tenants/{tenant}/deliveries/retry",
        S::SupportAdmin,
        endpoint!(admin_ops::retry_deliveries),
    ),
    staff_route(
        Method::GET,
        "/admin/v1/tenants/{tenant}",
        S::SupportRead,
        endpoint!(admin::get),
    ),
    staff_route(
        Method::POST,
        "/admin/v1/tenants/{tenant}/suspend",
        S::SupportAdmin,
        endpoint!(admin::suspend),
    ),
    staff_route(
        Method::POST,
        "/admin/v1/tenants/{tenant}/resume",
        S::SupportAdmin,
        endpoint!(admin::resume),
    ),
    staff_route(
        Method::POST,
        "/admin/v1/tenants/{tenant}/close",
        S::SupportAdmin,
        endpoint!(admin::close),
    ),
    staff_route(
        Method::POST,
        "/admin/v1/tenants/{tenant}/plan",
        S::SupportAdmin,
        endpoint!(admin::set_plan),
    ),
    staff_route(
        Method::POST,
        "/admin/v1/impersonations",
        S::SupportRead,
        endpoint!(impersonation::start),
    ),
    staff_route(
        Method::GET,
        "/admin/v1/impersonations",
        S::SupportRead,
        endpoint!(impersonation::staff_list),
    ),
    staff_route(
        Method::POST,
        "/admin/v1/impersonations/{session}/approve",
        S::SupportAdmin,
        endpoint!(impersonation::staff_approve),
    ),
    staff_route(
        Method::POST,
        "/admin/v1/impersonations/{session}/end",
        S::SupportRead,
        endpoint!(impersonation::staff_end),
    ),
    route(
        Method::GET,
        "/v1/impersonations",
        "audit",
        P::OverseeSupport,
        endpoint!(impersonation::tenant_list),
    ),
    route(
        Method::POST,
        "/v1/impersonations/{session}/approve",
        "audit",
        P::OverseeSupport,
        endpoint!(impersonation::tenant_approve),
    ),
    route(
        Method::POST,
        "/v1/impersonations/{session}/end",
        "audit",
        P::OverseeSupport,
        endpoint!(impersonation::tenant_end),
    ),
    route(
        Method::GET,
        "/v1/settings/support-access",
        "audit",
        P::OverseeSupport,
        endpoint!(impersonation::get_support_access),
    ),
    route(
        Method::PUT,
        "/v1/settings/support-access",
        "audit",
        P::ManageSupportAccess,
        endpoint!(impersonation::set_support_access),
    ),
    route(
        Method::GET,
        "/v1/audit",
        "audit",
        P::ReadAudit,
        endpoint!(audit::list),
    ),
    route(
        Method::GET,
        "/v1/audit/verify",
        "audit",
        P::ReadAudit,
        endpoint!(audit::verify),
    ),
];

/// A route for callers holding `permission`.
const fn route(
    method: Method,
    path: &'static str,
    function: &'static str,
    permission: P,
    endpoint: Endpoint,
) -> Route {
    row(
        method,
        path,
        function,
        Needs::Permission(permission),
        endpoint,
    )
}

/// An admin route (served by the `admin` function) for staff holding `permission`.
const fn staff_route(
    method: Method,
    path: &'static str,
    permission: S,
    endpoint: Endpoint,
) -> Route {
    row(method, path, "admin", Needs::Staff(permission), endpoint)
}

/// A route for any authenticated caller (what it shows depends on nothing it could misuse).
const fn signed_in_route(
    method: Method,
    path: &'static str,
    function: &'static str,
    endpoint: Endpoint,
) -> Route {
    row(method, path, function, Needs::Principal, endpoint)
}

/// A route without a user token: the handler authenticates the sender itself (webhooks).
const fn public_route(
    method: Method,
    path: &'static str,
    function: &'static str,
    endpoint: Endpoint,
) -> Route {
    row(method, path, function, Needs::Sender, endpoint)
}

const fn row(
    method: Method,
    path: &'static str,
    function: &'static str,
    needs: Needs,
    endpoint: Endpoint,
) -> Route {
    Route {
        method,
        path,
        function,
        needs,
        endpoint,
    }
}

/// The routes one function serves.
pub fn routes_for(function: &str) -> Vec<&'static Route> {
    ROUTES.iter().filter(|r| r.function == function).collect()
}

/// Every route (the local runner serves them all).
pub fn all_routes() -> Vec<&'static Route> {
    ROUTES.iter().collect()
}

/// Makes the request's usage durable before the request succeeds: the usage queue, or else the
/// ledger directly. If neither takes it, the request fails with 503 (nothing is served unbilled).
async fn meter(
    app: &App,
    caller: &Caller,
    meter: Meter,
    quantity: i64,
    source: &str,
) -> Result<(), ApiError> {
    let principal = caller.principal();
    if !billable(principal) {
        return Ok(());
    }
    let event = UsageEvent::now(principal.tenant_id, meter, quantity, source);
    emit(
        app.usage_queue.as_ref(),
        &app.db,
        app.config.billing.meter.window_secs,
        &principal.tenant_context(),
        &[event],
    )
    .await
    .map_err(|e| {
        ApiError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "usage_unavailable",
            "Usage could not be recorded, so the request was not completed; retry shortly.",
        )
        .with_source(e)
    })
}

/// Reserves `quantity` of `meter` against the caller's plan before billable work (its own short
/// transaction): 429 `quota_exceeded` past the plan's hard limit. Nothing to reserve for
/// support's requests under impersonation, or for a meter no plan limits.
async fn admit(
    app: &App,
    caller: &Caller,
    meter: Meter,
    quantity: i64,
) -> Result<Option<plans::Admitted>, ApiError> {
    if !must_reserve(app, caller, meter) {
        return Ok(None);
    }
    let mut tx = begin(app, caller, Access::ReadWrite).await?;
    let admitted = reserve(app, caller, &mut tx, meter, quantity).await?;
    tx.commit().await?;
    // Nothing reserved (no hard limit): nothing to give back either.
    Ok(admitted.filter(|a| a.quantity > 0))
}

/// A page of a list read with `limit + 1` rows (one more than asked, so that whether there is a
/// next page costs no second query): cut to `limit`, with the cursor of the next page (`cursor`
/// of the last item kept) when there is one.
fn split_page<T, C>(
    mut items: Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> C,
) -> (Vec<T>, Option<C>) {
    let more = items.len() as i64 > limit;
    items.truncate(usize::try_from(limit).unwrap_or(0));
    let next = if more { items.last().map(cursor) } else { None };
    (items, next)
}

/// A list route's `limit` (the page size): `default` when absent, else within 1 and `max`.
fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(
            "invalid_query_parameters",
            format!("limit is between 1 and {max}."),
        ))
    }
}

/// Whether the caller's request on `meter` reserves against its plan: billable, on a meter
/// some plan limits, and not a tenant recently seen on a plan without a hard limit there.
fn must_reserve(app: &App, caller: &Caller, meter: Meter) -> bool {
    let plans = &app.config.billing.plans;
    billable(caller.principal())
        && plans.limits(meter)
        && app
            .plan_gate
            .must_reserve(plans, caller.principal().tenant_id, meter)
}

/// Reserves `quantity` of `meter` in `tx` (see [`plans::admit`]), remembering the plan it read;
/// 429 `quota_exceeded` past the hard limit.
async fn reserve(
    app: &App,
    caller: &Caller,
    tx: &mut crate::db::TenantTx,
    meter: Meter,
    quantity: i64,
) -> Result<Option<plans::Admitted>, ApiError> {
    let (plans, gate) = (&app.config.billing.plans, &app.plan_gate);
    let tenant = caller.principal().tenant_id;
    let request_id = crate::http::current_request_id();
    match plans::admit(tx, plans, meter, quantity, Some(&request_id)).await {
        Ok(admitted) => {
            if let Some(a) = &admitted {
                gate.saw(tenant, &a.plan);
            }
            Ok(admitted)
        }
        Err(plans::AdmitError::Quota(q)) => {
            gate.saw(tenant, &q.plan);
            Err(quota_exceeded(&q))
        }
        Err(plans::AdmitError::Db(e)) => Err(e.into()),
    }
}

/// 429 `quota_exceeded`: the meter, the limit, what is used and when the count starts again
/// (also as `Retry-After`).
fn quota_exceeded(q: &plans::QuotaExceeded) -> ApiError {
    let resets = q
        .resets_at
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // Only worth retrying if the request fits the limit at all (a batch larger than the limit
    // never will: split it).
    let retry_after =
        (q.requested <= q.limit).then(|| (q.resets_at - chrono::Utc::now()).num_seconds().max(1));
    ApiError::new(
        http::StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        format!(
            "The {} plan allows {} {} per billing period; {} used, this request needs {}. \
             The count starts again at {resets}.",
            q.plan,
            q.limit,
            q.meter.name(),
            q.used,
            q.requested
        ),
    )
    .with_extra(serde_json::json!({
        "meter": q.meter.name(),
        "plan": q.plan,
        "limit": q.limit,
        "used": q.used,
        "requested": q.requested,
        "resets_at": resets,
        "retry_after": retry_after,
    }))
}

/// Runs billable `work` (which records its usage on success) within the caller's plan:
/// admitted first, and the reservation given back if the work fails (nothing was billed).
async fn within_plan<T>(
    app: &App,
    caller: &Caller,
    meter: Meter,
    quantity: i64,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let admitted = admit(app, caller, meter, quantity).await?;
    let result = work.await;
    if let (Err(_), Some(a)) = (&result, &admitted) {
        let give_back = async {
            let mut tx = begin(app, caller, Access::ReadWrite).await?;
            plans::release(&mut tx, a).await?;
            tx.commit().await?;
            Ok::<_, ApiError>(())
        };
        if let Err(e) = give_back.await {
            // The count stays one request high until the period ends: the tenant is refused
            // that much early, never billed for it.
            tracing::warn!(
                code = e.code,
                meter = a.meter.name(),
                "reservation not given back"
            );
        }
    }
    result
}

/// Whether what this caller does is billed to the tenant: not support's requests under an
/// impersonation session (ours, not the tenant's), whatever they do.
fn billable(principal: &crate::auth::Principal) -> bool {
    principal.impersonation().is_none()
}

/// Records what the request did in the tenant's audit log, in its transaction `tx` (so the entry
/// commits with the action, or neither does).
async fn audit(
    tx: &mut TenantTx,
    action: crate::audit::Action,
    target: Option<&str>,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let request_id = crate::http::current_request_id();
    crate::audit::record(tx, action, target, details, Some(&request_id)).await?;
    Ok(())
}

/// Begins the caller's transaction: the only way a handler reaches tenant data.
async fn begin(app: &App, caller: &Caller, access: Access) -> Result<TenantTx, ApiError> {
    begin_with(app, caller, access, TxSettings::default()).await
}

/// As [`begin`], with per-transaction settings.
async fn begin_with(
    app: &App,
    caller: &Caller,
    access: Access,
    settings: TxSettings,
) -> Result<TenantTx, ApiError> {
    Ok(app.begin_for(caller.principal(), access, settings).await?)
}

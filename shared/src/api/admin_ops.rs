//! The support plane's operations beyond a tenant's status (the `admin` function, staff only):
//!
//! - `POST /admin/v1/tenants` `{name, auth0_org_id, slug?}` (`support_admin`): creates the tenant
//!   of an Auth0 organization, idempotently by the organization (as its `organization.created`
//!   event does), and its billing customer; a customer that could not be made is retried by the
//!   scheduled reconcile, and the tenant shows `customer_pending` meanwhile.
//! - `POST /admin/v1/tenants/{tenant}/reconcile` `{mode?}` (`support_admin`): the scheduled
//!   reconcile (`reconcile`, the default) or a flush of closed windows (`flush`), now, for one
//!   tenant.
//! - `GET /admin/v1/deliveries` (`support_read`): usage deliveries by status (`failed` by
//!   default), across tenants, newest first, with the provider's reason.
//! - `POST /admin/v1/tenants/{tenant}/deliveries/retry` `{reason}` (`support_admin`): puts the
//!   tenant's failed deliveries back to pending (same identifiers, so the provider counts each
//!   once) and flushes them.

use std::sync::Arc;

use axum::extract::State;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::admin::{TenantPath, checked_reason, one, support_db};
use crate::App;
use crate::TenantId;
use crate::audit::Action;
use crate::billing::customers::{EnsureError, ensure_customer};
use crate::db::{Access, TenantContext};
use crate::http::{
    ApiError, HandlerResult, Json, PathParams, QueryParams, StaffCaller, json_response,
};
use crate::tenants::{CreateContext, create_for_org};

/// `POST /admin/v1/tenants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTenant {
    name: String,
    auth0_org_id: String,
    slug: Option<String>,
}

pub(super) async fn create(
    State(app): State<Arc<App>>,
    StaffCaller(staff): StaffCaller,
    Json(body): Json<NewTenant>,
) -> HandlerResult {
    let org = body.auth0_org_id.trim();
    if org.is_empty() || org.len() > 128 || org.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_organization",
            "auth0_org_id is the Auth0 organization's id (1 to 128 characters).",
        ));
    }
    if app.config.auth.support_org_id.as_deref() == Some(org) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "staff_tenant",
            "The staff organization is not a tenant.",
        ));
    }
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::bad_request(
            "invalid_name",
            "name is 1 to 200 characters.",
        ));
    }
    let actor = staff.actor_id();
    let request_id = crate::http::current_request_id();
    let ctx = CreateContext {
        actor_id: &actor,
        request_id: Some(&request_id),
    };
    let hint = body.slug.as_deref().unwrap_or(name);
    let tenant = create_for_org(&app.db, org, name, hint, ctx).await?;
    match ensure_customer(
        &app.db,
        app.billing.as_ref(),
        tenant.tenant_id,
        &actor,
        Some(&request_id),
    )
    .await
    {
        Ok(_) => {}
        Err(EnsureError::Db(e)) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(tenant_id = %tenant.tenant_id, error = %e,
                "billing customer not created; the reconcile retries it");
        }
    }
    let status = if tenant.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_response(status, &one(&app, tenant.tenant_id.as_uuid()).await?)
}

/// `POST /admin/v1/tenants/{tenant}/reconcile`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Run {
    #[serde(default)]
    mode: crate::billing::reconcile::Mode,
}

pub(super) async fn reconcile(
    State(app): State<Arc<App>>,
    _staff: StaffCaller,
    PathParams(path): PathParams<TenantPath>,
    Json(body): Json<Run>,
) -> HandlerResult {
    use crate::billing::reconcile::{Mode, reconcile_tenant};
    let id = path.id()?;
    let view = one(&app, id).await?;
    let tenant = TenantId::from(id);
    let cfg = &app.config.billing.meter;
    let sink = app.billing.as_ref();
    let run_id = Uuid::now_v7();
    let report = match body.mode {
        Mode::Reconcile => {
            let plans = &app.config.billing.plans;
            let active = view.status == "active";
            reconcile_tenant(&app.db, sink, cfg, plans, tenant, active, run_id).await?
        }
        Mode::Flush => crate::billing::reconcile::TenantReport {
            flush: crate::billing::meter::outbox::flush_tenant(&app.db, sink, cfg, tenant).await?,
            ..Default::default()
        },
    };
    tracing::info!(tenant_id = %id, mode = ?body.mode, "billing run for one tenant, by support");
    json_response(
        StatusCode::OK,
        &json!({"tenant_id": id, "mode": body.mode, "run_id": (body.mode == Mode::Reconcile).then_some(run_id), "report": report}),
    )
}

/// `GET /admin/v1/deliveries`'s query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveriesQuery {
    status: Option<String>,
    tenant: Option<Uuid>,
    limit: Option<i64>,
    /// The `created_at` of the last delivery of the previous page.
    before: Option<DateTime<Utc>>,
}

/// One delivery as support sees it.
#[derive(Debug, Serialize)]
struct Delivery {
    tenant_id: Uuid,
    identifier: String,
    meter: String,
    window_start: DateTime<Utc>,
    seq: i32,
    value: i64,
    kind: String,
    status: String,
    reason: Option<String>,
    attempts: i32,
    created_at: DateTime<Utc>,
    settled_at: Option<DateTime<Utc>>,
    /// The time Stripe bills it at: the window's start, or, when late, the start of the open
    /// period after the finalized one its window lies in.
    event_time: DateTime<Utc>,
    /// Usage for a period whose invoice was already finalized, billed in the next.
    late: bool,
    /// Stripe's meter error report named it: answered 200, then not counted (why).
    rejected: Option<String>,
}

pub(super) async fn deliveries(
    State(app): State<Arc<App>>,
    _staff: StaffCaller,
    QueryParams(q): QueryParams<DeliveriesQuery>,
) -> HandlerResult {
    let invalid = |d: &str| ApiError::bad_request("invalid_query_parameters", d);
    let status = q.status.unwrap_or_else(|| "failed".into());
    if !["pending", "delivered", "failed", "expired", "rejected"].contains(&status.as_str()) {
        return Err(invalid(
            "status is pending, delivered, failed, expired or rejected.",
        ));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(invalid("limit is between 1 and 200."));
    }
    let rows = support_db(&app)?
        .read_across_tenants(
            "SELECT tenant_id, identifier, meter, window_start, seq, value, kind, status, reason, \
                    attempts, created_at, settled_at, event_time, late, rejected \
             FROM app.usage_deliveries \
             WHERE (CASE WHEN $1 = 'rejected' THEN rejected IS NOT NULL ELSE status = $1 END) \
               AND ($2::uuid IS NULL OR tenant_id = $2) \
               AND ($3::timestamptz IS NULL OR created_at < $3) \
             ORDER BY created_at DESC, identifier LIMIT $4",
            &[
                (&status, Type::TEXT),
                (&q.tenant, Type::UUID),
                (&q.before, Type::TIMESTAMPTZ),
                (&(limit + 1), Type::INT8),
            ],
        )
        .await?;
    let found: Vec<Delivery> = rows
        .iter()
        .map(|r| Delivery {
            tenant_id: r.get(0),
            identifier: r.get(1),
            meter: r.get(2),
            window_start: r.get(3),
            seq: r.get(4),
            value: r.get(5),
            kind: r.get(6),
            status: r.get(7),
            reason: r.get(8),
            attempts: r.get(9),
            created_at: r.get(10),
            settled_at: r.get(11),
            event_time: r.get(12),
            late: r.get(13),
            rejected: r.get(14),
        })
        .collect();
    let (found, next) = super::split_page(found, limit, |d| d.created_at);
    json_response(
        StatusCode::OK,
        &json!({"deliveries": found, "next_before": next}),
    )
}

/// `POST /admin/v1/tenants/{tenant}/deliveries/retry`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Retry {
    reason: String,
}

pub(super) async fn retry_deliveries(
    State(app): State<Arc<App>>,
    StaffCaller(staff): StaffCaller,
    PathParams(path): PathParams<TenantPath>,
    Json(body): Json<Retry>,
) -> HandlerResult {
    let reason = checked_reason(&body.reason)?;
    let id = path.id()?;
    one(&app, id).await?;
    let tenant = TenantId::from(id);
    let ctx = TenantContext {
        tenant_id: tenant,
        actor_id: staff.actor_id(),
    };
    let mut tx = app.db.begin(&ctx, Access::ReadWrite).await?;
    let retried = tx
        .execute(
            // A refused delivery was not taken by Stripe, and one the dedupe check could not
            // settle is support's call: either way it is sent as new (re-stamped into an open
            // period if its own is finalized), without the check.
            "UPDATE app.usage_deliveries SET status = 'pending', reason = NULL, attempts = 0, \
                    lease_until = NULL, claim_id = NULL, settled_at = NULL, first_sent_at = NULL \
             WHERE tenant_id = $1 AND status = 'failed'",
            &[(&id, Type::UUID)],
        )
        .await?;
    if retried > 0 {
        let request_id = crate::http::current_request_id();
        crate::audit::record(
            &mut tx,
            Action::DeliveriesRetried,
            None,
            json!({"deliveries": retried, "reason": reason}),
            Some(&request_id),
        )
        .await?;
    }
    tx.commit().await?;
    let flush = crate::billing::meter::outbox::flush_tenant(
        &app.db,
        app.billing.as_ref(),
        &app.config.billing.meter,
        tenant,
    )
    .await?;
    json_response(
        StatusCode::OK,
        &json!({"tenant_id": id, "retried": retried, "flush": flush}),
    )
}

//! Impersonation sessions: support staff acting in one tenant, for at most an hour, with a
//! reason, in the tenant's sight (`migrations/0012_impersonation.sql`).
//!
//! Staff side (the `admin` function):
//! - `POST /admin/v1/impersonations` `{tenant, reason, ticket?, minutes, mode?, allow_export?}`
//!   (`support_read`): starts a session. Read-only unless asked; a read-write or exporting
//!   session waits for a second `support_admin`, and in a tenant whose support access is `ask`
//!   every session waits for a tenant admin. It cannot be extended.
//! - `GET /admin/v1/impersonations` (`support_read`): sessions across tenants, newest first.
//! - `POST /admin/v1/impersonations/{session}/approve` (`support_admin`, not the requester).
//! - `POST /admin/v1/impersonations/{session}/end` (the requester, or a `support_admin`).
//!
//! Tenant side (the `audit` function):
//! - `GET /v1/impersonations` (`oversee_support`): who came in, when, why, under which ticket, in
//!   which mode, and how many requests they made (each is in the audit log, filtered by
//!   `impersonation`).
//! - `POST /v1/impersonations/{session}/approve` and `.../end` (`oversee_support`).
//! - `GET /v1/settings/support-access` (`oversee_support`) and `PUT` (`manage_support_access`,
//!   owners): `off`, `read_only` or `ask`.
//!
//! Using a session is authentication's part ([`crate::auth::Authenticator::authenticate`]) and
//! the edge's (every request recorded, refusals included; the response header).

use std::sync::Arc;

use axum::extract::State;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::admin::{checked_reason, tenant_not_found};
use crate::App;
use crate::TenantId;
use crate::audit::Action;
use crate::auth::{ImpersonationMode, StaffPermission};
use crate::db::{Access, TenantContext, TenantTx};
use crate::http::{
    ApiError, Caller, HandlerResult, Json, PathParams, QueryParams, StaffCaller, json_response,
};

/// The longest session, in minutes.
const MAX_MINUTES: u32 = 60;

/// A session as both sides see it.
#[derive(Debug, Serialize)]
struct SessionView {
    id: Uuid,
    tenant_id: Uuid,
    staff_id: String,
    reason: String,
    ticket: Option<String>,
    mode: String,
    allow_export: bool,
    /// `awaiting_approval`, `active`, `ended` or `expired`.
    state: String,
    needs_staff_approval: bool,
    needs_tenant_approval: bool,
    staff_approved_by: Option<String>,
    tenant_approved_by: Option<String>,
    started_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    ended_by: Option<String>,
    /// Requests made under the session (the tenant's view; its audit log has each one).
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<i64>,
}

/// The columns of [`SessionView`], from `app.impersonation_sessions s`.
const SESSION_COLUMNS: &str = "s.session_id, s.tenant_id, s.staff_id, s.reason, s.ticket, s.mode, \
    s.allow_export, \
    CASE WHEN s.ended_at IS NOT NULL THEN 'ended' WHEN s.expires_at <= now() THEN 'expired' \
         WHEN app.impersonation_usable(s) THEN 'active' ELSE 'awaiting_approval' END, \
    s.needs_staff_approval, s.needs_tenant_approval, s.staff_approved_by, s.tenant_approved_by, \
    s.started_at, s.expires_at, s.ended_at, s.ended_by";

/// The request count of a session, for the tenant's view (`$tenant` is bound by RLS anyway).
const REQUESTS_COLUMN: &str = "(SELECT count(*) FROM app.audit_events e \
    WHERE e.tenant_id = s.tenant_id AND e.impersonation_id = s.session_id \
      AND e.action = 'impersonation.request')";

fn view(r: &tokio_postgres::Row, with_requests: bool) -> SessionView {
    SessionView {
        id: r.get(0),
        tenant_id: r.get(1),
        staff_id: r.get(2),
        reason: r.get(3),
        ticket: r.get(4),
        mode: r.get(5),
        allow_export: r.get(6),
        state: r.get(7),
        needs_staff_approval: r.get(8),
        needs_tenant_approval: r.get(9),
        staff_approved_by: r.get(10),
        tenant_approved_by: r.get(11),
        started_at: r.get(12),
        expires_at: r.get(13),
        ended_at: r.get(14),
        ended_by: r.get(15),
        requests: with_requests.then(|| r.get(16)),
    }
}

fn session_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "impersonation_not_found",
        "No such impersonation session.",
    )
}

/// `POST /admin/v1/impersonations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Start {
    tenant: String,
    reason: String,
    ticket: Option<String>,
    minutes: u32,
    #[serde(default = "read_only")]
    mode: ImpersonationMode,
    #[serde(default)]
    allow_export: bool,
}

fn read_only() -> ImpersonationMode {
    ImpersonationMode::ReadOnly
}

fn checked_ticket(ticket: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(t) = ticket.map(str::trim) else {
        return Ok(None);
    };
    if t.is_empty() || t.chars().count() > 100 || t.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_ticket",
            "ticket is 1 to 100 characters.",
        ));
    }
    Ok(Some(t.to_owned()))
}

pub(super) async fn start(
    State(app): State<Arc<App>>,
    StaffCaller(staff): StaffCaller,
    Json(body): Json<Start>,
) -> HandlerResult {
    let reason = checked_reason(&body.reason)?;
    if !(1..=MAX_MINUTES).contains(&body.minutes) {
        return Err(ApiError::bad_request(
            "invalid_minutes",
            "minutes is 1 to 60; a session cannot be extended, start a new one.",
        ));
    }
    let ticket = checked_ticket(body.ticket.as_deref())?;
    let tenant = Uuid::try_parse(&body.tenant).map_err(|_| tenant_not_found())?;
    let ctx = TenantContext {
        tenant_id: TenantId::from(tenant),
        actor_id: staff.actor_id(),
    };
    let mut tx = app.db.begin(&ctx, Access::ReadWrite).await?;
    let row = tx
        .query_opt(
            "SELECT status, support_access, auth0_org_id FROM app.tenants \
             WHERE tenant_id = $1 FOR SHARE",
            &[(&tenant, Type::UUID)],
        )
        .await?
        .ok_or_else(tenant_not_found)?;
    let (status, access, org): (String, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    if org.is_some() && org == app.config.auth.support_org_id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "staff_tenant",
            "Staff do not impersonate the staff organization.",
        ));
    }
    if status == "closed" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "tenant_closed",
            "The tenant is closed.",
        ));
    }
    match (access.as_str(), body.mode) {
        ("off", _) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "support_access_off",
                "The tenant does not allow support access.",
            ));
        }
        ("read_only", ImpersonationMode::ReadWrite) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "support_access_read_only",
                "The tenant allows read-only support access only.",
            ));
        }
        _ => {}
    }
    let needs_staff = body.mode == ImpersonationMode::ReadWrite || body.allow_export;
    // An export is the whole tenant: the tenant approves it, whatever its setting.
    let needs_tenant = access == "ask" || body.allow_export;
    let session_id = Uuid::now_v7();
    let minutes = i32::try_from(body.minutes).unwrap_or(1);
    let row = tx
        .query_one(
            &format!(
                "WITH s AS (INSERT INTO app.impersonation_sessions \
                   (tenant_id, session_id, staff_id, reason, ticket, mode, allow_export, \
                    needs_staff_approval, needs_tenant_approval, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(mins => $10)) \
                 RETURNING *) SELECT {SESSION_COLUMNS} FROM s"
            ),
            &[
                (&tenant, Type::UUID),
                (&session_id, Type::UUID),
                (&staff.id, Type::TEXT),
                (&reason, Type::TEXT),
                (&ticket, Type::TEXT),
                (&body.mode.name(), Type::TEXT),
                (&body.allow_export, Type::BOOL),
                (&needs_staff, Type::BOOL),
                (&needs_tenant, Type::BOOL),
                (&minutes, Type::INT4),
            ],
        )
        .await?;
    let session = view(&row, false);
    let details = json!({
        "staff": staff.id, "mode": body.mode.name(), "minutes": body.minutes,
        "reason": reason, "ticket": ticket, "allow_export": body.allow_export,
        "needs_staff_approval": needs_staff, "needs_tenant_approval": needs_tenant,
    });
    record(&mut tx, Action::ImpersonationStarted, session_id, details).await?;
    tx.commit().await?;
    tracing::info!(tenant_id = %tenant, session_id = %session_id, mode = body.mode.name(), "impersonation started");
    json_response(StatusCode::CREATED, &session)
}

async fn record(
    tx: &mut TenantTx,
    action: Action,
    session: Uuid,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let request_id = crate::http::current_request_id();
    let target = session.to_string();
    crate::audit::record(tx, action, Some(&target), details, Some(&request_id)).await?;
    Ok(())
}

/// `GET /admin/v1/impersonations`'s query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StaffListQuery {
    tenant: Option<Uuid>,
    /// Only sessions that are active or await approval.
    #[serde(default)]
    open: bool,
    limit: Option<i64>,
    /// The `started_at` of the last session of the previous page.
    before: Option<DateTime<Utc>>,
}

fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query_parameters",
            "limit is between 1 and 200.",
        ));
    }
    Ok(limit)
}

fn page(sessions: Vec<SessionView>, limit: i64) -> HandlerResult {
    let (page, next) = super::split_page(sessions, limit, |s| s.started_at);
    json_response(
        StatusCode::OK,
        &json!({"sessions": page, "next_before": next}),
    )
}

pub(super) async fn staff_list(
    State(app): State<Arc<App>>,
    _staff: StaffCaller,
    QueryParams(q): QueryParams<StaffListQuery>,
) -> HandlerResult {
    let limit = page_limit(q.limit)?;
    let support = super::admin::support_db(&app)?;
    let rows = support
        .read_across_tenants(
            &format!(
                "SELECT {SESSION_COLUMNS} FROM app.impersonation_sessions s \
                 WHERE ($1::uuid IS NULL OR s.tenant_id = $1) \
                   AND (NOT $2 OR (s.ended_at IS NULL AND s.expires_at > now())) \
                   AND ($3::timestamptz IS NULL OR s.started_at < $3) \
                 ORDER BY s.started_at DESC, s.session_id LIMIT $4"
            ),
            &[
                (&q.tenant, Type::UUID),
                (&q.open, Type::BOOL),
                (&q.before, Type::TIMESTAMPTZ),
                (&(limit + 1), Type::INT8),
            ],
        )
        .await?;
    page(rows.iter().map(|r| view(r, false)).collect(), limit)
}

/// `{session}`: a session id.
#[derive(Debug, Deserialize)]
pub(super) struct SessionPath {
    session: String,
}

impl SessionPath {
    fn id(&self) -> Result<Uuid, ApiError> {
        Uuid::try_parse(&self.session).map_err(|_| session_not_found())
    }
}

/// Who approves or ends a session.
enum By<'a> {
    /// A staff member (`support_admin` to approve).
    Staff(&'a crate::auth::Staff),
    /// One of the tenant's admins.
    Tenant(&'a crate::auth::Principal),
}

impl By<'_> {
    fn actor_id(&self) -> String {
        match self {
            By::Staff(s) => s.actor_id(),
            By::Tenant(p) => p.actor_id(),
        }
    }

    fn side(&self) -> &'static str {
        match self {
            By::Staff(_) => "staff",
            By::Tenant(_) => "tenant",
        }
    }
}

/// The session, locked, in `tx` (its tenant's transaction).
async fn locked(tx: &mut TenantTx, id: Uuid) -> Result<SessionView, ApiError> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT {SESSION_COLUMNS} FROM app.impersonation_sessions s \
                 WHERE s.session_id = $1 FOR UPDATE"
            ),
            &[(&id, Type::UUID)],
        )
        .await?
        .ok_or_else(session_not_found)?;
    Ok(view(&row, false))
}

/// The tenant's transaction for acting on session `id`: the staff member's in the session's
/// tenant (found before any tenant is known), or the tenant caller's own.
async fn session_tx(app: &App, by: &By<'_>, id: Uuid) -> Result<TenantTx, ApiError> {
    match by {
        By::Staff(staff) => {
            let found = app
                .db
                .impersonation_session(id)
                .await?
                .ok_or_else(session_not_found)?;
            let ctx = TenantContext {
                tenant_id: found.tenant_id,
                actor_id: staff.actor_id(),
            };
            Ok(app.db.begin(&ctx, Access::ReadWrite).await?)
        }
        By::Tenant(p) => Ok(app
            .begin_for(p, Access::ReadWrite, Default::default())
            .await?),
    }
}

async fn approve(app: &App, by: By<'_>, id: Uuid) -> HandlerResult {
    let mut tx = session_tx(app, &by, id).await?;
    let s = locked(&mut tx, id).await?;
    if s.state == "ended" || s.state == "expired" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "impersonation_over",
            "The session is over; nothing to approve.",
        ));
    }
    let (needed, done, column) = match by {
        By::Staff(_) => (
            s.needs_staff_approval,
            s.staff_approved_by.is_some(),
            "staff",
        ),
        By::Tenant(_) => (
            s.needs_tenant_approval,
            s.tenant_approved_by.is_some(),
            "tenant",
        ),
    };
    if !needed || done {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "nothing_to_approve",
            "The session does not wait for this approval.",
        ));
    }
    let approver = match &by {
        By::Staff(staff) => {
            if staff.id == s.staff_id {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "self_approval",
                    "A second support_admin approves a session, not its requester.",
                ));
            }
            staff.id.clone()
        }
        By::Tenant(p) => p.actor_id(),
    };
    tx.execute(
        &format!(
            "UPDATE app.impersonation_sessions SET {column}_approved_by = $2, \
             {column}_approved_at = now() WHERE session_id = $1"
        ),
        &[(&id, Type::UUID), (&approver, Type::TEXT)],
    )
    .await?;
    let details = json!({"by": by.side(), "approver": approver});
    record(&mut tx, Action::ImpersonationApproved, id, details).await?;
    let s = locked(&mut tx, id).await?;
    tx.commit().await?;
    json_response(StatusCode::OK, &s)
}

async fn end(app: &App, by: By<'_>, id: Uuid) -> HandlerResult {
    let mut tx = session_tx(app, &by, id).await?;
    let s = locked(&mut tx, id).await?;
    if let By::Staff(staff) = &by
        && staff.id != s.staff_id
        && !staff.can(StaffPermission::SupportAdmin)
    {
        return Err(crate::http::insufficient_staff_permission(
            StaffPermission::SupportAdmin,
        ));
    }
    // Ending an ended session is a no-op (retries are safe); an expired one is recorded ended.
    if s.ended_at.is_some() {
        tx.commit().await?;
        return json_response(StatusCode::OK, &s);
    }
    let actor = by.actor_id();
    tx.execute(
        "UPDATE app.impersonation_sessions SET ended_at = now(), ended_by = $2 \
         WHERE session_id = $1",
        &[(&id, Type::UUID), (&actor, Type::TEXT)],
    )
    .await?;
    let details = json!({"by": by.side(), "actor": actor});
    record(&mut tx, Action::ImpersonationEnded, id, details).await?;
    let s = locked(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(session_id = %id, by = by.side(), "impersonation ended");
    json_response(StatusCode::OK, &s)
}

pub(super) async fn staff_approve(
    State(app): State<Arc<App>>,
    StaffCaller(staff): StaffCaller,
    PathParams(path): PathParams<SessionPath>,
) -> HandlerResult {
    approve(&app, By::Staff(&staff), path.id()?).await
}

pub(super) async fn staff_end(
    State(app): State<Arc<App>>,
    StaffCaller(staff): StaffCaller,
    PathParams(path): PathParams<SessionPath>,
) -> HandlerResult {
    end(&app, By::Staff(&staff), path.id()?).await
}

pub(super) async fn tenant_approve(
    State(app): State<Arc<App>>,
    caller: Caller,
    PathParams(path): PathParams<SessionPath>,
) -> HandlerResult {
    approve(&app, By::Tenant(caller.principal()), path.id()?).await
}

pub(super) async fn tenant_end(
    State(app): State<Arc<App>>,
    caller: Caller,
    PathParams(path): PathParams<SessionPath>,
) -> HandlerResult {
    end(&app, By::Tenant(caller.principal()), path.id()?).await
}

/// `GET /v1/impersonations`'s query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantListQuery {
    limit: Option<i64>,
    before: Option<DateTime<Utc>>,
}

pub(super) async fn tenant_list(
    State(app): State<Arc<App>>,
    caller: Caller,
    QueryParams(q): QueryParams<TenantListQuery>,
) -> HandlerResult {
    let limit = page_limit(q.limit)?;
    let mut tx = super::begin(&app, &caller, Access::ReadOnly).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {SESSION_COLUMNS}, {REQUESTS_COLUMN} FROM app.impersonation_sessions s \
                 WHERE ($1::timestamptz IS NULL OR s.started_at < $1) \
                 ORDER BY s.started_at DESC, s.session_id LIMIT $2"
            ),
            &[(&q.before, Type::TIMESTAMPTZ), (&(limit + 1), Type::INT8)],
        )
        .await?;
    tx.commit().await?;
    page(rows.iter().map(|r| view(r, true)).collect(), limit)
}

/// The tenant's support access setting.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SupportAccess {
    support_access: String,
}

const SUPPORT_ACCESS: [&str; 3] = ["off", "read_only", "ask"];

pub(super) async fn get_support_access(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> HandlerResult {
    let tenant = caller.principal().tenant_id.as_uuid();
    let mut tx = super::begin(&app, &caller, Access::ReadOnly).await?;
    let row = tx
        .query_one(
            "SELECT support_access FROM app.tenants WHERE tenant_id = $1",
            &[(&tenant, Type::UUID)],
        )
        .await?;
    tx.commit().await?;
    json_response(
        StatusCode::OK,
        &SupportAccess {
            support_access: row.get(0),
        },
    )
}

pub(super) async fn set_support_access(
    State(app): State<Arc<App>>,
    caller: Caller,
    Json(body): Json<SupportAccess>,
) -> HandlerResult {
    let to = body.support_access;
    if !SUPPORT_ACCESS.contains(&to.as_str()) {
        return Err(ApiError::bad_request(
            "invalid_support_access",
            "support_access is off, read_only or ask.",
        ));
    }
    let mut tx = super::begin(&app, &caller, Access::ReadWrite).await?;
    let tenant = caller.principal().tenant_id.as_uuid();
    let from: String = tx
        .query_one(
            "SELECT support_access FROM app.tenants WHERE tenant_id = $1 FOR UPDATE",
            &[(&tenant, Type::UUID)],
        )
        .await?
        .get(0);
    if from != to {
        tx.execute(
            "UPDATE app.tenants SET support_access = $2, updated_at = now() WHERE tenant_id = $1",
            &[(&tenant, Type::UUID), (&to, Type::TEXT)],
        )
        .await?;
        super::audit(
            &mut tx,
            Action::SupportAccessChanged,
            None,
            json!({"from": from, "to": to}),
        )
        .await?;
    }
    tx.commit().await?;
    json_response(StatusCode::OK, &SupportAccess { support_access: to })
}

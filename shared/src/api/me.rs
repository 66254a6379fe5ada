//! `GET /v1/me`: who the caller is, and its tenant as read through its own [`TenantTx`].
//!
//! [`TenantTx`]: crate::db::TenantTx

use chrono::{DateTime, Utc};
use std::sync::Arc;

use axum::extract::State;
use http::StatusCode;
use serde::Serialize;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::App;
use crate::auth::{Permissions, Subject};
use crate::db::Access;
use crate::http::{ApiError, Caller, HandlerResult, json_response};

#[derive(Serialize)]
struct Me<'a> {
    tenant: Tenant,
    principal: PrincipalView<'a>,
}

#[derive(Serialize)]
struct Tenant {
    id: Uuid,
    name: String,
    slug: String,
    plan: String,
    status: String,
    created_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct PrincipalView<'a> {
    #[serde(flatten)]
    subject: &'a Subject,
    roles: &'a [String],
    permissions: Permissions,
}

pub(super) async fn get(State(app): State<Arc<App>>, caller: Caller) -> HandlerResult {
    let principal = caller.principal();
    let mut tx = super::begin(&app, &caller, Access::ReadOnly).await?;
    let tenant_id = principal.tenant_id.as_uuid();
    let row = tx
        .query_opt(
            "SELECT tenant_id, name, slug, plan, status, created_at \
                 FROM app.tenants WHERE tenant_id = $1",
            &[(&tenant_id, Type::UUID)],
        )
        .await?;
    tx.commit().await?;
    // Authenticated a moment ago, so only a tenant deleted in between lands here.
    let row = row.ok_or_else(|| ApiError::not_found("The tenant no longer exists."))?;
    json_response(
        StatusCode::OK,
        &Me {
            tenant: Tenant {
                id: row.get(0),
                name: row.get(1),
                slug: row.get(2),
                plan: row.get(3),
                status: row.get(4),
                created_at: row.get(5),
            },
            principal: PrincipalView {
                subject: &principal.subject,
                roles: &principal.roles,
                permissions: principal.permissions,
            },
        },
    )
}

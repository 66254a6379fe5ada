//! `GET /v1/members`: the tenant's people as the identity provider's events recorded them
//! (Auth0 organization membership, `POST /v1/webhooks/auth0`), oldest first, a page at a time.

use std::sync::Arc;

use axum::extract::State;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::App;
use crate::db::Access;
use crate::http::{Caller, HandlerResult, QueryParams, json_response};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 500;

/// `GET /v1/members`'s query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// The `next_after` of the previous page.
    after: Option<Uuid>,
    limit: Option<i64>,
}

#[derive(Serialize)]
struct Member {
    member_id: Uuid,
    auth0_user_id: String,
    email: Option<String>,
    role: String,
    created_at: DateTime<Utc>,
}

pub(super) async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    QueryParams(q): QueryParams<ListQuery>,
) -> HandlerResult {
    let limit = super::page_limit(q.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let mut tx = super::begin(&app, &caller, Access::ReadOnly).await?;
    let tenant = tx.tenant_id().as_uuid();
    // Member ids are UUIDv7: their order is the order people joined in.
    let rows = tx
        .query(
            "SELECT member_id, auth0_user_id, email, role, created_at FROM app.members \
             WHERE tenant_id = $1 AND removed_at IS NULL AND ($2::uuid IS NULL OR member_id > $2) \
             ORDER BY member_id LIMIT $3",
            &[
                (&tenant, Type::UUID),
                (&q.after, Type::UUID),
                (&(limit + 1), Type::INT8),
            ],
        )
        .await?;
    tx.commit().await?;
    let members: Vec<Member> = rows
        .iter()
        .map(|r| Member {
            member_id: r.get(0),
            auth0_user_id: r.get(1),
            email: r.get(2),
            role: r.get(3),
            created_at: r.get(4),
        })
        .collect();
    let (members, next_after) = super::split_page(members, limit, |m| m.member_id);
    json_response(
        StatusCode::OK,
        &serde_json::json!({ "members": members, "next_after": next_after }),
    )
}

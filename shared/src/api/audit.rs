//! `GET /v1/audit` and `GET /v1/audit/verify`: the tenant's audit log, for those holding
//! `read_audit` (owners and admins; no API-key scope grants it). The log itself is
//! [`crate::audit`].

use std::sync::Arc;

use axum::extract::State;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::Deserialize;

use crate::App;
use crate::audit::{self, Action, ListFilter};
use crate::db::Access;
use crate::http::{ApiError, Caller, HandlerResult, QueryParams, json_response};

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 200;

/// `GET /v1/audit`'s query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    action: Option<String>,
    actor: Option<String>,
    impersonation: Option<uuid::Uuid>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    cursor: Option<String>,
    limit: Option<i64>,
}

fn invalid(detail: &str) -> ApiError {
    ApiError::bad_request("invalid_query_parameters", detail)
}

impl AuditQuery {
    fn filter(self) -> Result<ListFilter, ApiError> {
        let action = match self.action.as_deref() {
            None => None,
            Some(name) => Some(
                Action::from_name(name)
                    .ok_or_else(|| invalid("action is one of the actions GET /v1/audit lists."))?,
            ),
        };
        let before_seq = match self.cursor.as_deref() {
            None => None,
            Some(c) => Some(
                c.parse::<i64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| invalid("cursor is the next_cursor of a previous page."))?,
            ),
        };
        let limit = super::page_limit(self.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
        if let (Some(s), Some(u)) = (self.since, self.until)
            && s >= u
        {
            return Err(invalid("since must be before until."));
        }
        if self.actor.as_ref().is_some_and(|a| a.len() > 300) {
            return Err(invalid("actor is at most 300 characters."));
        }
        Ok(ListFilter {
            action,
            actor: self.actor,
            impersonation_id: self.impersonation,
            since: self.since,
            until: self.until,
            before_seq,
            limit,
        })
    }
}

pub(super) async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    QueryParams(q): QueryParams<AuditQuery>,
) -> HandlerResult {
    let filter = q.filter()?;
    let mut tx = super::begin(&app, &caller, Access::ReadOnly).await?;
    let page = audit::list(&mut tx, &filter).await?;
    tx.commit().await?;
    json_response(StatusCode::OK, &page)
}

pub(super) async fn verify(State(app): State<Arc<App>>, caller: Caller) -> HandlerResult {
    let mut tx = super::begin(&app, &caller, Access::ReadOnly).await?;
    let found = audit::verify(&mut tx).await?;
    tx.commit().await?;
    if let Some(b) = &found.first_broken {
        tracing::warn!(seq = b.seq, reason = b.reason, "audit chain broken");
    }
    json_response(StatusCode::OK, &found)
}

//! `POST /v1/query`: a JSON query, validated against the dataset's schema, run read-only with a
//! statement timeout.

use std::sync::Arc;

use axum::extract::State;
use http::StatusCode;
use serde_json::json;

use super::datasets::{dataset_not_found, find_dataset};
use crate::App;
use crate::analytics::datasets::DatasetRef;
use crate::analytics::query::{self, QueryLimits, QuerySpec};
use crate::db::{Access, TxSettings};
use crate::http::{ApiError, Caller, HandlerResult, Json, caller_query_error, json_response};
use crate::usage::Meter;

/// `POST /v1/query`. The caller shapes the query and its transaction runs under the query time
/// limit, so a statement cancelled by that limit is the caller's 422 `query_timeout`.
pub(super) async fn run(
    State(app): State<Arc<App>>,
    caller: Caller,
    Json(spec): Json<QuerySpec>,
) -> HandlerResult {
    run_query(&app, &caller, spec)
        .await
        .map_err(caller_query_error)
}

async fn run_query(app: &App, caller: &Caller, spec: QuerySpec) -> HandlerResult {
    super::within_plan(
        app,
        caller,
        Meter::Queries,
        1,
        query_within_plan(app, caller, spec),
    )
    .await
}

async fn query_within_plan(app: &App, caller: &Caller, spec: QuerySpec) -> HandlerResult {
    let dataset = DatasetRef::parse(&spec.dataset).ok_or_else(dataset_not_found)?;
    let tenant = caller.principal().tenant_id.as_uuid();
    let cfg = &app.config.analytics;
    let settings = TxSettings {
        statement_timeout: Some(cfg.query_timeout),
        ..TxSettings::default()
    };
    let mut tx = super::begin_with(app, caller, Access::ReadOnly, settings).await?;
    let ds = find_dataset(&mut tx, &dataset).await?;
    let limits = QueryLimits {
        max_limit: cfg.query_max_limit,
        ..QueryLimits::default()
    };
    let compiled = query::compile(&spec, &ds, tenant, limits).map_err(|errors| {
        ApiError::bad_request(
            "invalid_query",
            "The query does not fit the dataset; see errors.",
        )
        .with_extra(json!({ "errors": errors }))
    })?;
    // The query's result is the transaction's last word: it commits in the same flight.
    let result = query::run_and_commit(tx, &compiled).await?;
    super::meter(app, caller, Meter::Queries, 1, "api:query").await?;
    json_response(StatusCode::OK, &result)
}

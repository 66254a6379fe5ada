//! `POST /v1/query`: a JSON query, validated against the dataset's schema, run read-only with a
//! statement timeout.

use http::StatusCode;
use lambda_http::Request;
use serde_json::json;

use super::datasets::{dataset_not_found, find_dataset};
use crate::App;
use crate::analytics::datasets::DatasetRef;
use crate::analytics::query::{self, QueryLimits, QuerySpec};
use crate::db::{Access, TxSettings};
use crate::http::{
    ApiError, HandlerFuture, HandlerResult, RequestCtx, caller_query_error, json_body,
    json_response,
};
use crate::usage::Meter;

/// `POST /v1/query`. The caller shapes the query and its transaction runs under the query time
/// limit, so a statement cancelled by that limit is the caller's 422 `query_timeout`.
pub(super) fn run<'a>(app: &'a App, ctx: &'a RequestCtx, req: &'a Request) -> HandlerFuture<'a> {
    Box::pin(async move { run_query(app, ctx, req).await.map_err(caller_query_error) })
}

async fn run_query(app: &App, ctx: &RequestCtx, req: &Request) -> HandlerResult {
    let spec: QuerySpec = json_body(req)?;
    let dataset = DatasetRef::parse(&spec.dataset).ok_or_else(dataset_not_found)?;
    let tenant = ctx.principal()?.tenant_id.as_uuid();
    let cfg = &app.config.analytics;
    let settings = TxSettings {
        statement_timeout: Some(cfg.query_timeout),
        ..TxSettings::default()
    };
    let mut tx = super::begin_with(app, ctx, Access::ReadOnly, settings).await?;
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
    let result = query::run(&mut tx, &compiled).await?;
    tx.commit().await?;
    super::meter(app, ctx, Meter::Queries, 1, "api:query").await?;
    json_response(StatusCode::OK, &result)
}

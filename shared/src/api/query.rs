//! `POST /v1/query`: a JSON query, validated against the dataset's schema, run read-only with a
//! statement timeout.

use std::sync::Arc;

use axum::extract::State;
use http::StatusCode;
use serde_json::json;

use super::datasets::{dataset_not_found, find_dataset};
use crate::App;
use crate::analytics::datasets::{self, DatasetRef};
use crate::analytics::query::{self, QueryLimits, QuerySpec};
use crate::db::{Access, Param, SqlType as Type, TxSettings};
use crate::http::{ApiError, Caller, HandlerResult, Json, caller_query_error, json_response};
use crate::usage::{Meter, UsageEvent, ledger};

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
    let principal = caller.principal();
    let tenant = principal.tenant_id;
    let cfg = &app.config.analytics;
    let settings = TxSettings {
        statement_timeout: Some(cfg.query_timeout),
        ..TxSettings::default()
    };
    let limits = QueryLimits {
        max_limit: cfg.query_max_limit,
        ..QueryLimits::default()
    };
    // A billable query records its usage in its own transaction, in the flight that runs it and
    // commits (so a query is billed exactly when it answers), and the query itself runs
    // read-only. One that is not billable (support's, under impersonation) is a read-only
    // transaction from BEGIN.
    let billable = super::billable(principal);
    let access = if billable {
        Access::ReadWrite
    } else {
        Access::ReadOnly
    };
    let event = [UsageEvent::now(tenant, Meter::Queries, 1, "api:query")];
    let usage = ledger::Insert::new(tenant, &event, app.config.billing.meter.window_secs)?;
    let usage_params = usage.params();
    let usage_write = billable.then_some((ledger::Insert::SQL, &usage_params[..]));

    // A definition read recently: compiled now, and sent in one flight with BEGIN, a check that
    // it is still current, the usage event and COMMIT. If it is not (deleted, re-created, its
    // rollups changed), the check aborts the flight and the dataset is read again below. (One
    // that no longer compiles is read again too, without a flight.)
    let remembered = app.datasets.get(tenant, &spec.dataset);
    if let Some((ds, Ok(compiled))) = remembered
        .as_ref()
        .map(|ds| (ds, query::compile(&spec, ds, tenant.as_uuid(), limits)))
    {
        let check: [Param<'_>; 2] = [(&ds.id, Type::UUID), (&ds.row_version, Type::TEXT)];
        let before: Vec<_> = std::iter::once((datasets::EXPECT_DATASET, &check[..]))
            .chain(usage_write)
            .collect();
        let tx = super::begin_with(app, caller, access, settings.clone()).await?;
        match query::run_and_commit(tx, &compiled, &before).await {
            Err(e) if datasets::changed(&e) => app.datasets.forget(tenant, &spec.dataset),
            result => return json_response(StatusCode::OK, &result?),
        }
    }

    let read_at = app.datasets.read_at();
    let mut tx = super::begin_with(app, caller, access, settings).await?;
    let ds = find_dataset(&mut tx, &dataset).await?;
    let compiled = query::compile(&spec, &ds, tenant.as_uuid(), limits).map_err(|errors| {
        ApiError::bad_request(
            "invalid_query",
            "The query does not fit the dataset; see errors.",
        )
        .with_extra(json!({ "errors": errors }))
    })?;
    app.datasets.remember(read_at, tenant, &spec.dataset, ds);
    // The query's result is the transaction's last word: it commits in the same flight.
    let before: Vec<_> = usage_write.into_iter().collect();
    let result = query::run_and_commit(tx, &compiled, &before).await?;
    json_response(StatusCode::OK, &result)
}

//! `/v1/datasets/{dataset}/records`: batch ingest (JSON array or NDJSON), a page of records in
//! key order, get and delete by key, and a record's versions.

use std::sync::Arc;

use axum::extract::State;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::datasets::{DatasetPath, dataset_ref, find_dataset, find_dataset_for_write, no_content};
use crate::App;
use crate::analytics::datasets::DatasetRef;
use crate::analytics::ingest::{self, IngestOutcome, RecordError};
use crate::audit::Action;
use crate::db::Access;
use crate::http::{
    ApiError, Caller, HandlerResult, PathParams, QueryParams, RawBody, json_response,
};
use crate::usage::{Meter, UsageEvent, ledger};

enum Format {
    Json,
    NdJson,
}

/// The batch's format: JSON (an array) or NDJSON, by `Content-Type`; anything else, or none, is 415.
fn format(headers: &HeaderMap) -> Result<Format, ApiError> {
    if crate::http::is_json(headers) {
        return Ok(Format::Json);
    }
    match crate::http::media_type(headers).as_deref() {
        Some("application/x-ndjson" | "application/jsonl" | "application/jsonlines") => {
            Ok(Format::NdJson)
        }
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send records as application/json (an array) or application/x-ndjson (one per line).",
        )),
    }
}

fn invalid_records(total: usize, mut errors: Vec<RecordError>) -> ApiError {
    errors.truncate(ingest::MAX_LISTED_ERRORS);
    ApiError::bad_request(
        "invalid_records",
        format!("{total} problem(s) in the batch; nothing was written. See errors."),
    )
    .with_extra(json!({ "error_count": total, "errors": errors }))
}

pub(super) async fn ingest(
    State(app): State<Arc<App>>,
    caller: Caller,
    PathParams(path): PathParams<DatasetPath>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> HandlerResult {
    let dataset = path.dataset()?;
    let items: Vec<Value> = match format(&headers)? {
        Format::Json => match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(items)) => items,
            Ok(_) => {
                return Err(ApiError::bad_request(
                    "invalid_json",
                    "Send a JSON array of records.",
                ));
            }
            Err(e) => {
                return Err(ApiError::bad_request(
                    "invalid_json",
                    format!("The body is not JSON: {e}"),
                ));
            }
        },
        Format::NdJson => {
            ingest::parse_ndjson(&body).map_err(|errors| invalid_records(errors.len(), errors))?
        }
    };
    let how = Write {
        max: app.config.analytics.max_ingest_records,
        split: "split the batch, or use the bulk import",
        source: "api:ingest",
    };
    write_all(&app, &caller, &dataset, items, how).await
}

/// `POST /v1/datasets/{dataset}/imports`: a bulk load, NDJSON only, up to
/// `MAX_IMPORT_RECORDS` records in one request (within the body limit), under the same
/// validation and versioning rules as an ingest and just as atomic: written in slices of
/// [`IMPORT_SLICE`] records, all in one transaction.
pub(super) async fn import(
    State(app): State<Arc<App>>,
    caller: Caller,
    PathParams(path): PathParams<DatasetPath>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> HandlerResult {
    let dataset = path.dataset()?;
    if !matches!(format(&headers), Ok(Format::NdJson)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "A bulk import is application/x-ndjson: one record per line.",
        ));
    }
    let items =
        ingest::parse_ndjson(&body).map_err(|errors| invalid_records(errors.len(), errors))?;
    drop(body);
    let how = Write {
        max: app.config.analytics.max_import_records,
        split: "split the import",
        source: "api:import",
    };
    write_all(&app, &caller, &dataset, items, how).await
}

/// Records per statement of a bulk import: large enough that per-statement costs vanish, small
/// enough that no statement holds the connection for long.
const IMPORT_SLICE: usize = 5_000;

/// Validates and writes a batch (all or nothing), audits its counts, meters the records it
/// changed and queues their embedding: the ingest and the import alike.
/// What differs between the ingest and the import: the record cap, the advice past it, and the
/// usage event's source.
struct Write {
    max: usize,
    split: &'static str,
    source: &'static str,
}

async fn write_all(
    app: &App,
    caller: &Caller,
    dataset: &DatasetRef,
    items: Vec<Value>,
    how: Write,
) -> HandlerResult {
    let Write { max, split, source } = how;
    if items.is_empty() {
        return Err(ApiError::bad_request("no_records", "The batch is empty."));
    }
    if items.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_records",
            format!("At most {max} records per request; {split}."),
        ));
    }
    let mut tx = super::begin(app, caller, Access::ReadWrite).await?;
    let ds = find_dataset_for_write(&mut tx, dataset).await?;
    let batch =
        ingest::validate(&ds, items).map_err(|(total, errors)| invalid_records(total, errors))?;
    let mut outcome = IngestOutcome::default();
    for slice in batch.into_slices(IMPORT_SLICE) {
        outcome += ingest::write(&mut tx, &ds, &slice).await?;
    }
    let changed = (outcome.inserted + outcome.updated) as i64;
    // Within the plan, counted in this transaction: past the hard limit the whole write is
    // refused (dropped, so rolled back) and nothing is written or billed.
    let meter = Meter::IngestedRecords;
    if changed > 0 && super::must_reserve(app, caller, meter) {
        super::reserve(app, caller, &mut tx, meter, changed).await?;
    }
    // Counts only: never what the records hold. (After the reservation: locks in the order
    // counter, then audit head, everywhere.)
    super::audit(
        &mut tx,
        Action::RecordsIngested,
        Some(&ds.name),
        json!(outcome),
    )
    .await?;
    if changed > 0 && super::billable(caller.principal()) {
        // In the ingest's own transaction: the count and the records commit together, so a
        // retry after any failure neither loses nor doubles it.
        let event = UsageEvent::now(tx.tenant_id(), Meter::IngestedRecords, changed, source);
        ledger::record(&mut tx, &[event], app.config.billing.meter.window_secs).await?;
    }
    tx.commit().await?;
    if outcome.inserted + outcome.updated > 0 && !ds.text_columns.is_empty() {
        // The chunks are committed either way: if queueing fails they stay pending until the
        // tenant's next ingest queues work again, and the ingest itself has succeeded.
        let tenant = caller.principal().tenant_id;
        if let Err(e) = app.embed_queue.enqueue(tenant).await {
            tracing::warn!(error = %e, "embedding not queued");
        }
    }
    tracing::info!(dataset = %ds.id, received = outcome.received, inserted = outcome.inserted,
            updated = outcome.updated, unchanged = outcome.unchanged, "ingested");
    json_response(
        StatusCode::OK,
        &json!({ "dataset": ds.name, "result": outcome }),
    )
}

/// `{dataset}` and `{key}`: a record's routes.
#[derive(Debug, Deserialize)]
pub(super) struct RecordPath {
    dataset: String,
    key: String,
}

fn record_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "record_not_found",
        "No record with that key.",
    )
}

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;

/// `GET /v1/datasets/{dataset}/records`'s query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// The `next_after` of the previous page: records with a greater key.
    after: Option<String>,
    limit: Option<i64>,
}

/// A page of the dataset's records in key order, and the cursor of the next (null on the last).
pub(super) async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    PathParams(path): PathParams<DatasetPath>,
    QueryParams(q): QueryParams<ListQuery>,
) -> HandlerResult {
    let dataset = path.dataset()?;
    let limit = super::page_limit(q.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let mut tx = super::begin(&app, &caller, Access::ReadOnly).await?;
    let ds = find_dataset(&mut tx, &dataset).await?;
    // One more than asked: whether there is a next page, without a second query.
    let records = ingest::list(&mut tx, ds.id, q.after.as_deref(), limit + 1).await?;
    tx.commit().await?;
    let (records, next_after) = super::split_page(records, limit, |r| r.key.clone());
    json_response(
        StatusCode::OK,
        &json!({ "dataset": ds.name, "records": records, "next_after": next_after }),
    )
}

pub(super) async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    PathParams(path): PathParams<RecordPath>,
) -> HandlerResult {
    let dataset = dataset_ref(&path.dataset)?;
    let key = &path.key;
    let mut tx = super::begin(&app, &caller, Access::ReadOnly).await?;
    let ds = find_dataset(&mut tx, &dataset).await?;
    let record = ingest::get(&mut tx, ds.id, key)
        .await?
        .ok_or_else(record_not_found)?;
    tx.commit().await?;
    json_response(
        StatusCode::OK,
        &json!({ "dataset": ds.name, "record": record }),
    )
}

const DEFAULT_VERSIONS: i64 = 20;
const MAX_VERSIONS: i64 = 100;

/// `GET …/records/{key}/versions`'s query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VersionsQuery {
    /// The `next_before` of the previous page: versions below it.
    before: Option<i32>,
    limit: Option<i64>,
}

/// A record's versions, newest first: the current one, then those updates replaced.
pub(super) async fn versions(
    State(app): State<Arc<App>>,
    caller: Caller,
    PathParams(path): PathParams<RecordPath>,
    QueryParams(q): QueryParams<VersionsQuery>,
) -> HandlerResult {
    let dataset = dataset_ref(&path.dataset)?;
    let limit = super::page_limit(q.limit, DEFAULT_VERSIONS, MAX_VERSIONS)?;
    if q.before.is_some_and(|b| b < 1) {
        return Err(ApiError::bad_request(
            "invalid_query_parameters",
            "before is a version number (1 or more).",
        ));
    }
    // One snapshot for both reads: an update committing between them would otherwise list its
    // version twice (current, and replaced).
    let mut tx = super::begin(&app, &caller, Access::Snapshot).await?;
    let ds = find_dataset(&mut tx, &dataset).await?;
    // A record that does not exist has no versions, whatever the page.
    let current = ingest::get(&mut tx, ds.id, &path.key)
        .await?
        .ok_or_else(record_not_found)?;
    let mut versions = Vec::new();
    if q.before.is_none_or(|b| current.version < b) {
        versions.push(ingest::RecordVersion {
            version: current.version,
            data: current.data,
            written_at: current.updated_at,
            superseded_at: None,
        });
    }
    // One more than asked, across both: whether there is a next page.
    let rest = limit + 1 - versions.len() as i64;
    versions.extend(ingest::replaced_versions(&mut tx, ds.id, &path.key, q.before, rest).await?);
    tx.commit().await?;
    let (versions, next_before) = super::split_page(versions, limit, |v| v.version);
    json_response(
        StatusCode::OK,
        &json!({
            "dataset": ds.name,
            "key": path.key,
            "versions": versions,
            "next_before": next_before,
        }),
    )
}

pub(super) async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    PathParams(path): PathParams<RecordPath>,
) -> HandlerResult {
    let dataset = dataset_ref(&path.dataset)?;
    let key = &path.key;
    let mut tx = super::begin(&app, &caller, Access::ReadWrite).await?;
    let ds = find_dataset_for_write(&mut tx, &dataset).await?;
    if !ingest::delete(&mut tx, &ds, key).await? {
        return Err(record_not_found());
    }
    let target = format!("{}/{key}", ds.name);
    super::audit(&mut tx, Action::RecordDeleted, Some(&target), json!({})).await?;
    tx.commit().await?;
    Ok(no_content())
}

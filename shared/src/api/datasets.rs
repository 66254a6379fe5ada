//! `/v1/datasets`: create, list, get and delete datasets.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse as _, Response};
use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::App;
use crate::analytics::datasets::{self, DatasetRef};
use crate::analytics::{Dataset, DatasetSpec};
use crate::audit::Action;
use crate::db::{Access, TenantTx};
use crate::http::{ApiError, Caller, HandlerResult, Json, PathParams, QueryParams, json_response};

/// The `{dataset}` of a dataset's routes.
#[derive(Debug, Deserialize)]
pub(super) struct DatasetPath {
    dataset: String,
}

impl DatasetPath {
    /// The dataset it names.
    pub(super) fn dataset(&self) -> Result<DatasetRef, ApiError> {
        dataset_ref(&self.dataset)
    }
}

/// The dataset a path segment names (by name or id), or the same 404 as an unknown one.
pub(super) fn dataset_ref(segment: &str) -> Result<DatasetRef, ApiError> {
    DatasetRef::parse(segment).ok_or_else(dataset_not_found)
}

/// The dataset, or the same 404 as for an unknown one.
pub(super) async fn find_dataset(
    tx: &mut TenantTx,
    dataset: &DatasetRef,
) -> Result<Dataset, ApiError> {
    datasets::find(tx, dataset)
        .await?
        .ok_or_else(dataset_not_found)
}

/// The same, share-locked for a transaction that writes the dataset's records
/// ([`datasets::find_for_write`]).
pub(super) async fn find_dataset_for_write(
    tx: &mut TenantTx,
    dataset: &DatasetRef,
) -> Result<Dataset, ApiError> {
    datasets::find_for_write(tx, dataset)
        .await?
        .ok_or_else(dataset_not_found)
}

/// Unknown, malformed and other tenants' datasets all get exactly this.
pub(super) fn dataset_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "dataset_not_found",
        "No such dataset.",
    )
}

pub(super) async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    Json(spec): Json<DatasetSpec>,
) -> HandlerResult {
    let errors = spec.validate();
    if !errors.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_dataset",
            "The dataset definition is not valid; see errors.",
        )
        .with_extra(json!({ "errors": errors })));
    }
    let mut tx = super::begin(&app, &caller, Access::ReadWrite).await?;
    let created = datasets::create(&mut tx, &spec).await?;
    if let Some(d) = &created {
        let details = json!({"dataset_id": d.id, "columns": d.columns.len()});
        super::audit(&mut tx, Action::DatasetCreated, Some(&d.name), details).await?;
    }
    tx.commit().await?;
    let dataset = created.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "dataset_exists",
            format!("A dataset named {} already exists.", spec.name),
        )
    })?;
    let mut resp = json_response(StatusCode::CREATED, &dataset)?;
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/datasets/{}", dataset.name)) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    Ok(resp)
}

pub(super) async fn list(State(app): State<Arc<App>>, caller: Caller) -> HandlerResult {
    let mut tx = super::begin(&app, &caller, Access::ReadOnly).await?;
    let all = datasets::list(&mut tx).await?;
    tx.commit().await?;
    json_response(StatusCode::OK, &json!({ "datasets": all }))
}

/// `GET /v1/datasets/{dataset}`'s query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GetQuery {
    /// `record_count`: also count the dataset's records (a scan of its key range, so asked for).
    include: Option<String>,
}

pub(super) async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    PathParams(path): PathParams<DatasetPath>,
    QueryParams(q): QueryParams<GetQuery>,
) -> HandlerResult {
    let dataset = path.dataset()?;
    let count = match q.include.as_deref() {
        None => false,
        Some("record_count") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query_parameters",
                "include is record_count.",
            ));
        }
    };
    let mut tx = super::begin(&app, &caller, Access::ReadOnly).await?;
    let found = find_dataset(&mut tx, &dataset).await?;
    let record_count = match count {
        true => Some(crate::analytics::ingest::count(&mut tx, found.id).await?),
        false => None,
    };
    tx.commit().await?;
    json_response(
        StatusCode::OK,
        &DatasetView {
            dataset: &found,
            record_count,
        },
    )
}

/// A dataset, with how many records it holds now when asked.
#[derive(serde::Serialize)]
struct DatasetView<'a> {
    #[serde(flatten)]
    dataset: &'a Dataset,
    #[serde(skip_serializing_if = "Option::is_none")]
    record_count: Option<i64>,
}

pub(super) async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    PathParams(path): PathParams<DatasetPath>,
) -> HandlerResult {
    let dataset = path.dataset()?;
    let mut tx = super::begin(&app, &caller, Access::ReadWrite).await?;
    if !datasets::delete(&mut tx, &dataset).await? {
        return Err(dataset_not_found());
    }
    super::audit(
        &mut tx,
        Action::DatasetDeleted,
        Some(&path.dataset),
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(no_content())
}

pub(super) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

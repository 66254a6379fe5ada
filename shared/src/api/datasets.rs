//! `/v1/datasets`: create, list, get and delete datasets.

use http::{HeaderValue, StatusCode};
use lambda_http::{Body, Request, Response};
use serde_json::json;

use crate::App;
use crate::analytics::datasets::{self, DatasetRef};
use crate::analytics::{Dataset, DatasetSpec};
use crate::db::{Access, TenantTx};
use crate::http::{ApiError, HandlerFuture, RequestCtx, json_body, json_response};

/// The dataset named by the `{dataset}` path parameter, or the same 404 as an unknown one.
pub(super) fn dataset_ref(ctx: &RequestCtx) -> Result<DatasetRef, ApiError> {
    ctx.param("dataset")
        .and_then(DatasetRef::parse)
        .ok_or_else(dataset_not_found)
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

/// Unknown, malformed and other tenants' datasets all get exactly this.
pub(super) fn dataset_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "dataset_not_found",
        "No such dataset.",
    )
}

pub(super) fn create<'a>(app: &'a App, ctx: &'a RequestCtx, req: &'a Request) -> HandlerFuture<'a> {
    Box::pin(async move {
        let spec: DatasetSpec = json_body(req)?;
        let errors = spec.validate();
        if !errors.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_dataset",
                "The dataset definition is not valid; see errors.",
            )
            .with_extra(json!({ "errors": errors })));
        }
        let mut tx = super::begin(app, ctx, Access::ReadWrite).await?;
        let created = datasets::create(&mut tx, &spec).await?;
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
    })
}

pub(super) fn list<'a>(app: &'a App, ctx: &'a RequestCtx, _req: &'a Request) -> HandlerFuture<'a> {
    Box::pin(async move {
        let mut tx = super::begin(app, ctx, Access::ReadOnly).await?;
        let all = datasets::list(&mut tx).await?;
        tx.commit().await?;
        json_response(StatusCode::OK, &json!({ "datasets": all }))
    })
}

pub(super) fn get<'a>(app: &'a App, ctx: &'a RequestCtx, _req: &'a Request) -> HandlerFuture<'a> {
    Box::pin(async move {
        let dataset = dataset_ref(ctx)?;
        let mut tx = super::begin(app, ctx, Access::ReadOnly).await?;
        let found = find_dataset(&mut tx, &dataset).await?;
        tx.commit().await?;
        json_response(StatusCode::OK, &found)
    })
}

pub(super) fn delete<'a>(
    app: &'a App,
    ctx: &'a RequestCtx,
    _req: &'a Request,
) -> HandlerFuture<'a> {
    Box::pin(async move {
        let dataset = dataset_ref(ctx)?;
        let mut tx = super::begin(app, ctx, Access::ReadWrite).await?;
        if !datasets::delete(&mut tx, &dataset).await? {
            return Err(dataset_not_found());
        }
        tx.commit().await?;
        Ok(no_content())
    })
}

pub(super) fn no_content() -> Response<Body> {
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

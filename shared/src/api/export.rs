//! `GET /v1/export` (`export_data`: owners and admins, or support under a session approved for
//! it): every dataset and record of the tenant as NDJSON, a page at a time from one snapshot, so
//! the copy is consistent. Metered as no usage.
//!
//! Locally the body streams. In AWS the HTTP API and `lambda_http` buffer a response, and Lambda
//! returns at most 6 MB: so the template sets `EXPORT_MAX_BYTES`, and an export whose records
//! hold more is refused up front (413 `export_too_large`) rather than failing half-way. An
//! asynchronous export to S3 (a presigned link) is what lifts that limit.
//!
//! One JSON object per line, each with a `type`:
//! - `export`: first; the tenant, when, and the format (`tenantry-export/1`);
//! - `dataset`: a dataset's definition, before its records;
//! - `record`: `dataset`, `key`, `version`, `data`, `created_at`, `updated_at`;
//! - `end`: last; the counts. A download without it was cut short.
//!
//! The export is recorded in the tenant's audit log before the first byte is sent.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use http::StatusCode;
use serde_json::json;
use tokio_postgres::types::Type;

use crate::App;
use crate::analytics::datasets::{self, Dataset};
use crate::audit::Action;
use crate::db::{Access, DbError, TenantTx};
use crate::http::{Caller, HandlerResult};

/// Records fetched per statement.
const PAGE: i64 = 1000;

/// Where the stream is.
struct Cursor {
    tx: Option<TenantTx>,
    datasets: Vec<Dataset>,
    /// The dataset being exported, and the last key sent of it.
    at: usize,
    after: Option<String>,
    /// Whether the dataset's own line went out.
    announced: bool,
    records: u64,
    done: bool,
}

pub(super) async fn export(State(app): State<Arc<App>>, caller: Caller) -> HandlerResult {
    let principal = caller.principal();
    let tenant = principal.tenant_id;
    let mut log = super::begin(&app, &caller, Access::ReadWrite).await?;
    super::audit(&mut log, Action::DataExported, None, json!({})).await?;
    log.commit().await?;

    let mut tx = super::begin(&app, &caller, Access::Snapshot).await?;
    if let Some(max) = app.config.http.max_export_bytes {
        let bytes: i64 = tx
            .query_one(
                "SELECT coalesce(sum(octet_length(data::text)), 0)::int8 FROM app.records",
                &[],
            )
            .await?
            .get(0);
        if bytes > max {
            return Err(crate::http::ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "export_too_large",
                format!(
                    "The export holds {bytes} bytes of records; this deployment returns at most \
                     {max}. Ask support for a bulk export."
                ),
            ));
        }
    }
    let all = datasets::list(&mut tx).await?;
    let now = Utc::now();
    let head = line(&json!({
        "type": "export", "format": "tenantry-export/1", "tenant_id": tenant,
        "exported_at": now, "datasets": all.len(),
    }));
    let cursor = Cursor {
        tx: Some(tx),
        datasets: all,
        at: 0,
        after: None,
        announced: false,
        records: 0,
        done: false,
    };
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(
        futures_util::stream::unfold(cursor, |mut c| async move {
            if c.done {
                return None;
            }
            match next_chunk(&mut c).await {
                Ok(bytes) => Some((Ok(bytes), c)),
                Err(e) => {
                    // The download stops without its `end` line: the client knows it is cut.
                    tracing::error!(error = %e, "export failed mid-stream");
                    c.done = true;
                    Some((Err(std::io::Error::other("export failed")), c))
                }
            }
        }),
    );
    tracing::info!(tenant_id = %tenant, "export started");
    let filename = format!("tenantry-export-{}.ndjson", now.format("%Y%m%dT%H%M%SZ"));
    http::Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .header(
            http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        )
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(body))
        .map_err(crate::http::ApiError::internal)
}

fn line(v: &serde_json::Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// The next lines: a dataset's definition, or a page of its records, or the end.
async fn next_chunk(c: &mut Cursor) -> Result<Bytes, DbError> {
    let Some(ds) = c.datasets.get(c.at) else {
        c.done = true;
        if let Some(tx) = c.tx.take() {
            tx.commit().await?;
        }
        return Ok(line(&json!({
            "type": "end", "datasets": c.datasets.len(), "records": c.records,
        })));
    };
    if !c.announced {
        c.announced = true;
        let mut v = serde_json::to_value(ds).unwrap_or_default();
        v["type"] = json!("dataset");
        return Ok(line(&v));
    }
    let tx = c.tx.as_mut().ok_or(DbError::Aborted)?;
    let rows = tx
        .query(
            "SELECT key, version, data, created_at, updated_at FROM app.records \
             WHERE dataset_id = $1 AND ($2::text IS NULL OR key > $2) ORDER BY key LIMIT $3",
            &[
                (&ds.id, Type::UUID),
                (&c.after, Type::TEXT),
                (&PAGE, Type::INT8),
            ],
        )
        .await?;
    let mut out = String::new();
    for r in &rows {
        let (key, version, data, created, updated): (
            String,
            i32,
            serde_json::Value,
            DateTime<Utc>,
            DateTime<Utc>,
        ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        out.push_str(
            &json!({
                "type": "record", "dataset": ds.name, "key": key, "version": version,
                "data": data, "created_at": created, "updated_at": updated,
            })
            .to_string(),
        );
        out.push('\n');
        c.after = Some(key);
    }
    c.records += rows.len() as u64;
    if (rows.len() as i64) < PAGE {
        c.at += 1;
        c.after = None;
        c.announced = false;
    }
    Ok(Bytes::from(out))
}

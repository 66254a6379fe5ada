//! `/v1/api-keys`: tenant admins create, list and revoke API keys for machine access.
//!
//! The routes need `manage_api_keys`, which only the `owner` and `admin` roles grant and no key
//! scope does: a key can neither mint nor revoke keys, so a leaked key cannot entrench itself.
//! A key's scopes are chosen here, at creation, and never change.

use std::sync::Arc;

use axum::extract::State;
use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::datasets::no_content;
use crate::App;
use crate::audit::Action;
use crate::auth::{ApiKeys, Scope};
use crate::db::Access;
use crate::http::{ApiError, Caller, HandlerResult, Json, PathParams, json_response};

/// `{key_id}`.
#[derive(Deserialize)]
pub(super) struct KeyPath {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewKey {
    name: String,
    scopes: Vec<String>,
}

/// The scopes asked for, sorted and without repeats; at least one, each one we know.
fn parse_scopes(names: &[String]) -> Result<Vec<Scope>, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_scopes",
            "`scopes` lists one or more of `read` (read data, query, ask) and `ingest` (write records).",
        )
    };
    let mut scopes = names
        .iter()
        .map(|n| Scope::parse(n).ok_or_else(invalid))
        .collect::<Result<Vec<_>, _>>()?;
    scopes.sort_unstable();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(invalid());
    }
    Ok(scopes)
}

pub(super) async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    Json(body): Json<NewKey>,
) -> HandlerResult {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "A key name is 1-200 characters without control characters.",
        ));
    }
    let scopes = parse_scopes(&body.scopes)?;
    let mut tx = super::begin(&app, &caller, Access::ReadWrite).await?;
    let key = ApiKeys::create(&mut tx, name, &scopes).await?;
    let details = json!({"name": key.name, "prefix": key.prefix, "scopes": key.scopes});
    let target = key.key_id.to_string();
    super::audit(&mut tx, Action::ApiKeyCreated, Some(&target), details).await?;
    tx.commit().await?;
    tracing::info!(key_id = %key.key_id, prefix = %key.prefix, "API key created");
    let mut resp = json_response(
        StatusCode::CREATED,
        &json!({
            "key_id": key.key_id,
            "prefix": key.prefix,
            "name": key.name,
            "scopes": key.scopes,
            "key": key.key,
            "note": "This is the only time the key is shown; store it now.",
        }),
    )?;
    // The body holds a secret: no cache anywhere may keep it.
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

pub(super) async fn list(State(app): State<Arc<App>>, caller: Caller) -> HandlerResult {
    let mut tx = super::begin(&app, &caller, Access::ReadOnly).await?;
    let keys = ApiKeys::list(&mut tx).await?;
    tx.commit().await?;
    json_response(StatusCode::OK, &json!({ "api_keys": keys }))
}

pub(super) async fn revoke(
    State(app): State<Arc<App>>,
    caller: Caller,
    PathParams(path): PathParams<KeyPath>,
) -> HandlerResult {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "api_key_not_found",
            "No such API key.",
        )
    };
    let key_id = Uuid::try_parse(&path.key_id).map_err(|_| not_found())?;
    let mut tx = super::begin(&app, &caller, Access::ReadWrite).await?;
    if !ApiKeys::revoke(&mut tx, key_id).await? {
        return Err(not_found());
    }
    let target = key_id.to_string();
    super::audit(&mut tx, Action::ApiKeyRevoked, Some(&target), json!({})).await?;
    tx.commit().await?;
    app.auth.forget_tenant(caller.principal().tenant_id);
    tracing::info!(key_id = %key_id, "API key revoked");
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn scopes_are_known_names_sorted_without_repeats() {
        assert_eq!(
            parse_scopes(&names(&["ingest", "read", "ingest"])).ok(),
            Some(vec![Scope::Read, Scope::Ingest])
        );
        assert_eq!(
            parse_scopes(&names(&["ingest"])).ok(),
            Some(vec![Scope::Ingest])
        );
        for bad in [
            &[][..],
            &["admin"],
            &["read", "manage_api_keys"],
            &["Read"],
            &[""],
        ] {
            let err = parse_scopes(&names(bad)).err().map(|e| e.code);
            assert_eq!(err, Some("invalid_scopes"), "{bad:?}");
        }
    }
}

//! `/v1/api-keys`: tenant admins create, list and revoke API keys for machine access.
//!
//! Only a signed-in person with the `owner` or `admin` role manages keys: an API key can neither
//! mint nor revoke keys, so a leaked key cannot entrench itself.

use http::{HeaderValue, StatusCode};
use lambda_http::Request;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::datasets::no_content;
use crate::App;
use crate::auth::ApiKeys;
use crate::db::Access;
use crate::http::{ApiError, HandlerFuture, RequestCtx, json_body, json_response};

/// Roles that may manage API keys.
const KEY_ADMIN_ROLES: &[&str] = &["owner", "admin"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
}

fn require_key_admin(ctx: &RequestCtx) -> Result<(), ApiError> {
    if ctx.principal()?.is_user_with_any_role(KEY_ADMIN_ROLES) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_role",
            "Managing API keys needs a signed-in user with the owner or admin role.",
        ))
    }
}

pub(super) fn create<'a>(app: &'a App, ctx: &'a RequestCtx, req: &'a Request) -> HandlerFuture<'a> {
    Box::pin(async move {
        require_key_admin(ctx)?;
        let body: NewKey = json_body(req)?;
        let name = body.name.trim();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "invalid_name",
                "A key name is 1-200 characters without control characters.",
            ));
        }
        let mut tx = super::begin(app, ctx, Access::ReadWrite).await?;
        let key = ApiKeys::create(&mut tx, name).await?;
        tx.commit().await?;
        tracing::info!(key_id = %key.key_id, prefix = %key.prefix, "API key created");
        let mut resp = json_response(
            StatusCode::CREATED,
            &json!({
                "key_id": key.key_id,
                "prefix": key.prefix,
                "name": key.name,
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
    })
}

pub(super) fn list<'a>(app: &'a App, ctx: &'a RequestCtx, _req: &'a Request) -> HandlerFuture<'a> {
    Box::pin(async move {
        require_key_admin(ctx)?;
        let mut tx = super::begin(app, ctx, Access::ReadOnly).await?;
        let keys = ApiKeys::list(&mut tx).await?;
        tx.commit().await?;
        json_response(StatusCode::OK, &json!({ "api_keys": keys }))
    })
}

pub(super) fn revoke<'a>(
    app: &'a App,
    ctx: &'a RequestCtx,
    _req: &'a Request,
) -> HandlerFuture<'a> {
    Box::pin(async move {
        require_key_admin(ctx)?;
        let not_found = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "api_key_not_found",
                "No such API key.",
            )
        };
        let key_id = ctx
            .param("key_id")
            .and_then(|s| Uuid::try_parse(s).ok())
            .ok_or_else(not_found)?;
        let mut tx = super::begin(app, ctx, Access::ReadWrite).await?;
        if !ApiKeys::revoke(&mut tx, key_id).await? {
            return Err(not_found());
        }
        tx.commit().await?;
        tracing::info!(key_id = %key_id, "API key revoked");
        Ok(no_content())
    })
}

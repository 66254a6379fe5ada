//! Extractors: what a handler takes from a request, each refusing with our problem codes.
//!
//! - [`Caller`]: the authenticated principal the edge admitted (tenant routes only).
//! - [`StaffCaller`]: the staff member the edge admitted (admin routes only).
//! - [`PathParams`]: the path's parameters, percent-decoded into a typed struct.
//! - [`QueryParams`]: the query string parsed into a typed struct.
//! - [`Json`]: a JSON body parsed into `T` (415 unless the body is declared JSON; 400
//!   `invalid_json` naming the member the parser stopped at).
//! - [`RawBody`]: the body's bytes, for handlers that check a signature over them or take
//!   another format.
//!
//! The body has already been read, within `MAX_BODY_BYTES`, by the edge before authentication,
//! so these never wait on the network.

use axum::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::{ApiError, cut, json_from, require_json};
use crate::auth::{AuthError, Principal, Staff};

/// The authenticated caller of this request.
#[derive(Clone, Debug)]
pub struct Caller(pub Principal);

impl Caller {
    /// The principal.
    pub fn principal(&self) -> &Principal {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Only a route the edge authenticates has one; a handler asking for it on another route
        // is refused rather than served anonymously.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::from(AuthError::Missing))
    }
}

/// The authenticated staff member of an admin route.
#[derive(Clone, Debug)]
pub struct StaffCaller(pub Staff);

impl<S: Send + Sync> FromRequestParts<S> for StaffCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<StaffCaller>()
            .cloned()
            .ok_or_else(|| ApiError::from(AuthError::NotStaff))
    }
}

/// The path's parameters as `T` (a struct named like the route's `{segments}`), percent-decoded.
/// A segment that does not decode to UTF-8 names nothing: 404, as for an unknown path.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(_) => Err(ApiError::not_found("No such route.")),
        }
    }
}

/// The query string as `T`; unknown or malformed parameters are 400 `invalid_query_parameters`.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(QueryParams)
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_query_parameters",
                    format!(
                        "The query string is not valid for this endpoint: {}",
                        cut(&e.to_string(), 300)
                    ),
                )
            })
    }
}

/// A JSON body parsed into `T` (use `#[serde(deny_unknown_fields)]` on `T`).
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        require_json(req.headers())?;
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        json_from(&bytes).map(Json)
    }
}

/// The body's bytes.
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        // Already in memory and within the limit (the edge read it); no second limit here.
        axum::body::to_bytes(req.into_body(), usize::MAX)
            .await
            .map(RawBody)
            .map_err(|_| {
                ApiError::bad_request("unreadable_body", "The request body could not be read.")
            })
    }
}

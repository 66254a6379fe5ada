//! HTTP plumbing shared by every function and the local runner: the routing table's types
//! ([`Route`], [`Needs`], [`Endpoint`]), problem+json errors ([`ApiError`], which handlers return
//! and axum renders), the extractors handlers take ([`Caller`], [`PathParams`], [`Json`],
//! [`RawBody`]) and the JSON helpers behind them. The edge that serves the table (axum and
//! tower-http) is in `edge`.

mod edge;
mod extract;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use http::{HeaderValue, Method, StatusCode};
use lambda_http::RequestExt as _;
use lambda_http::request::RequestContext;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

pub use edge::HttpConfig;
pub use edge::{call, router};

use crate::App;
use crate::auth::{AuthError, Permission, StaffPermission};
use crate::db::DbError;

pub use edge::current_request_id;
pub use extract::{Caller, Json, PathParams, QueryParams, RawBody, StaffCaller};

/// What a handler returns.
pub type HandlerResult = Result<Response, ApiError>;

/// A route's handler, as axum serves it for the route's method: an `async fn` taking extractors
/// ([`Caller`], [`PathParams`], [`Json`], `State<Arc<App>>`), callable from a test like any other.
/// Written in the table as `|method| axum::routing::on(method, handler)`.
pub type Endpoint = fn(MethodFilter) -> MethodRouter<Arc<App>>;

/// One row of the routing table: the single source for the Lambda functions, the local runner and
/// the infrastructure template.
#[derive(Debug)]
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path, with `{name}` segments for parameters (API Gateway's syntax).
    pub path: &'static str,
    /// The Lambda function (folder under `functions/`) that serves it.
    pub function: &'static str,
    /// What the caller must be or hold; checked before the handler runs.
    pub needs: Needs,
    /// The handler.
    pub endpoint: Endpoint,
}

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Nothing the edge checks: the handler authenticates the sender itself (webhooks).
    Sender,
    /// Any authenticated caller of an active tenant, whatever it may do (`GET /v1/me`).
    Principal,
    /// An authenticated caller holding this permission.
    Permission(Permission),
    /// A support staff member (the admin routes) holding this staff permission.
    Staff(StaffPermission),
}

impl Needs {
    /// Whether the edge authenticates the caller (as a tenant's principal or as staff).
    pub fn authenticated(self) -> bool {
        self != Needs::Sender
    }

    /// The name of what is needed, as the OpenAPI document's `x-permission` states it (none for
    /// `Sender` and `Principal`).
    pub fn permission_name(self) -> Option<&'static str> {
        match self {
            Needs::Permission(p) => Some(p.name()),
            Needs::Staff(p) => Some(p.name()),
            Needs::Sender | Needs::Principal => None,
        }
    }
}

/// An error answered as `application/problem+json` (RFC 9457) with a stable `code`.
///
/// 4xx bodies say what was wrong; 5xx bodies say nothing internal (the cause goes to the log,
/// tagged with the request id the caller can quote).
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`invalid_token`, `not_found`, ...).
    pub code: &'static str,
    /// A human-readable explanation, safe to show the caller.
    pub detail: String,
    /// Extra members of the problem document (e.g. a list of invalid fields).
    pub extra: Option<Value>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// A 5xx that is the deployment's known state, not a failure (logged as a refusal).
    expected: bool,
}

impl ApiError {
    /// A 4xx error.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            extra: None,
            source: None,
            expected: false,
        }
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 404: also what another tenant's resource looks like.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 500: the cause is logged, never shown.
    pub fn internal(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            detail: "An internal error occurred. Quote the request id when reporting it.".into(),
            extra: None,
            source: Some(Box::new(source)),
            expected: false,
        }
    }

    /// Keeps the cause for the log (5xx only ever log it).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Marks a 5xx as the deployment's known state (a feature not configured), so each request
    /// it refuses is logged as a refusal, not as a failure someone must look at.
    pub fn expected(mut self) -> Self {
        self.expected = true;
        self
    }

    /// Adds members to the problem document.
    pub fn with_extra(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }

    /// Renders the problem document for request `request_id`.
    pub fn problem(self, request_id: &str) -> Response {
        if self.status.is_server_error() && !self.expected {
            let cause = self.source.as_ref().map(|e| error_chain(e.as_ref()));
            tracing::error!(
                code = self.code,
                status = self.status.as_u16(),
                cause,
                "request failed"
            );
        } else {
            tracing::info!(
                code = self.code,
                status = self.status.as_u16(),
                "request refused"
            );
        }
        let retry_after = self
            .extra
            .as_ref()
            .and_then(|e| e.get("retry_after"))
            .and_then(Value::as_i64)
            .filter(|_| self.status == StatusCode::TOO_MANY_REQUESTS);
        let mut doc = json!({
            "type": format!("https://tenantry.dev/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
            "request_id": request_id,
        });
        if let (Some(Value::Object(extra)), Value::Object(doc)) = (self.extra, &mut doc) {
            for (k, v) in extra {
                doc.entry(k).or_insert(v);
            }
        }
        let mut resp = response(self.status, "application/problem+json", doc.to_string());
        if let Some(v) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        resp
    }
}

/// The problem document, for the request being served.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.problem(&edge::current_request_id())
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        use StatusCode as S;
        match e {
            AuthError::Missing => Self::new(
                S::UNAUTHORIZED,
                "missing_credentials",
                "Send `Authorization: Bearer <token>` or `X-Api-Key: <key>`.",
            ),
            AuthError::Ambiguous => Self::new(
                S::BAD_REQUEST,
                "ambiguous_credentials",
                "Send either a bearer token or an API key, not both.",
            ),
            AuthError::InvalidToken(reason) => {
                tracing::info!(reason, "token rejected");
                let detail = if reason == "expired" {
                    "The access token has expired."
                } else {
                    "The access token is not valid for this API."
                };
                Self::new(S::UNAUTHORIZED, "invalid_token", detail)
            }
            AuthError::InvalidApiKey => Self::new(
                S::UNAUTHORIZED,
                "invalid_api_key",
                "The API key is not valid or has been revoked.",
            ),
            AuthError::NoOrganization => Self::new(
                S::FORBIDDEN,
                "organization_required",
                "The token was not issued for an organization; sign in to one.",
            ),
            AuthError::UnknownOrganization => Self::new(
                S::FORBIDDEN,
                "unknown_organization",
                "The token's organization is not a Tenantry tenant.",
            ),
            AuthError::TenantSuspended => Self::new(
                S::FORBIDDEN,
                "tenant_suspended",
                "This tenant is suspended; contact support.",
            ),
            AuthError::TenantClosed => {
                Self::new(S::FORBIDDEN, "tenant_closed", "This tenant is closed.")
            }
            AuthError::StaffToken => Self::new(
                S::FORBIDDEN,
                "staff_token_not_accepted",
                "Staff tokens do not act in a tenant; use an impersonation session.",
            ),
            AuthError::NotStaff => Self::new(
                S::FORBIDDEN,
                "not_staff",
                "This route is for support staff, signed in through the staff organization.",
            ),
            AuthError::ImpersonationInvalid => Self::new(
                S::UNAUTHORIZED,
                "impersonation_invalid",
                "No impersonation session of yours has this id.",
            ),
            AuthError::ImpersonationEnded => Self::new(
                S::UNAUTHORIZED,
                "impersonation_ended",
                "This impersonation session has been ended; start a new one.",
            ),
            AuthError::ImpersonationExpired => Self::new(
                S::UNAUTHORIZED,
                "impersonation_expired",
                "This impersonation session has expired; start a new one.",
            ),
            AuthError::ImpersonationAwaitingApproval => Self::new(
                S::FORBIDDEN,
                "impersonation_awaiting_approval",
                "This impersonation session waits for its approval.",
            ),
            AuthError::SupportAccessOff => Self::new(
                S::FORBIDDEN,
                "support_access_off",
                "The tenant does not allow support access.",
            ),
            AuthError::SupportAccessReadOnly => Self::new(
                S::FORBIDDEN,
                "support_access_read_only",
                "The tenant allows read-only support access only.",
            ),
            AuthError::Unavailable(source) => Self {
                status: S::SERVICE_UNAVAILABLE,
                code: "auth_unavailable",
                detail: "Authentication is temporarily unavailable; retry shortly.".into(),
                extra: None,
                source: Some(source),
                expected: false,
            },
        }
    }
}

/// The error of a route whose query the caller shapes and whose transaction runs under the
/// caller's query time limit (`/v1/query`): a statement cancelled there (503 `database_busy`
/// elsewhere) is the caller's to fix, 422 `query_timeout`.
pub fn caller_query_error(e: ApiError) -> ApiError {
    if e.code == "database_busy" {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "query_timeout",
            "The query ran longer than its time limit; narrow it (filters, time range) and retry.",
        )
    } else {
        e
    }
}

impl From<DbError> for ApiError {
    /// A lost connection or a timeout on a statement of ours is a 503 (retry later), never a
    /// 500 and never the caller's fault.
    fn from(e: DbError) -> Self {
        let unavailable = |code: &'static str, detail: &str, e: DbError| Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code,
            detail: detail.into(),
            extra: None,
            source: Some(Box::new(e)),
            expected: false,
        };
        match &e {
            DbError::Unavailable(_) => unavailable(
                "database_unavailable",
                "The database is temporarily unavailable; retry shortly.",
                e,
            ),
            _ if e.is_connection_lost() => unavailable(
                "database_unavailable",
                "The database connection was lost; retry shortly.",
                e,
            ),
            _ if e.is_timeout() => unavailable(
                "database_busy",
                "The database took too long to answer; retry shortly.",
                e,
            ),
            // Another transaction won a conflict (a deadlock or serialization failure): nothing
            // was written, and the same request will go through on a retry.
            _ if e.is_conflict() => unavailable(
                "write_conflict",
                "A concurrent write conflicted with this one; nothing was written. Retry.",
                e,
            ),
            // A data exception (class 22) from values the validators let through: the caller's
            // input, not our fault, and still never a 500 with nothing useful in it.
            _ if e.sqlstate().is_some_and(|s| s.code().starts_with("22")) => {
                tracing::warn!(
                    sqlstate = e.sqlstate().map(|s| s.code()),
                    "data exception from request values"
                );
                Self::bad_request(
                    "invalid_value",
                    "A value in the request cannot be stored or compared.",
                )
            }
            _ => Self::internal(e),
        }
    }
}

impl From<crate::state::BeginError> for ApiError {
    fn from(e: crate::state::BeginError) -> Self {
        match e {
            crate::state::BeginError::Db(e) => e.into(),
            e @ crate::state::BeginError::NoImpersonationPool => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "impersonation_unavailable",
                detail: "Impersonation is not configured for this function.".into(),
                extra: None,
                source: Some(Box::new(e)),
                expected: false,
            },
        }
    }
}

/// 403 for a caller that lacks `needed`; names the permission, never what the caller holds.
pub fn insufficient_permission(needed: Permission) -> ApiError {
    lacking(needed.name(), "your role or API key")
}

/// 403 for a staff member that lacks `needed`.
pub fn insufficient_staff_permission(needed: StaffPermission) -> ApiError {
    lacking(needed.name(), "your staff role")
}

fn lacking(permission: &'static str, holder: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "insufficient_permission",
        format!("This needs the `{permission}` permission, which {holder} does not grant."),
    )
    .with_extra(json!({ "permission": permission }))
}

/// A response with a body and content type.
pub fn response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut resp = Response::new(axum::body::Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    resp
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> HandlerResult {
    let body = serde_json::to_string(value).map_err(ApiError::internal)?;
    Ok(response(status, "application/json", body))
}

/// 415 unless the request declares a JSON body ([`is_json`]).
pub fn require_json(headers: &http::HeaderMap) -> Result<(), ApiError> {
    if is_json(headers) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the body as JSON with `Content-Type: application/json`.",
        ))
    }
}

/// Parses a JSON body into `T`: an empty body, malformed JSON, wrong types and unknown fields are
/// 400 `invalid_json` naming the member (use `#[serde(deny_unknown_fields)]` on `T`). What the
/// [`Json`] extractor does after checking the content type.
pub fn json_from<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "The request body is empty; send JSON.",
        ));
    }
    parse_json(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!(
                "The request body is not valid for this endpoint: {}",
                e.message
            ),
        )
        .with_extra(json!({
            "errors": [{"path": e.path, "reason": "invalid_json", "message": e.message}]
        }))
    })
}

/// Why a body did not parse: where (a JSON pointer to the member being read, `""` for the whole
/// body) and what serde said, both cut short so a huge key does not come back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyError {
    /// The JSON pointer, each member name at most 64 characters.
    pub path: String,
    /// serde's message, at most 300 characters.
    pub message: String,
}

/// Parses `bytes` as one JSON document of type `T`, reporting where it failed.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut de).map_err(|e| BodyError {
        path: json_pointer(e.path()),
        message: cut(&e.inner().to_string(), 300),
    })?;
    de.end().map_err(|e| BodyError {
        path: String::new(),
        message: cut(&e.to_string(), 300),
    })?;
    Ok(parsed)
}

/// `filter.and[2].op` as `/filter/and/2/op` (RFC 6901 escapes).
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push('/');
                out.push_str(&cut(key, 64).replace('~', "~0").replace('/', "~1"));
            }
            // A member serde could not name (a non-string key): the path stops at its parent.
            Segment::Unknown => {}
        }
    }
    out
}

/// `s`, at most `max_chars` characters (an ellipsis marks a cut).
pub(crate) fn cut(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Whether the request declares a JSON body: exactly one `Content-Type` whose media type is
/// `application/json` or `application/<something>+json` (parameters such as `charset` allowed).
pub fn is_json(headers: &http::HeaderMap) -> bool {
    match media_type(headers)
        .as_deref()
        .and_then(|m| m.split_once('/'))
    {
        Some(("application", sub)) => {
            sub == "json" || sub.strip_suffix("+json").is_some_and(|s| !s.is_empty())
        }
        _ => false,
    }
}

/// The media type of the request's one `Content-Type`, lower case and without parameters; None
/// when there is none, several, or one that is not text.
pub fn media_type(headers: &http::HeaderMap) -> Option<String> {
    let mut values = headers.get_all(http::header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let essence = value.to_str().ok()?.split(';').next().unwrap_or("");
    Some(essence.trim().to_ascii_lowercase())
}

/// The request id: API Gateway's own when there is one (so it matches its access logs), else a
/// well-formed `x-request-id` from the caller (the local runner), else a new one.
pub fn request_id<B>(req: &http::Request<B>) -> String {
    #[allow(unreachable_patterns)]
    let from_gateway = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.request_id.clone(),
        _ => None,
    };
    from_gateway
        .or_else(|| {
            req.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .filter(|v| {
                    !v.is_empty()
                        && v.len() <= 128
                        && v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b))
                })
                .map(str::to_owned)
        })
        .unwrap_or_else(|| Uuid::now_v7().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn server_errors_hide_their_cause() {
        use http_body_util::BodyExt as _;
        let err = ApiError::internal(std::io::Error::other("password=hunter2"));
        let resp = err.problem("rid-1");
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = resp.into_body().collect().await.map(|c| c.to_bytes());
        let body = String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned();
        assert!(!body.contains("hunter2"));
        let doc: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(doc["code"], "internal");
        assert_eq!(doc["request_id"], "rid-1");
    }

    #[test]
    fn only_json_media_types_are_json() {
        let of = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
                );
            }
            is_json(&h)
        };
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/cloudevents+json",
            "application/json ;charset=utf-8",
        ] {
            assert!(of(&[yes]), "{yes}");
        }
        for no in [
            &[][..],
            &["text/plain"],
            &["application/x-www-form-urlencoded"],
            &["multipart/form-data; boundary=x"],
            &["application/+json"],
            &["application/jsonx"],
            &["text/json"],
            &["application/json", "application/json"],
            &[""],
        ] {
            assert!(!of(no), "{no:?}");
        }
    }
}

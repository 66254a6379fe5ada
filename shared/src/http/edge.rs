//! The edge: the routing table served by axum, with tower-http for request ids, tracing and panic
//! catching. The same [`router`] runs under `lambda_http` in every function, under `axum::serve`
//! in the local runner, and in the tests (`tower::ServiceExt::oneshot`).
//!
//! For each request, in order: a request id (API Gateway's, else a well-formed `x-request-id`
//! from the caller, else a new one) on the request, the response and every log line; routing
//! (404 for an unknown path, 405 with `Allow` for a known path and another method); then the
//! route's admission ([`admit`]): the body read, refused past `MAX_BODY_BYTES` (413;
//! [`HttpConfig`], read from the environment here), the caller authenticated and its permission
//! checked as the route declares ([`Needs`]), the [`Caller`] handed to the handler; then the
//! handler with its extractors. Every refusal is a problem document, and a panic anywhere below
//! the request-id layer is a 500 problem, never a dropped connection.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, State};
use axum::response::IntoResponse as _;
use axum::routing::{MethodFilter, MethodRouter};
use http::{HeaderName, HeaderValue, StatusCode};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::trace::TraceLayer;

use super::{
    ApiError, Caller, Needs, Route, StaffCaller, insufficient_permission,
    insufficient_staff_permission, request_id,
};
use crate::App;
use crate::auth::IMPERSONATION_HEADER;
use crate::env::{ConfigError, Env};

/// The header carrying the request id both ways.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    /// This request's id, for the panic handler (which sees only the panic).
    static CURRENT_REQUEST_ID: String;
}

/// An axum response.
type AxumResponse = http::Response<axum::body::Body>;

/// HTTP limits.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Larger request bodies are refused with 413 before any parsing.
    pub max_body_bytes: usize,
    /// An export whose records hold more JSON than this is refused with 413 (where responses
    /// are buffered: Lambda returns at most 6 MB). None: no limit.
    pub max_export_bytes: Option<i64>,
}

impl HttpConfig {
    /// `MAX_BODY_BYTES`, `EXPORT_MAX_BYTES`.
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let max_export_bytes = match env.var("EXPORT_MAX_BYTES") {
            None => None,
            Some(_) => Some(env.parse("EXPORT_MAX_BYTES", 0_i64)?),
        };
        Ok(Self {
            max_body_bytes: env.parse("MAX_BODY_BYTES", 4 * 1024 * 1024)?,
            max_export_bytes,
        })
    }
}

/// The router serving `routes` (a function's own rows, or all of them locally).
pub fn router(app: Arc<App>, routes: &[&'static Route]) -> Router {
    let mut by_path: BTreeMap<&'static str, Vec<&'static Route>> = BTreeMap::new();
    for r in routes {
        by_path.entry(r.path).or_default().push(r);
    }
    let mut router = Router::new();
    for (path, rows) in by_path {
        let allow = rows
            .iter()
            .map(|r| r.method.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut methods: MethodRouter<Arc<App>> = MethodRouter::new();
        for &route in &rows {
            let Ok(filter) = MethodFilter::try_from(route.method.clone()) else {
                // Not a method axum routes on its own (the table holds GET, POST, DELETE).
                tracing::error!(method = %route.method, path, "route not served");
                continue;
            };
            let admission = Admission {
                app: app.clone(),
                needs: route.needs,
            };
            methods = methods.merge(
                (route.endpoint)(filter)
                    .route_layer(axum::middleware::from_fn_with_state(admission, admit)),
            );
        }
        let allow: Arc<str> = allow.into();
        methods = methods.fallback(move || method_not_allowed(allow.clone()));
        router = router.route(path, methods);
    }
    let routed = router
        .fallback(|| async { problem(ApiError::not_found("No such route.")) })
        .with_state(app)
        // Innermost first: each layer wraps the ones above it.
        .layer(CatchPanicLayer::custom(panicked))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &http::Request<axum::body::Body>| {
                    let rid = req
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        request_id = %rid,
                        method = %req.method(),
                        route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str),
                        tenant_id = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(
                    |resp: &http::Response<_>, latency: std::time::Duration, _: &tracing::Span| {
                        tracing::info!(
                            status = resp.status().as_u16(),
                            elapsed_ms = latency.as_secs_f64() * 1000.0,
                            "request served"
                        );
                    },
                )
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(axum::middleware::from_fn(with_request_id));
    // Before routing: route on the path as the caller sent it.
    Router::new()
        .fallback_service(routed)
        .layer(axum::middleware::map_request(as_sent))
}

/// The path to route on: API Gateway's raw path when there is one (`lambda_http` builds the URI
/// through a URL parser that drops `.` and `..` segments, so a record keyed `..` would be out of
/// reach in AWS and not locally), without trailing slashes (`/v1/me/` is `/v1/me`).
async fn as_sent(mut req: axum::extract::Request) -> axum::extract::Request {
    use lambda_http::RequestExt as _;
    let raw = req.raw_http_path();
    let path = if raw.is_empty() {
        req.uri().path()
    } else {
        raw
    };
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    if trimmed != req.uri().path() {
        let rebuilt = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        if let Ok(uri) = rebuilt.parse() {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Serves one request through `router` in process, its body collected: the entry for tests,
/// benchmarks and tools that hold a `lambda_http::Request` (as Lambda delivers it).
pub async fn call(router: &Router, req: lambda_http::Request) -> http::Response<bytes::Bytes> {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let (parts, body) = req.into_parts();
    let req = http::Request::from_parts(parts, axum::body::Body::from(body.to_vec()));
    let resp = match router.clone().oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    // The router's bodies are in memory; one that fails to collect is an empty body.
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    http::Response::from_parts(parts, bytes)
}

/// Sets the request id on the request (replacing a malformed one from the caller) and keeps it
/// for the panic handler.
async fn with_request_id(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> AxumResponse {
    let rid = request_id(&req);
    if let Ok(v) = HeaderValue::from_str(&rid) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    CURRENT_REQUEST_ID.scope(rid, next.run(req)).await
}

/// The id of the request being served ("" outside one).
pub fn current_request_id() -> String {
    CURRENT_REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_default()
}

/// A panic below the request-id layer: a 500 problem. The payload is never shown, and the panic
/// hook [`crate::telemetry::init`] installs logs only where it happened (it may hold row contents).
fn panicked(_payload: Box<dyn Any + Send + 'static>) -> AxumResponse {
    problem(ApiError::internal(std::io::Error::other(
        "handler panicked",
    )))
}

async fn method_not_allowed(allow: Arc<str>) -> AxumResponse {
    let mut resp = problem(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("This path accepts {allow}."),
    ));
    if let Ok(v) = HeaderValue::from_str(&allow) {
        resp.headers_mut().insert(http::header::ALLOW, v);
    }
    resp
}

/// What a route's admission needs: the app (its limits, its authenticator) and the route's
/// [`Needs`].
#[derive(Clone)]
struct Admission {
    app: Arc<App>,
    needs: Needs,
}

/// A routed request's admission, before its handler: the body read within the limit, the caller
/// authenticated and its permission checked, the [`Caller`] put where the extractor finds it.
async fn admit(
    State(a): State<Admission>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> AxumResponse {
    let (mut parts, body) = req.into_parts();
    let limit = a.app.config.http.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return problem(if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("The request body exceeds {limit} bytes."),
                )
            } else {
                ApiError::bad_request("unreadable_body", "The request body could not be read.")
            });
        }
    };
    if let Needs::Staff(needed) = a.needs {
        let staff = match a.app.auth.authenticate_staff(&parts.headers).await {
            Ok(s) => s,
            Err(e) => return problem(ApiError::from(e)),
        };
        if !staff.can(needed) {
            return problem(insufficient_staff_permission(needed));
        }
        parts.extensions.insert(StaffCaller(staff));
    } else if a.needs.authenticated() {
        let principal = match a.app.auth.authenticate(&parts.headers).await {
            Ok(p) => p,
            Err(e) => return problem(ApiError::from(e)),
        };
        tracing::Span::current().record("tenant_id", tracing::field::display(principal.tenant_id));
        let needed = match a.needs {
            Needs::Permission(needed) => Some(needed),
            _ => None,
        };
        let allowed = needed.is_none_or(|n| principal.can(n));
        // A closed tenant's people may take their data (the export) and do nothing else.
        if principal.closed && (needed.is_none() || !allowed) {
            return problem(ApiError::from(crate::auth::AuthError::TenantClosed));
        }
        let Some(session) = principal.impersonation().cloned() else {
            if let Some(needed) = needed.filter(|_| !allowed) {
                return problem(insufficient_permission(needed));
            }
            parts.extensions.insert(Caller(principal));
            return next
                .run(axum::extract::Request::from_parts(
                    parts,
                    axum::body::Body::from(bytes),
                ))
                .await;
        };
        // Every request under impersonation is in the tenant's audit log before it runs,
        // refused ones too; if it cannot be recorded, it does not run.
        let mut resp = match record_impersonated(&a.app, &principal, &parts, allowed).await {
            Err(e) => problem(e),
            Ok(()) => match needed.filter(|_| !allowed) {
                Some(needed) => problem(not_under_impersonation(needed, session.mode)),
                None => {
                    parts.extensions.insert(Caller(principal));
                    next.run(axum::extract::Request::from_parts(
                        parts,
                        axum::body::Body::from(bytes),
                    ))
                    .await
                }
            },
        };
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{}; mode={}; expires_at={}",
            session.session_id,
            session.mode.name(),
            session
                .expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )) {
            resp.headers_mut()
                .insert(HeaderName::from_static(IMPERSONATION_HEADER), v);
        }
        return resp;
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// Records a request made under impersonation in the tenant's audit log (in a transaction of
/// its own, as the session: the read-only role can append to the log and nothing else).
async fn record_impersonated(
    app: &App,
    principal: &crate::auth::Principal,
    parts: &http::request::Parts,
    allowed: bool,
) -> Result<(), ApiError> {
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let mut tx = app
        .begin_for(
            principal,
            crate::db::Access::ReadWrite,
            crate::db::TxSettings::default(),
        )
        .await?;
    crate::audit::record(
        &mut tx,
        crate::audit::Action::ImpersonatedRequest,
        Some(parts.uri.path()),
        serde_json::json!({
            "method": parts.method.as_str(),
            "route": route,
            "allowed": allowed,
        }),
        Some(&current_request_id()),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// 403 for a permission no impersonation session of this mode holds.
fn not_under_impersonation(
    needed: crate::auth::Permission,
    mode: crate::auth::ImpersonationMode,
) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "not_allowed_under_impersonation",
        format!(
            "A {} impersonation session cannot do this (it needs `{}`).",
            mode.name().replace('_', "-"),
            needed.name()
        ),
    )
    .with_extra(serde_json::json!({ "permission": needed.name(), "mode": mode.name() }))
}

/// A problem document for this request.
fn problem(e: ApiError) -> AxumResponse {
    e.into_response()
}

//! `GET /v1/me` end to end through the edge, from a real API Gateway (v2) event.

use std::sync::Arc;
use std::time::Duration;

use lambda_http::{Body, Request};
use serde_json::Value;
use tenantry::App;
use tenantry::api::routes_for;
use tenantry::auth::{ApiKeys, Scope};
use tenantry::http::Route;
use tenantry_tests::{TestApp, issuer, tenant, tx};

const EVENT: &str = include_str!("../../events/me/get.json");

fn event(authorization: Option<&str>) -> Request {
    let raw = match authorization {
        Some(a) => EVENT.replace("Bearer REPLACE_WITH_A_TOKEN", a),
        None => EVENT.replace("\"authorization\": \"Bearer REPLACE_WITH_A_TOKEN\",", ""),
    };
    lambda_http::request::from_str(&raw).unwrap()
}

fn body_json(resp: &http::Response<bytes::Bytes>) -> Value {
    serde_json::from_slice(resp.body().as_ref()).unwrap()
}

/// Serves `req` with exactly `routes`, as the function serving them does in Lambda.
async fn dispatch(
    app: &Arc<App>,
    routes: &[&'static Route],
    req: Request,
) -> http::Response<bytes::Bytes> {
    tenantry::http::call(&tenantry::http::router(Arc::clone(app), routes), req).await
}

#[tokio::test]
async fn me_returns_the_principal_and_its_tenant() {
    let app = TestApp::new().await;
    let a = tenant(&app.app.db, "alpha").await;
    tenant(&app.app.db, "bravo").await;
    let token = issuer()
        .token(
            "auth0|alice",
            "org_alpha",
            &["admin"],
            Duration::from_secs(600),
        )
        .unwrap();
    let resp = dispatch(
        &app.app,
        &routes_for("me"),
        event(Some(&format!("Bearer {token}"))),
    )
    .await;
    assert_eq!(resp.status(), 200);
    // API Gateway's request id is the request's id, and the caller gets it back.
    assert_eq!(resp.headers()["x-request-id"], "CZ5N8jXvjoEEMvA=");
    let doc = body_json(&resp);
    assert_eq!(doc["tenant"]["id"], a.to_string());
    assert_eq!(doc["tenant"]["slug"], "alpha");
    assert_eq!(doc["principal"]["kind"], "user");
    assert_eq!(doc["principal"]["id"], "auth0|alice");
    assert_eq!(doc["principal"]["roles"][0], "admin");
}

#[tokio::test]
async fn me_with_an_api_key() {
    let app = TestApp::new().await;
    let b = tenant(&app.app.db, "bravo").await;
    let mut t = tx(&app.app.db, b).await;
    let key = ApiKeys::create(&mut t, "etl", &[Scope::Read, Scope::Ingest])
        .await
        .unwrap();
    t.commit().await.unwrap();
    let mut req = event(None);
    req.headers_mut()
        .insert("x-api-key", key.key.parse().unwrap());
    let resp = dispatch(&app.app, &routes_for("me"), req).await;
    assert_eq!(resp.status(), 200);
    let doc = body_json(&resp);
    assert_eq!(doc["tenant"]["slug"], "bravo");
    assert_eq!(doc["principal"]["kind"], "api_key");
    assert_eq!(doc["principal"]["key_id"], key.key_id.to_string());
    // The key itself never comes back.
    assert!(!String::from_utf8_lossy(resp.body().as_ref()).contains(&key.key));
}

#[tokio::test]
async fn refusals_are_problem_documents_with_stable_codes() {
    let app = TestApp::new().await;
    tenant(&app.app.db, "alpha").await;
    let routes = routes_for("me");

    let cases: Vec<(Request, u16, &str)> = vec![
        (event(None), 401, "missing_credentials"),
        (event(Some("Bearer not-a-token")), 401, "invalid_token"),
        (event(Some("Basic dXNlcjpwYXNz")), 401, "invalid_token"),
        (
            event(Some(&format!(
                "Bearer {}",
                issuer()
                    .token("auth0|eve", "org_unknown", &[], Duration::from_secs(600))
                    .unwrap()
            ))),
            403,
            "unknown_organization",
        ),
        (
            {
                let mut r = event(None);
                *r.method_mut() = http::Method::DELETE;
                r
            },
            405,
            "method_not_allowed",
        ),
        (
            {
                let raw = EVENT.replace("\"rawPath\": \"/v1/me\"", "\"rawPath\": \"/v1/nope\"");
                lambda_http::request::from_str(&raw).unwrap()
            },
            404,
            "not_found",
        ),
        (
            {
                let mut r = event(None);
                *r.body_mut() = Body::Text("x".repeat(70_000));
                r
            },
            413,
            "payload_too_large",
        ),
    ];
    for (req, status, code) in cases {
        let resp = dispatch(&app.app, &routes, req).await;
        assert_eq!(resp.status(), status, "{code}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let doc = body_json(&resp);
        assert_eq!(doc["code"], code);
        assert_eq!(doc["status"], status);
        assert_eq!(doc["request_id"], "CZ5N8jXvjoEEMvA=");
    }
}

#[tokio::test]
async fn a_database_outage_is_a_503_not_a_leak() {
    let mut app = TestApp::new().await;
    tenant(&app.app.db, "alpha").await;
    let token = issuer()
        .token("auth0|alice", "org_alpha", &[], Duration::from_secs(600))
        .unwrap();
    // Point the app at a port where nothing listens.
    let mut config = app.app.config.clone();
    config.db.url = format!(
        "postgres://tenantry_app:secret-password@127.0.0.1:{}/x",
        tenantry_tests::free_port()
    );
    config.db.connect_timeout = Duration::from_secs(2);
    app.app = Arc::new(tenantry::App::builder(config).build().unwrap());
    let resp = dispatch(
        &app.app,
        &routes_for("me"),
        event(Some(&format!("Bearer {token}"))),
    )
    .await;
    assert_eq!(resp.status(), 503);
    let text = String::from_utf8_lossy(resp.body().as_ref()).into_owned();
    assert!(!text.contains("secret-password"));
    assert_eq!(body_json(&resp)["code"], "auth_unavailable");
}

async fn panicking() -> tenantry::http::HandlerResult {
    panic!("a bug in a handler, with secret=hunter2 in its message")
}

/// A handler that panics answers a problem document; the panic never reaches the runtime and its
/// message never reaches the caller.
#[tokio::test]
async fn a_panicking_handler_becomes_a_500_problem() {
    static ROUTE: Route = Route {
        method: http::Method::GET,
        path: "/v1/me",
        function: "me",
        needs: tenantry::http::Needs::Sender,
        endpoint: |method| axum::routing::on(method, panicking),
    };
    let app = TestApp::new().await;
    let resp = dispatch(&app.app, &[&ROUTE], event(None)).await;
    assert_eq!(resp.status(), 500);
    let body = String::from_utf8_lossy(resp.body().as_ref()).into_owned();
    assert!(!body.contains("hunter2"));
    assert_eq!(body_json(&resp)["code"], "internal");
    assert_eq!(resp.headers()["x-request-id"], "CZ5N8jXvjoEEMvA=");
    // And the app keeps serving.
    let resp = dispatch(&app.app, &[&ROUTE], event(None)).await;
    assert_eq!(resp.status(), 500);
}

//! The edge (axum + tower-http) as an attacker and a careless client meet it: bodies that are not
//! declared JSON, several credentials at once, a method the path does not take, signed claims
//! holding control characters or absurd lengths, and a forged request id. Each is refused with
//! its problem code, and a refused write leaves nothing behind.

use std::time::Duration;

use http::HeaderValue;
use serde_json::json;
use tenantry_tests::{Reply, TestApp, gateway_event, issuer};

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    app.send(gateway_event(method, path, headers, body)).await
}

#[tokio::test]
async fn json_endpoints_refuse_bodies_not_declared_json() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    let auth = format!("Bearer {token}");
    let spec = r#"{"name": "orders", "columns": [{"name": "region", "type": "string"}]}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("text/json"),
        Some("application/jsonx"),
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        for (path, body) in [
            ("/v1/datasets", spec),
            ("/v1/query", r#"{"dataset": "orders"}"#),
            ("/v1/ask", r#"{"question": "anything?"}"#),
            ("/v1/api-keys", r#"{"name": "k", "scopes": ["read"]}"#),
            (
                "/v1/datasets/orders/records",
                r#"[{"key": "a", "data": {}}]"#,
            ),
        ] {
            let r = send(&app, "POST", path, &headers, Some(body)).await;
            assert_eq!(
                (r.status, r.json["code"].as_str()),
                (415, Some("unsupported_media_type")),
                "{path} with {content_type:?}"
            );
        }
    }
    // Nothing was created by any of them.
    let r = app.call("GET", "/v1/datasets", &token, None).await;
    assert_eq!(r.json["datasets"], json!([]));
    let r = app.call("GET", "/v1/api-keys", &token, None).await;
    assert_eq!(r.json["api_keys"], json!([]));
    // The same body declared JSON (with parameters, any case) is accepted.
    let r = send(
        &app,
        "POST",
        "/v1/datasets",
        &[
            ("authorization", &auth),
            ("content-type", "Application/JSON; charset=utf-8"),
        ],
        Some(spec),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
}

#[tokio::test]
async fn several_credentials_are_ambiguous_never_the_first_one() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    let created = app
        .call(
            "POST",
            "/v1/api-keys",
            &token,
            Some(r#"{"name": "k", "scopes": ["read"]}"#),
        )
        .await;
    let key = created.json["key"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let cases: [(&str, Vec<(&str, String)>); 5] = [
        (
            "two bearer tokens",
            vec![
                ("authorization", bearer.clone()),
                ("authorization", bearer.clone()),
            ],
        ),
        (
            "two keys",
            vec![("x-api-key", key.clone()), ("x-api-key", key.clone())],
        ),
        (
            "one of each",
            vec![
                ("authorization", bearer.clone()),
                ("x-api-key", key.clone()),
            ],
        ),
        // API Gateway joins a repeated header into one value with commas.
        (
            "joined tokens",
            vec![("authorization", format!("{bearer}, {bearer}"))],
        ),
        ("joined keys", vec![("x-api-key", format!("{key},{key}"))]),
    ];
    for (what, headers) in cases {
        let mut req = gateway_event("GET", "/v1/me", &[], None);
        for (name, value) in headers {
            req.headers_mut()
                .append(name, HeaderValue::from_str(&value).unwrap());
        }
        let r = app.send(req).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (400, Some("ambiguous_credentials")),
            "{what}"
        );
    }
    // Each alone is fine.
    let r = send(&app, "GET", "/v1/me", &[("x-api-key", &key)], None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_method_the_path_does_not_take_is_405_with_allow() {
    let app = TestApp::new().await;
    for (method, path, allowed) in [
        ("DELETE", "/v1/me", vec!["GET"]),
        ("PUT", "/v1/datasets", vec!["GET", "POST"]),
        ("PATCH", "/v1/datasets/orders", vec!["DELETE", "GET"]),
        ("GET", "/v1/query", vec!["POST"]),
        ("OPTIONS", "/v1/api-keys", vec!["GET", "POST"]),
    ] {
        let r = send(&app, method, path, &[], None).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (405, Some("method_not_allowed")),
            "{method} {path}"
        );
        assert_eq!(r.headers["content-type"], "application/problem+json");
        let mut allow: Vec<&str> = r.headers["allow"].to_str().unwrap().split(", ").collect();
        allow.sort_unstable();
        assert_eq!(allow, allowed, "{method} {path}");
    }
    let r = send(&app, "GET", "/v1/nope", &[], None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (404, Some("not_found"))
    );
    assert!(r.headers.get("allow").is_none());
    // Refusals before any route carry the request id too (API Gateway's, from the event).
    let rid = r.json["request_id"].as_str().unwrap();
    assert!(rid.starts_with("test-"), "{rid}");
    assert_eq!(r.headers["x-request-id"], rid);
    let r = send(&app, "DELETE", "/v1/me", &[], None).await;
    assert_eq!(
        r.headers["x-request-id"],
        r.json["request_id"].as_str().unwrap()
    );
}

/// Routing uses the path as the caller sent it: API Gateway's raw path (the URI `lambda_http`
/// builds drops `.` and `..` segments), so a record keyed `..` or `.` is as reachable in AWS as
/// locally; and a trailing slash names the same route.
#[tokio::test]
async fn routes_match_the_path_as_sent() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    app.create_dataset(
        &token,
        r#"{"name": "orders", "columns": [{"name": "region", "type": "string"}]}"#,
    )
    .await;
    app.ingest(
        &token,
        "orders",
        &json!([{"key": "..", "data": {"region": "EU"}}, {"key": ".", "data": {"region": "US"}}]),
    )
    .await;
    for (path, region) in [
        ("/v1/datasets/orders/records/%2E%2E", "EU"),
        ("/v1/datasets/orders/records/..", "EU"),
        ("/v1/datasets/orders/records/%2E", "US"),
    ] {
        let r = app.call("GET", path, &token, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.json);
        assert_eq!(r.json["record"]["data"]["region"], region, "{path}");
    }
    let r = app.call("GET", "/v1/me/", &token, None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let r = app
        .call("DELETE", "/v1/datasets/orders/records/%2E%2E", &token, None)
        .await;
    assert_eq!(r.status, 204, "{}", r.json);
    let r = app
        .call("GET", "/v1/datasets/orders/records/%2E%2E", &token, None)
        .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (404, Some("record_not_found"))
    );
    // Segments that name nothing: not UTF-8 once decoded, or one too many (the 404 of an unknown
    // path, before any handler runs); empty (the 404 of an unknown dataset).
    for (path, code) in [
        ("/v1/datasets/orders/records/%FF", "not_found"),
        ("/v1/datasets/%C3%28/records/a", "not_found"),
        ("/v1/datasets/orders/records/a/b", "not_found"),
        ("/v1/datasets//records/a", "dataset_not_found"),
    ] {
        let r = app.call("GET", path, &token, None).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (404, Some(code)),
            "{path}: {}",
            r.json
        );
    }
}

/// A token signed with the trusted key can still carry hostile values: they are 401s, never a
/// 5xx from Postgres (which refuses NUL in text) and never a log line with a control character.
#[tokio::test]
async fn hostile_signed_claims_are_401_not_5xx() {
    let app = TestApp::new().await;
    app.tenant_with_token("alpha").await;
    let iss = issuer();
    let long = "x".repeat(257);
    for (what, sub, org) in [
        ("NUL in org_id", "auth0|a", "org_alpha\u{0}"),
        ("newline in org_id", "auth0|a", "org_alpha\nadmin"),
        ("over-long org_id", "auth0|a", long.as_str()),
        ("empty org_id", "auth0|a", ""),
        ("NUL in sub", "auth0|\u{0}", "org_alpha"),
        ("escape in sub", "auth0|\u{1b}[31m", "org_alpha"),
        ("over-long sub", long.as_str(), "org_alpha"),
    ] {
        let token = iss
            .token(sub, org, &["admin"], Duration::from_secs(600))
            .unwrap();
        let r = app.call("GET", "/v1/me", &token, None).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (401, Some("invalid_token")),
            "{what}"
        );
    }
    // A non-string org_id is a malformed token too.
    let mut claims = iss.claims("auth0|a", "org_alpha", &["admin"], Duration::from_secs(600));
    claims["org_id"] = json!(42);
    let r = app
        .call("GET", "/v1/me", &iss.sign(&claims).unwrap(), None)
        .await;
    assert_eq!(r.status, 401, "{}", r.json);
    // At the limit it is a plain unknown organization.
    let at_limit = "o".repeat(256);
    let token = iss
        .token("auth0|a", &at_limit, &["admin"], Duration::from_secs(600))
        .unwrap();
    let r = app.call("GET", "/v1/me", &token, None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (403, Some("unknown_organization"))
    );
}

/// Without API Gateway's id (the local runner), a well-formed caller id is kept and a malformed
/// one replaced: a log line never carries what a caller chose to inject.
#[tokio::test]
async fn a_forged_request_id_is_replaced() {
    let app = TestApp::new().await;
    let local = |rid: &str| {
        http::Request::builder()
            .method("GET")
            .uri("/v1/me")
            .header("x-request-id", rid)
            .body(lambda_http::Body::Empty)
            .unwrap()
    };
    let r = app.send(local("trace-1234.abc")).await;
    assert_eq!(r.headers["x-request-id"], "trace-1234.abc");
    assert_eq!(r.json["request_id"], "trace-1234.abc");
    for forged in ["a b", "x\"y", &"z".repeat(129), ""] {
        let r = app.send(local(forged)).await;
        let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(rid, forged);
        assert!(uuid::Uuid::parse_str(&rid).is_ok(), "{rid}");
        assert_eq!(r.json["request_id"], rid.as_str());
    }
}

/// A statement of ours cancelled by the server is a 503 `database_busy` (the 422
/// `query_timeout` belongs to the routes whose query the caller shapes); a connection that dies
/// under a request (Postgres restarting, a proxy dropping it) is a 503 `database_unavailable`,
/// never a 500. The request is held on a lock the test takes, so the server acts on it mid-flight.
#[tokio::test]
async fn a_statement_cancelled_or_a_connection_killed_mid_request_is_503() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    for (kill, status, code) in [
        ("pg_cancel_backend", 503, "database_busy"),
        ("pg_terminate_backend", 503, "database_unavailable"),
    ] {
        let mut locker = app.db.admin().await;
        let lock = locker.transaction().await.unwrap();
        lock.batch_execute("LOCK TABLE app.datasets IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let request = {
            let (app, token) = (&app, token.clone());
            async move { app.call("GET", "/v1/datasets", &token, None).await }
        };
        // Acts on every app backend waiting on the lock until the request is answered: a
        // connection killed before anything could commit is retried once on a fresh one
        // (TenantTx), so the retry is killed too.
        let killer = async {
            let admin = app.db.admin().await;
            loop {
                admin
                    .execute(
                        &format!(
                            "SELECT {kill}(pid) FROM pg_stat_activity \
                             WHERE usename = 'tenantry_app' AND wait_event_type = 'Lock'"
                        ),
                        &[],
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let r = tokio::select! {
            r = request => r,
            () = killer => unreachable!(),
        };
        lock.rollback().await.unwrap();
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (status, Some(code)),
            "{kill}: {}",
            r.json
        );
        // And the next request is served (a dead connection is not handed out again).
        let again = app.call("GET", "/v1/datasets", &token, None).await;
        assert_eq!(again.status, 200, "after {kill}: {}", again.json);
    }
}

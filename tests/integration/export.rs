//! `GET /v1/export`: everything the tenant holds, as NDJSON from one snapshot, to those allowed
//! to take it, and nothing of another tenant's.

use serde_json::{Value, json};
use tenantry_tests::{TestApp, gateway_event, issuer};

fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn raw(app: &TestApp, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    let router = tenantry::http::router(
        std::sync::Arc::clone(&app.app),
        &tenantry::api::all_routes(),
    );
    let resp =
        tenantry::http::call(&router, gateway_event("GET", "/v1/export", headers, None)).await;
    (
        resp.status().as_u16(),
        resp.headers().clone(),
        String::from_utf8(resp.body().to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn an_export_holds_every_record_once_in_pages_and_nothing_of_another_tenant() {
    let app = TestApp::new().await;
    let (a, admin) = app.tenant_with_token("alpha").await;
    let (_, admin_b) = app.tenant_with_token("bravo").await;
    let spec = r#"{"name": "events", "columns": [{"name": "n", "type": "integer"}, {"name": "label", "type": "string"}]}"#;
    app.create_dataset(&admin, spec).await;
    app.create_dataset(
        &admin,
        r#"{"name": "empty", "columns": [{"name": "x", "type": "string"}]}"#,
    )
    .await;
    app.create_dataset(&admin_b, spec).await;
    // More than two pages (1000 records each), with keys that sort unlike their numbers.
    let total = 2_345;
    for chunk in (0..total).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"key": format!("k{i}"), "data": {"n": i, "label": format!("a-{i}")}}))
            .collect();
        app.ingest(&admin, "events", &json!(batch)).await;
    }
    app.ingest(
        &admin_b,
        "events",
        &json!([{"key": "k1", "data": {"n": 1, "label": "bravo-secret"}}]),
    )
    .await;
    let usage = || async {
        app.db
            .admin()
            .await
            .query_one(
                "SELECT count(*) FROM app.usage_events WHERE tenant_id = $1",
                &[&a.as_uuid()],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let usage_before = usage().await;

    let auth = format!("Bearer {admin}");
    let (status, headers, body) = raw(&app, &[("authorization", &auth)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/x-ndjson");
    assert!(!body.contains("bravo-secret"));
    let all = lines(&body);
    assert_eq!(all[0]["type"], "export");
    assert_eq!(all[0]["tenant_id"], a.to_string());
    assert_eq!(
        all.last().unwrap(),
        &json!({"type": "end", "datasets": 2, "records": total})
    );
    let datasets: Vec<&str> = all
        .iter()
        .filter(|l| l["type"] == "dataset")
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(datasets, ["empty", "events"]);
    let mut keys: Vec<String> = all
        .iter()
        .filter(|l| l["type"] == "record")
        .map(|l| {
            assert_eq!(l["dataset"], "events");
            assert_eq!(l["data"]["label"], format!("a-{}", l["data"]["n"]));
            l["key"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(keys.len(), total);
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), total, "a record was exported twice");
    assert_eq!(usage().await, usage_before, "an export accrued usage");
    let r = app
        .call("GET", "/v1/audit?action=data.exported", &admin, None)
        .await;
    assert_eq!(r.json["events"].as_array().unwrap().len(), 1, "{}", r.json);

    // Who may not: a viewer, a member, a read key.
    for role in ["viewer", "member"] {
        let token = issuer()
            .token(
                "auth0|v",
                "org_alpha",
                &[role],
                std::time::Duration::from_secs(600),
            )
            .unwrap();
        let auth = format!("Bearer {token}");
        let (status, _, body) = raw(&app, &[("authorization", &auth)]).await;
        assert_eq!(status, 403, "{role}: {body}");
        assert!(body.contains("export_data"), "{body}");
    }
    let r = app
        .call(
            "POST",
            "/v1/api-keys",
            &admin,
            Some(r#"{"name": "k", "scopes": ["read", "ingest"]}"#),
        )
        .await;
    let key = r.json["key"].as_str().unwrap().to_owned();
    let (status, _, _) = raw(&app, &[("x-api-key", &key)]).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn support_exports_only_under_a_session_approved_for_it() {
    let app = TestApp::new().await;
    let (a, admin) = app.tenant_with_token("alpha").await;
    app.create_dataset(
        &admin,
        r#"{"name": "notes", "columns": [{"name": "x", "type": "string"}]}"#,
    )
    .await;
    app.ingest(
        &admin,
        "notes",
        &json!([{"key": "n1", "data": {"x": "hello"}}]),
    )
    .await;
    let sue = TestApp::staff_token("auth0|sue", &["support_admin"]);
    let bob = TestApp::staff_token("auth0|bob", &["support_admin"]);
    let body = json!({"tenant": a.to_string(), "reason": "Customer asked for a copy, SUP-7", "minutes": 15, "allow_export": true});
    let r = app
        .call(
            "POST",
            "/admin/v1/impersonations",
            &sue,
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(
        (r.status, &r.json["state"]),
        (201, &json!("awaiting_approval")),
        "{}",
        r.json
    );
    let sid = r.json["id"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {sue}");
    let headers = [
        ("authorization", auth.as_str()),
        ("tenantry-impersonation", sid.as_str()),
    ];
    let (status, _, _) = raw(&app, &headers).await;
    assert_eq!(status, 403, "an unapproved session exported");
    let r = app
        .call(
            "POST",
            &format!("/admin/v1/impersonations/{sid}/approve"),
            &bob,
            None,
        )
        .await;
    // An export is the whole tenant: its admin approves it too, whatever its setting.
    assert_eq!(
        (r.status, &r.json["state"]),
        (200, &json!("awaiting_approval")),
        "{}",
        r.json
    );
    let (status, _, _) = raw(&app, &headers).await;
    assert_eq!(status, 403, "exported without the tenant's approval");
    let r = app
        .call(
            "POST",
            &format!("/v1/impersonations/{sid}/approve"),
            &admin,
            None,
        )
        .await;
    assert_eq!(
        (r.status, &r.json["state"]),
        (200, &json!("active")),
        "{}",
        r.json
    );
    let (status, headers_out, body) = raw(&app, &headers).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers_out["tenantry-impersonation"]
            .to_str()
            .unwrap()
            .starts_with(&sid)
    );
    let all = lines(&body);
    assert_eq!(all.last().unwrap()["records"], 1);
    let r = app
        .call("GET", "/v1/audit?action=data.exported", &admin, None)
        .await;
    assert_eq!(
        r.json["events"][0]["impersonation_id"],
        json!(sid),
        "{}",
        r.json
    );
}

#[tokio::test]
async fn an_export_past_the_configured_size_is_refused_before_any_byte() {
    let app = TestApp::with_vars(&[("EXPORT_MAX_BYTES", "200".into())]).await;
    let (_, admin) = app.tenant_with_token("alpha").await;
    app.create_dataset(
        &admin,
        r#"{"name": "notes", "columns": [{"name": "x", "type": "string"}]}"#,
    )
    .await;
    app.ingest(
        &admin,
        "notes",
        &json!([{"key": "n1", "data": {"x": "small"}}]),
    )
    .await;
    let auth = format!("Bearer {admin}");
    let (status, _, _) = raw(&app, &[("authorization", &auth)]).await;
    assert_eq!(status, 200, "under the limit");
    let big: Vec<Value> = (0..5)
        .map(|i| json!({"key": format!("b{i}"), "data": {"x": "y".repeat(100)}}))
        .collect();
    app.ingest(&admin, "notes", &json!(big)).await;
    let (status, headers, body) = raw(&app, &[("authorization", &auth)]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(body.contains("export_too_large"), "{body}");
}

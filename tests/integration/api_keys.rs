//! API-key management over HTTP: only tenant admins, shown once, listed without secrets, revocable,
//! and confined to the tenant.

use std::time::Duration;

use tenantry_tests::{TestApp, gateway_event, issuer};

async fn me_with_key(app: &TestApp, key: &str) -> u16 {
    app.send(gateway_event("GET", "/v1/me", &[("x-api-key", key)], None))
        .await
        .status
}

#[tokio::test]
async fn admins_create_list_and_revoke_keys() {
    let app = TestApp::new().await;
    let (_, admin) = app.tenant_with_token("alpha").await;

    let r = app
        .call(
            "POST",
            "/v1/api-keys",
            &admin,
            Some(r#"{"name": "nightly-etl", "scopes": ["ingest", "read"]}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.headers["cache-control"], "no-store");
    let key = r.json["key"].as_str().unwrap().to_owned();
    let key_id = r.json["key_id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("tnt_{}_", r.json["prefix"].as_str().unwrap())));
    assert_eq!(me_with_key(&app, &key).await, 200);

    let list = app.call("GET", "/v1/api-keys", &admin, None).await;
    let keys = list.json["api_keys"].as_array().unwrap();
    // It was used once, just above.
    assert!(keys[0]["last_used_at"].is_string(), "{}", list.json);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["name"], "nightly-etl");
    assert_eq!(keys[0]["scopes"], serde_json::json!(["read", "ingest"]));
    assert_eq!(keys[0]["created_by"], "user:auth0|alpha-user");
    assert!(keys[0].get("key").is_none() && keys[0].get("hash").is_none());
    assert!(
        !list.json.to_string().contains(&key[17..]),
        "the secret is listed"
    );

    let r = app
        .call("DELETE", &format!("/v1/api-keys/{key_id}"), &admin, None)
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(me_with_key(&app, &key).await, 401);
    // Revoking again is fine; an unknown or malformed id is a 404.
    assert_eq!(
        app.call("DELETE", &format!("/v1/api-keys/{key_id}"), &admin, None)
            .await
            .status,
        204
    );
    let unknown = app
        .call(
            "DELETE",
            &format!("/v1/api-keys/{}", uuid::Uuid::now_v7()),
            &admin,
            None,
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.json["code"].as_str()),
        (404, Some("api_key_not_found"))
    );
    assert_eq!(
        app.call("DELETE", "/v1/api-keys/not-a-uuid", &admin, None)
            .await
            .status,
        404
    );
    for (body, code) in [
        ("{}", "invalid_json"),
        (r#"{"name": "x"}"#, "invalid_json"),
        (r#"{"name": "", "scopes": ["read"]}"#, "invalid_name"),
        (r#"{"name": "x", "scopes": ["all"]}"#, "invalid_scopes"),
        (r#"{"name": "x", "scopes": []}"#, "invalid_scopes"),
        (
            r#"{"name": "x", "scopes": ["read", "manage_api_keys"]}"#,
            "invalid_scopes",
        ),
    ] {
        let r = app.call("POST", "/v1/api-keys", &admin, Some(body)).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    // Nothing of the refused requests was stored.
    let list = app.call("GET", "/v1/api-keys", &admin, None).await;
    assert_eq!(list.json["api_keys"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn members_and_keys_cannot_manage_keys_and_tenants_cannot_touch_each_others() {
    let app = TestApp::new().await;
    let (_, admin_a) = app.tenant_with_token("alpha").await;
    let (_, admin_b) = app.tenant_with_token("bravo").await;
    let member_a = issuer()
        .token(
            "auth0|bob",
            "org_alpha",
            &["member"],
            Duration::from_secs(600),
        )
        .unwrap();

    for (method, path, body) in [
        (
            "POST",
            "/v1/api-keys",
            Some(r#"{"name": "mine", "scopes": ["read"]}"#),
        ),
        ("GET", "/v1/api-keys", None),
        (
            "DELETE",
            "/v1/api-keys/01900000-0000-7000-8000-000000000001",
            None,
        ),
    ] {
        let r = app.call(method, path, &member_a, body).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (403, Some("insufficient_permission")),
            "{method} {path}"
        );
    }

    // A key cannot mint another key (a leaked key must not be able to entrench itself).
    let key_a = app
        .call(
            "POST",
            "/v1/api-keys",
            &admin_a,
            Some(r#"{"name": "ci", "scopes": ["read", "ingest"]}"#),
        )
        .await;
    let key_a_secret = key_a.json["key"].as_str().unwrap().to_owned();
    let req = gateway_event(
        "POST",
        "/v1/api-keys",
        &[
            ("x-api-key", &key_a_secret),
            ("content-type", "application/json"),
        ],
        Some(r#"{"name": "persistence", "scopes": ["read"]}"#),
    );
    let r = app.send(req).await;
    assert_eq!(
        (
            r.status,
            r.json["code"].as_str(),
            r.json["permission"].as_str()
        ),
        (
            403,
            Some("insufficient_permission"),
            Some("manage_api_keys")
        )
    );

    // B's admin cannot see or revoke A's key: it looks like no key at all.
    let key_a_id = key_a.json["key_id"].as_str().unwrap();
    let list_b = app.call("GET", "/v1/api-keys", &admin_b, None).await;
    assert_eq!(list_b.json["api_keys"].as_array().unwrap().len(), 0);
    let r = app
        .call(
            "DELETE",
            &format!("/v1/api-keys/{key_a_id}"),
            &admin_b,
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(me_with_key(&app, &key_a_secret).await, 200);
}

/// `last_used_at` costs a write at most once a minute per key and process: the second and
/// third requests with a key cost only the lookup, never another transaction (a write per
/// request would double the database work of key traffic).
#[tokio::test]
async fn a_keys_use_is_written_once_a_minute_not_on_every_request() {
    use tenantry::auth::{ApiKeys, Authenticator, Scope};
    use tenantry::db::Access;
    use tenantry_tests::{CountingProxy, DEV_APP_PASSWORD, as_tenant, tx};

    let app = TestApp::new().await;
    let (tenant, _) = app.tenant_with_token("alpha").await;
    let mut t = tx(&app.app.db, tenant).await;
    let key = ApiKeys::create(&mut t, "etl", &[Scope::Ingest])
        .await
        .unwrap();
    t.commit().await.unwrap();

    let cfg: tokio_postgres::Config = app.db.app_url.parse().unwrap();
    let proxy = CountingProxy::start(cfg.get_ports()[0]).await.unwrap();
    let url = format!(
        "postgres://tenantry_app:{DEV_APP_PASSWORD}@127.0.0.1:{}/{}",
        proxy.port, app.db.name
    );
    let db = app.db.pool_at(&url, 1);
    // Open the connection first, so only the requests are counted.
    db.begin(&as_tenant(tenant), Access::ReadOnly)
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    let auth = Authenticator::new(&app.app.config.auth, db);
    let mut headers = http::HeaderMap::new();
    headers.insert("x-api-key", key.key.parse().unwrap());
    let mut costs = Vec::new();
    for _ in 0..3 {
        let before = proxy.flights();
        let p = auth.authenticate(&headers).await.unwrap();
        assert_eq!(p.tenant_id, tenant);
        costs.push(proxy.flights() - before);
    }
    assert_eq!(costs[1], costs[2], "{costs:?}");
    assert!(
        costs[0] > costs[1],
        "the first use writes last_used_at, later ones within the minute must not: {costs:?}"
    );

    let mut t = tx(&app.app.db, tenant).await;
    let keys = ApiKeys::list(&mut t).await.unwrap();
    assert!(keys[0].last_used_at.is_some());
}

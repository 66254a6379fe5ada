//! Database round trips per request type, counted at a proxy in front of Postgres (one client
//! flight per round trip, as in `tenant_tx.rs`), and the lookup cache that saves one of them: an
//! organization → tenant or API-key lookup is reused for `AUTH_LOOKUP_CACHE_SECS`, and a
//! suspension or a key's revocation takes effect within that bound.
//!
//! The counts are pinned: a change that adds a round trip to a request type fails here and must
//! say why in this table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantry::App;
use tenantry_tests::{CountingProxy, DEV_APP_PASSWORD, TestApp, gateway_event};

/// What each request type costs with the lookups cached (a warm process), in round trips.
const WARM: &[(&str, &str, &str, u64)] = &[
    // BEGIN + set_config pipelined with the first statement, the statement, COMMIT.
    ("GET", "/v1/datasets", "", 2),
    // The dataset's definition is remembered, so the query is compiled first and one flight
    // carries BEGIN and the settings, the check that the definition is current, the usage
    // event's insert, the query (the transaction turned read-only) and COMMIT: 1. (Cold, and
    // after the dataset changed: below. The tenant's plan, `team`, has no hard limit, and a warm
    // process knows it: no reservation. On `free`, see below.)
    (
        "POST",
        "/v1/query",
        r#"{"dataset": "sales", "aggregates": [{"fn": "count", "as": "n"}]}"#,
        1,
    ),
    // Dataset lookup, the upsert, the audit entry, the usage event, COMMIT.
    (
        "POST",
        "/v1/datasets/sales/records",
        r#"[{"key": "r1", "data": {"region": "eu", "amount": 2}}]"#,
        5,
    ),
    // Billing state, the billing periods, the ledger's sums, deliveries, the plan and its
    // counters, the last reconciliation (api/usage.rs), COMMIT.
    ("GET", "/v1/usage", "", 7),
];

async fn counted_app(base: &TestApp, proxy: &CountingProxy) -> Arc<App> {
    let mut config = base.app.config.clone();
    config.db.url = format!(
        "postgres://tenantry_app:{DEV_APP_PASSWORD}@127.0.0.1:{}/{}",
        proxy.port, base.db.name
    );
    // One connection: every request reuses it, so no request pays a connection's start-up.
    config.db.pool_max = 1;
    Arc::new(App::builder(config).build().unwrap())
}

async fn flights_of(
    app: &TestApp,
    proxy: &CountingProxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, u64) {
    let before = proxy.flights();
    let body = (!body.is_empty()).then_some(body);
    let mut h = headers.to_vec();
    if body.is_some() {
        h.push(("content-type", "application/json"));
    }
    let r = app.send(gateway_event(method, path, &h, body)).await;
    // The proxy counts as bytes arrive; the response is only sent after the last flight.
    let own = proxy.flights() - before;
    // What the request left to the background (an ask's usage flush, an ingest's embedding)
    // runs now, not inside the next request's count.
    settle(proxy).await;
    (r.status, own)
}

/// Waits until nothing has reached the proxy for 50 ms.
async fn settle(proxy: &CountingProxy) {
    loop {
        let seen = proxy.flights();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if proxy.flights() == seen {
            return;
        }
    }
}

#[tokio::test]
async fn each_request_type_costs_a_pinned_number_of_round_trips_and_a_cached_lookup_saves_one() {
    let mut app = TestApp::with_vars(&[("AUTH_LOOKUP_CACHE_SECS", "60".into())]).await;
    let (_, alpha) = app.tenant_with_token("alpha").await;
    let (_, bravo) = app.tenant_with_token("bravo").await;
    for token in [&alpha, &bravo] {
        app.create_dataset(
            token,
            r#"{"name": "sales", "columns": [{"name": "region", "type": "string"}, {"name": "amount", "type": "number"}]}"#,
        )
        .await;
    }
    app.create_dataset(
        &alpha,
        r#"{"name": "returns", "columns": [{"name": "reason", "type": "string"}]}"#,
    )
    .await;
    let key = app
        .call(
            "POST",
            "/v1/api-keys",
            &alpha,
            Some(r#"{"name": "etl", "scopes": ["read", "ingest"]}"#),
        )
        .await
        .json["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let cfg: tokio_postgres::Config = app.db.app_url.parse().unwrap();
    let proxy = CountingProxy::start(cfg.get_ports()[0]).await.unwrap();
    app.app = counted_app(&app, &proxy).await;

    // Opens the connection (and caches alpha's organization).
    let auth_a = format!("Bearer {alpha}");
    let (status, _) = flights_of(
        &app,
        &proxy,
        "GET",
        "/v1/me",
        &[("authorization", &auth_a)],
        "",
    )
    .await;
    assert_eq!(status, 200);

    // A cold lookup (bravo's organization, not seen yet) costs exactly one more round trip than
    // the same request warm.
    let auth_b = format!("Bearer {bravo}");
    let bearer_b = [("authorization", auth_b.as_str())];
    let (s, cold) = flights_of(&app, &proxy, "GET", "/v1/datasets", &bearer_b, "").await;
    let (s2, warm) = flights_of(&app, &proxy, "GET", "/v1/datasets", &bearer_b, "").await;
    assert_eq!((s, s2), (200, 200));
    assert_eq!((cold, warm), (3, 2), "cold then warm");

    let bearer_a = [("authorization", auth_a.as_str())];
    // A warm process has seen the tenant's plan (its first billable request reserved).
    let (s, _) = flights_of(&app, &proxy, "POST", "/v1/query", &bearer_a, WARM[1].2).await;
    assert_eq!(s, 200);
    let mut measured = Vec::new();
    for (method, path, body, _) in WARM {
        let (status, n) = flights_of(&app, &proxy, method, path, &bearer_a, body).await;
        assert!(status < 300, "{method} {path}: {status}");
        measured.push((*method, *path, n));
    }
    let expected: Vec<_> = WARM.iter().map(|(m, p, _, n)| (*m, *p, *n)).collect();
    assert_eq!(measured, expected);

    // Another dataset, which this process has not read: BEGIN, the settings and its lookup, then the rest as
    // above (2); then remembered (1). Changed since (an UPDATE of its row, as enabling rollups
    // makes, here from another connection): the check fails the flight, then the same two
    // flights as cold (3), then remembered again.
    let query = WARM[1].2.replace("sales", "returns");
    let mut seen = Vec::new();
    for change in [false, false, true, false] {
        if change {
            app.db
                .admin()
                .await
                .execute(
                    "UPDATE app.datasets SET rollups_ready = rollups_ready \
                     WHERE name = 'returns' AND tenant_id = (SELECT tenant_id FROM app.tenants WHERE slug = 'alpha')",
                    &[],
                )
                .await
                .unwrap();
        }
        let (s, n) = flights_of(&app, &proxy, "POST", "/v1/query", &bearer_a, &query).await;
        assert_eq!(s, 200);
        seen.push(n);
    }
    assert_eq!(seen, [2, 1, 3, 1], "cold, remembered, changed, remembered");

    // On a plan with hard limits (`free`), every query and ingest reserves first: the
    // reservation and its COMMIT for a query (+2, in a transaction of its own before the query's,
    // which does not hold the plan's counter while the query runs), one statement inside the
    // ingest's transaction (+1).
    app.db
        .admin()
        .await
        .execute(
            "UPDATE app.tenants SET plan = 'free' WHERE slug = 'bravo'",
            &[],
        )
        .await
        .unwrap();
    for (method, path, body, warm) in &WARM[1..3] {
        for i in 0..2 {
            let ingest = path.ends_with("/records");
            // A new record each time: an unchanged one costs (and counts) nothing.
            let body = if ingest {
                body.replace("\"r1\"", &format!("\"free-{i}\""))
            } else {
                (*body).to_owned()
            };
            let (status, n) = flights_of(&app, &proxy, method, path, &bearer_b, &body).await;
            assert!(status < 300, "{method} {path}: {status}");
            // (Bravo's first query reads its dataset's definition: one flight more, as cold.)
            let extra = match (ingest, i) {
                (true, _) => 1,
                (false, 0) => 3,
                (false, _) => 2,
            };
            assert_eq!(n, warm + extra, "{method} {path} on the free plan");
        }
    }

    // An API key: its first use looks the key up and records its use; later ones do neither.
    let key_h = [("x-api-key", key.as_str())];
    let (s, first) = flights_of(&app, &proxy, "GET", "/v1/datasets", &key_h, "").await;
    let (s2, second) = flights_of(&app, &proxy, "GET", "/v1/datasets", &key_h, "").await;
    assert_eq!((s, s2), (200, 200));
    assert_eq!(second, 2, "a warm key costs what a warm token does");
    assert!(
        first >= second + 2,
        "lookup and use record: {first} vs {second}"
    );

    // A wrong secret under a cached prefix is still refused: the hash is compared every time.
    let mut forged = key.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let r = app
        .send(gateway_event(
            "GET",
            "/v1/datasets",
            &[("x-api-key", &forged)],
            None,
        ))
        .await;
    assert_eq!(r.status, 401, "{}", r.json);
}

/// With the cache on, a suspension or revocation made elsewhere (here: straight at the database)
/// takes effect within the TTL, and one made through this process's own routes at once.
#[tokio::test]
async fn a_suspension_and_a_revocation_take_effect_within_the_lookup_ttl_and_here_at_once() {
    let ttl = Duration::from_secs(2);
    let app = TestApp::with_vars(&[("AUTH_LOOKUP_CACHE_SECS", ttl.as_secs().to_string())]).await;
    let (a, owner) = app.tenant_with_token("alpha").await;
    let new_key = || async {
        let r = app
            .call(
                "POST",
                "/v1/api-keys",
                &owner,
                Some(r#"{"name": "etl", "scopes": ["read"]}"#),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.json);
        let field = |f: &str| r.json[f].as_str().unwrap().to_owned();
        (field("key"), field("key_id"))
    };
    let app = &app;
    let by_key = |k: String| async move {
        app.send(gateway_event(
            "GET",
            "/v1/datasets",
            &[("x-api-key", &k)],
            None,
        ))
        .await
    };
    let refused = |r: tenantry_tests::Reply| (r.status, r.json["code"].as_str().map(str::to_owned));
    let invalid_key = (401, Some("invalid_api_key".to_owned()));
    let suspended = (403, Some("tenant_suspended".to_owned()));

    // Revoked at the database: served from the cache at most until the TTL has passed.
    let (key, key_id) = new_key().await;
    assert_eq!(by_key(key.clone()).await.status, 200);
    let cached_at = Instant::now();
    let admin = app.db.admin().await;
    admin
        .execute(
            "UPDATE app.api_keys SET revoked_at = now() WHERE key_id = $1::text::uuid",
            &[&key_id],
        )
        .await
        .unwrap();
    tokio::time::sleep(ttl.saturating_sub(cached_at.elapsed()) + Duration::from_millis(100)).await;
    assert_eq!(refused(by_key(key).await), invalid_key);

    // Revoked through the API: this process forgets the tenant's keys at once.
    let (key, key_id) = new_key().await;
    assert_eq!(by_key(key.clone()).await.status, 200);
    let r = app
        .call("DELETE", &format!("/v1/api-keys/{key_id}"), &owner, None)
        .await;
    assert!(r.status < 300, "{}", r.json);
    assert_eq!(refused(by_key(key).await), invalid_key);

    // Suspended at the database: the token just admitted is refused once the TTL has passed.
    assert_eq!(
        app.call("GET", "/v1/datasets", &owner, None).await.status,
        200
    );
    let cached_at = Instant::now();
    admin
        .execute(
            "UPDATE app.tenants SET status = 'suspended' WHERE tenant_id = $1",
            &[&a.as_uuid()],
        )
        .await
        .unwrap();
    tokio::time::sleep(ttl.saturating_sub(cached_at.elapsed()) + Duration::from_millis(100)).await;
    assert_eq!(
        refused(app.call("GET", "/v1/datasets", &owner, None).await),
        suspended
    );

    // Suspended by support through this process: refused at once.
    let (b, bravo) = app.tenant_with_token("bravo").await;
    assert_eq!(
        app.call("GET", "/v1/datasets", &bravo, None).await.status,
        200
    );
    let staff = TestApp::staff_token("auth0|sue", &["support_admin"]);
    let body = r#"{"reason": "Chargeback fraud review, ticket SUP-1042"}"#;
    let r = app
        .call(
            "POST",
            &format!("/admin/v1/tenants/{b}/suspend"),
            &staff,
            Some(body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        refused(app.call("GET", "/v1/datasets", &bravo, None).await),
        suspended
    );
}

//! Plan entitlements through the edge: a hard limit reached exactly at its boundary under
//! concurrency (the request that crosses it is refused, the one before it is not), a refused
//! ingest that writes nothing, failed requests that count nothing, a soft limit that notifies
//! once, a plan change mid-period, and what `/v1/usage` shows — which agrees with the ledger.

use serde_json::Value;
use tenantry::TenantId;
use tenantry_tests::TestApp;

const LIMITS: &str = r#"{"free": {
    "queries": {"included": 5, "soft_limit": 3, "hard_limit": 5},
    "ingested_records": {"included": 10, "soft_limit": 10, "hard_limit": 10}}}"#;

async fn app() -> TestApp {
    TestApp::with_vars(&[("PLAN_ENTITLEMENTS", LIMITS.to_owned())]).await
}

/// A tenant on the free plan (the harness makes them on `team`), and its token.
async fn free_tenant(app: &TestApp, slug: &str) -> (TenantId, String) {
    let (t, token) = app.tenant_with_token(slug).await;
    app.db
        .admin()
        .await
        .execute(
            "UPDATE app.tenants SET plan = 'free' WHERE tenant_id = $1",
            &[&t.as_uuid()],
        )
        .await
        .unwrap();
    (t, token)
}

/// Support changes the tenant's plan (`POST /admin/v1/tenants/{t}/plan`).
async fn change_plan(app: &TestApp, t: TenantId, plan: &str, reason: &str) {
    let staff = TestApp::staff_token("auth0|support", &["support_admin"]);
    let body = serde_json::json!({"plan": plan, "reason": reason}).to_string();
    let path = format!("/admin/v1/tenants/{t}/plan");
    let r = app.call("POST", &path, &staff, Some(&body)).await;
    assert_eq!(r.status, 200, "{}", r.json);
}

const QUERY: &str = r#"{"dataset": "sales", "aggregates": [{"fn": "count", "as": "n"}]}"#;

async fn ledger(app: &TestApp, t: TenantId, meter: &str) -> i64 {
    app.db
        .admin()
        .await
        .query_one(
            "SELECT coalesce(sum(quantity), 0)::int8 FROM app.usage_events \
             WHERE tenant_id = $1 AND meter = $2",
            &[&t.as_uuid(), &meter],
        )
        .await
        .unwrap()
        .get(0)
}

fn meter<'a>(usage: &'a Value, name: &str) -> &'a Value {
    usage["meters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["meter"] == name)
        .unwrap()
}

#[tokio::test]
async fn a_hard_limit_admits_exactly_up_to_it_under_concurrency_and_refuses_the_rest() {
    let app = app().await;
    let (t, token) = free_tenant(&app, "capped").await;
    app.create_dataset(
        &token,
        r#"{"name": "sales", "columns": [{"name": "amount", "type": "number"}]}"#,
    )
    .await;
    // A query that fails (an unknown dataset) counts nothing.
    let bad = app
        .call("POST", "/v1/query", &token, Some(r#"{"dataset": "nope"}"#))
        .await;
    assert_eq!(bad.status, 404, "{}", bad.json);

    // Twelve at once against a limit of five.
    let replies = futures_util::future::join_all(
        (0..12).map(|_| app.call("POST", "/v1/query", &token, Some(QUERY))),
    )
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        (ok, refused.len()),
        (5, 7),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let p = &refused[0].json;
    assert_eq!(p["code"], "quota_exceeded", "{p}");
    assert_eq!(
        (&p["meter"], &p["limit"], &p["used"]),
        (&Value::from("queries"), &Value::from(5), &Value::from(5))
    );
    assert!(p["resets_at"].as_str().is_some(), "{p}");
    assert!(p["request_id"].as_str().is_some(), "{p}");
    let retry: i64 = refused[0]
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(retry > 0 && retry <= 32 * 86_400, "{retry}");
    assert_eq!(ledger(&app, t, "queries").await, 5);

    // The soft limit (3) notified exactly once.
    let notices: i64 = app
        .db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM app.audit_events WHERE tenant_id = $1 \
             AND action = 'billing.soft_limit_reached'",
            &[&t.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(notices, 1);

    // What the tenant is shown agrees with the ledger.
    let u = app.call("GET", "/v1/usage", &token, None).await;
    assert_eq!(u.status, 200, "{}", u.json);
    assert_eq!(u.json["plan"], "free");
    let q = &meter(&u.json, "queries")["entitlement"];
    assert_eq!(
        (
            &q["included"],
            &q["used"],
            &q["remaining"],
            &q["hard_limit_remaining"]
        ),
        (
            &Value::from(5),
            &Value::from(5),
            &Value::from(0),
            &Value::from(0)
        ),
        "{}",
        u.json
    );
    assert_eq!(
        (&q["soft_limit_reached"], &q["hard_limit_reached"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    assert_eq!(meter(&u.json, "queries")["recorded"], 5);

    // A plan change mid-period: the same count, the new plan's limits (team: none).
    change_plan(&app, t, "team", "upgraded, ticket SUP-1").await;
    let after = app.call("POST", "/v1/query", &token, Some(QUERY)).await;
    assert_eq!(after.status, 200, "{}", after.json);
    let u = app.call("GET", "/v1/usage", &token, None).await;
    let q = &meter(&u.json, "queries")["entitlement"];
    assert_eq!(
        (&q["used"], &q["hard_limit"]),
        (&Value::from(6), &Value::Null),
        "{}",
        u.json
    );
    assert_eq!(ledger(&app, t, "queries").await, 6);
}

#[tokio::test]
async fn an_ingest_past_the_hard_limit_writes_nothing_and_the_one_reaching_it_is_taken() {
    let app = app().await;
    let (t, token) = free_tenant(&app, "capped-ingest").await;
    app.create_dataset(
        &token,
        r#"{"name": "sales", "columns": [{"name": "amount", "type": "number"}]}"#,
    )
    .await;
    let batch = |from: usize, n: usize| -> String {
        let items: Vec<String> = (from..from + n)
            .map(|i| format!(r#"{{"key": "r{i}", "data": {{"amount": {i}}}}}"#))
            .collect();
        format!("[{}]", items.join(","))
    };
    let ingest = |body: String| {
        let (app, token) = (&app, &token);
        async move {
            app.call("POST", "/v1/datasets/sales/records", token, Some(&body))
                .await
        }
    };
    assert_eq!(ingest(batch(0, 6)).await.status, 200);
    // Exactly to the limit: taken.
    assert_eq!(ingest(batch(6, 4)).await.status, 200);
    // One more: refused, and nothing of it is written.
    let r = ingest(batch(10, 1)).await;
    assert_eq!(r.status, 429, "{}", r.json);
    assert_eq!(
        (&r.json["requested"], &r.json["used"]),
        (&Value::from(1), &Value::from(10))
    );
    let records: i64 = app
        .db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM app.records WHERE tenant_id = $1",
            &[&t.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(records, 10);
    // Re-sending records unchanged changes nothing, so costs nothing: taken.
    assert_eq!(ingest(batch(0, 10)).await.status, 200);
    assert_eq!(ledger(&app, t, "ingested_records").await, 10);
    let u = app.call("GET", "/v1/usage", &token, None).await;
    let e = &meter(&u.json, "ingested_records")["entitlement"];
    assert_eq!(
        (&e["used"], &e["hard_limit_reached"]),
        (&Value::from(10), &Value::Bool(true))
    );
}

#[tokio::test]
async fn a_plan_without_hard_limits_reserves_nothing_and_is_notified_from_the_ledger_once() {
    let app = TestApp::with_vars(&[
        (
            "PLAN_ENTITLEMENTS",
            r#"{"team": {"queries": {"included": 2, "soft_limit": 2}},
                "free": {"queries": {"included": 5, "soft_limit": 5, "hard_limit": 5}}}"#
                .to_owned(),
        ),
        ("AUTH_LOOKUP_CACHE_SECS", "60".to_owned()),
    ])
    .await;
    let (t, token) = app.tenant_with_token("paying").await;
    app.create_dataset(
        &token,
        r#"{"name": "sales", "columns": [{"name": "amount", "type": "number"}]}"#,
    )
    .await;
    for _ in 0..3 {
        let r = app.call("POST", "/v1/query", &token, Some(QUERY)).await;
        assert_eq!(r.status, 200, "{}", r.json);
    }
    // Nothing reserved (the plan has no hard limit), nothing refused.
    let counted: i64 = app
        .db
        .admin()
        .await
        .query_one(
            "SELECT coalesce(sum(used), 0)::int8 FROM app.usage_counters WHERE tenant_id = $1",
            &[&t.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(counted, 0);
    assert_eq!(ledger(&app, t, "queries").await, 3);
    let notices = || async {
        app.db
            .admin()
            .await
            .query_one(
                "SELECT count(*) FROM app.audit_events WHERE tenant_id = $1 \
                 AND action = 'billing.soft_limit_reached'",
                &[&t.as_uuid()],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(notices().await, 0);
    // Reconciliation compares the ledger (3) with the soft limit (2): one notice, once.
    let a = &app.app;
    for _ in 0..2 {
        tenantry::billing::reconcile::run(
            &a.db,
            a.billing.as_ref(),
            &a.config.billing.meter,
            &a.config.billing.plans,
            &Default::default(),
        )
        .await
        .unwrap();
    }
    assert_eq!(notices().await, 1);
    let u = app.call("GET", "/v1/usage", &token, None).await;
    let q = &meter(&u.json, "queries")["entitlement"];
    assert_eq!(
        (
            &q["used"],
            &q["soft_limit_reached"],
            &q["hard_limit_reached"]
        ),
        (&Value::from(3), &Value::Bool(true), &Value::Bool(false)),
        "{}",
        u.json
    );

    // Downgraded mid-period to a plan with a hard limit (5): counting starts from the 3 the
    // period used, so two more are admitted and the third is refused.
    change_plan(&app, t, "free", "downgraded, ticket SUP-2").await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                app.call("POST", "/v1/query", &token, Some(QUERY))
                    .await
                    .status,
            );
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(ledger(&app, t, "queries").await, 5);
}

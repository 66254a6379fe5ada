//! The support plane, attacked from both sides: tenant callers reaching for the admin routes,
//! staff tokens reaching for tenant routes, a support role reaching for tenant data, and a
//! suspended tenant trying every door (tokens, keys, asks, ingest) while nothing is metered.

use serde_json::{Value, json};
use tenantry::TenantId;
use tenantry_tests::rls_probe::{Outcome, Probe};
use tenantry_tests::{Reply, TestApp, attacker, gateway_event, tx};

const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("GET", "/admin/v1/tenants"),
    ("GET", "/admin/v1/tenants/{t}"),
    ("POST", "/admin/v1/tenants/{t}/suspend"),
    ("POST", "/admin/v1/tenants/{t}/resume"),
    ("POST", "/admin/v1/tenants/{t}/plan"),
    ("POST", "/admin/v1/tenants"),
    ("POST", "/admin/v1/tenants/{t}/close"),
    ("POST", "/admin/v1/tenants/{t}/reconcile"),
    ("GET", "/admin/v1/deliveries"),
    ("POST", "/admin/v1/tenants/{t}/deliveries/retry"),
    ("GET", "/admin/v1/impersonations"),
    ("POST", "/admin/v1/impersonations/{t}/approve"),
];

async fn call(app: &TestApp, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
    app.call(method, path, token, body.map(|b| b.to_string()).as_deref())
        .await
}

fn reason() -> Value {
    json!({"reason": "Chargeback fraud review, ticket SUP-1042"})
}

fn plan(plan: &str) -> Value {
    json!({"plan": plan, "reason": "Chargeback fraud review, ticket SUP-1042"})
}

#[tokio::test]
async fn only_staff_reach_the_admin_routes_and_staff_reach_no_tenant_route() {
    let app = TestApp::new().await;
    let (a, owner) = app.tenant_with_token("alpha").await;
    let r = app
        .call(
            "POST",
            "/v1/api-keys",
            &owner,
            Some(r#"{"name": "k", "scopes": ["read", "ingest"]}"#),
        )
        .await;
    let key = r.json["key"].as_str().unwrap().to_owned();
    let support = TestApp::staff_token("auth0|sam", &["support"]);
    let support_admin = TestApp::staff_token("auth0|sue", &["support_admin"]);
    let no_role = TestApp::staff_token("auth0|nora", &[]);
    let tenant_role = TestApp::staff_token("auth0|tom", &["admin", "owner"]);
    let forged = attacker()
        .token(
            "auth0|eve",
            tenantry_tests::STAFF_ORG,
            &["support_admin"],
            std::time::Duration::from_secs(600),
        )
        .unwrap();
    let before = status_and_plan(&app, a).await;
    for (method, template) in ADMIN_ROUTES {
        let path = template.replace("{t}", &a.to_string());
        let body = (*method == "POST").then(|| {
            if template.ends_with("/plan") {
                plan("team")
            } else {
                reason()
            }
        });
        // A tenant's owner, a staff-organization member without a staff role or with tenant
        // roles: not staff.
        for token in [&owner, &no_role, &tenant_role] {
            let r = call(&app, method, &path, token, body.clone()).await;
            assert_eq!(
                (r.status, r.json["code"].as_str()),
                (403, Some("not_staff")),
                "{method} {path}: {}",
                r.json
            );
        }
        // A tenant API key, alone or beside a staff token: not staff either.
        for headers in [
            vec![("x-api-key", key.as_str())],
            vec![
                ("x-api-key", key.as_str()),
                ("authorization", &format!("Bearer {support_admin}")),
            ],
        ] {
            let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, *v)).collect();
            let b = body.as_ref().map(Value::to_string);
            if b.is_some() {
                h.push(("content-type", "application/json"));
            }
            let r = app
                .send(gateway_event(method, &path, &h, b.as_deref()))
                .await;
            assert_eq!(r.status, 403, "{method} {path} with a key: {}", r.json);
        }
        // A token signed by someone else, and none at all: 401.
        let r = call(&app, method, &path, &forged, body.clone()).await;
        assert_eq!(r.status, 401, "{method} {path}: {}", r.json);
        let r = app.send(gateway_event(method, &path, &[], None)).await;
        assert_eq!(r.status, 401, "{method} {path}: {}", r.json);
        // Support (not support_admin) reads, and changes nothing.
        let r = call(&app, method, &path, &support, body.clone()).await;
        if *method == "GET" {
            assert_eq!(r.status, 200, "{method} {path}: {}", r.json);
        } else {
            assert_eq!(
                (
                    r.status,
                    r.json["code"].as_str(),
                    r.json["permission"].as_str()
                ),
                (403, Some("insufficient_permission"), Some("support_admin")),
                "{method} {path}"
            );
        }
    }
    assert_eq!(
        status_and_plan(&app, a).await,
        before,
        "a refused caller changed the tenant"
    );

    // Staff tokens act in no tenant: every tenant route refuses them.
    for path in ["/v1/me", "/v1/datasets", "/v1/audit", "/v1/usage"] {
        let r = app.call("GET", path, &support_admin, None).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (403, Some("staff_token_not_accepted")),
            "{path}"
        );
    }
}

async fn status_and_plan(app: &TestApp, t: TenantId) -> (String, String) {
    let row = app
        .db
        .admin()
        .await
        .query_one(
            "SELECT status, plan FROM app.tenants WHERE tenant_id = $1",
            &[&t.as_uuid()],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn support_sees_counts_and_states_of_every_tenant_and_none_of_their_data() {
    let app = TestApp::new().await;
    let (a, token_a) = app.tenant_with_token("alpha").await;
    let (b, _) = app.tenant_with_token("bravo").await;
    app.create_dataset(
        &token_a,
        r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}], "text_columns": ["body"]}"#,
    )
    .await;
    app.ingest(
        &token_a,
        "notes",
        &json!([{"key": "n1", "data": {"body": "secret-note-content"}}]),
    )
    .await;
    let admin = app.db.admin().await;
    admin
        .execute(
            "INSERT INTO app.members (tenant_id, auth0_user_id, email) VALUES ($1, 'auth0|m1', 'm1@alpha.example'), ($1, 'auth0|m2', 'm2@alpha.example')",
            &[&a.as_uuid()],
        )
        .await
        .unwrap();
    let support = TestApp::staff_token("auth0|sam", &["support"]);
    let r = call(&app, "GET", "/admin/v1/tenants", &support, None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let tenants = r.json["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 2);
    let alpha = tenants.iter().find(|t| t["slug"] == "alpha").unwrap();
    assert_eq!(alpha["id"], a.to_string());
    assert_eq!(alpha["members"], 2);
    assert_eq!(alpha["status"], "active");
    assert_eq!(alpha["usage_this_month"]["ingested_records"], 1, "{alpha}");
    // Without a subscription, the billing period is the calendar month.
    assert_eq!(
        alpha["usage_this_period"]["source"], "calendar_month",
        "{alpha}"
    );
    assert_eq!(
        alpha["usage_this_period"]["meters"],
        json!({"ingested_records": 1})
    );
    let text = r.json.to_string();
    for leaked in ["secret-note-content", "m1@alpha.example", "auth0|m1"] {
        assert!(!text.contains(leaked), "{leaked} in {text}");
    }
    // Search and filters.
    let r = call(&app, "GET", "/admin/v1/tenants?q=BRAV", &support, None).await;
    let found: Vec<&str> = r.json["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["bravo"]);
    let r = call(&app, "GET", "/admin/v1/tenants?q=org_alpha", &support, None).await;
    assert_eq!(r.json["tenants"][0]["slug"], "alpha");
    let r = call(&app, "GET", "/admin/v1/tenants?limit=1", &support, None).await;
    assert_eq!(r.json["tenants"].as_array().unwrap().len(), 1);
    let next = r.json["next_before"].as_str().unwrap().to_owned();
    let r = call(
        &app,
        "GET",
        &format!(
            "/admin/v1/tenants?limit=1&before={}",
            next.replace('+', "%2B")
        ),
        &support,
        None,
    )
    .await;
    assert_eq!(r.json["tenants"].as_array().unwrap().len(), 1, "{}", r.json);
    assert_eq!(r.json["next_before"], Value::Null);
    for bad in ["limit=0", "status=deleted", "colour=red"] {
        let r = call(
            &app,
            "GET",
            &format!("/admin/v1/tenants?{bad}"),
            &support,
            None,
        )
        .await;
        assert_eq!(r.status, 400, "{bad}");
    }
    let r = call(
        &app,
        "GET",
        &format!("/admin/v1/tenants/{b}"),
        &support,
        None,
    )
    .await;
    assert_eq!((r.status, &r.json["slug"]), (200, &json!("bravo")));
    // With a subscription whose current period began after the ingest, that period's usage is
    // what the ledger holds from its start (the ingest falls in the month, not the period).
    admin
        .execute(
            "INSERT INTO app.billing_periods \
               (tenant_id, subscription_id, period_start, period_end, source) \
             VALUES ($1, 'sub_alpha', now(), now() + interval '30 days', 'webhook'); \
             ",
            &[&a.as_uuid()],
        )
        .await
        .unwrap();
    admin
        .execute(
            "INSERT INTO app.usage_events \
               (tenant_id, event_id, meter, quantity, occurred_at, window_start, source) \
             VALUES ($1, gen_random_uuid(), 'queries', 5, now() + interval '1 minute', \
                     now() + interval '1 minute', 'test')",
            &[&a.as_uuid()],
        )
        .await
        .unwrap();
    let r = call(
        &app,
        "GET",
        &format!("/admin/v1/tenants/{a}"),
        &support,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let period = &r.json["usage_this_period"];
    assert_eq!(period["source"], "subscription", "{period}");
    assert_eq!(period["meters"], json!({"queries": 5}), "{period}");
    for missing in ["00000000-0000-0000-0000-000000000000", "not-a-uuid"] {
        let r = call(
            &app,
            "GET",
            &format!("/admin/v1/tenants/{missing}"),
            &support,
            None,
        )
        .await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (404, Some("tenant_not_found"))
        );
    }

    // The support role itself, at the database: tenant data is out of its reach, and it writes
    // nothing but audit entries.
    let probe = Probe::new(&app.db.admin_url).await;
    for (sql, table) in [
        ("SELECT content FROM app.chunks", "chunks"),
        ("SELECT embedding FROM app.chunks", "chunks"),
        ("SELECT data FROM app.records", "records"),
        ("SELECT name FROM app.datasets", "datasets"),
        ("SELECT email FROM app.members", "members"),
        ("SELECT auth0_user_id FROM app.members", "members"),
        ("SELECT hash FROM app.api_keys", "api_keys"),
        ("UPDATE app.tenants SET status = 'suspended'", "tenants"),
        ("DELETE FROM app.usage_events", "usage_events"),
        (
            "INSERT INTO app.records (tenant_id, dataset_id, key, data) SELECT tenant_id, dataset_id, 'x', '{}' FROM app.datasets",
            "records",
        ),
    ] {
        assert_eq!(
            probe.attempt_as("tenantry_support", None, sql, &[]).await,
            Outcome::refused("42501", &format!("permission denied for table {table}")),
            "{sql}"
        );
    }
    assert_eq!(status_and_plan(&app, a).await.0, "active");
}

#[tokio::test]
async fn a_suspended_tenant_is_refused_everywhere_accrues_nothing_and_resumes() {
    let app = TestApp::new().await;
    let (a, owner) = app.tenant_with_token("alpha").await;
    let (b, owner_b) = app.tenant_with_token("bravo").await;
    app.create_dataset(
        &owner,
        r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}], "text_columns": ["body"]}"#,
    )
    .await;
    let r = app
        .call(
            "POST",
            "/v1/api-keys",
            &owner,
            Some(r#"{"name": "k", "scopes": ["read", "ingest"]}"#),
        )
        .await;
    let key = r.json["key"].as_str().unwrap().to_owned();
    // Both tenants hold data and members, so a snapshot would have something to count.
    app.ingest(
        &owner,
        "notes",
        &json!([{"key": "n0", "data": {"body": "kept"}}]),
    )
    .await;
    app.create_dataset(
        &owner_b,
        r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}]}"#,
    )
    .await;
    app.ingest(
        &owner_b,
        "notes",
        &json!([{"key": "n0", "data": {"body": "kept"}}]),
    )
    .await;
    app.db
        .admin()
        .await
        .execute(
            "INSERT INTO app.members (tenant_id, auth0_user_id) VALUES ($1, 'auth0|ann'), ($2, 'auth0|ann')",
            &[&a.as_uuid(), &b.as_uuid()],
        )
        .await
        .unwrap();
    let staff = TestApp::staff_token("auth0|sue", &["support_admin"]);
    let suspend = format!("/admin/v1/tenants/{a}/suspend");
    // No reason, or a token one: refused, nothing changes.
    for body in [
        json!({}),
        json!({"reason": "x"}),
        json!({"reason": "   short   "}),
    ] {
        let r = call(&app, "POST", &suspend, &staff, Some(body.clone())).await;
        assert_eq!(r.status, 400, "{body}: {}", r.json);
    }
    assert_eq!(status_and_plan(&app, a).await.0, "active");
    let r = call(&app, "POST", &suspend, &staff, Some(reason())).await;
    assert_eq!(
        (r.status, &r.json["status"]),
        (200, &json!("suspended")),
        "{}",
        r.json
    );
    let r = call(&app, "POST", &suspend, &staff, Some(reason())).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (409, Some("invalid_transition"))
    );

    let ledger = || async {
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
    let usage_before = ledger().await;
    // Every door: the token, the key, a query, a question, an ingest.
    let ingest = json!([{"key": "n", "data": {"body": "x"}}]).to_string();
    let query = json!({"dataset": "notes", "aggregates": [{"fn": "count"}]}).to_string();
    let ask = json!({"question": "anything?"}).to_string();
    for (method, path, body) in [
        ("GET", "/v1/me", None),
        ("POST", "/v1/datasets/notes/records", Some(ingest.as_str())),
        ("POST", "/v1/query", Some(query.as_str())),
        ("POST", "/v1/ask", Some(ask.as_str())),
    ] {
        let r = app.call(method, path, &owner, body).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (403, Some("tenant_suspended")),
            "{method} {path}"
        );
        let mut h = vec![("x-api-key", key.as_str())];
        if body.is_some() {
            h.push(("content-type", "application/json"));
        }
        let r = app.send(gateway_event(method, path, &h, body)).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (403, Some("tenant_suspended")),
            "{method} {path} with a key"
        );
    }
    // The scheduled reconcile takes no storage or seats snapshot of it.
    let a_app = &app.app;
    let input = tenantry::billing::reconcile::ReconcileInput::all(
        tenantry::billing::reconcile::Mode::Reconcile,
    );
    tenantry::billing::reconcile::run(
        &a_app.db,
        a_app.billing.as_ref(),
        &a_app.config.billing.meter,
        &a_app.config.billing.plans,
        &input,
    )
    .await
    .unwrap();
    assert_eq!(
        ledger().await,
        usage_before,
        "a suspended tenant accrued usage"
    );
    // Bravo is untouched (and its snapshot was taken).
    assert_eq!(app.call("GET", "/v1/me", &owner_b, None).await.status, 200);
    let b_usage: i64 = app
        .db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM app.usage_events WHERE tenant_id = $1 AND meter IN ('storage', 'seats')",
            &[&b.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(b_usage, 2, "bravo's storage and seats snapshots");

    // Resumed: back, and the log tells who did what, and why.
    let r = call(
        &app,
        "POST",
        &format!("/admin/v1/tenants/{a}/resume"),
        &staff,
        Some(reason()),
    )
    .await;
    assert_eq!((r.status, &r.json["status"]), (200, &json!("active")));
    assert_eq!(app.call("GET", "/v1/me", &owner, None).await.status, 200);
    let r = call(
        &app,
        "POST",
        &format!("/admin/v1/tenants/{a}/plan"),
        &staff,
        Some(plan("business")),
    )
    .await;
    assert_eq!((r.status, &r.json["plan"]), (200, &json!("business")));
    let r = call(
        &app,
        "POST",
        &format!("/admin/v1/tenants/{a}/plan"),
        &staff,
        Some(json!({"plan": "platinum", "reason": "Upgrade requested by owner"})),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (400, Some("invalid_plan"))
    );
    let log = app.call("GET", "/v1/audit?limit=3", &owner, None).await;
    let got: Vec<(&str, &str, &str)> = log.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["details"]["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let why = "Chargeback fraud review, ticket SUP-1042";
    assert_eq!(
        got,
        [
            ("tenant.plan_changed", "staff:auth0|sue", why),
            ("tenant.resumed", "staff:auth0|sue", why),
            ("tenant.suspended", "staff:auth0|sue", why),
        ]
    );
    // The change ran as the tenant's own transaction: B's log has none of it.
    let mut t = tx(&app.app.db, b).await;
    let n: i64 = t
        .query_one(
            "SELECT count(*) FROM app.audit_events WHERE action LIKE 'tenant.%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    t.commit().await.unwrap();
    assert_eq!(n, 0);
}

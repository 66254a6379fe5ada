//! The support plane's lifecycle operations: closing a tenant (its people keep only the export,
//! its data goes after the retention period, what billing and compliance need stays), creating a
//! tenant from the admin routes, and member roles following Auth0.

use serde_json::{Value, json};
use tenantry::TenantId;
use tenantry_tests::{Reply, TestApp, gateway_event, issuer};

const REASON: &str = "Contract ended, ticket SUP-3100";

async fn count(app: &TestApp, sql: &str, t: TenantId) -> i64 {
    app.db
        .admin()
        .await
        .query_one(sql, &[&t.as_uuid()])
        .await
        .unwrap()
        .get(0)
}

async fn retention_run(app: &TestApp) -> tenantry::billing::reconcile::RunOutcome {
    let a = &app.app;
    tenantry::billing::reconcile::run(
        &a.db,
        a.billing.as_ref(),
        &a.config.billing.meter,
        &a.config.billing.plans,
        &tenantry::billing::reconcile::ReconcileInput::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_closed_tenant_keeps_only_its_export_until_its_data_is_deleted_once() {
    let app = TestApp::with_vars(&[("CLOSED_TENANT_RETENTION_DAYS", "14".into())]).await;
    let (a, admin) = app.tenant_with_token("alpha").await;
    let (b, admin_b) = app.tenant_with_token("bravo").await;
    for token in [&admin, &admin_b] {
        app.create_dataset(
            token,
            r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}], "text_columns": ["body"]}"#,
        )
        .await;
        // Written twice: its first version is kept (app.record_versions), and must go too.
        for body in ["first words", "kept until deletion"] {
            app.ingest(
                token,
                "notes",
                &json!([{"key": "n1", "data": {"body": body}}]),
            )
            .await;
        }
    }
    let r = app
        .call(
            "POST",
            "/v1/api-keys",
            &admin,
            Some(r#"{"name": "k", "scopes": ["read"]}"#),
        )
        .await;
    let key = r.json["key"].as_str().unwrap().to_owned();
    app.db
        .admin()
        .await
        .execute(
            "INSERT INTO app.members (tenant_id, auth0_user_id) VALUES ($1, 'auth0|m')",
            &[&a.as_uuid()],
        )
        .await
        .unwrap();
    let staff = TestApp::staff_token("auth0|sue", &["support_admin"]);
    let support = TestApp::staff_token("auth0|sam", &["support"]);
    let close = format!("/admin/v1/tenants/{a}/close");
    let body = json!({"reason": REASON}).to_string();
    assert_eq!(
        app.call("POST", &close, &support, Some(&body)).await.status,
        403
    );
    let r = app.call("POST", &close, &staff, Some(&body)).await;
    assert_eq!(
        (r.status, &r.json["status"]),
        (200, &json!("closed")),
        "{}",
        r.json
    );
    let closed_at: chrono::DateTime<chrono::Utc> = r.json["lifecycle"]["closed_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let delete_after: chrono::DateTime<chrono::Utc> = r.json["lifecycle"]["delete_after"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(delete_after - closed_at, chrono::Duration::days(14));
    let r = app.call("POST", &close, &staff, Some(&body)).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (409, Some("invalid_transition"))
    );

    // Its people: the export only. Everything else, the key, a viewer: tenant_closed.
    for (method, path, body) in [
        ("GET", "/v1/me", None),
        ("GET", "/v1/datasets", None),
        (
            "POST",
            "/v1/query",
            Some(r#"{"dataset": "notes", "aggregates": [{"fn": "count"}]}"#),
        ),
        (
            "POST",
            "/v1/datasets/notes/records",
            Some(r#"[{"key": "x", "data": {"body": "y"}}]"#),
        ),
    ] {
        let r = app.call(method, path, &admin, body).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (403, Some("tenant_closed")),
            "{method} {path}"
        );
    }
    let r = app
        .send(gateway_event(
            "GET",
            "/v1/datasets",
            &[("x-api-key", &key)],
            None,
        ))
        .await;
    assert_eq!(r.json["code"], "tenant_closed");
    let viewer = issuer()
        .token(
            "auth0|v",
            "org_alpha",
            &["viewer"],
            std::time::Duration::from_secs(600),
        )
        .unwrap();
    let r = app.call("GET", "/v1/export", &viewer, None).await;
    assert_eq!(r.json["code"], "tenant_closed");
    let r = app.call("GET", "/v1/export", &admin, None).await;
    assert_eq!(r.status, 200);
    let lines = r.json.as_array().unwrap();
    assert_eq!(lines.last().unwrap()["records"], 1, "{}", r.json);
    // Support cannot impersonate in it.
    let start =
        json!({"tenant": a.to_string(), "reason": "Looking at a closed tenant", "minutes": 5});
    let r = app
        .call(
            "POST",
            "/admin/v1/impersonations",
            &staff,
            Some(&start.to_string()),
        )
        .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (409, Some("tenant_closed"))
    );

    // Before its time, the run deletes nothing.
    let data = "SELECT (SELECT count(*) FROM app.datasets WHERE tenant_id = $1) \
                + (SELECT count(*) FROM app.records WHERE tenant_id = $1) \
                + (SELECT count(*) FROM app.record_versions WHERE tenant_id = $1) \
                + (SELECT count(*) FROM app.chunks WHERE tenant_id = $1) \
                + (SELECT count(*) FROM app.api_keys WHERE tenant_id = $1) \
                + (SELECT count(*) FROM app.members WHERE tenant_id = $1)";
    let kept = "SELECT (SELECT count(*) FROM app.usage_events WHERE tenant_id = $1) \
                + (SELECT count(*) FROM app.audit_events WHERE tenant_id = $1) \
                + (SELECT count(*) FROM app.tenants WHERE tenant_id = $1)";
    let before = count(&app, data, a).await;
    assert!(before >= 6, "{before}");
    assert_eq!(retention_run(&app).await.tenants_data_deleted, 0);
    assert_eq!(count(&app, data, a).await, before);
    // Its time has come (as the clock would have it in 14 days).
    app.db
        .admin()
        .await
        .execute(
            "UPDATE app.tenants SET delete_after = now() - interval '1 second' WHERE tenant_id = $1",
            &[&a.as_uuid()],
        )
        .await
        .unwrap();
    let kept_before = count(&app, kept, a).await;
    let bravo_before = count(&app, data, b).await;
    assert_eq!(retention_run(&app).await.tenants_data_deleted, 1);
    assert_eq!(count(&app, data, a).await, 0, "data left after deletion");
    assert_eq!(count(&app, data, b).await, bravo_before, "bravo lost data");
    // The ledger, the tenant row and the audit log stay (one more entry: the deletion).
    assert_eq!(count(&app, kept, a).await, kept_before + 1);
    // Idempotent: the next run finds nothing to do.
    assert_eq!(retention_run(&app).await.tenants_data_deleted, 0);
    assert_eq!(count(&app, kept, a).await, kept_before + 1);
    let deleted: Value = app
        .db
        .admin()
        .await
        .query_one(
            "SELECT details FROM app.audit_events WHERE tenant_id = $1 AND action = 'tenant.data_deleted'",
            &[&a.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        deleted,
        json!({"datasets": 1, "records": 1, "chunks": 1, "api_keys": 1, "members": 1})
    );
    let r = app.call("GET", "/v1/export", &admin, None).await;
    assert_eq!(r.json.as_array().unwrap().last().unwrap()["records"], 0);
    let r = app
        .call("GET", &format!("/admin/v1/tenants/{a}"), &support, None)
        .await;
    assert!(
        r.json["lifecycle"]["data_deleted_at"].is_string(),
        "{}",
        r.json
    );
}

#[tokio::test]
async fn support_creates_a_tenant_once_per_organization_with_its_customer() {
    let app = TestApp::new().await;
    let staff = TestApp::staff_token("auth0|sue", &["support_admin"]);
    let support = TestApp::staff_token("auth0|sam", &["support"]);
    let body = json!({"name": "Globex Corp", "auth0_org_id": "org_globex"}).to_string();
    let r = app
        .call("POST", "/admin/v1/tenants", &support, Some(&body))
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .call("POST", "/admin/v1/tenants", &staff, Some(&body))
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(
        (
            &r.json["slug"],
            &r.json["auth0_org_id"],
            &r.json["billing"]["customer_pending"]
        ),
        (&json!("globex-corp"), &json!("org_globex"), &json!(false)),
        "{}",
        r.json
    );
    assert!(
        r.json["billing"]["customer_id"]
            .as_str()
            .unwrap()
            .starts_with("cus_")
    );
    let id = r.json["id"].clone();
    let r = app
        .call("POST", "/admin/v1/tenants", &staff, Some(&body))
        .await;
    assert_eq!(
        (r.status, &r.json["id"]),
        (200, &id),
        "the same organization twice"
    );
    // Its people sign in at once.
    let token = issuer()
        .token(
            "auth0|g",
            "org_globex",
            &["owner"],
            std::time::Duration::from_secs(600),
        )
        .unwrap();
    assert_eq!(app.call("GET", "/v1/me", &token, None).await.status, 200);
    // The staff organization is no tenant; bad input is refused.
    for (body, status) in [
        (
            json!({"name": "Staff", "auth0_org_id": tenantry_tests::STAFF_ORG}),
            403,
        ),
        (json!({"name": "", "auth0_org_id": "org_x"}), 400),
        (json!({"name": "X", "auth0_org_id": ""}), 400),
        (
            json!({"name": "X", "auth0_org_id": "org_x", "plan": "enterprise"}),
            400,
        ),
    ] {
        let r = app
            .call("POST", "/admin/v1/tenants", &staff, Some(&body.to_string()))
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.json);
    }
    let created: i64 = app
        .db
        .admin()
        .await
        .query_one("SELECT count(*) FROM app.tenants", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 1);
}

const SECRET: &str = "auth0-operations-secret-0123456789";

async fn auth0(app: &TestApp, id: &str, kind: &str, role: &str) -> Reply {
    let body = json!({"specversion": "1.0", "id": id, "source": "urn:auth0:tenantry.eu.auth0.com",
        "type": kind, "time": "2026-12-02T09:00:00Z",
        "data": {"object": {"organization": {"id": "org_alpha"}, "user": {"user_id": "auth0|ann"},
                            "role": {"id": "rol_1", "name": role}}}});
    let auth = format!("Bearer {SECRET}");
    app.send(gateway_event(
        "POST",
        "/v1/webhooks/auth0",
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        Some(&body.to_string()),
    ))
    .await
}

#[tokio::test]
async fn member_roles_follow_auth0_and_are_audited() {
    let app = TestApp::with_vars(&[("AUTH0_WEBHOOK_SECRET", SECRET.into())]).await;
    let (a, admin) = app.tenant_with_token("alpha").await;
    app.db
        .admin()
        .await
        .execute(
            "INSERT INTO app.members (tenant_id, auth0_user_id) VALUES ($1, 'auth0|ann')",
            &[&a.as_uuid()],
        )
        .await
        .unwrap();
    let role = || async {
        app.db
            .admin()
            .await
            .query_one(
                "SELECT role FROM app.members WHERE tenant_id = $1 AND auth0_user_id = 'auth0|ann'",
                &[&a.as_uuid()],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    let assigned = "organization.member.role.assigned";
    let deleted = "organization.member.role.deleted";
    assert_eq!(auth0(&app, "evt_r1", assigned, "admin").await.status, 200);
    assert_eq!(role().await, "admin");
    // A redelivery, an unknown role, deleting a role not held: no change.
    auth0(&app, "evt_r1", deleted, "admin").await;
    auth0(&app, "evt_r2", assigned, "superuser").await;
    auth0(&app, "evt_r3", deleted, "viewer").await;
    assert_eq!(role().await, "admin");
    assert_eq!(auth0(&app, "evt_r4", deleted, "admin").await.status, 200);
    assert_eq!(role().await, "member");
    let r = app
        .call("GET", "/v1/audit?action=member.role_changed", &admin, None)
        .await;
    let changes: Vec<&Value> = r.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["details"])
        .collect();
    assert_eq!(changes.len(), 2, "{}", r.json);
    assert_eq!(
        (&changes[0]["from"], &changes[0]["to"]),
        (&json!("admin"), &json!("member"))
    );
    assert_eq!(
        (&changes[1]["from"], &changes[1]["to"]),
        (&json!("member"), &json!("admin"))
    );
}

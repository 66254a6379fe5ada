//! Impersonation, attacked: sessions without a reason, too long, extended or used after their
//! end; a session reaching another tenant or used by another staff member; writes under a
//! read-only session, refused by the edge and, tried directly, by Postgres; read-write sessions
//! without their approvals; and the tenant seeing (and ending) all of it.

use serde_json::{Value, json};
use tenantry::TenantId;
use tenantry::db::{Access, Db, TenantContext, TxSettings};
use tenantry_tests::{Reply, TestApp, gateway_event, issuer};
use uuid::Uuid;

const REASON: &str = "Customer reports wrong totals, ticket SUP-2001";

fn start_body(tenant: TenantId, minutes: u32) -> Value {
    json!({"tenant": tenant.to_string(), "reason": REASON, "ticket": "SUP-2001", "minutes": minutes})
}

async fn staff_call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Reply {
    app.call(method, path, token, body.map(|b| b.to_string()).as_deref())
        .await
}

/// A request under session `session` with `token`.
async fn as_session(
    app: &TestApp,
    token: &str,
    session: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Reply {
    let auth = format!("Bearer {token}");
    let mut h = vec![
        ("authorization", auth.as_str()),
        ("tenantry-impersonation", session),
    ];
    if body.is_some() {
        h.push(("content-type", "application/json"));
    }
    app.send(gateway_event(method, path, &h, body)).await
}

/// Starts a session; panics unless it was created.
async fn start(app: &TestApp, token: &str, body: Value) -> Value {
    let r = staff_call(app, "POST", "/admin/v1/impersonations", token, Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.json);
    r.json
}

async fn seeded(app: &TestApp, slug: &str) -> (TenantId, String) {
    let (t, token) = app.tenant_with_token(slug).await;
    app.create_dataset(
        &token,
        r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}, {"name": "n", "type": "integer"}], "text_columns": ["body"]}"#,
    )
    .await;
    app.ingest(
        &token,
        "notes",
        &json!([{"key": "n1", "data": {"body": format!("{slug} note"), "n": 1}}]),
    )
    .await;
    (t, token)
}

fn owner_token(slug: &str) -> String {
    issuer()
        .token(
            &format!("auth0|{slug}-owner"),
            &format!("org_{slug}"),
            &["owner"],
            std::time::Duration::from_secs(3600),
        )
        .unwrap()
}

async fn count(app: &TestApp, sql: &str, t: TenantId) -> i64 {
    app.db
        .admin()
        .await
        .query_one(sql, &[&t.as_uuid()])
        .await
        .unwrap()
        .get(0)
}

/// The impersonator role's pool, as a tenant function's `impersonation_db`.
fn support_pool(app: &TestApp) -> Db {
    app.db.pool_at(&app.db.impersonator_url, 2)
}

/// A transaction exactly as a read-only session's: the support pool, the session set, the
/// impersonation role.
async fn session_tx(
    db: &Db,
    tenant: TenantId,
    staff: &str,
    session: Uuid,
) -> tenantry::db::TenantTx {
    let ctx = TenantContext {
        tenant_id: tenant,
        actor_id: format!("staff:{staff}"),
    };
    let settings = TxSettings {
        impersonation_id: Some(session),
        impersonation_role: true,
        ..TxSettings::default()
    };
    db.begin_with(&ctx, Access::ReadWrite, settings)
        .await
        .unwrap()
}

async fn visible_datasets(db: &Db, tenant: TenantId, staff: &str, session: Uuid) -> Vec<String> {
    let mut tx = session_tx(db, tenant, staff, session).await;
    let rows = tx
        .query("SELECT name FROM app.datasets ORDER BY name", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn a_read_only_session_reads_is_recorded_and_every_write_is_refused_twice() {
    let app = TestApp::new().await;
    let (a, admin) = seeded(&app, "alpha").await;
    // The tenant has search indexes of its own (rag::tenant_index): a read-only session's ask
    // must search under RLS, not through app.text_candidates, which its role may not call.
    let indexer = tenantry_tests::connect(&tenantry_tests::with_login(
        &app.db.admin_url,
        "tenantry_indexer",
        tenantry_tests::DEV_INDEXER_PASSWORD,
        &app.db.name,
    ))
    .await;
    let cfg = tenantry::rag::tenant_index::TenantIndexConfig {
        min_chunks: 1,
        drop_below: 1,
        build_memory_mib: 64,
        ef_search: 200,
        budget: std::time::Duration::from_secs(60),
        every: std::time::Duration::from_secs(60),
    };
    let built = tenantry::rag::tenant_index::maintain(&indexer, 256, &cfg)
        .await
        .unwrap();
    assert_eq!(built.built.len(), 2, "{built:?}");
    let sam = TestApp::staff_token("auth0|sam", &["support"]);
    let s = start(&app, &sam, start_body(a, 30)).await;
    assert_eq!(
        (&s["mode"], &s["state"], &s["tenant_id"]),
        (&json!("read_only"), &json!("active"), &json!(a.to_string())),
        "{s}"
    );
    let sid = s["id"].as_str().unwrap().to_owned();
    let usage = "SELECT count(*) FROM app.usage_events WHERE tenant_id = $1";
    let usage_before = count(&app, usage, a).await;

    // Reads work, and every response names the session.
    let query = json!({"dataset": "notes", "aggregates": [{"fn": "count"}]}).to_string();
    let ask = json!({"question": "what do the notes say?"}).to_string();
    let mut requests = 0;
    for (method, path, body) in [
        ("GET", "/v1/me", None),
        ("GET", "/v1/datasets", None),
        ("GET", "/v1/datasets/notes/records/n1", None),
        ("POST", "/v1/query", Some(query.as_str())),
        // Again: compiled from the definition the first one read, and checked by
        // app.expect_dataset as the read-only role, in one read-only flight.
        ("POST", "/v1/query", Some(query.as_str())),
        ("POST", "/v1/ask", Some(ask.as_str())),
        ("GET", "/v1/audit", None),
    ] {
        let r = as_session(&app, &sam, &sid, method, path, body).await;
        requests += 1;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.json);
        let header = r.headers["tenantry-impersonation"].to_str().unwrap();
        assert!(
            header.starts_with(&format!("{sid}; mode=read_only; expires_at=")),
            "{header}"
        );
    }
    let r = as_session(&app, &sam, &sid, "GET", "/v1/datasets", None).await;
    requests += 1;
    assert_eq!(r.json["datasets"][0]["name"], "notes", "{}", r.json);
    let r = as_session(&app, &sam, &sid, "GET", "/v1/me", None).await;
    requests += 1;
    assert_eq!(r.json["tenant"]["id"], a.to_string(), "{}", r.json);
    assert_eq!(r.json["principal"]["session"]["session_id"], json!(sid));
    assert_eq!(
        count(&app, usage, a).await,
        usage_before,
        "support's requests were metered to the tenant"
    );

    // Writes, key and member management, the tenant's own settings: refused at the edge.
    let records = "SELECT count(*) FROM app.records WHERE tenant_id = $1";
    let records_before = count(&app, records, a).await;
    let ingest = json!([{"key": "n2", "data": {"body": "planted", "n": 2}}]).to_string();
    let dataset = r#"{"name": "planted", "columns": [{"name": "x", "type": "string"}]}"#;
    let key = r#"{"name": "k", "scopes": ["read"]}"#;
    let access = r#"{"support_access": "ask"}"#;
    for (method, path, body) in [
        ("POST", "/v1/datasets/notes/records", Some(ingest.as_str())),
        ("DELETE", "/v1/datasets/notes/records/n1", None),
        ("POST", "/v1/datasets", Some(dataset)),
        ("DELETE", "/v1/datasets/notes", None),
        ("POST", "/v1/api-keys", Some(key)),
        ("GET", "/v1/api-keys", None),
        ("PUT", "/v1/settings/support-access", Some(access)),
        ("GET", "/v1/impersonations", None),
        ("GET", "/v1/export", None),
    ] {
        let r = as_session(&app, &sam, &sid, method, path, body).await;
        requests += 1;
        assert_eq!(
            (r.status, r.json["code"].as_str(), r.json["mode"].as_str()),
            (
                403,
                Some("not_allowed_under_impersonation"),
                Some("read_only")
            ),
            "{method} {path}: {}",
            r.json
        );
    }
    assert_eq!(count(&app, records, a).await, records_before);

    // The same writes, straight at the database as the session's role: refused by Postgres.
    let support = support_pool(&app);
    let session = Uuid::parse_str(&sid).unwrap();
    for write in [
        "INSERT INTO app.datasets (tenant_id, name) VALUES (app.current_tenant_id(), 'planted')",
        "UPDATE app.records SET key = 'moved'",
        "DELETE FROM app.records",
        "UPDATE app.tenants SET plan = 'enterprise'",
        "INSERT INTO app.api_keys (tenant_id, prefix, hash, name, created_by) \
         VALUES (app.current_tenant_id(), 'aaaaaaaaaaaa', sha256(''), 'k', 'x')",
        "UPDATE app.audit_events SET details = '{}'",
        "DELETE FROM app.audit_events",
        "SELECT set_config('role', 'tenantry_app', true)",
    ] {
        let mut tx = session_tx(&support, a, "auth0|sam", session).await;
        // A statement first, so the transaction (and its role) is in place.
        tx.query("SELECT 1", &[]).await.unwrap();
        let e = tx
            .execute(write, &[])
            .await
            .expect_err(&format!("Postgres let the session run: {write}"));
        assert!(
            e.is_permission_denied(),
            "{write}: {:?}",
            e.sqlstate().map(|s| s.code().to_owned())
        );
    }
    // Stepping back out of the role leaves the impersonator login, which holds nothing at all.
    let mut tx = session_tx(&support, a, "auth0|sam", session).await;
    tx.execute("RESET ROLE", &[]).await.unwrap();
    let e = tx
        .execute(
            "INSERT INTO app.datasets (tenant_id, name) VALUES (app.current_tenant_id(), 'planted')",
            &[],
        )
        .await
        .unwrap_err();
    assert!(e.is_permission_denied(), "{e:?}");
    drop(tx);
    assert_eq!(count(&app, records, a).await, records_before);
    // The role does not outlive the transaction: the pool's next one is the support role's.
    let rows = support
        .read_across_tenants("SELECT current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "tenantry_impersonator");

    // The app's own path for the session's transactions is that role, not the handler's say-so.
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {sam}").parse().unwrap());
    headers.insert("tenantry-impersonation", sid.parse().unwrap());
    let principal = app.app.auth.authenticate(&headers).await.unwrap();
    let mut tx = app
        .app
        .begin_for(&principal, Access::ReadWrite, TxSettings::default())
        .await
        .unwrap();
    let who: String = tx
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "tenantry_impersonation");
    let e = tx
        .execute(
            "INSERT INTO app.datasets (tenant_id, name) VALUES (app.current_tenant_id(), 'planted')",
            &[],
        )
        .await
        .unwrap_err();
    assert!(e.is_permission_denied(), "{e:?}");
    drop(tx);

    // The tenant sees the session and every request, refused ones included.
    let r = app.call("GET", "/v1/impersonations", &admin, None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let listed = &r.json["sessions"][0];
    assert_eq!(
        (
            &listed["id"],
            &listed["staff_id"],
            &listed["reason"],
            &listed["ticket"],
            &listed["requests"]
        ),
        (
            &json!(sid),
            &json!("auth0|sam"),
            &json!(REASON),
            &json!("SUP-2001"),
            &json!(requests)
        ),
        "{listed}"
    );
    let r = app
        .call(
            "GET",
            &format!("/v1/audit?impersonation={sid}&action=impersonation.request&limit=200"),
            &admin,
            None,
        )
        .await;
    let events = r.json["events"].as_array().unwrap();
    assert_eq!(events.len(), requests as usize, "{}", r.json);
    assert!(
        events
            .iter()
            .all(|e| e["actor"] == "staff:auth0|sam" && e["impersonation_id"] == json!(sid))
    );
    let refused: Vec<&str> = events
        .iter()
        .filter(|e| e["details"]["allowed"] == false)
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(refused.len(), 9, "{refused:?}");
    assert!(refused.contains(&"/v1/api-keys"), "{refused:?}");
    let started = app
        .call(
            "GET",
            "/v1/audit?action=impersonation.started",
            &admin,
            None,
        )
        .await;
    assert_eq!(started.json["events"][0]["target"], json!(sid));
    assert_eq!(started.json["events"][0]["details"]["reason"], REASON);
    let verify = app.call("GET", "/v1/audit/verify", &admin, None).await;
    assert_eq!(verify.json["intact"], true, "{}", verify.json);
}

#[tokio::test]
async fn a_session_needs_a_reason_lasts_at_most_an_hour_and_stops_when_it_ends() {
    let app = TestApp::new().await;
    let (a, admin) = seeded(&app, "alpha").await;
    let sam = TestApp::staff_token("auth0|sam", &["support"]);
    let sessions = "SELECT count(*) FROM app.impersonation_sessions WHERE tenant_id = $1";
    for (body, code) in [
        (
            json!({"tenant": a.to_string(), "minutes": 10}),
            "invalid_json",
        ),
        (
            json!({"tenant": a.to_string(), "reason": "", "minutes": 10}),
            "invalid_reason",
        ),
        (
            json!({"tenant": a.to_string(), "reason": "   because   ", "minutes": 10}),
            "invalid_reason",
        ),
        (
            json!({"tenant": a.to_string(), "reason": REASON, "minutes": 61}),
            "invalid_minutes",
        ),
        (
            json!({"tenant": a.to_string(), "reason": REASON, "minutes": 0}),
            "invalid_minutes",
        ),
        (
            json!({"tenant": a.to_string(), "reason": REASON, "minutes": 30, "ticket": ""}),
            "invalid_ticket",
        ),
        (
            json!({"tenant": a.to_string(), "reason": REASON, "minutes": 30, "expires_at": "2099-01-01T00:00:00Z"}),
            "invalid_json",
        ),
    ] {
        let r = staff_call(
            &app,
            "POST",
            "/admin/v1/impersonations",
            &sam,
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (400, Some(code)),
            "{body}: {}",
            r.json
        );
    }
    assert_eq!(count(&app, sessions, a).await, 0);

    let s = start(&app, &sam, start_body(a, 5)).await;
    let sid = s["id"].as_str().unwrap().to_owned();
    let started: chrono::DateTime<chrono::Utc> = s["started_at"].as_str().unwrap().parse().unwrap();
    let expires: chrono::DateTime<chrono::Utc> = s["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires - started, chrono::Duration::minutes(5));

    // No route extends a session, and the app role cannot either.
    let r = staff_call(
        &app,
        "POST",
        &format!("/admin/v1/impersonations/{sid}/extend"),
        &sam,
        Some(json!({"minutes": 60})),
    )
    .await;
    assert_eq!(r.status, 404);
    let app_role = tenantry_tests::connect(&app.db.app_url).await;
    for sql in [
        "UPDATE app.impersonation_sessions SET expires_at = expires_at + interval '10 minutes'",
        "UPDATE app.impersonation_sessions SET started_at = now()",
        "UPDATE app.impersonation_sessions SET mode = 'read_write'",
        "DELETE FROM app.impersonation_sessions",
    ] {
        let tx_sql =
            format!("BEGIN; SELECT set_config('app.tenant_id', '{a}', true); {sql}; COMMIT");
        let e = app_role.batch_execute(&tx_sql).await.expect_err(sql);
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {e}"
        );
        app_role.batch_execute("ROLLBACK").await.unwrap();
    }
    // Not even the owner role (the trigger refuses it too).
    let owner = app.db.admin().await;
    let e = owner
        .batch_execute(&format!(
            "BEGIN; SET LOCAL ROLE tenantry_owner; SELECT set_config('app.tenant_id', '{a}', true); \
             UPDATE app.impersonation_sessions SET expires_at = expires_at + interval '10 minutes'; COMMIT"
        ))
        .await
        .expect_err("the owner extended a session");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{e}"
    );
    owner.batch_execute("ROLLBACK").await.unwrap();

    assert_eq!(
        as_session(&app, &sam, &sid, "GET", "/v1/datasets", None)
            .await
            .status,
        200
    );
    // Ended early (by the tenant here): refused at once, by the edge and by the database.
    let r = app
        .call(
            "POST",
            &format!("/v1/impersonations/{sid}/end"),
            &admin,
            None,
        )
        .await;
    assert_eq!(
        (r.status, &r.json["state"]),
        (200, &json!("ended")),
        "{}",
        r.json
    );
    let r = as_session(&app, &sam, &sid, "GET", "/v1/datasets", None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (401, Some("impersonation_ended"))
    );
    let support = support_pool(&app);
    let session = Uuid::parse_str(&sid).unwrap();
    assert!(
        visible_datasets(&support, a, "auth0|sam", session)
            .await
            .is_empty()
    );
    // Ending again is a no-op; starting anew is the way back.
    let r = staff_call(
        &app,
        "POST",
        &format!("/admin/v1/impersonations/{sid}/end"),
        &sam,
        None,
    )
    .await;
    assert_eq!(
        (r.status, &r.json["ended_by"]),
        (200, &json!(format!("user:auth0|alpha-user")))
    );

    // Expired (a session whose hour is over, written as it would be then).
    let expired = Uuid::now_v7();
    owner
        .execute(
            "INSERT INTO app.impersonation_sessions (tenant_id, session_id, staff_id, reason, mode, \
               needs_staff_approval, needs_tenant_approval, started_at, expires_at) \
             VALUES ($1, $2, 'auth0|sam', $3, 'read_only', false, false, \
               now() - interval '61 minutes', now() - interval '1 minute')",
            &[&a.as_uuid(), &expired, &REASON],
        )
        .await
        .unwrap();
    let r = as_session(
        &app,
        &sam,
        &expired.to_string(),
        "GET",
        "/v1/datasets",
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (401, Some("impersonation_expired"))
    );
    assert!(
        visible_datasets(&support, a, "auth0|sam", expired)
            .await
            .is_empty()
    );
    // A live one, for contrast: the same read sees the tenant's dataset.
    let live = start(&app, &sam, start_body(a, 60)).await;
    let live = Uuid::parse_str(live["id"].as_str().unwrap()).unwrap();
    assert_eq!(
        visible_datasets(&support, a, "auth0|sam", live).await,
        ["notes"]
    );
}

#[tokio::test]
async fn a_session_reaches_its_own_tenant_only_and_only_for_its_staff_member() {
    let app = TestApp::new().await;
    let (a, tenant_token) = seeded(&app, "alpha").await;
    let (b, _) = seeded(&app, "bravo").await;
    app.db
        .admin()
        .await
        .execute(
            "UPDATE app.datasets SET name = 'bravo_only' WHERE tenant_id = $1",
            &[&b.as_uuid()],
        )
        .await
        .unwrap();
    let sam = TestApp::staff_token("auth0|sam", &["support"]);
    let bob = TestApp::staff_token("auth0|bob", &["support_admin"]);
    let s = start(&app, &sam, start_body(a, 30)).await;
    let sid = s["id"].as_str().unwrap().to_owned();

    // Tenant B's dataset is out of reach by name, and B's data is not in A's answers.
    let r = as_session(&app, &sam, &sid, "GET", "/v1/datasets/bravo_only", None).await;
    assert_eq!(r.status, 404, "{}", r.json);
    let r = as_session(&app, &sam, &sid, "GET", "/v1/datasets", None).await;
    assert!(!r.json.to_string().contains("bravo"), "{}", r.json);
    // At the database: A's session in B's transaction sees nothing.
    let support = support_pool(&app);
    let session = Uuid::parse_str(&sid).unwrap();
    assert!(
        visible_datasets(&support, b, "auth0|sam", session)
            .await
            .is_empty()
    );
    assert_eq!(
        visible_datasets(&support, a, "auth0|sam", session).await,
        ["notes"]
    );

    // Another staff member, a tenant's token, an API key, a forged or unknown session: refused.
    let r = as_session(&app, &bob, &sid, "GET", "/v1/datasets", None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (401, Some("impersonation_invalid"))
    );
    assert!(
        visible_datasets(&support, a, "auth0|bob", session)
            .await
            .is_empty()
    );
    let r = as_session(&app, &tenant_token, &sid, "GET", "/v1/datasets", None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (403, Some("not_staff"))
    );
    for bogus in [
        Uuid::now_v7().to_string(),
        "not-a-session".into(),
        String::new(),
    ] {
        let r = as_session(&app, &sam, &bogus, "GET", "/v1/datasets", None).await;
        assert_eq!(r.status, 401, "{bogus:?}: {}", r.json);
    }
    // Two sessions (API Gateway joins a repeated header with a comma): ambiguous.
    let twice = as_session(
        &app,
        &sam,
        &format!("{sid},{}", Uuid::now_v7()),
        "GET",
        "/v1/datasets",
        None,
    )
    .await;
    assert_eq!(twice.status, 400, "{}", twice.json);

    // The staff organization is no tenant to impersonate.
    let staff_tenant = TenantId::new();
    tenantry::tenants::provision(
        &app.app.db,
        &tenantry::tenants::NewTenant {
            tenant_id: staff_tenant,
            name: "Tenantry staff".into(),
            slug: "tenantry-staff".into(),
            auth0_org_id: Some(tenantry_tests::STAFF_ORG.into()),
            plan: "free".into(),
        },
        "system:test",
    )
    .await
    .unwrap();
    let r = staff_call(
        &app,
        "POST",
        "/admin/v1/impersonations",
        &bob,
        Some(start_body(staff_tenant, 10)),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (403, Some("staff_tenant"))
    );
    // Nor is an unknown tenant, and tenant tokens cannot start sessions at all.
    let r = staff_call(
        &app,
        "POST",
        "/admin/v1/impersonations",
        &bob,
        Some(start_body(TenantId::new(), 10)),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (404, Some("tenant_not_found"))
    );
    let r = staff_call(
        &app,
        "POST",
        "/admin/v1/impersonations",
        &tenant_token,
        Some(start_body(a, 10)),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (403, Some("not_staff"))
    );
    // Another staff member cannot end sam's session unless support_admin.
    let carl = TestApp::staff_token("auth0|carl", &["support"]);
    let r = staff_call(
        &app,
        "POST",
        &format!("/admin/v1/impersonations/{sid}/end"),
        &carl,
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.json);
    let r = staff_call(
        &app,
        "GET",
        "/admin/v1/impersonations?open=true",
        &carl,
        None,
    )
    .await;
    assert_eq!(r.json["sessions"][0]["id"], json!(sid), "{}", r.json);
    let r = staff_call(
        &app,
        "POST",
        &format!("/admin/v1/impersonations/{sid}/end"),
        &bob,
        None,
    )
    .await;
    assert_eq!(
        (r.status, &r.json["ended_by"]),
        (200, &json!("staff:auth0|bob"))
    );
}

#[tokio::test]
async fn read_write_needs_two_support_admins_the_tenant_decides_and_keys_stay_out_of_reach() {
    let app = TestApp::new().await;
    let (a, admin) = seeded(&app, "alpha").await;
    let owner = owner_token("alpha");
    let sue = TestApp::staff_token("auth0|sue", &["support_admin"]);
    let bob = TestApp::staff_token("auth0|bob", &["support_admin"]);
    let sam = TestApp::staff_token("auth0|sam", &["support"]);
    let rw = |minutes: u32| {
        let mut b = start_body(a, minutes);
        b["mode"] = json!("read_write");
        b
    };
    // The default (read-only support access) refuses read-write sessions.
    let r = staff_call(&app, "POST", "/admin/v1/impersonations", &sue, Some(rw(20))).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (403, Some("support_access_read_only"))
    );
    // Support access is the owner's to set, not an admin's.
    let shared = &app;
    let put = |token: &str, to: &str| {
        let body = json!({"support_access": to}).to_string();
        let token = token.to_owned();
        async move {
            shared
                .call("PUT", "/v1/settings/support-access", &token, Some(&body))
                .await
        }
    };
    let r = put(&admin, "ask").await;
    assert_eq!(
        (r.status, r.json["permission"].as_str()),
        (403, Some("manage_support_access"))
    );
    assert_eq!(put(&owner, "sometimes").await.status, 400);
    assert_eq!(put(&owner, "ask").await.status, 200);
    let r = app
        .call("GET", "/v1/settings/support-access", &admin, None)
        .await;
    assert_eq!(r.json["support_access"], "ask");

    let s = start(&app, &sue, rw(20)).await;
    let sid = s["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            &s["state"],
            &s["needs_staff_approval"],
            &s["needs_tenant_approval"]
        ),
        (&json!("awaiting_approval"), &json!(true), &json!(true))
    );
    let ingest = json!([{"key": "fix", "data": {"body": "corrected", "n": 3}}]).to_string();
    let r = as_session(
        &app,
        &sue,
        &sid,
        "POST",
        "/v1/datasets/notes/records",
        Some(&ingest),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (403, Some("impersonation_awaiting_approval"))
    );
    let approve = format!("/admin/v1/impersonations/{sid}/approve");
    // Not by its requester, not by plain support.
    let r = staff_call(&app, "POST", &approve, &sue, None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (403, Some("self_approval"))
    );
    let r = staff_call(&app, "POST", &approve, &sam, None).await;
    assert_eq!(
        (r.status, r.json["permission"].as_str()),
        (403, Some("support_admin"))
    );
    let r = staff_call(&app, "POST", &approve, &bob, None).await;
    assert_eq!(
        (r.status, &r.json["state"], &r.json["staff_approved_by"]),
        (200, &json!("awaiting_approval"), &json!("auth0|bob")),
        "{}",
        r.json
    );
    assert_eq!(
        staff_call(&app, "POST", &approve, &bob, None).await.status,
        409
    );
    // Still the tenant's to allow.
    let r = as_session(&app, &sue, &sid, "GET", "/v1/datasets", None).await;
    assert_eq!(r.status, 403);
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

    // Now it writes data, under the session's name in the audit log, billed to no one...
    let usage = "SELECT count(*) FROM app.usage_events WHERE tenant_id = $1";
    let usage_before = count(&app, usage, a).await;
    let r = as_session(
        &app,
        &sue,
        &sid,
        "POST",
        "/v1/datasets/notes/records",
        Some(&ingest),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        count(&app, usage, a).await,
        usage_before,
        "support's ingest was billed to the tenant"
    );
    assert!(
        r.headers["tenantry-impersonation"]
            .to_str()
            .unwrap()
            .contains("mode=read_write")
    );
    let r = app
        .call(
            "GET",
            "/v1/audit?action=records.ingested&limit=1",
            &admin,
            None,
        )
        .await;
    let e = &r.json["events"][0];
    assert_eq!(
        (&e["actor"], &e["impersonation_id"]),
        (&json!("staff:auth0|sue"), &json!(sid))
    );
    // ...but never keys, members, exports (not approved for them) or the tenant's settings.
    for (method, path, body) in [
        (
            "POST",
            "/v1/api-keys",
            Some(r#"{"name": "k", "scopes": ["read"]}"#),
        ),
        ("GET", "/v1/api-keys", None),
        ("GET", "/v1/export", None),
        (
            "PUT",
            "/v1/settings/support-access",
            Some(r#"{"support_access": "read_only"}"#),
        ),
        ("POST", &format!("/v1/impersonations/{sid}/approve"), None),
    ] {
        let r = as_session(&app, &sue, &sid, method, path, body).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (403, Some("not_allowed_under_impersonation")),
            "{method} {path}"
        );
    }
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM app.api_keys WHERE tenant_id = $1",
            a
        )
        .await,
        0
    );

    // The owner's setting holds for live sessions: back to read-only stops the read-write one.
    assert_eq!(put(&owner, "read_only").await.status, 200);
    let r = as_session(&app, &sue, &sid, "GET", "/v1/datasets", None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (403, Some("support_access_read_only"))
    );
    // A read-only session started without asking waits for the tenant once it says `ask`.
    let ro = start(&app, &sam, start_body(a, 10)).await;
    let ro = ro["id"].as_str().unwrap().to_owned();
    assert_eq!(
        as_session(&app, &sam, &ro, "GET", "/v1/datasets", None)
            .await
            .status,
        200
    );
    assert_eq!(put(&owner, "ask").await.status, 200);
    let r = as_session(&app, &sam, &ro, "GET", "/v1/datasets", None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (403, Some("impersonation_awaiting_approval"))
    );
    let support = support_pool(&app);
    let ro_id = Uuid::parse_str(&ro).unwrap();
    assert!(
        visible_datasets(&support, a, "auth0|sam", ro_id)
            .await
            .is_empty()
    );

    // The owner turns support off: the live session stops, and no new one starts.
    assert_eq!(put(&owner, "off").await.status, 200);
    let r = as_session(&app, &sue, &sid, "GET", "/v1/datasets", None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (403, Some("support_access_off"))
    );
    let r = staff_call(
        &app,
        "POST",
        "/admin/v1/impersonations",
        &sam,
        Some(start_body(a, 10)),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (403, Some("support_access_off"))
    );
    let r = app
        .call(
            "GET",
            "/v1/audit?action=tenant.support_access_changed",
            &admin,
            None,
        )
        .await;
    assert_eq!(
        r.json["events"][0]["details"],
        json!({"from": "ask", "to": "off"})
    );
}

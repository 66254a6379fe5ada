//! The audit log, attacked: every role trying to change or remove entries, a superuser changing
//! them behind the triggers' back (which `verify` must name), concurrent writers, forged columns,
//! and an action whose audit entry fails (the action must not happen either).

use std::time::Duration;

use serde_json::{Value, json};
use tenantry::TenantId;
use tenantry::audit::{self, Action};
use tenantry::db::{Access, TxSettings};
use tenantry_tests::rls_probe::{OWNER_ROLE, Outcome, PROBE_ROLE, Probe};
use tenantry_tests::{TestApp, as_tenant, issuer, tx};
use tokio_postgres::types::Type;

/// Pages through `GET /v1/audit` (`query` appended) and returns every entry, newest first.
async fn all_entries(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/audit?limit=2{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = app.call("GET", &path, token, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.json);
        let events = r.json["events"].as_array().cloned().unwrap_or_default();
        assert!(events.len() <= 2, "{}", r.json);
        out.extend(events);
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

async fn verify(app: &TestApp, token: &str) -> Value {
    let r = app.call("GET", "/v1/audit/verify", token, None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    r.json
}

/// Appends `n` entries for `tenant` directly, as the app role would.
async fn append(app: &TestApp, tenant: TenantId, n: usize) {
    for i in 0..n {
        let mut t = tx(&app.app.db, tenant).await;
        audit::record(
            &mut t,
            Action::RecordsIngested,
            Some("orders"),
            json!({"inserted": i}),
            None,
        )
        .await
        .unwrap();
        t.commit().await.unwrap();
    }
}

#[tokio::test]
async fn what_a_tenant_does_is_in_its_log_with_who_and_counts_never_contents() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    let (_, token_b) = app.tenant_with_token("bravo").await;
    app.create_dataset(
        &token,
        r#"{"name": "orders", "columns": [{"name": "note", "type": "string"}], "text_columns": ["note"]}"#,
    )
    .await;
    app.ingest(
        &token,
        "orders",
        &json!([{"key": "k1", "data": {"note": "s3cr3t-content"}}, {"key": "k2", "data": {"note": "x"}}]),
    )
    .await;
    let r = app
        .call("DELETE", "/v1/datasets/orders/records/k1", &token, None)
        .await;
    assert_eq!(r.status, 204);
    let r = app
        .call(
            "POST",
            "/v1/api-keys",
            &token,
            Some(r#"{"name": "etl", "scopes": ["ingest"]}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let (key_id, secret) = (
        r.json["key_id"].as_str().unwrap().to_owned(),
        r.json["key"].as_str().unwrap().to_owned(),
    );
    let r = app
        .call("DELETE", &format!("/v1/api-keys/{key_id}"), &token, None)
        .await;
    assert_eq!(r.status, 204);
    let r = app
        .call("DELETE", "/v1/datasets/orders", &token, None)
        .await;
    assert_eq!(r.status, 204);

    let entries = all_entries(&app, &token, "").await;
    let got: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("dataset.deleted", "orders"),
            ("api_key.revoked", key_id.as_str()),
            ("api_key.created", key_id.as_str()),
            ("record.deleted", "orders/k1"),
            ("records.ingested", "orders"),
            ("dataset.created", "orders"),
        ]
    );
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [6, 5, 4, 3, 2, 1]);
    for e in &entries {
        assert_eq!(e["actor"], "user:auth0|alpha-user", "{e}");
        assert_eq!(e["impersonation_id"], Value::Null, "{e}");
        assert!(
            e["request_id"].as_str().is_some_and(|r| !r.is_empty()),
            "{e}"
        );
        assert_eq!(e["hash"].as_str().map(str::len), Some(64), "{e}");
    }
    assert_eq!(entries[4]["details"]["inserted"], 2);
    assert_eq!(entries[2]["details"]["scopes"], json!(["ingest"]));
    // Never what records hold, never the key.
    let text = Value::Array(entries.clone()).to_string();
    assert!(!text.contains("s3cr3t-content"), "{text}");
    assert!(!text.contains(&secret), "{text}");

    // Filters.
    let only = all_entries(&app, &token, "&action=api_key.created").await;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["target"], key_id.as_str());
    let by_actor = all_entries(&app, &token, "&actor=user:auth0%7Calpha-user").await;
    assert_eq!(by_actor.len(), 6);
    let nobody = all_entries(&app, &token, "&actor=user:auth0%7Cbravo-user").await;
    assert!(nobody.is_empty());
    let future = all_entries(&app, &token, "&since=2999-01-01T00:00:00Z").await;
    assert!(future.is_empty());

    let v = verify(&app, &token).await;
    assert_eq!(
        v,
        json!({"intact": true, "entries": 6, "last_seq": 6, "first_broken": null})
    );

    // B's log has none of it, and B's verify sees only B.
    assert!(all_entries(&app, &token_b, "").await.is_empty());
    assert_eq!(verify(&app, &token_b).await["entries"], 0);

    // Malformed parameters are refused, not ignored.
    for bad in [
        "limit=0",
        "limit=201",
        "limit=ten",
        "action=dataset.exploded",
        "cursor=abc",
        "cursor=-1",
        "since=yesterday",
        "since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        "limit=1&limit=2",
        "tenant_id=00000000-0000-0000-0000-000000000000",
    ] {
        let r = app
            .call("GET", &format!("/v1/audit?{bad}"), &token, None)
            .await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (400, Some("invalid_query_parameters")),
            "{bad}: {}",
            r.json
        );
    }
}

#[tokio::test]
async fn only_owners_and_admins_read_the_log_and_no_key_does() {
    let app = TestApp::new().await;
    let (a, admin) = app.tenant_with_token("alpha").await;
    append(&app, a, 1).await;
    let viewer = issuer()
        .token(
            "auth0|vic",
            "org_alpha",
            &["viewer"],
            Duration::from_secs(600),
        )
        .unwrap();
    let member = issuer()
        .token(
            "auth0|meg",
            "org_alpha",
            &["member"],
            Duration::from_secs(600),
        )
        .unwrap();
    let r = app
        .call(
            "POST",
            "/v1/api-keys",
            &admin,
            Some(r#"{"name": "all", "scopes": ["read", "ingest"]}"#),
        )
        .await;
    let key = r.json["key"].as_str().unwrap().to_owned();
    for path in ["/v1/audit", "/v1/audit/verify"] {
        for token in [&viewer, &member] {
            let r = app.call("GET", path, token, None).await;
            assert_eq!(
                (
                    r.status,
                    r.json["code"].as_str(),
                    r.json["permission"].as_str()
                ),
                (403, Some("insufficient_permission"), Some("read_audit")),
                "{path}"
            );
        }
        let r = app
            .send(tenantry_tests::gateway_event(
                "GET",
                path,
                &[("x-api-key", &key)],
                None,
            ))
            .await;
        assert_eq!(r.status, 403, "{path}: {}", r.json);
    }
}

#[tokio::test]
async fn no_role_can_change_remove_or_forge_an_entry() {
    let app = TestApp::new().await;
    let (a, token) = app.tenant_with_token("alpha").await;
    append(&app, a, 3).await;
    let admin = app.db.admin().await;
    let snapshot = || async {
        let rows = admin
            .query(
                "SELECT seq::text || actor_id || action || details::text || encode(hash, 'hex') \
                 FROM app.audit_events WHERE tenant_id = $1 ORDER BY seq",
                &[&a.as_uuid()],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let before = snapshot().await;
    let a_str = a.to_string();
    let as_a = Some(a_str.as_str());

    // The app role: no grant to change anything, or to name the columns the trigger owns.
    let denied = Outcome::refused("42501", "permission denied for table audit_events");
    for sql in [
        "UPDATE app.audit_events SET details = '{}'",
        "DELETE FROM app.audit_events",
        "TRUNCATE app.audit_events",
        "INSERT INTO app.audit_events (tenant_id, action, seq, prev_hash, hash) \
         VALUES (app.current_tenant_id(), 'dataset.created', 99, sha256('x'), sha256('y'))",
        "INSERT INTO app.audit_events (tenant_id, action, actor_id) \
         VALUES (app.current_tenant_id(), 'dataset.created', 'user:someone-else')",
        "INSERT INTO app.audit_events (tenant_id, action, occurred_at) \
         VALUES (app.current_tenant_id(), 'dataset.created', '2001-01-01')",
    ] {
        let mut t = tx(&app.app.db, a).await;
        let got = Outcome::of_db(t.execute(sql, &[]).await);
        assert_eq!(got, denied, "app role: {sql}");
    }
    // The support role likewise (it may only append and read).
    let probe = Probe::new(&app.db.admin_url).await;
    for sql in [
        "UPDATE app.audit_events SET details = '{}'",
        "DELETE FROM app.audit_events",
        "TRUNCATE app.audit_events",
        "DELETE FROM app.audit_heads",
    ] {
        let got = probe.attempt_as("tenantry_support", as_a, sql, &[]).await;
        let table = if sql.contains("heads") {
            "audit_heads"
        } else {
            "audit_events"
        };
        assert_eq!(
            got,
            Outcome::refused("42501", &format!("permission denied for table {table}")),
            "support: {sql}"
        );
    }
    // A role holding every DML grant, and the owner: the triggers refuse, whatever the grants.
    for role in [PROBE_ROLE, OWNER_ROLE] {
        for (sql, op) in [
            ("UPDATE app.audit_events SET details = '{}'", "UPDATE"),
            ("DELETE FROM app.audit_events", "DELETE"),
        ] {
            assert_eq!(
                probe.attempt_as(role, as_a, sql, &[]).await,
                Outcome::refused(
                    "42501",
                    &format!("audit_events is append-only: {op} refused")
                ),
                "{role}: {sql}"
            );
        }
        assert_eq!(
            probe
                .attempt_as(role, as_a, "DELETE FROM app.audit_heads", &[])
                .await,
            Outcome::refused("42501", "audit_heads is append-only: DELETE refused"),
            "{role}: delete the head"
        );
    }
    assert_eq!(
        probe
            .attempt_as(OWNER_ROLE, as_a, "TRUNCATE app.audit_events", &[])
            .await,
        Outcome::refused("42501", "audit_events is append-only: TRUNCATE refused"),
    );
    // An entry for another tenant, from A's transaction: RLS refuses it.
    let (b, _) = app.tenant_with_token("bravo").await;
    let b_id = b.as_uuid();
    let mut t = tx(&app.app.db, a).await;
    let got = Outcome::of_db(
        t.execute(
            "INSERT INTO app.audit_events (tenant_id, action) VALUES ($1, 'dataset.created')",
            &[(&b_id, Type::UUID)],
        )
        .await,
    );
    assert_eq!(got, Outcome::rls("audit_events"));
    drop(t);

    assert_eq!(snapshot().await, before, "an entry changed");
    assert_eq!(verify(&app, &token).await["intact"], true);

    // What the app role may do to the head (move it: the trigger's job) shows in verify.
    let mut t = tx(&app.app.db, a).await;
    t.execute("UPDATE app.audit_heads SET hash = sha256('forged')", &[])
        .await
        .unwrap();
    t.commit().await.unwrap();
    assert_eq!(
        verify(&app, &token).await["first_broken"],
        json!({"seq": 3, "reason": "head_mismatch"})
    );
}

/// A superuser can change rows behind the triggers' back (`session_replication_role = replica`
/// turns them off); `verify` names the first entry that no longer fits, for each kind of change.
#[tokio::test]
async fn verify_names_the_first_broken_link() {
    let app = TestApp::new().await;
    let admin = app.db.admin().await;
    let cases = [
        (
            "changed",
            "UPDATE app.audit_events SET details = '{\"inserted\": 1000}' WHERE tenant_id = $1 AND seq = 3",
            json!({"seq": 3, "reason": "content_changed"}),
        ),
        (
            "changed-and-rehashed",
            "UPDATE app.audit_events e SET details = '{\"inserted\": 1000}', \
               hash = app.audit_hash((e.tenant_id, e.seq, e.occurred_at, e.actor_id, \
                 e.impersonation_id, e.action, e.target, '{\"inserted\": 1000}'::jsonb, \
                 e.request_id, e.prev_hash, e.hash)::app.audit_events) \
             WHERE tenant_id = $1 AND seq = 3",
            json!({"seq": 4, "reason": "prev_hash_mismatch"}),
        ),
        (
            "removed",
            "DELETE FROM app.audit_events WHERE tenant_id = $1 AND seq = 2",
            json!({"seq": 3, "reason": "entries_missing"}),
        ),
        (
            "removed-at-end",
            "DELETE FROM app.audit_events WHERE tenant_id = $1 AND seq = 5",
            json!({"seq": 5, "reason": "entries_missing_at_end"}),
        ),
        (
            "reordered",
            "UPDATE app.audit_events SET occurred_at = occurred_at - interval '1 day' \
             WHERE tenant_id = $1 AND seq = 1",
            json!({"seq": 1, "reason": "content_changed"}),
        ),
    ];
    for (name, tamper, expected) in cases {
        let (t, token) = app.tenant_with_token(name).await;
        append(&app, t, 5).await;
        assert_eq!(verify(&app, &token).await["intact"], true, "{name}");
        admin
            .batch_execute("SET session_replication_role = replica")
            .await
            .unwrap();
        let n = admin.execute(tamper, &[&t.as_uuid()]).await.unwrap();
        admin
            .batch_execute("SET session_replication_role = DEFAULT")
            .await
            .unwrap();
        assert_eq!(n, 1, "{name}: the tamper changed nothing");
        let v = verify(&app, &token).await;
        assert_eq!(v["intact"], false, "{name}: {v}");
        assert_eq!(v["first_broken"], expected, "{name}: {v}");
    }
}

/// One tenant's writers wait for each other (the head's row lock) and never skip or repeat a
/// seq; another tenant's writer does not wait for them.
#[tokio::test]
async fn writers_serialize_per_tenant_and_only_per_tenant() {
    let app = TestApp::new().await;
    let (a, token) = app.tenant_with_token("alpha").await;
    let (b, _) = app.tenant_with_token("bravo").await;
    let db = &app.app.db;
    let writers = (0..12).map(|i| async move {
        let mut t = tx(db, a).await;
        audit::record(
            &mut t,
            Action::RecordDeleted,
            Some("orders/k"),
            json!({"i": i}),
            None,
        )
        .await
        .unwrap();
        t.commit().await.unwrap();
    });
    futures_util::future::join_all(writers).await;
    let v = verify(&app, &token).await;
    assert_eq!(
        v,
        json!({"intact": true, "entries": 12, "last_seq": 12, "first_broken": null})
    );

    // A's writer holds the head until it commits.
    let mut holder = tx(db, a).await;
    audit::record(&mut holder, Action::RecordDeleted, None, json!({}), None)
        .await
        .unwrap();
    // Another of A's writers waits for it: cancelled by its statement timeout, not served.
    let short = TxSettings {
        statement_timeout: Some(Duration::from_millis(300)),
        ..TxSettings::default()
    };
    let mut waiter = db
        .begin_with(&as_tenant(a), Access::ReadWrite, short.clone())
        .await
        .unwrap();
    let err = audit::record(&mut waiter, Action::RecordDeleted, None, json!({}), None)
        .await
        .err();
    assert!(err.as_ref().is_some_and(|e| e.is_timeout()), "{err:?}");
    drop(waiter);
    // B's writer, meanwhile, is not held up by A's lock.
    let generous = TxSettings {
        statement_timeout: Some(Duration::from_secs(20)),
        ..TxSettings::default()
    };
    let mut other = db
        .begin_with(&as_tenant(b), Access::ReadWrite, generous)
        .await
        .unwrap();
    audit::record(&mut other, Action::RecordDeleted, None, json!({}), None)
        .await
        .unwrap();
    other.commit().await.unwrap();
    holder.commit().await.unwrap();
    append(&app, a, 1).await;
    let v = verify(&app, &token).await;
    assert_eq!(
        v,
        json!({"intact": true, "entries": 14, "last_seq": 14, "first_broken": null})
    );
}

/// The entry is written in the action's transaction: when it cannot be written, the action does
/// not happen either; and a refused action writes no entry.
#[tokio::test]
async fn an_action_and_its_entry_commit_together_or_not_at_all() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    let spec = r#"{"name": "orders", "columns": [{"name": "n", "type": "integer"}]}"#;
    app.create_dataset(&token, spec).await;
    // Refused actions: a duplicate dataset, an invalid batch, an unknown record.
    let r = app.call("POST", "/v1/datasets", &token, Some(spec)).await;
    assert_eq!(r.status, 409);
    let r = app
        .call(
            "POST",
            "/v1/datasets/orders/records",
            &token,
            Some(r#"[{"key": "k", "data": {"n": "not a number"}}]"#),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.json);
    let r = app
        .call("DELETE", "/v1/datasets/orders/records/nope", &token, None)
        .await;
    assert_eq!(r.status, 404);
    let actions: Vec<Value> = all_entries(&app, &token, "")
        .await
        .iter()
        .map(|e| e["action"].clone())
        .collect();
    assert_eq!(actions, [json!("dataset.created")]);

    // The audit insert fails (a fault injected in the database): the delete is rolled back.
    let admin = app.db.admin().await;
    admin
        .batch_execute(
            "CREATE FUNCTION app.fail_audit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'injected audit failure'; END $$;
             CREATE TRIGGER fail_audit BEFORE INSERT ON app.audit_events
               FOR EACH ROW WHEN (NEW.action = 'dataset.deleted') EXECUTE FUNCTION app.fail_audit();",
        )
        .await
        .unwrap();
    let r = app
        .call("DELETE", "/v1/datasets/orders", &token, None)
        .await;
    assert_eq!(r.status, 500, "{}", r.json);
    let r = app.call("GET", "/v1/datasets/orders", &token, None).await;
    assert_eq!(
        r.status, 200,
        "the dataset was deleted without its audit entry"
    );
    admin
        .batch_execute("DROP TRIGGER fail_audit ON app.audit_events")
        .await
        .unwrap();
    let r = app
        .call("DELETE", "/v1/datasets/orders", &token, None)
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(verify(&app, &token).await["entries"], 2);
}

//! What the console browses with: a dataset's records a page at a time (`GET
//! /v1/datasets/{dataset}/records`), its record count, and the tenant's members (`GET
//! /v1/members`): in order, complete across pages, bounded, and confined to the tenant.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use tenantry_tests::{TestApp, issuer};

const SPEC: &str = r#"{"name": "events", "columns": [{"name": "n", "type": "integer"}]}"#;

fn token(slug: &str, role: &str) -> String {
    issuer()
        .token(
            &format!("auth0|{slug}-{role}"),
            &format!("org_{slug}"),
            &[role],
            Duration::from_secs(600),
        )
        .unwrap()
}

#[tokio::test]
async fn records_page_through_every_key_once_in_order() {
    let app = TestApp::new().await;
    let (_, admin) = app.tenant_with_token("alpha").await;
    let (_, other) = app.tenant_with_token("beta").await;
    app.create_dataset(&admin, SPEC).await;
    app.create_dataset(&other, SPEC).await;
    // Keys whose byte order and number order differ, and one the other tenant also has.
    let keys: Vec<String> = (0..37).map(|i| format!("k{i}")).collect();
    let records: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| json!({"key": k, "data": {"n": i}}))
        .collect();
    app.ingest(&admin, "events", &json!(records)).await;
    app.ingest(
        &other,
        "events",
        &json!([{"key": "secret-of-beta", "data": {"n": 1}}]),
    )
    .await;

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            None => "/v1/datasets/events/records?limit=10".to_owned(),
            Some(a) => format!("/v1/datasets/events/records?limit=10&after={a}"),
        };
        let r = app.call("GET", &path, &admin, None).await;
        assert_eq!(r.status, 200, "{}", r.json);
        pages += 1;
        let page = r.json["records"].as_array().unwrap();
        assert!(page.len() <= 10);
        for rec in page {
            assert_eq!(rec["version"], 1);
            assert!(rec["data"]["n"].is_number());
            seen.push(rec["key"].as_str().unwrap().to_owned());
        }
        match r.json["next_after"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), seen.last().map(String::as_str));
                after = Some(next.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(pages, 4);
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "every key once, in key order");

    // The record count is the dataset's, not the tenant's or anyone else's.
    let count = "/v1/datasets/events?include=record_count";
    let ds = app.call("GET", count, &admin, None).await;
    assert_eq!(ds.json["record_count"], 37, "{}", ds.json);
    let ds = app.call("GET", count, &other, None).await;
    assert_eq!(ds.json["record_count"], 1);
    // Only when asked (it scans the dataset's keys); an unknown include is a 400.
    let ds = app.call("GET", "/v1/datasets/events", &admin, None).await;
    assert!(ds.json.get("record_count").is_none(), "{}", ds.json);
    let ds = app
        .call("GET", "/v1/datasets/events?include=rows", &admin, None)
        .await;
    assert_eq!(ds.status, 400);

    // A viewer reads; bad bounds are a clear 400; an unknown dataset is a 404.
    let viewer = token("alpha", "viewer");
    let r = app
        .call("GET", "/v1/datasets/events/records", &viewer, None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["records"].as_array().unwrap().len(), 37);
    assert!(r.json["next_after"].is_null());
    for q in ["limit=0", "limit=501", "limit=x", "cursor=1"] {
        let r = app
            .call(
                "GET",
                &format!("/v1/datasets/events/records?{q}"),
                &admin,
                None,
            )
            .await;
        assert_eq!(r.status, 400, "{q}: {}", r.json);
        assert!(r.json["code"].is_string());
    }
    let r = app
        .call("GET", "/v1/datasets/nope/records", &admin, None)
        .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (404, Some("dataset_not_found"))
    );

    // The attacker's move: beta pages its own dataset of the same name from a cursor before
    // alpha's keys, and sees only its own record.
    let r = app
        .call("GET", "/v1/datasets/events/records?after=", &other, None)
        .await;
    let keys: Vec<_> = r.json["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["secret-of-beta"]);
}

#[tokio::test]
async fn members_are_listed_to_admins_of_their_tenant_only() {
    let app = TestApp::new().await;
    let (alpha, admin) = app.tenant_with_token("alpha").await;
    let (beta, beta_admin) = app.tenant_with_token("beta").await;
    let db = app.db.admin().await;
    for (tenant, user, role, removed) in [
        (alpha, "auth0|ann", "owner", false),
        (alpha, "auth0|bob", "viewer", false),
        (alpha, "auth0|cy", "member", true),
        (beta, "auth0|dee", "admin", false),
    ] {
        db.execute(
            "INSERT INTO app.members (tenant_id, auth0_user_id, email, role, removed_at) \
             VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)",
            &[
                &tenant.as_uuid(),
                &user,
                &format!("{}@example.com", &user[6..]),
                &role,
                &removed,
            ],
        )
        .await
        .unwrap();
    }

    let r = app.call("GET", "/v1/members?limit=1", &admin, None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let first = &r.json["members"][0];
    assert_eq!(first["auth0_user_id"], "auth0|ann");
    assert_eq!(first["role"], "owner");
    assert_eq!(first["email"], "ann@example.com");
    let next = r.json["next_after"].as_str().unwrap().to_owned();
    let r = app
        .call("GET", &format!("/v1/members?after={next}"), &admin, None)
        .await;
    let rest: BTreeSet<_> = r.json["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["auth0_user_id"].as_str().unwrap().to_owned())
        .collect();
    // Cy left; Dee is beta's.
    assert_eq!(rest, BTreeSet::from(["auth0|bob".to_owned()]));
    assert!(r.json["next_after"].is_null());

    let r = app.call("GET", "/v1/members", &beta_admin, None).await;
    assert_eq!(r.json["members"].as_array().unwrap().len(), 1);
    assert_eq!(r.json["members"][0]["auth0_user_id"], "auth0|dee");

    // Members and viewers may not list people; bad bounds are a 400.
    for role in ["member", "viewer"] {
        let r = app
            .call("GET", "/v1/members", &token("alpha", role), None)
            .await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (403, Some("insufficient_permission")),
            "{role}"
        );
    }
    for q in ["limit=0", "limit=501", "after=not-a-uuid"] {
        let r = app
            .call("GET", &format!("/v1/members?{q}"), &admin, None)
            .await;
        assert_eq!(r.status, 400, "{q}");
    }
}

/// `GET /v1/datasets/events/records/k/versions?{query}`.
async fn get_versions(app: &TestApp, token: &str, query: &str) -> tenantry_tests::Reply {
    let path = format!("/v1/datasets/events/records/k/versions?{query}");
    app.call("GET", &path, token, None).await
}

#[tokio::test]
async fn a_record_keeps_the_versions_updates_replaced_until_it_is_deleted() {
    let app = TestApp::new().await;
    let (_, admin) = app.tenant_with_token("alpha").await;
    let (_, other) = app.tenant_with_token("beta").await;
    app.create_dataset(&admin, SPEC).await;
    app.create_dataset(&other, SPEC).await;
    for n in [1, 2, 2, 3] {
        // The repeated write changes nothing: no version, nothing kept.
        app.ingest(&admin, "events", &json!([{"key": "k", "data": {"n": n}}]))
            .await;
    }
    for n in [98, 99] {
        app.ingest(&other, "events", &json!([{"key": "k", "data": {"n": n}}]))
            .await;
    }
    // An NDJSON import is an update like any other.
    let r = app
        .import(&admin, "events", "{\"key\": \"k\", \"data\": {\"n\": 4}}\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.json);

    let r = get_versions(&app, &admin, "").await;
    assert_eq!(r.status, 200, "{}", r.json);
    let versions = r.json["versions"].as_array().unwrap();
    let seen: Vec<_> = versions
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["data"]["n"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [(4, 4), (3, 3), (2, 2), (1, 1)]);
    assert!(versions[0]["superseded_at"].is_null(), "the current one");
    assert!(versions[1..].iter().all(|v| v["superseded_at"].is_string()));
    assert!(r.json["next_before"].is_null());

    // A page at a time; the cursor is the last version shown.
    let r = get_versions(&app, &admin, "limit=3").await;
    assert_eq!(r.json["versions"].as_array().unwrap().len(), 3);
    assert_eq!(r.json["next_before"], 2);
    let r = get_versions(&app, &admin, "before=2").await;
    assert_eq!(r.json["versions"][0]["version"], 1);
    assert_eq!(r.json["versions"][0]["data"]["n"], 1);

    // Beta's record of the same dataset name and key has its own versions, and alpha's list
    // holds none of them (n 98 and 99 are beta's).
    let r = get_versions(&app, &other, "").await;
    let theirs: Vec<_> = r.json["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(theirs, [99, 98]);

    // Deleting the record deletes its history (checked at the database, past RLS).
    let r = app
        .call("DELETE", "/v1/datasets/events/records/k", &admin, None)
        .await;
    assert_eq!(r.status, 204);
    let r = get_versions(&app, &admin, "").await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (404, Some("record_not_found"))
    );
    let db = app.db.admin().await;
    let kept: i64 = db
        .query_one("SELECT count(*) FROM app.record_versions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        kept, 1,
        "alpha's record was deleted; beta's first version stays"
    );
    // Past the first page, a missing record is still a 404; a cursor below 1 is a 400.
    let r = get_versions(&app, &admin, "before=3").await;
    assert_eq!(r.status, 404);
    // A re-created record starts a new history.
    app.ingest(&admin, "events", &json!([{"key": "k", "data": {"n": 7}}]))
        .await;
    let r = get_versions(&app, &admin, "").await;
    assert_eq!(r.json["versions"].as_array().unwrap().len(), 1);
    for q in ["limit=0", "limit=101", "before=x", "before=0", "before=-1"] {
        let r = get_versions(&app, &admin, q).await;
        assert_eq!(r.status, 400, "{q}");
    }

    // Deleting the dataset takes every version with it.
    app.ingest(&admin, "events", &json!([{"key": "k", "data": {"n": 8}}]))
        .await;
    let r = app
        .call("DELETE", "/v1/datasets/events", &admin, None)
        .await;
    assert_eq!(r.status, 204);
    let kept: i64 = db
        .query_one("SELECT count(*) FROM app.record_versions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "only beta's");
}

/// History is written by the update trigger alone, from versions the database keeps honest: the
/// app role cannot forge a version of its own tenant's record, rewrite one, or erase one, neither
/// directly nor by steering the trigger through the record's version and timestamps, and a
/// refused attempt leaves the history as it was.
#[tokio::test]
async fn the_app_role_cannot_forge_rewrite_or_erase_a_records_history() {
    use tenantry::db::Access;
    use tenantry::db::TenantContext;
    let app = TestApp::new().await;
    let (tenant, admin) = app.tenant_with_token("alpha").await;
    app.create_dataset(&admin, SPEC).await;
    app.create_dataset(&admin, &SPEC.replace("events", "other"))
        .await;
    for n in 1..=3 {
        app.ingest(&admin, "events", &json!([{"key": "k", "data": {"n": n}}]))
            .await;
    }
    let history = |app: &TestApp| {
        let url = app.db.admin_url.clone();
        async move {
            let db = tenantry_tests::connect(&url).await;
            db.query(
                "SELECT version, data::text FROM app.record_versions ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
        }
    };
    let before = history(&app).await;
    assert_eq!(
        before,
        [(1, r#"{"n": 1}"#.into()), (2, r#"{"n": 2}"#.into())]
    );

    let ctx = TenantContext {
        tenant_id: tenant,
        actor_id: "system:test".into(),
    };
    use tokio_postgres::error::SqlState;
    let no_grant = "permission denied for table record_versions";
    let stepped = "a record's version starts at 1 and moves by one with each change of its data, \
                   stamped with the time of the change";
    for (sql, code, message) in [
        // A version the record never had, in its own tenant.
        (
            "INSERT INTO app.record_versions (tenant_id, dataset_id, key, version, data, written_at) \
             SELECT tenant_id, dataset_id, key, 9, '{\"n\": 666}', now() FROM app.records",
            SqlState::INSUFFICIENT_PRIVILEGE,
            no_grant,
        ),
        (
            "UPDATE app.record_versions SET data = '{\"n\": 666}'",
            SqlState::INSUFFICIENT_PRIVILEGE,
            no_grant,
        ),
        (
            "DELETE FROM app.record_versions",
            SqlState::INSUFFICIENT_PRIVILEGE,
            no_grant,
        ),
        // Past the last 100 in one step: the trigger's prune would erase the whole history.
        (
            "UPDATE app.records SET version = version + 101",
            SqlState::CHECK_VIOLATION,
            stepped,
        ),
        (
            "UPDATE app.records SET data = '{\"n\": 666}', version = version + 101, updated_at = now()",
            SqlState::CHECK_VIOLATION,
            stepped,
        ),
        // A forged version number or time for the trigger to keep.
        (
            "UPDATE app.records SET data = '{\"n\": 666}', version = 2, updated_at = now()",
            SqlState::CHECK_VIOLATION,
            stepped,
        ),
        (
            "UPDATE app.records SET data = '{\"n\": 666}', version = version + 1, \
             updated_at = '2020-01-01T00:00:00Z'",
            SqlState::CHECK_VIOLATION,
            stepped,
        ),
        (
            "UPDATE app.records SET created_at = '2020-01-01T00:00:00Z'",
            SqlState::CHECK_VIOLATION,
            stepped,
        ),
        // A changed content that keeps its version number.
        (
            "UPDATE app.records SET data = '{\"n\": 666}', updated_at = now()",
            SqlState::CHECK_VIOLATION,
            stepped,
        ),
        // A time of its own, for the next change to keep as this version's.
        (
            "UPDATE app.records SET updated_at = '2020-01-01T00:00:00Z'",
            SqlState::CHECK_VIOLATION,
            stepped,
        ),
        // Another record's name, or dataset, for this one's history.
        (
            "UPDATE app.records SET key = 'k2'",
            SqlState::CHECK_VIOLATION,
            stepped,
        ),
        (
            "UPDATE app.records SET dataset_id = \
             (SELECT dataset_id FROM app.datasets WHERE name = 'other')",
            SqlState::CHECK_VIOLATION,
            stepped,
        ),
        // A new record born at a version and time of its own.
        (
            "INSERT INTO app.records (tenant_id, dataset_id, key, data, version) \
             SELECT tenant_id, dataset_id, 'k3', '{\"n\": 666}', 500 FROM app.records",
            SqlState::CHECK_VIOLATION,
            stepped,
        ),
        (
            "INSERT INTO app.records (tenant_id, dataset_id, key, data, updated_at) \
             SELECT tenant_id, dataset_id, 'k3', '{\"n\": 666}', '2020-01-01T00:00:00Z' \
             FROM app.records",
            SqlState::CHECK_VIOLATION,
            stepped,
        ),
    ] {
        let mut tx = app.app.db.begin(&ctx, Access::ReadWrite).await.unwrap();
        let err = tx.execute(sql, &[]).await.unwrap_err();
        let said = match &err {
            tenantry::db::DbError::Postgres(e) => e.as_db_error().map(|d| d.message().to_owned()),
            _ => None,
        };
        assert_eq!(
            (err.sqlstate(), said.as_deref()),
            (Some(&code), Some(message)),
            "{sql}: {err}"
        );
    }
    assert_eq!(history(&app).await, before);
    // A step the rules allow, by hand: the trigger keeps it like any other.
    let mut tx = app.app.db.begin(&ctx, Access::ReadWrite).await.unwrap();
    let n = tx
        .execute(
            "UPDATE app.records SET data = '{\"n\": 3.5}', version = version + 1, updated_at = now()",
            &[],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(history(&app).await.len(), 3);

    // The trigger still keeps the next replaced version, and a delete still takes them all.
    app.ingest(&admin, "events", &json!([{"key": "k", "data": {"n": 4}}]))
        .await;
    assert_eq!(history(&app).await.len(), 4);
    let r = app
        .call("DELETE", "/v1/datasets/events/records/k", &admin, None)
        .await;
    assert_eq!(r.status, 204);
    assert!(history(&app).await.is_empty());
}

#[tokio::test]
async fn a_record_keeps_its_last_hundred_replaced_versions() {
    let app = TestApp::new().await;
    let (_, admin) = app.tenant_with_token("alpha").await;
    app.create_dataset(&admin, SPEC).await;
    for n in 1..=104 {
        app.ingest(&admin, "events", &json!([{"key": "hot", "data": {"n": n}}]))
            .await;
    }
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            None => "/v1/datasets/events/records/hot/versions?limit=100".to_owned(),
            Some(b) => format!("/v1/datasets/events/records/hot/versions?limit=100&before={b}"),
        };
        let r = app.call("GET", &path, &admin, None).await;
        assert_eq!(r.status, 200, "{}", r.json);
        for v in r.json["versions"].as_array().unwrap() {
            // Each version holds what was written as it.
            assert_eq!(v["data"]["n"], v["version"]);
            seen.push(v["version"].as_i64().unwrap());
        }
        match r.json["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    // The current (104) and the 100 before it; 1 to 3 are gone.
    assert_eq!(seen, (4..=104).rev().collect::<Vec<_>>());
}

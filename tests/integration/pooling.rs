//! Many tenants interleaved on one connection, directly and through PgBouncer in transaction mode:
//! each sees only its own canary, whatever the others did before it on that connection. And,
//! read on the raw connection outside any TenantTx (where a session-scoped `set_config` would
//! show, though the next TenantTx would overwrite it), nothing a TenantTx set is left behind:
//! after every way a TenantTx can end, and after every kind of HTTP request the app serves.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use tenantry::TenantId;
use tenantry::db::{Access, Db, DbError, Param, TenantContext, TxSettings};
use tenantry_tests::{PgBouncer, TestApp, TestDb, as_tenant, gateway_event, tenant, tx};
use tokio_postgres::types::Type;

const TENANTS: usize = 12;
const ROUNDS: usize = 8;

async fn seed_canaries(db: &Db) -> Vec<(TenantId, String)> {
    let mut out = Vec::new();
    for i in 0..TENANTS {
        let id = tenant(db, &format!("canary-{i}")).await;
        let name = format!("canary_{i}");
        let mut t = tx(db, id).await;
        let uid = id.as_uuid();
        t.execute(
            "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, $2)",
            &[(&uid, Type::UUID), (&name, Type::TEXT)],
        )
        .await
        .unwrap();
        t.commit().await.unwrap();
        out.push((id, name));
    }
    out
}

/// One tenant's turn: read the canary and the session's idea of the tenant, sometimes leaving
/// the transaction in a state a careless pool would hand to the next tenant.
async fn turn(db: &Db, tenant: TenantId, canary: &str, round: usize) {
    let mut t = db
        .begin(&as_tenant(tenant), Access::ReadWrite)
        .await
        .unwrap();
    let rows = t
        .query(
            "SELECT name, current_setting('app.tenant_id') FROM app.datasets",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        seen,
        vec![(canary.to_owned(), tenant.to_string())],
        "tenant {tenant} saw {seen:?}"
    );
    match round % 4 {
        // The turn after a drop commits, so a drop that leaked its transaction would be caught.
        1 => t.commit().await.unwrap(),
        0 => {
            // Dropped mid-transaction after a write: it must roll back before anyone reuses the
            // connection, or the next tenant's COMMIT would commit this write.
            let uid = tenant.as_uuid();
            t.execute(
                "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'ghost')",
                &[(&uid, Type::UUID)],
            )
            .await
            .unwrap();
            drop(t);
        }
        2 => {
            // A failed statement, then an attempted commit: an error, never a silent success.
            assert!(t.query("SELECT 1/0", &[]).await.is_err());
            assert!(t.commit().await.is_err());
        }
        _ => {
            // A write that is rolled back must not be seen by the next tenant or by this one.
            let uid = tenant.as_uuid();
            t.execute(
                "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'ghost')",
                &[(&uid, Type::UUID)],
            )
            .await
            .unwrap();
            t.rollback().await.unwrap();
        }
    }
}

async fn interleave(db: &Db, canaries: &[(TenantId, String)]) {
    for round in 0..ROUNDS {
        let turns = canaries
            .iter()
            .enumerate()
            .map(|(i, (id, name))| turn(db, *id, name, round + i));
        join_all(turns).await;
    }
    // Give background rollbacks of dropped transactions a moment, then check once more.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (id, name) in canaries {
        turn(db, *id, name, 1).await;
    }
}

#[tokio::test]
async fn one_connection_many_tenants_direct() {
    let test = TestDb::new().await;
    let seed = test.pool(2);
    let canaries = seed_canaries(&seed).await;
    let db = test.pool(1);
    interleave(&db, &canaries).await;
    // The single connection carries no tenant between transactions.
    let mut t = db
        .begin(&as_tenant(TenantId::new()), Access::ReadOnly)
        .await
        .unwrap();
    let n: i64 = t
        .query_one("SELECT count(*) FROM app.datasets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a tenant with no rows sees rows");
    t.commit().await.unwrap();
}

#[tokio::test]
async fn one_server_connection_many_tenants_through_pgbouncer() {
    let test = TestDb::new().await;
    let seed = test.pool(2);
    let canaries = seed_canaries(&seed).await;
    let bouncer = PgBouncer::start(1);
    // Several client connections multiplexed onto one server connection by PgBouncer.
    let db = test.pool_at(&bouncer.app_url(&test.name), 6);
    interleave(&db, &canaries).await;
    // And a session-level setting made by someone else on the shared server connection is not
    // what TenantTx relies on: it sets its tenant in every transaction.
    let raw = tenantry_tests::connect(&bouncer.app_url(&test.name)).await;
    let other = canaries[0].0.to_string();
    raw.simple_query(&format!(
        "SELECT set_config('app.tenant_id', '{other}', false)"
    ))
    .await
    .unwrap();
    let (id, name) = &canaries[1];
    turn(&db, *id, name, 1).await;
}

/// TLS to the pooler, as to RDS Proxy with "Require TLS": the certificate is verified (a CA we
/// did not trust is refused), and plain connections are refused by the pooler.
#[tokio::test]
async fn tls_to_the_pooler_is_verified() {
    use tenantry::config::{DbConfig, DbTls};
    let test = TestDb::new().await;
    let seed = test.pool(1);
    let canaries = seed_canaries(&seed).await;
    let bouncer = PgBouncer::start_tls(1);
    let url = bouncer.app_url(&test.name);

    let mut cfg = DbConfig::new(&url, 2);
    cfg.tls = DbTls::Require {
        ca_file: Some(bouncer.ca_file()),
    };
    let db = tenantry::db::Db::connect(&cfg).unwrap();
    let (id, name) = &canaries[0];
    turn(&db, *id, name, 1).await;

    // Only the public roots: the test CA is unknown, so the handshake must fail.
    cfg.tls = DbTls::Require { ca_file: None };
    let untrusting = tenantry::db::Db::connect(&cfg).unwrap();
    assert!(
        untrusting
            .begin(&as_tenant(*id), Access::ReadOnly)
            .await
            .is_err()
    );

    // No TLS at all: the pooler refuses.
    cfg.tls = DbTls::Disable;
    let plain = tenantry::db::Db::connect(&cfg).unwrap();
    assert!(
        plain
            .begin(&as_tenant(*id), Access::ReadOnly)
            .await
            .is_err()
    );
}

/// What a plain statement, outside any TenantTx, finds on the server connection it runs on: the
/// settings TenantTx makes and the tenant rows visible with whatever tenant is left.
const SESSION_JSON: &str = "json_build_object(
    'pid', pg_backend_pid(),
    'tenant', coalesce(current_setting('app.tenant_id', true), ''),
    'actor', coalesce(current_setting('app.actor_id', true), ''),
    'impersonation', coalesce(current_setting('app.impersonation_id', true), ''),
    'statement_timeout', current_setting('statement_timeout'),
    'time_zone', current_setting('TimeZone'),
    'ef_search', coalesce(current_setting('hnsw.ef_search', true), ''),
    'iterative_scan', coalesce(current_setting('hnsw.iterative_scan', true), ''),
    'datasets', (SELECT count(*) FROM app.datasets))::text";

/// What TenantTx sets for hnsw.ef_search in these tests, so a leak of it is recognizable.
const EF_SEARCH: u32 = 777;

/// The test database's default time zone in the leak tests: neither what TenantTx sets ('UTC')
/// nor a common cluster default ('Etc/UTC', 'UTC', 'GMT'), so a TimeZone that outlived its
/// transaction shows whatever the cluster's own default is. (It shows on the pool's own
/// connection; through PgBouncer it cannot, and need not: PgBouncer tracks TimeZone per client
/// and sets the client's own before lending it a server connection.)
const DB_TIME_ZONE: &str = "Pacific/Chatham";

/// Gives the test database [`DB_TIME_ZONE`] as its default, for the sessions opened after this
/// (so before any pool or PgBouncer connects to it).
async fn set_db_time_zone(test: &TestDb) {
    test.admin()
        .await
        .batch_execute(&format!(
            "ALTER DATABASE {} SET TimeZone = '{DB_TIME_ZONE}'",
            test.name
        ))
        .await
        .unwrap();
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    pid: i64,
    tenant: String,
    actor: String,
    impersonation: String,
    statement_timeout: String,
    time_zone: String,
    ef_search: String,
    iterative_scan: String,
    datasets: i64,
}

impl Session {
    fn parse(json: &str) -> Self {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let s = |k: &str| v[k].as_str().unwrap().to_owned();
        Self {
            pid: v["pid"].as_i64().unwrap(),
            tenant: s("tenant"),
            actor: s("actor"),
            impersonation: s("impersonation"),
            statement_timeout: s("statement_timeout"),
            time_zone: s("time_zone"),
            ef_search: s("ef_search"),
            iterative_scan: s("iterative_scan"),
            datasets: v["datasets"].as_i64().unwrap(),
        }
    }

    /// Everything in this session a TenantTx left behind, compared with the session before any
    /// TenantTx ran on the connection.
    fn leaks(&self, baseline: &Session) -> Vec<String> {
        let mut out = Vec::new();
        for (what, now, before) in [
            ("app.tenant_id", &self.tenant, &baseline.tenant),
            ("app.actor_id", &self.actor, &baseline.actor),
            (
                "app.impersonation_id",
                &self.impersonation,
                &baseline.impersonation,
            ),
            (
                "statement_timeout",
                &self.statement_timeout,
                &baseline.statement_timeout,
            ),
            ("TimeZone", &self.time_zone, &baseline.time_zone),
        ] {
            if now != before {
                out.push(format!("{what} is {now:?}, was {before:?}"));
            }
        }
        if self.ef_search == EF_SEARCH.to_string() {
            out.push(format!("hnsw.ef_search is {:?}", self.ef_search));
        }
        if self.iterative_scan == "relaxed_order" {
            out.push("hnsw.iterative_scan is \"relaxed_order\"".into());
        }
        if self.datasets != 0 {
            out.push(format!("{} datasets visible", self.datasets));
        }
        out
    }
}

/// Where the plain statement runs.
enum Raw<'a> {
    /// Through the pool's own (only) connection: the pool runs nothing outside TenantTx but the
    /// pre-tenant lookups, so the test database's `app.tenant_ids()` is replaced by one that
    /// reports the session (as the caller, not SECURITY DEFINER) instead.
    Pool(&'a Db),
    /// A plain client of a PgBouncer with one server connection: it must get the same one.
    Bouncer(&'a tokio_postgres::Client),
}

impl Raw<'_> {
    async fn read(&self) -> Session {
        match self {
            Raw::Pool(db) => {
                let rows = db.tenant_ids().await.unwrap();
                assert_eq!(rows.len(), 1);
                Session::parse(&rows[0].status)
            }
            Raw::Bouncer(client) => {
                let row = client
                    .query_typed(&format!("SELECT {SESSION_JSON}"), &[])
                    .await
                    .unwrap();
                Session::parse(row[0].get(0))
            }
        }
    }
}

/// Every way a TenantTx can end.
#[derive(Debug, Clone, Copy)]
enum Use {
    Commit,
    WriteThenCommit,
    WriteThenRollback,
    WriteThenDrop,
    FailedStatementThenCommit,
    ReadOnlyCommit,
    TimedOutThenCommit,
    TimeoutSetThenCommit,
    NothingRun,
}

const USES: [Use; 9] = [
    Use::Commit,
    Use::WriteThenCommit,
    Use::WriteThenRollback,
    Use::WriteThenDrop,
    Use::FailedStatementThenCommit,
    Use::ReadOnlyCommit,
    Use::TimedOutThenCommit,
    Use::TimeoutSetThenCommit,
    Use::NothingRun,
];

/// Uses a TenantTx as `tenant` in one way; returns the backend it ran on (if it ran anything).
async fn use_once(db: &Db, tenant: TenantId, how: Use, n: usize) -> Option<i64> {
    let access = match how {
        Use::ReadOnlyCommit => Access::ReadOnly,
        _ => Access::ReadWrite,
    };
    let settings = match how {
        // The limit covers every statement of the transaction, the first (pipelined with BEGIN)
        // too: long enough for that one on a loaded machine, far shorter than the sleep below.
        Use::TimedOutThenCommit => TxSettings {
            statement_timeout: Some(Duration::from_secs(1)),
            ..TxSettings::default()
        },
        Use::TimeoutSetThenCommit | Use::ReadOnlyCommit => TxSettings {
            statement_timeout: Some(Duration::from_secs(7)),
            hnsw_ef_search: Some(EF_SEARCH),
            impersonation_id: Some(uuid::Uuid::from_u128(n as u128 + 1)),
            ..TxSettings::default()
        },
        _ => TxSettings::default(),
    };
    let ctx = TenantContext {
        tenant_id: tenant,
        actor_id: format!("user:leak-{n}"),
    };
    let mut t = db.begin_with(&ctx, access, settings).await.unwrap();
    if let Use::NothingRun = how {
        t.commit().await.unwrap();
        return None;
    }
    let row = t
        .query_one(
            "SELECT pg_backend_pid()::int8, count(*), current_setting('app.tenant_id') FROM app.datasets",
            &[],
        )
        .await
        .unwrap();
    let (pid, seen, set): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
    assert!(seen >= 1, "{how:?}: the tenant does not see its own canary");
    assert_eq!(set, tenant.to_string());
    let uid = tenant.as_uuid();
    let name = format!("leak_{n}");
    let write = "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, $2)";
    let params: [Param<'_>; 2] = [(&uid, Type::UUID), (&name, Type::TEXT)];
    match how {
        Use::Commit | Use::ReadOnlyCommit | Use::TimeoutSetThenCommit => t.commit().await.unwrap(),
        Use::WriteThenCommit => {
            t.execute(write, &params).await.unwrap();
            t.commit().await.unwrap();
        }
        Use::WriteThenRollback => {
            t.execute(write, &params).await.unwrap();
            t.rollback().await.unwrap();
        }
        Use::WriteThenDrop => {
            t.execute(write, &params).await.unwrap();
            drop(t);
        }
        Use::FailedStatementThenCommit => {
            assert!(t.query("SELECT 1/0", &[]).await.is_err());
            assert!(matches!(t.commit().await, Err(DbError::Aborted)));
        }
        Use::TimedOutThenCommit => {
            // The timeout ends it after a second.
            let err = t.query("SELECT pg_sleep(5)", &[]).await.unwrap_err();
            assert!(err.is_timeout(), "{err:?}");
            assert!(matches!(t.commit().await, Err(DbError::Aborted)));
        }
        Use::NothingRun => unreachable!(),
    }
    Some(pid)
}

/// The session before anything ran on it: no tenant, no rows, and the database's own time zone
/// (else a TimeZone leak could not show).
async fn fresh_session(raw: &Raw<'_>) -> Session {
    let baseline = raw.read().await;
    assert_eq!(baseline.tenant, "", "the connection starts with a tenant");
    assert_eq!(baseline.actor, "", "the connection starts with an actor");
    assert_eq!(baseline.datasets, 0);
    assert_eq!(
        baseline.time_zone, DB_TIME_ZONE,
        "the test database's default time zone did not take"
    );
    baseline
}

/// After every kind of TenantTx use, a plain statement on the same server connection finds
/// nothing of it: no tenant (and so no rows), no actor, no timeout, no time zone, no HNSW settings.
async fn nothing_survives(db: &Db, raw: Raw<'_>, canaries: &[(TenantId, String)]) {
    let baseline = fresh_session(&raw).await;
    for (n, how) in USES.iter().enumerate() {
        let (tenant, _) = &canaries[n % canaries.len()];
        let pid = use_once(db, *tenant, *how, n).await;
        let after = raw.read().await;
        if let Some(pid) = pid {
            assert_eq!(
                after.pid, pid,
                "{how:?}: the plain statement ran on another server connection"
            );
        }
        let leaks = after.leaks(&baseline);
        assert!(
            leaks.is_empty(),
            "{how:?} as {tenant} left on the connection: {}",
            leaks.join("; ")
        );
    }
}

#[tokio::test]
async fn nothing_a_tenant_tx_sets_survives_on_its_pooled_connection() {
    let test = TestDb::new().await;
    set_db_time_zone(&test).await;
    let seed = test.pool(2);
    let canaries = seed_canaries(&seed).await;
    let admin = test.admin().await;
    admin
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION app.tenant_ids() RETURNS TABLE (tenant_id uuid, status text)
               LANGUAGE sql STABLE
               AS $$ SELECT '00000000-0000-0000-0000-000000000000'::uuid, {SESSION_JSON} $$"
        ))
        .await
        .unwrap();
    let db = test.pool(1);
    nothing_survives(&db, Raw::Pool(&db), &canaries).await;
}

#[tokio::test]
async fn nothing_a_tenant_tx_sets_survives_on_a_pgbouncer_server_connection() {
    let test = TestDb::new().await;
    set_db_time_zone(&test).await;
    let seed = test.pool(2);
    let canaries = seed_canaries(&seed).await;
    let bouncer = PgBouncer::start(1);
    let url = bouncer.app_url(&test.name);
    let db = test.pool_at(&url, 1);
    let raw = tenantry_tests::connect(&url).await;
    nothing_survives(&db, Raw::Bouncer(&raw), &canaries).await;
}

/// After a request, the one server connection behind the app's PgBouncer carries nothing of it.
async fn assert_request_left_nothing(raw: &Raw<'_>, baseline: &Session, what: &str) {
    let after = raw.read().await;
    assert_eq!(
        after.pid, baseline.pid,
        "after {what}: the plain client got another server connection, so this proves nothing"
    );
    let leaks = after.leaks(baseline);
    assert!(
        leaks.is_empty(),
        "{what} left on the server connection: {}",
        leaks.join("; ")
    );
}

/// The pool-level check after every kind of HTTP request, not only TenantTx endings: the app
/// (one connection) and a plain client share a PgBouncer with ONE server connection, and after
/// each request the plain client, on that same server connection, finds no tenant, no actor,
/// the default statement timeout and time zone, no HNSW settings, and no rows.
#[tokio::test]
async fn nothing_a_request_sets_survives_on_a_pgbouncer_server_connection() {
    let mut app = TestApp::with_vars(&[
        ("DB_POOL_MAX", "1".to_owned()),
        ("DB_CONNECT_TIMEOUT_SECS", "10".to_owned()),
        // Values a leak would show: the analytics timeout and the HNSW candidate list size.
        ("QUERY_TIMEOUT_MS", "4321".to_owned()),
        ("RAG_HNSW_EF_SEARCH", EF_SEARCH.to_string()),
    ])
    .await;
    set_db_time_zone(&app.db).await;
    // Tenants provisioned on the harness's direct connection, so what is checked below is what
    // the requests do.
    let (_, a) = app.tenant_with_token("alpha").await;
    let (_, b) = app.tenant_with_token("bravo").await;
    let bouncer = PgBouncer::start(1);
    let url = bouncer.app_url(&app.db.name);
    // The harness points the app straight at the database (its APP_DATABASE_URL wins over
    // extra variables, and the database is named only once it exists): the same configuration,
    // with the app's one connection through the PgBouncer instead.
    let mut config = app.app.config.clone();
    config.db.url = url.clone();
    assert_eq!(config.db.pool_max, 1);
    app.app = std::sync::Arc::new(tenantry::App::builder(config).build().unwrap());

    let client = tenantry_tests::connect(&url).await;
    let raw = Raw::Bouncer(&client);
    let baseline = fresh_session(&raw).await;

    let notes = r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}], "text_columns": ["body"]}"#;
    let r = app.call("POST", "/v1/datasets", &a, Some(notes)).await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_request_left_nothing(&raw, &baseline, "POST /v1/datasets").await;

    let r = app.call("GET", "/v1/me", &a, None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_request_left_nothing(&raw, &baseline, "GET /v1/me").await;

    let records = json!([
        {"key": "n1", "data": {"body": "The Lisbon shipment was delayed by customs."}},
        {"key": "n2", "data": {"body": "Quarterly revenue grew in APAC."}}
    ]);
    let r = app
        .call(
            "POST",
            "/v1/datasets/notes/records",
            &a,
            Some(&records.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    // The in-process embedding of these records may still be running: the plain client then
    // waits for the server connection, and finds nothing of that work either.
    assert_request_left_nothing(&raw, &baseline, "POST /v1/datasets/notes/records").await;

    let r = app.call("GET", "/v1/datasets/notes", &a, None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let dataset_id = r.json["id"].as_str().unwrap().to_owned();
    assert_request_left_nothing(&raw, &baseline, "GET /v1/datasets/notes").await;

    let q = json!({"dataset": "notes", "aggregates": [{"fn": "count"}]}).to_string();
    let r = app.call("POST", "/v1/query", &a, Some(&q)).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_request_left_nothing(&raw, &baseline, "POST /v1/query").await;

    // Asked until the embedding has caught up, so the search really ran (with its settings).
    let question = json!({"question": "Why was the Lisbon shipment delayed?"}).to_string();
    let mut r = app.call("POST", "/v1/ask", &a, Some(&question)).await;
    for _ in 0..100 {
        if r.status != 200 || r.json["retrieval"]["candidates"].as_u64() > Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        r = app.call("POST", "/v1/ask", &a, Some(&question)).await;
    }
    assert_eq!(r.status, 200, "{}", r.json);
    assert!(
        r.json["retrieval"]["candidates"].as_u64() > Some(0),
        "{}",
        r.json
    );
    assert_request_left_nothing(&raw, &baseline, "POST /v1/ask").await;

    // Refused after the transaction began (the dataset is read, then the query judged invalid).
    let bad = json!({"dataset": "notes", "limit": 1_000_000}).to_string();
    let r = app.call("POST", "/v1/query", &a, Some(&bad)).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (400, Some("invalid_query")),
        "{}",
        r.json
    );
    assert_request_left_nothing(&raw, &baseline, "an invalid query (400)").await;

    let path = format!("/v1/datasets/{dataset_id}");
    let r = app.call("GET", &path, &b, None).await;
    assert_eq!(r.status, 404, "{}", r.json);
    assert_request_left_nothing(&raw, &baseline, "another tenant's dataset (404)").await;

    let r = app
        .call(
            "POST",
            "/v1/api-keys",
            &a,
            Some(r#"{"name": "etl", "scopes": ["ingest"]}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let key = r.json["key"].as_str().unwrap().to_owned();
    assert_request_left_nothing(&raw, &baseline, "POST /v1/api-keys").await;

    let r = app.call("GET", "/v1/api-keys", &a, None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["api_keys"].as_array().unwrap().len(), 1);
    assert_request_left_nothing(&raw, &baseline, "GET /v1/api-keys").await;

    // Authenticated by API key (its lookup and last-used update run before any TenantTx).
    let r = app
        .send(gateway_event("GET", "/v1/me", &[("x-api-key", &key)], None))
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_request_left_nothing(&raw, &baseline, "GET /v1/me with an API key").await;
}

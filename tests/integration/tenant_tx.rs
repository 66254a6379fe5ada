//! TenantTx's own promises: rollback on drop, read-only, statement timeout, one retry on a dead
//! connection, and settings that never outlive the transaction.

use std::time::Duration;

use tenantry::db::{Access, DbError, TxSettings};
use tenantry_tests::{CountingProxy, DEV_APP_PASSWORD, TestDb, as_tenant, tenant, tx};
use tokio_postgres::types::Type;

#[tokio::test]
async fn dropped_transactions_roll_back_and_commits_stick() {
    let test = TestDb::new().await;
    let db = test.pool(1);
    let a = tenant(&db, "alpha").await;
    let uid = a.as_uuid();

    let mut t = tx(&db, a).await;
    t.execute(
        "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'dropped')",
        &[(&uid, Type::UUID)],
    )
    .await
    .unwrap();
    drop(t);

    let mut t = tx(&db, a).await;
    t.execute(
        "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'kept')",
        &[(&uid, Type::UUID)],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();

    let mut t = db.begin(&as_tenant(a), Access::ReadOnly).await.unwrap();
    let names: Vec<String> = t
        .query("SELECT name FROM app.datasets ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    t.commit().await.unwrap();
    assert_eq!(names, ["kept"]);
}

#[tokio::test]
async fn read_only_transactions_refuse_writes() {
    let test = TestDb::new().await;
    let db = test.pool(1);
    let a = tenant(&db, "alpha").await;
    let uid = a.as_uuid();
    let mut t = db.begin(&as_tenant(a), Access::ReadOnly).await.unwrap();
    let err = t
        .execute(
            "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'nope')",
            &[(&uid, Type::UUID)],
        )
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate().map(|s| s.code()), Some("25006"), "{err:?}");
    // Everything after a failure is refused, and commit reports it rather than pretending.
    assert!(matches!(
        t.query("SELECT 1", &[]).await,
        Err(DbError::Aborted)
    ));
    assert!(matches!(t.commit().await, Err(DbError::Aborted)));
}

#[tokio::test]
async fn statement_timeout_is_per_transaction() {
    let test = TestDb::new().await;
    let db = test.pool(1);
    let a = tenant(&db, "alpha").await;
    let settings = TxSettings {
        statement_timeout: Some(Duration::from_millis(50)),
        ..TxSettings::default()
    };
    let mut t = db
        .begin_with(&as_tenant(a), Access::ReadOnly, settings)
        .await
        .unwrap();
    let err = t.query("SELECT pg_sleep(2)", &[]).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    drop(t);
    // The same (only) connection, next transaction: no timeout left over.
    let mut t = db.begin(&as_tenant(a), Access::ReadOnly).await.unwrap();
    let row = t
        .query_one("SELECT current_setting('statement_timeout'), coalesce(current_setting('app.tenant_id', true), '')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "0");
    assert_eq!(row.get::<_, String>(1), a.to_string());
    t.commit().await.unwrap();
}

#[tokio::test]
async fn a_connection_killed_while_idle_is_replaced_transparently() {
    let test = TestDb::new().await;
    let db = test.pool(1);
    let a = tenant(&db, "alpha").await;
    let mut t = db.begin(&as_tenant(a), Access::ReadOnly).await.unwrap();
    let pid = backend_of(&mut t).await;
    t.commit().await.unwrap();

    // What happens to a Lambda's pooled connection while it is frozen: the server side goes away.
    let admin = test.admin().await;
    admin
        .query("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut t = db.begin(&as_tenant(a), Access::ReadOnly).await.unwrap();
    let new_pid = backend_of(&mut t).await;
    t.commit().await.unwrap();
    assert_ne!(pid, new_pid);
}

#[tokio::test]
async fn a_transaction_that_runs_nothing_costs_nothing() {
    let test = TestDb::new().await;
    let db = test.pool(1);
    let a = tenant(&db, "alpha").await;
    let t = db.begin(&as_tenant(a), Access::ReadWrite).await.unwrap();
    t.commit().await.unwrap();
    // The connection is back and clean.
    let mut t = db.begin(&as_tenant(a), Access::ReadOnly).await.unwrap();
    let n: i64 = t
        .query_one("SELECT count(*) FROM app.tenants", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    t.commit().await.unwrap();
}

/// Setting the tenant costs no round trip of its own: a one-statement transaction is two round
/// trips (BEGIN + tenant + statement pipelined, then COMMIT), the same as BEGIN/COMMIT alone.
#[tokio::test] // current-thread, as the Lambda functions run
async fn the_tenant_rides_along_with_the_first_statement() {
    let test = TestDb::new().await;
    let seed = test.pool(1);
    let a = tenant(&seed, "alpha").await;
    let (proxy, db) = counted_pool(&test).await;
    // Open the connection first, so only the transactions are counted.
    db.begin(&as_tenant(a), Access::ReadOnly)
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    let mut t = db.begin(&as_tenant(a), Access::ReadOnly).await.unwrap();
    t.query_one("SELECT 1", &[]).await.unwrap();
    t.commit().await.unwrap();

    let before = proxy.flights();
    for _ in 0..20 {
        let mut t = db.begin(&as_tenant(a), Access::ReadOnly).await.unwrap();
        let n: i64 = t
            .query_one("SELECT count(*) FROM app.tenants", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        t.commit().await.unwrap();
    }
    assert_eq!(
        proxy.flights() - before,
        40,
        "expected 2 round trips per transaction"
    );
}

/// The backend serving a transaction.
async fn backend_of(t: &mut tenantry::db::TenantTx) -> i32 {
    t.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The backend serving a one-connection pool right now.
async fn backend_pid(db: &tenantry::db::Db, a: tenantry::TenantId) -> i32 {
    let mut t = tx(db, a).await;
    let pid = backend_of(&mut t).await;
    t.commit().await.unwrap();
    pid
}

#[tokio::test]
async fn query_opt_and_query_one_insist_on_their_row_counts() {
    let test = TestDb::new().await;
    let db = test.pool(1);
    let a = tenant(&db, "alpha").await;
    let mut t = tx(&db, a).await;
    let none = t.query_opt("SELECT 1 WHERE false", &[]).await.unwrap();
    assert!(none.is_none());
    let one: i32 = t
        .query_opt("SELECT 7", &[])
        .await
        .unwrap()
        .expect("one row")
        .get(0);
    assert_eq!(one, 7);
    let two = t
        .query_opt("SELECT * FROM generate_series(1, 2)", &[])
        .await;
    assert!(matches!(two, Err(DbError::RowCount(2))), "{two:?}");
    // A wrong row count fails the transaction like any other error.
    assert!(matches!(t.commit().await, Err(DbError::Aborted)));

    let mut t = tx(&db, a).await;
    let zero = t.query_one("SELECT 1 WHERE false", &[]).await;
    assert!(matches!(zero, Err(DbError::RowCount(0))), "{zero:?}");
    assert!(matches!(t.commit().await, Err(DbError::Aborted)));
}

/// Only a connection that died is retried: a statement Postgres refuses is not sent again on a
/// new connection (it would run twice), and its connection stays in the pool.
#[tokio::test]
async fn a_refused_first_statement_is_not_retried_elsewhere() {
    let test = TestDb::new().await;
    let db = test.pool(1);
    let a = tenant(&db, "alpha").await;
    let before = backend_pid(&db, a).await;
    let admin = test.admin().await;
    admin
        .batch_execute("CREATE SEQUENCE public.attempts; GRANT USAGE ON SEQUENCE public.attempts TO tenantry_app")
        .await
        .unwrap();
    let mut t = tx(&db, a).await;
    let err = t
        .query("SELECT nextval('public.attempts') / 0", &[])
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate().map(|s| s.code()), Some("22012"), "{err:?}");
    drop(t);
    let attempts: i64 = admin
        .query_one("SELECT last_value FROM public.attempts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1, "the refused statement ran again");
    assert_eq!(
        backend_pid(&db, a).await,
        before,
        "a healthy connection was discarded"
    );
}

/// An explicit rollback on a connection that died says so (and the pool then serves a new one).
#[tokio::test]
async fn a_rollback_that_could_not_be_sent_is_an_error() {
    let test = TestDb::new().await;
    let db = test.pool(1);
    let a = tenant(&db, "alpha").await;
    let mut t = tx(&db, a).await;
    let pid = backend_of(&mut t).await;
    let admin = test.admin().await;
    admin
        .query("SELECT pg_terminate_backend($1, 10000)", &[&pid])
        .await
        .unwrap();
    let result = t.rollback().await;
    assert!(matches!(result, Err(DbError::Postgres(_))), "{result:?}");
    assert_ne!(backend_pid(&db, a).await, pid);
}

/// A COMMIT that failed (here a deferred constraint, checked at COMMIT) is reported, and its
/// connection is closed rather than handed to the next tenant.
#[tokio::test]
async fn a_failed_commit_is_reported_and_its_connection_is_not_reused() {
    let test = TestDb::new().await;
    let db = test.pool(1);
    let a = tenant(&db, "alpha").await;
    let uid = a.as_uuid();
    let admin = test.admin().await;
    admin
        .batch_execute(
            "CREATE FUNCTION public.refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'refused at commit' USING ERRCODE = '23514'; END $$;
             CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON app.datasets
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.refuse_at_commit();",
        )
        .await
        .unwrap();
    let mut t = tx(&db, a).await;
    let pid = backend_of(&mut t).await;
    t.execute(
        "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'never')",
        &[(&uid, Type::UUID)],
    )
    .await
    .unwrap();
    let result = t.commit().await;
    assert_eq!(
        result
            .as_ref()
            .err()
            .and_then(|e| e.sqlstate())
            .map(|s| s.code()),
        Some("23514"),
        "{result:?}"
    );
    assert_ne!(
        backend_pid(&db, a).await,
        pid,
        "the failed connection was reused"
    );
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM app.datasets WHERE name = 'never'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_last_statement_commits_in_its_own_flight_and_a_failed_one_rolls_back() {
    let test = TestDb::new().await;
    let db = test.pool(1);
    let a = tenant(&db, "alpha").await;
    let uid = a.as_uuid();

    // The write before it and the statement itself commit together.
    let mut t = tx(&db, a).await;
    t.execute(
        "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'first')",
        &[(&uid, Type::UUID)],
    )
    .await
    .unwrap();
    let rows = t
        .query_and_commit(
            "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'second') RETURNING name",
            &[(&uid, Type::UUID)],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);

    // A failing last statement: its error comes back, nothing of the transaction stays, and the
    // connection (the pool has one) is clean for the next transaction.
    let mut t = tx(&db, a).await;
    t.execute(
        "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'third')",
        &[(&uid, Type::UUID)],
    )
    .await
    .unwrap();
    let err = t.query_and_commit("SELECT 1 / 0", &[]).await.unwrap_err();
    assert_eq!(err.sqlstate().map(|s| s.code()), Some("22012"), "{err}");

    // With nothing run before it, it takes the ordinary path and commits too.
    let t = tx(&db, a).await;
    t.query_and_commit(
        "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'fourth') RETURNING name",
        &[(&uid, Type::UUID)],
    )
    .await
    .unwrap();

    let mut t = db.begin(&as_tenant(a), Access::ReadOnly).await.unwrap();
    let names: Vec<String> = t
        .query("SELECT name FROM app.datasets ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["first", "fourth", "second"]);
    t.commit().await.unwrap();
}

#[tokio::test]
async fn writes_then_a_read_only_query_commit_together_in_one_flight_or_not_at_all() {
    let test = TestDb::new().await;
    let seed = test.pool(1);
    let a = tenant(&seed, "alpha").await;
    let uid = a.as_uuid();
    let (proxy, db) = counted_pool(&test).await;
    let insert = |name: &'static str| {
        (
            "INSERT INTO app.datasets (tenant_id, name) SELECT $1, $2",
            name,
        )
    };
    let names = || async {
        let mut t = db.begin(&as_tenant(a), Access::ReadOnly).await.unwrap();
        let names: Vec<String> = t
            .query("SELECT name FROM app.datasets ORDER BY name", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        t.commit().await.unwrap();
        names
    };
    // Open the connection first, so only the transaction is counted.
    assert!(names().await.is_empty());

    // After a first statement: the write, the read and COMMIT are one more flight, and the read
    // sees the write.
    let before = proxy.flights();
    let mut t = db.begin(&as_tenant(a), Access::ReadWrite).await.unwrap();
    t.query("SELECT 1", &[]).await.unwrap();
    let (sql, name) = insert("first");
    let rows = t
        .writes_then_query_and_commit(
            &[(sql, &[(&uid, Type::UUID), (&name, Type::TEXT)])],
            "SELECT count(*) FROM app.datasets",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1);
    assert_eq!(
        proxy.flights() - before,
        2,
        "BEGIN with SELECT 1, then the rest"
    );

    // From a transaction that has run nothing: BEGIN, the settings, two writes, the read and
    // COMMIT in a single flight, the writes in order (the second sees the first).
    let before = proxy.flights();
    let t = db.begin(&as_tenant(a), Access::ReadWrite).await.unwrap();
    let (sql, name) = insert("zero");
    let rows = t
        .writes_then_query_and_commit(
            &[
                (sql, &[(&uid, Type::UUID), (&name, Type::TEXT)]),
                (
                    "UPDATE app.datasets SET name = 'one' WHERE name = 'zero'",
                    &[],
                ),
            ],
            "SELECT name FROM app.datasets ORDER BY name",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, ["first", "one"]);
    assert_eq!(proxy.flights() - before, 1, "one flight");

    // Each failing case: inserting `name`, then `read` (after a first statement when `opened`):
    // the SQLSTATE it fails with.
    let refused = |name: &'static str, read: &'static str, opened: bool| {
        let db = &db;
        async move {
            let mut t = db.begin(&as_tenant(a), Access::ReadWrite).await.unwrap();
            if opened {
                t.query("SELECT 1", &[]).await.unwrap();
            }
            let (sql, name) = insert(name);
            let err = t
                .writes_then_query_and_commit(
                    &[(sql, &[(&uid, Type::UUID), (&name, Type::TEXT)])],
                    read,
                    &[],
                )
                .await
                .unwrap_err();
            err.sqlstate().map(|s| s.code().to_owned())
        }
    };
    // The attacker's move: a "read" that writes. Refused as in any read-only transaction, and
    // the write before it is rolled back with it.
    let smuggle = "INSERT INTO app.datasets (tenant_id, name) \
                   VALUES (app.current_tenant_id(), 'smuggled') RETURNING name";
    assert_eq!(
        refused("second", smuggle, false).await.as_deref(),
        Some("25006")
    );
    // A failing read rolls the write back too.
    assert_eq!(
        refused("third", "SELECT 1 / 0", true).await.as_deref(),
        Some("22012")
    );
    // A failing write: its error comes back, and the read never answers.
    let read = "SELECT count(*) FROM app.datasets";
    assert_eq!(refused("first", read, true).await.as_deref(), Some("23505"));

    // A parameter that cannot be encoded as its declared type: refused before anything is
    // sent (tokio-postgres would send nothing for that statement, and the COMMIT behind it would
    // commit the write).
    let mut t = db.begin(&as_tenant(a), Access::ReadWrite).await.unwrap();
    t.query("SELECT 1", &[]).await.unwrap();
    let (sql, name) = insert("fifth");
    let err = t
        .writes_then_query_and_commit(
            &[(sql, &[(&uid, Type::UUID), (&name, Type::TEXT)])],
            "SELECT $1::int8",
            &[(&"not a number", Type::INT8)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::Invalid(_)), "{err}");

    // Nothing of the failed ones stayed, and the one connection is clean for the next.
    assert_eq!(names().await, ["first", "one"]);
}

/// A pool of one connection to `test`'s database through a proxy that counts round trips.
async fn counted_pool(test: &TestDb) -> (CountingProxy, tenantry::db::Db) {
    let cfg: tokio_postgres::Config = test.app_url.parse().unwrap();
    let proxy = CountingProxy::start(cfg.get_ports()[0]).await.unwrap();
    let url = format!(
        "postgres://tenantry_app:{DEV_APP_PASSWORD}@127.0.0.1:{}/{}",
        proxy.port, test.name
    );
    let db = test.pool_at(&url, 1);
    (proxy, db)
}

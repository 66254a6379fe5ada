//! The app role is what every function logs in as: it must not be able to step outside RLS.

use tenantry_tests::{DEV_APP_PASSWORD, TestDb, connect, with_login};

#[tokio::test]
async fn app_role_is_unprivileged() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let row = admin
        .query_one(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolcanlogin,
                    pg_has_role('tenantry_app', 'tenantry_owner', 'MEMBER'),
                    pg_has_role('tenantry_app', 'tenantry_owner', 'USAGE')
             FROM pg_roles WHERE rolname = 'tenantry_app'",
            &[],
        )
        .await
        .unwrap();
    let flags: [bool; 7] = std::array::from_fn(|i| row.get(i));
    assert_eq!(
        flags,
        [false, false, false, false, true, false, false],
        "super, bypassrls, createrole, createdb, login, member of owner, usage of owner"
    );

    let owned: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relowner = 'tenantry_app'::regrole)
                  + (SELECT count(*) FROM pg_proc WHERE proowner = 'tenantry_app'::regrole)
                  + (SELECT count(*) FROM pg_namespace WHERE nspowner = 'tenantry_app'::regrole)
                  + (SELECT count(*) FROM pg_type WHERE typowner = 'tenantry_app'::regrole)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owned, 0, "the app role owns objects");

    // No TRUNCATE, REFERENCES or TRIGGER on anything in the app schema; nothing at all on the
    // migration bookkeeping; the support role has nothing yet.
    let bad = admin
        .query(
            "SELECT c.relname, p FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                    unnest(ARRAY['TRUNCATE', 'REFERENCES', 'TRIGGER']) p
             WHERE n.nspname = 'app' AND c.relkind IN ('r', 'p', 'v')
               AND has_table_privilege('tenantry_app', c.oid, p)
             UNION ALL
             SELECT c.relname, p FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                    unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) p
             WHERE n.nspname IN ('app', 'tenantry_meta') AND c.relkind IN ('r', 'p', 'v')
               AND (has_table_privilege('tenantry_support', c.oid, p)
                    OR (n.nspname = 'tenantry_meta' AND has_table_privilege('tenantry_app', c.oid, p)))",
            &[],
        )
        .await
        .unwrap();
    let bad: Vec<(String, String)> = bad.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(bad.is_empty(), "unexpected privileges: {bad:?}");
}

/// Logged in as the app role, every way out of RLS is refused.
#[tokio::test]
async fn app_role_cannot_escape_rls() {
    let db = TestDb::new().await;
    let url = with_login(&db.app_url, "tenantry_app", DEV_APP_PASSWORD, &db.name);
    let app = connect(&url).await;
    for attack in [
        "SET ROLE tenantry_owner",
        "SET ROLE postgres",
        "TRUNCATE app.records",
        "ALTER TABLE app.records DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE app.records NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON app.records",
        "CREATE POLICY open ON app.records USING (true)",
        "CREATE TABLE app.mine (x int)",
        "CREATE FUNCTION app.current_tenant_id() RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'",
        "CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'",
        "SELECT * FROM tenantry_meta.schema_migrations",
        "ALTER ROLE tenantry_app BYPASSRLS",
    ] {
        let result = app.batch_execute(attack).await;
        assert!(result.is_err(), "the app role could run: {attack}");
    }
    // Turning row security off does not show rows: for a non-bypass role it makes queries that
    // RLS would filter fail outright.
    app.batch_execute("SET row_security = off").await.unwrap();
    assert!(app.query("SELECT * FROM app.tenants", &[]).await.is_err());
}

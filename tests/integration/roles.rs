//! The app role is what every function logs in as: it must not be able to step outside RLS.

use tenantry_tests::rls_probe::Outcome;
use tenantry_tests::{DEV_APP_PASSWORD, TestDb, admin_url, connect, with_login};

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
    // migration bookkeeping (the support role's app grants are pinned in SUPPORT_GRANTS).
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
               AND n.nspname = 'tenantry_meta'
               AND (has_table_privilege('tenantry_support', c.oid, p)
                    OR has_table_privilege('tenantry_app', c.oid, p))
             UNION ALL
             SELECT c.relname, p FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                    unnest(ARRAY['TRUNCATE', 'REFERENCES', 'TRIGGER', 'UPDATE', 'DELETE']) p
             WHERE n.nspname = 'app' AND c.relkind IN ('r', 'p', 'v')
               AND has_table_privilege('tenantry_support', c.oid, p)",
            &[],
        )
        .await
        .unwrap();
    let bad: Vec<(String, String)> = bad.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(bad.is_empty(), "unexpected privileges: {bad:?}");
}

/// The app role's grants, exactly: (table or table.column, privilege). Every row is a decision
/// (append-only ledger, no deleting tenants, only a delivery's progress may change).
const APP_GRANTS: &[(&str, &str)] = &[
    ("api_keys", "DELETE"),
    ("api_keys", "INSERT"),
    ("api_keys", "SELECT"),
    ("api_keys.last_used_at", "UPDATE"),
    ("api_keys.revoked_at", "UPDATE"),
    ("audit_events", "SELECT"),
    ("audit_events.action", "INSERT"),
    ("audit_events.details", "INSERT"),
    ("audit_events.request_id", "INSERT"),
    ("audit_events.target", "INSERT"),
    ("audit_events.tenant_id", "INSERT"),
    ("audit_heads", "INSERT"),
    ("audit_heads", "SELECT"),
    ("audit_heads.hash", "UPDATE"),
    ("audit_heads.seq", "UPDATE"),
    ("billing_customers", "INSERT"),
    ("billing_customers", "SELECT"),
    ("billing_customers", "UPDATE"),
    ("billing_periods", "INSERT"),
    ("billing_periods", "SELECT"),
    ("billing_periods.finalized_at", "UPDATE"),
    ("billing_periods.invoice_id", "UPDATE"),
    ("billing_periods.period_end", "UPDATE"),
    ("billing_periods.updated_at", "UPDATE"),
    ("billing_reconciliation_days", "INSERT"),
    ("billing_reconciliation_days", "SELECT"),
    ("billing_reconciliation_days.actions", "UPDATE"),
    ("billing_reconciliation_days.checked", "UPDATE"),
    ("billing_reconciliation_days.drift", "UPDATE"),
    ("billing_reconciliation_days.issues", "UPDATE"),
    ("billing_reconciliation_days.last_run_at", "UPDATE"),
    ("billing_reconciliation_days.last_run_id", "UPDATE"),
    ("billing_reconciliation_days.repaired", "UPDATE"),
    ("billing_reconciliation_days.runs", "UPDATE"),
    ("billing_reconciliations", "INSERT"),
    ("billing_reconciliations", "SELECT"),
    ("chunks", "DELETE"),
    ("chunks", "INSERT"),
    ("chunks", "SELECT"),
    ("chunks", "UPDATE"),
    ("datasets", "DELETE"),
    ("datasets", "INSERT"),
    ("datasets", "SELECT"),
    ("datasets", "UPDATE"),
    ("impersonation_sessions", "INSERT"),
    ("impersonation_sessions", "SELECT"),
    ("impersonation_sessions.ended_at", "UPDATE"),
    ("impersonation_sessions.ended_by", "UPDATE"),
    ("impersonation_sessions.staff_approved_at", "UPDATE"),
    ("impersonation_sessions.staff_approved_by", "UPDATE"),
    ("impersonation_sessions.tenant_approved_at", "UPDATE"),
    ("impersonation_sessions.tenant_approved_by", "UPDATE"),
    ("members", "DELETE"),
    ("members", "INSERT"),
    ("members", "SELECT"),
    ("members", "UPDATE"),
    ("processed_webhooks", "INSERT"),
    ("processed_webhooks", "SELECT"),
    ("record_versions", "SELECT"),
    ("records", "DELETE"),
    ("records", "INSERT"),
    ("records", "SELECT"),
    ("records", "UPDATE"),
    ("rollups", "DELETE"),
    ("rollups", "INSERT"),
    ("rollups", "SELECT"),
    ("rollups", "UPDATE"),
    ("tenants", "INSERT"),
    ("tenants", "SELECT"),
    ("tenants", "UPDATE"),
    ("usage_counters", "INSERT"),
    ("usage_counters", "SELECT"),
    ("usage_counters.soft_notified_at", "UPDATE"),
    ("usage_counters.used", "UPDATE"),
    ("usage_deliveries", "INSERT"),
    ("usage_deliveries", "SELECT"),
    ("usage_deliveries.attempts", "UPDATE"),
    ("usage_deliveries.claim_id", "UPDATE"),
    ("usage_deliveries.event_time", "UPDATE"),
    ("usage_deliveries.first_sent_at", "UPDATE"),
    ("usage_deliveries.late", "UPDATE"),
    ("usage_deliveries.lease_until", "UPDATE"),
    ("usage_deliveries.reason", "UPDATE"),
    ("usage_deliveries.rejected", "UPDATE"),
    ("usage_deliveries.settled_at", "UPDATE"),
    ("usage_deliveries.status", "UPDATE"),
    ("usage_events", "INSERT"),
    ("usage_events", "SELECT"),
    ("usage_window_changes", "DELETE"),
    ("usage_window_changes", "INSERT"),
    ("usage_window_changes", "SELECT"),
];

/// The support role's grants, exactly: it appends to and reads a tenant's audit log (what support
/// does is recorded, reads included), under RLS like the app; and it reads, across tenants, the
/// counts and states of the admin routes — of members and chunks only the columns that count
/// them, and nothing of datasets, records or API keys.
const SUPPORT_GRANTS: &[(&str, &str)] = &[
    ("audit_events", "SELECT"),
    ("audit_events.action", "INSERT"),
    ("audit_events.details", "INSERT"),
    ("audit_events.request_id", "INSERT"),
    ("audit_events.target", "INSERT"),
    ("audit_events.tenant_id", "INSERT"),
    ("audit_heads", "INSERT"),
    ("audit_heads", "SELECT"),
    ("audit_heads.hash", "UPDATE"),
    ("audit_heads.seq", "UPDATE"),
    ("billing_customers", "SELECT"),
    ("billing_periods", "SELECT"),
    ("billing_reconciliation_days", "SELECT"),
    ("billing_reconciliations", "SELECT"),
    ("chunks.created_at", "SELECT"),
    ("chunks.embedding_model", "SELECT"),
    ("chunks.tenant_id", "SELECT"),
    ("impersonation_sessions", "SELECT"),
    ("members.removed_at", "SELECT"),
    ("members.tenant_id", "SELECT"),
    ("tenants", "SELECT"),
    ("usage_counters", "SELECT"),
    ("usage_deliveries", "SELECT"),
    ("usage_events", "SELECT"),
];

/// The read-only impersonation role's grants, exactly: it reads the tenant's data and state (not
/// API keys, members or webhooks) and appends to the audit log; the support role switches to it
/// inside a session's transaction.
const IMPERSONATION_GRANTS: &[(&str, &str)] = &[
    ("audit_events", "SELECT"),
    ("audit_events.action", "INSERT"),
    ("audit_events.details", "INSERT"),
    ("audit_events.request_id", "INSERT"),
    ("audit_events.target", "INSERT"),
    ("audit_events.tenant_id", "INSERT"),
    ("audit_heads", "INSERT"),
    ("audit_heads", "SELECT"),
    ("audit_heads.hash", "UPDATE"),
    ("audit_heads.seq", "UPDATE"),
    ("billing_customers", "SELECT"),
    ("billing_periods", "SELECT"),
    ("billing_reconciliation_days", "SELECT"),
    ("billing_reconciliations", "SELECT"),
    ("chunks", "SELECT"),
    ("datasets", "SELECT"),
    ("impersonation_sessions", "SELECT"),
    ("record_versions", "SELECT"),
    ("records", "SELECT"),
    ("rollups", "SELECT"),
    ("tenants", "SELECT"),
    ("usage_counters", "SELECT"),
    ("usage_deliveries", "SELECT"),
    ("usage_events", "SELECT"),
];

/// The functions the app role may call, exactly.
const APP_FUNCTIONS: &[&str] = &[
    "app.api_key_for_prefix(text)",
    "app.audit_hash(app.audit_events)",
    "app.billable_time(uuid,timestamp with time zone)",
    "app.current_actor_id()",
    "app.current_tenant_id()",
    "app.expect_dataset(uuid,text)",
    "app.impersonation_for(uuid)",
    "app.impersonation_usable(app.impersonation_sessions)",
    "app.prune_reconciliations(integer)",
    "app.tenant_for_auth0_org(text)",
    "app.tenant_for_stripe_customer(text)",
    "app.tenant_ids()",
    "app.tenants_with_pending_chunks(interval)",
    "app.text_candidates(text,uuid[],bigint)",
];

/// The login roles' memberships, exactly: only the impersonator (of the read-only role) and the
/// indexer (of the owner) are members of anything, each may SET its role but does not inherit
/// it, and nobody else is a member of either.
#[tokio::test]
async fn only_the_impersonator_and_the_indexer_may_become_another_role() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let rows: Vec<(String, String, bool, bool)> = admin
        .query(
            "SELECT m.member::regrole::text, m.roleid::regrole::text, m.inherit_option, m.set_option
             FROM pg_auth_members m
             WHERE m.roleid::regrole::text LIKE 'tenantry%' OR m.member::regrole::text LIKE 'tenantry%'
             ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .filter(|(member, ..): &(String, String, bool, bool)| member.starts_with("tenantry"))
        .collect();
    assert_eq!(
        rows,
        [
            (
                "tenantry_impersonator".to_owned(),
                "tenantry_impersonation".to_owned(),
                false,
                true
            ),
            // Per-tenant index builds need the table's owner (0019_tenant_vector_indexes.sql).
            (
                "tenantry_indexer".to_owned(),
                "tenantry_owner".to_owned(),
                false,
                true
            )
        ]
    );
    for (role, login) in [
        ("tenantry_impersonation", false),
        ("tenantry_impersonator", true),
        ("tenantry_indexer", true),
    ] {
        let flags = admin
            .query_one(
                "SELECT rolcanlogin, rolinherit, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb,
                        rolreplication
                 FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .unwrap();
        let flags: [bool; 7] = std::array::from_fn(|i| flags.get(i));
        assert_eq!(
            flags,
            [login, false, false, false, false, false, false],
            "{role}: login, inherit, super, bypassrls, createrole, createdb, replication"
        );
    }
}

#[tokio::test]
async fn app_role_has_exactly_the_grants_the_migrations_give() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    for (role, pinned) in [
        ("tenantry_app", APP_GRANTS),
        ("tenantry_support", SUPPORT_GRANTS),
        ("tenantry_impersonation", IMPERSONATION_GRANTS),
        ("tenantry_impersonator", &[]),
        ("tenantry_indexer", &[]),
    ] {
        let grants: Vec<(String, String)> = admin
            .query(
                "SELECT c.relname::text, a.privilege_type
                 FROM pg_class c, aclexplode(c.relacl) a
                 WHERE c.relnamespace = 'app'::regnamespace AND a.grantee = $1::text::regrole
                 UNION ALL
                 SELECT c.relname || '.' || att.attname, a.privilege_type
                 FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid,
                      aclexplode(att.attacl) a
                 WHERE c.relnamespace = 'app'::regnamespace AND a.grantee = $1::text::regrole
                 ORDER BY 1, 2",
                &[&role],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let expected: Vec<(String, String)> = pinned
            .iter()
            .map(|(t, p)| ((*t).to_owned(), (*p).to_owned()))
            .collect();
        assert_eq!(grants, expected, "{role}'s table and column grants");
    }

    let functions: Vec<String> = admin
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
             WHERE p.pronamespace = 'app'::regnamespace
               AND has_function_privilege('tenantry_app', p.oid, 'EXECUTE')
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(functions, APP_FUNCTIONS, "functions the app role may call");
}

/// Everything the attacks below could change, as one string (read as the superuser).
async fn attack_surface(admin: &tokio_postgres::Client) -> String {
    admin
        .query_one(
            "SELECT concat_ws(E'\n',
               (SELECT string_agg(format('%s rls=%s forced=%s owner=%s', c.relname, c.relrowsecurity,
                                         c.relforcerowsecurity, pg_get_userbyid(c.relowner)),
                                  ', ' ORDER BY c.relname)
                FROM pg_class c WHERE c.relnamespace = 'app'::regnamespace),
               (SELECT string_agg(format('%s %s %s %s %s %s', p.polrelid::regclass, p.polname, p.polcmd,
                                         p.polroles::regrole[], pg_get_expr(p.polqual, p.polrelid),
                                         pg_get_expr(p.polwithcheck, p.polrelid)),
                                  ', ' ORDER BY p.polrelid::regclass::text, p.polname)
                FROM pg_policy p),
               (SELECT string_agg(format('%s owner=%s src=%s config=%s definer=%s', p.oid::regprocedure,
                                         pg_get_userbyid(p.proowner), md5(p.prosrc), p.proconfig, p.prosecdef),
                                  ', ' ORDER BY p.oid::regprocedure::text)
                FROM pg_proc p WHERE p.pronamespace = 'app'::regnamespace),
               (SELECT string_agg(nspname, ', ' ORDER BY nspname) FROM pg_namespace
                WHERE nspname NOT LIKE 'pg_temp%' AND nspname NOT LIKE 'pg_toast_temp%'),
               (SELECT coalesce(string_agg(tgname, ', ' ORDER BY tgname), 'no triggers')
                FROM pg_trigger WHERE NOT tgisinternal),
               (SELECT format('app role super=%s bypassrls=%s createrole=%s memberships=%s', rolsuper,
                              rolbypassrls, rolcreaterole,
                              (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid))
                FROM pg_roles r WHERE rolname = 'tenantry_app'),
               (SELECT format('%s records, %s tenants', (SELECT count(*) FROM app.records),
                              (SELECT count(*) FROM app.tenants))),
               (SELECT coalesce(string_agg(relname, ', ' ORDER BY relname), 'nothing in public')
                FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'))",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Logged in as the app role, every way out of RLS is refused, each for its own reason, and
/// nothing it tried changed anything.
#[tokio::test]
async fn app_role_cannot_escape_rls() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    // Something to lose: a tenant with a record.
    admin
        .batch_execute(
            "INSERT INTO app.tenants (tenant_id, name, slug) VALUES ('01900000-0000-7000-8000-0000000000a1', 'A', 'alpha');
             INSERT INTO app.datasets (tenant_id, dataset_id, name)
               VALUES ('01900000-0000-7000-8000-0000000000a1', '01900000-0000-7000-8000-0000000000d1', 'sales');
             INSERT INTO app.records (tenant_id, dataset_id, key, data)
               VALUES ('01900000-0000-7000-8000-0000000000a1', '01900000-0000-7000-8000-0000000000d1', 'r1', '{}')",
        )
        .await
        .unwrap();
    let before = attack_surface(&admin).await;
    assert!(before.contains("1 records, 1 tenants"), "{before}");
    let superuser = {
        let cfg: tokio_postgres::Config = admin_url().parse().unwrap();
        cfg.get_user().unwrap_or("postgres").to_owned()
    };

    let url = with_login(&db.app_url, "tenantry_app", DEV_APP_PASSWORD, &db.name);
    let app = connect(&url).await;
    let owner = |what: &str| Outcome::refused("42501", &format!("must be owner of {what}"));
    let set_role = |role: &str| {
        Outcome::refused(
            "42501",
            &format!("permission denied to set role \"{role}\""),
        )
    };
    let attacks: Vec<(String, Outcome)> = vec![
        // Becoming someone else.
        ("SET ROLE tenantry_owner".into(), set_role("tenantry_owner")),
        (format!("SET ROLE {superuser}"), set_role(&superuser)),
        (
            "SELECT set_config('role', 'tenantry_owner', false)".into(),
            set_role("tenantry_owner"),
        ),
        (
            "SET SESSION AUTHORIZATION tenantry_owner".into(),
            Outcome::refused(
                "42501",
                "permission denied to set session authorization \"tenantry_owner\"",
            ),
        ),
        (
            "GRANT tenantry_owner TO tenantry_app".into(),
            Outcome::refused("42501", "permission denied to grant role \"tenantry_owner\""),
        ),
        (
            "ALTER ROLE tenantry_app BYPASSRLS".into(),
            Outcome::refused("42501", "permission denied to alter role"),
        ),
        // Emptying or unprotecting a table.
        ("TRUNCATE app.records".into(), Outcome::no_grant("records")),
        (
            "ALTER TABLE app.records DISABLE ROW LEVEL SECURITY".into(),
            owner("table records"),
        ),
        (
            "ALTER TABLE app.records NO FORCE ROW LEVEL SECURITY".into(),
            owner("table records"),
        ),
        (
            "ALTER TABLE app.records OWNER TO tenantry_app".into(),
            owner("table records"),
        ),
        ("DROP TABLE app.records".into(), owner("table records")),
        (
            "DROP POLICY tenant_isolation ON app.records".into(),
            owner("relation records"),
        ),
        (
            "CREATE POLICY open ON app.records USING (true)".into(),
            owner("table records"),
        ),
        (
            "ALTER POLICY tenant_isolation ON app.records USING (true)".into(),
            owner("table records"),
        ),
        (
            "CREATE TRIGGER t BEFORE INSERT ON app.records FOR EACH ROW EXECUTE FUNCTION app.current_tenant_id()".into(),
            Outcome::no_grant("records"),
        ),
        // Replication mode would skip triggers, the foreign keys' among them.
        (
            "SET session_replication_role = replica".into(),
            Outcome::refused(
                "42501",
                "permission denied to set parameter \"session_replication_role\"",
            ),
        ),
        // Replacing what the policies call, or the lookups.
        (
            "CREATE FUNCTION app.current_tenant_id() RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'".into(),
            Outcome::refused("42501", "permission denied for schema app"),
        ),
        (
            "CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'".into(),
            Outcome::refused("42501", "permission denied for schema app"),
        ),
        (
            "ALTER FUNCTION app.current_tenant_id() OWNER TO tenantry_app".into(),
            owner("function current_tenant_id"),
        ),
        (
            "DROP FUNCTION app.current_tenant_id()".into(),
            owner("function app.current_tenant_id"),
        ),
        (
            "ALTER FUNCTION app.tenant_for_auth0_org(text) SET search_path = public".into(),
            owner("function app.tenant_for_auth0_org"),
        ),
        // Creating objects anywhere.
        (
            "CREATE TABLE app.mine (x int)".into(),
            Outcome::refused("42501", "permission denied for schema app"),
        ),
        (
            "CREATE TABLE public.mine (x int)".into(),
            Outcome::refused("42501", "permission denied for schema public"),
        ),
        (
            "CREATE SCHEMA mine".into(),
            Outcome::refused("42501", &format!("permission denied for database {}", db.name)),
        ),
        // The migration bookkeeping and the server's files and programs.
        (
            "SELECT * FROM tenantry_meta.schema_migrations".into(),
            Outcome::refused("42501", "permission denied for schema tenantry_meta"),
        ),
        (
            "COPY app.records TO PROGRAM 'id'".into(),
            Outcome::refused(
                "42501",
                "permission denied to COPY to or from an external program",
            ),
        ),
        (
            "SELECT pg_read_file('/etc/passwd')".into(),
            Outcome::refused("42501", "permission denied for function pg_read_file"),
        ),
    ];
    for (attack, expected) in &attacks {
        let result = app.batch_execute(attack).await;
        let outcome = match result {
            Ok(()) => Outcome::Rows(0),
            Err(e) => Outcome::of_pg_error(&e),
        };
        assert_eq!(&outcome, expected, "the app role ran: {attack}");
    }
    // Turning row security off does not show rows: for a non-bypass role it makes queries that
    // RLS would filter fail outright.
    app.batch_execute("SET row_security = off").await.unwrap();
    let off = app.query("SELECT * FROM app.tenants", &[]).await;
    assert_eq!(
        off.map(|r| r.len()).map_err(|e| Outcome::of_pg_error(&e)),
        Err(Outcome::refused(
            "42501",
            "query would be affected by row-level security policy for table \"tenants\""
        ))
    );

    assert_eq!(
        attack_surface(&admin).await,
        before,
        "an attack changed something"
    );
}

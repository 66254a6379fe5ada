//! The catalog test: no table slips through without forced RLS and exactly the tenant policy
//! (compared as Postgres prints it, so an `OR true` or a missing WITH CHECK shows), no view
//! without security_invoker, no SECURITY DEFINER function but the known lookups (and the
//! record-versions trigger), each with its result, fixed search_path, owner and callers, and no
//! LEAKPROOF function. And each lookup, attacked with another tenant's identifiers, answers only
//! what its contract says.

use tenantry::TenantId;
use tenantry::auth::{ApiKeys, Scope};
use tenantry::db::{Db, Param};
use tenantry::tenants::{self, NewTenant};
use tenantry_tests::{TestDb, connect, tenant, tx};
use tokio_postgres::Client;
use tokio_postgres::types::Type;

/// Tables in the app schemas that are global on purpose, with the reason. Keep it short.
const GLOBAL_TABLES: &[(&str, &str)] = &[];

/// Schemas whose tables hold application data.
const APP_SCHEMAS: &[&str] = &["app"];

/// Both clauses of every tenant policy, as Postgres prints what the migrations wrote
/// (`tenant_id = (SELECT app.current_tenant_id())`), whitespace normalized.
const TENANT_CLAUSE: &str = "(tenant_id = (SELECT app.current_tenant_id() AS current_tenant_id))";

/// Tables the SECURITY DEFINER lookups read, where the owner has its read-only lookup policy.
const OWNER_LOOKUP_TABLES: &[&str] = &[
    "app.api_keys",
    "app.billing_customers",
    "app.chunks",
    "app.impersonation_sessions",
    "app.tenants",
];

/// Tables a read-only impersonation session reads (as `tenantry_impersonation`), each with a
/// restrictive policy for that role that requires the transaction's session to be live.
const IMPERSONATION_TABLES: &[&str] = &[
    "app.audit_events",
    "app.audit_heads",
    "app.billing_customers",
    "app.billing_periods",
    "app.billing_reconciliation_days",
    "app.billing_reconciliations",
    "app.chunks",
    "app.datasets",
    "app.impersonation_sessions",
    "app.record_versions",
    "app.records",
    "app.rollups",
    "app.tenants",
    "app.usage_counters",
    "app.usage_deliveries",
    "app.usage_events",
];

/// The restrictive policy's clauses, as Postgres prints them.
const LIVE_SESSION_CLAUSE: &str = "(SELECT app.impersonation_live() AS impersonation_live)";

/// Tables the support role reads across tenants (counts and states for the admin routes), with
/// its read-only policy for itself alone; `roles.rs` pins which columns it may read.
const SUPPORT_READ_TABLES: &[&str] = &[
    "app.billing_customers",
    "app.billing_periods",
    "app.billing_reconciliation_days",
    "app.billing_reconciliations",
    "app.chunks",
    "app.impersonation_sessions",
    "app.members",
    "app.tenants",
    "app.usage_counters",
    "app.usage_deliveries",
    "app.usage_events",
];

/// Every SECURITY DEFINER function, with what it returns (its whole contract's shape).
const DEFINERS: &[(&str, &str)] = &[
    (
        "app.api_key_for_prefix(text)",
        "TABLE(tenant_id uuid, key_id uuid, hash bytea, revoked boolean, tenant_status text, scopes text[])",
    ),
    (
        "app.tenant_for_auth0_org(text)",
        "TABLE(tenant_id uuid, status text)",
    ),
    (
        "app.impersonation_for(uuid)",
        "TABLE(tenant_id uuid, staff_id text, mode text, allow_export boolean, expires_at timestamp with time zone, ended boolean, awaiting_approval boolean, tenant_status text, support_access text)",
    ),
    ("app.impersonation_live()", "boolean"),
    ("app.tenant_for_stripe_customer(text)", "SETOF uuid"),
    ("app.tenant_ids()", "TABLE(tenant_id uuid, status text)"),
    ("app.prune_reconciliations(integer)", "bigint"),
    ("app.tenants_with_pending_chunks(interval)", "SETOF uuid"),
    // The one trigger: record versions are written as the owner, never by the app role.
    ("app.keep_record_versions()", "trigger"),
    (
        "app.text_candidates(text,uuid[],bigint)",
        "TABLE(dataset_id uuid, record_key text, chunk_no integer, rank real)",
    ),
];

/// The one configuration every SECURITY DEFINER function has: nothing but a fixed search_path
/// with pg_temp last.
const DEFINER_CONFIG: &str = "search_path=pg_catalog, pg_temp";

/// `app.current_tenant_id()`'s body, whitespace normalized.
const CURRENT_TENANT_SRC: &str = "SELECT nullif(current_setting('app.tenant_id', true), '')::uuid";

/// Whitespace normalized: runs collapsed to one space, none just inside parentheses, trimmed.
fn normalize(sql: &str) -> String {
    sql.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("( ", "(")
        .replace(" )", ")")
}

/// One policy as a line: name, command, kind, roles and both clauses.
fn policy_shape(
    name: &str,
    cmd: &str,
    permissive: bool,
    using: &str,
    check: &str,
    roles: &[String],
) -> String {
    format!(
        "{name}: for {cmd} {} to {} using [{}] with check [{}]",
        if permissive {
            "permissive"
        } else {
            "restrictive"
        },
        roles.join(","),
        normalize(using),
        normalize(check)
    )
}

/// Everything wrong with the catalog, one line each; empty when all is well.
pub async fn violations(client: &Client) -> Vec<String> {
    let mut out = Vec::new();
    let schemas: Vec<String> = APP_SCHEMAS.iter().map(|s| (*s).to_owned()).collect();

    let tables = client
        .query(
            "SELECT c.oid::int8, n.nspname || '.' || c.relname, c.relrowsecurity, c.relforcerowsecurity
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p')
             ORDER BY 2",
            &[&schemas],
        )
        .await
        .unwrap();
    for t in &tables {
        let (oid, name, rls, forced): (i64, String, bool, bool) =
            (t.get(0), t.get(1), t.get(2), t.get(3));
        if GLOBAL_TABLES.iter().any(|(g, _)| *g == name) {
            continue;
        }
        if !rls {
            out.push(format!("{name}: row-level security is not enabled"));
        }
        if !forced {
            out.push(format!("{name}: row-level security is not forced"));
        }
        // tenant_id uuid NOT NULL, leading the primary key, and leading some index.
        let col = client
            .query_opt(
                "SELECT format_type(atttypid, atttypmod), attnotnull, attnum
                 FROM pg_attribute WHERE attrelid = $1::int8::oid AND attname = 'tenant_id' AND NOT attisdropped",
                &[&oid],
            )
            .await
            .unwrap();
        match col {
            None => out.push(format!("{name}: no tenant_id column")),
            Some(c) => {
                let (ty, notnull, attnum): (String, bool, i16) = (c.get(0), c.get(1), c.get(2));
                if ty != "uuid" || !notnull {
                    out.push(format!(
                        "{name}: tenant_id must be uuid NOT NULL (is {ty}, notnull={notnull})"
                    ));
                }
                let pk_leads = client
                    .query_opt(
                        "SELECT 1 FROM pg_index WHERE indrelid = $1::int8::oid AND indisprimary AND indkey[0] = $2",
                        &[&oid, &attnum],
                    )
                    .await
                    .unwrap()
                    .is_some();
                if !pk_leads {
                    out.push(format!("{name}: primary key does not lead with tenant_id"));
                }
            }
        }
        // Policies, exactly: the tenant policy for every command with both clauses, and on the
        // tables the SECURITY DEFINER lookups read, the owner's read-only lookup policy. Any
        // other policy, or any difference in these (an `OR true`, a missing WITH CHECK, a role,
        // a command, restrictive for permissive), is a violation.
        let found: Vec<String> = client
            .query(
                "SELECT polname, polcmd::text, polpermissive,
                        coalesce(pg_get_expr(polqual, polrelid), ''),
                        coalesce(pg_get_expr(polwithcheck, polrelid), ''),
                        ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END
                              FROM unnest(polroles) r ORDER BY 1)
                 FROM pg_policy WHERE polrelid = $1::int8::oid ORDER BY polname",
                &[&oid],
            )
            .await
            .unwrap()
            .iter()
            .map(|p| {
                let (pname, cmd, permissive, using, check, roles): (
                    String,
                    String,
                    bool,
                    String,
                    String,
                    Vec<String>,
                ) = (p.get(0), p.get(1), p.get(2), p.get(3), p.get(4), p.get(5));
                policy_shape(&pname, &cmd, permissive, &using, &check, &roles)
            })
            .collect();
        let mut expected = vec![policy_shape(
            "tenant_isolation",
            "*",
            true,
            TENANT_CLAUSE,
            TENANT_CLAUSE,
            &["public".to_owned()],
        )];
        if OWNER_LOOKUP_TABLES.contains(&name.as_str()) {
            expected.push(policy_shape(
                "owner_lookup",
                "r",
                true,
                "true",
                "",
                &["tenantry_owner".to_owned()],
            ));
        }
        if SUPPORT_READ_TABLES.contains(&name.as_str()) {
            expected.push(policy_shape(
                "support_read",
                "r",
                true,
                "true",
                "",
                &["tenantry_support".to_owned()],
            ));
        }
        if IMPERSONATION_TABLES.contains(&name.as_str()) {
            expected.push(policy_shape(
                "impersonation_live",
                "*",
                false,
                LIVE_SESSION_CLAUSE,
                LIVE_SESSION_CLAUSE,
                &["tenantry_impersonation".to_owned()],
            ));
        }
        expected.sort();
        for e in &expected {
            if !found.contains(e) {
                out.push(format!("{name}: missing policy {e}"));
            }
        }
        for f in &found {
            if !expected.contains(f) {
                out.push(format!("{name}: unexpected policy {f}"));
            }
        }
    }

    let views = client
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = ANY($1) AND c.relkind IN ('v', 'm')
               AND NOT coalesce('security_invoker=true' = ANY(c.reloptions) OR 'security_invoker=on' = ANY(c.reloptions), false)",
            &[&schemas],
        )
        .await
        .unwrap();
    for v in views {
        out.push(format!(
            "{}: view without security_invoker",
            v.get::<_, String>(0)
        ));
    }

    // SECURITY DEFINER functions, exactly: the list, each one's result, its fixed search_path,
    // its owner, and who may call it.
    let definers = client
        .query(
            "SELECT p.oid::regprocedure::text, pg_get_function_result(p.oid),
                    coalesce(array_to_string(p.proconfig, ','), ''),
                    pg_get_userbyid(p.proowner)::text,
                    has_function_privilege('public', p.oid, 'EXECUTE'),
                    ARRAY(SELECT DISTINCT a.grantee::regrole::text FROM aclexplode(p.proacl) a
                          WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> 0
                            AND a.grantee <> p.proowner ORDER BY 1),
                    p.provolatile::text, l.lanname::text
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               JOIN pg_language l ON l.oid = p.prolang
             WHERE n.nspname = ANY($1) AND p.prosecdef
             ORDER BY 1",
            &[&schemas],
        )
        .await
        .unwrap();
    for f in &definers {
        let (name, result, config, owner, public, callers, volatility, language): (
            String,
            String,
            String,
            String,
            bool,
            Vec<String>,
            String,
            String,
        ) = (
            f.get(0),
            f.get(1),
            f.get(2),
            f.get(3),
            f.get(4),
            f.get(5),
            f.get(6),
            f.get(7),
        );
        if !config.contains("search_path=") {
            out.push(format!(
                "{name}: SECURITY DEFINER without a fixed search_path"
            ));
        }
        if owner != "tenantry_owner" {
            out.push(format!(
                "{name}: SECURITY DEFINER owned by {owner}, not tenantry_owner"
            ));
        }
        if public {
            out.push(format!("{name}: SECURITY DEFINER executable by PUBLIC"));
        }
        let Some((_, contract)) = DEFINERS.iter().find(|(n, _)| *n == name) else {
            out.push(format!("{name}: unexpected SECURITY DEFINER function"));
            continue;
        };
        let shape = (
            result.as_str(),
            config.as_str(),
            callers.join(","),
            volatility.as_str(),
            language.as_str(),
        );
        // The one lookup the app role does not call: the restrictive policies of read-only
        // impersonation sessions call it, as the role they run as.
        // The full-text candidates (0019) build their statement with the tenant as a literal
        // (plpgsql's EXECUTE).
        // The one that writes: the retention's delete of the tenant's old reconciliation records
        // (0022), volatile.
        // The record-versions trigger (0028), volatile: fired by updates of app.records, so
        // callable by nobody.
        let (caller, language) = match name.as_str() {
            "app.impersonation_live()" => ("tenantry_impersonation", "sql"),
            "app.text_candidates(text,uuid[],bigint)" => ("tenantry_app", "plpgsql"),
            "app.keep_record_versions()" => ("", "plpgsql"),
            _ => ("tenantry_app", "sql"),
        };
        let volatility = match name.as_str() {
            "app.prune_reconciliations(integer)" | "app.keep_record_versions()" => "v",
            _ => "s",
        };
        let want = (
            *contract,
            DEFINER_CONFIG,
            caller.to_owned(),
            volatility,
            language,
        );
        if shape != want {
            out.push(format!(
                "{name}: SECURITY DEFINER (result, config, callers, volatility, language) is \
                 {shape:?}, expected {want:?}"
            ));
        }
    }
    for (name, _) in DEFINERS {
        if !definers.iter().any(|f| f.get::<_, String>(0) == *name) {
            out.push(format!("{name}: missing SECURITY DEFINER function"));
        }
    }

    // What every policy calls: the tenant, NULL when the setting is missing or empty.
    let tenant_fn = client
        .query_opt(
            "SELECT p.prosrc, p.prosecdef, p.provolatile::text, pg_get_function_result(p.oid)
             FROM pg_proc p WHERE p.oid = to_regprocedure('app.current_tenant_id()')",
            &[],
        )
        .await
        .unwrap();
    match tenant_fn {
        None => out.push("app.current_tenant_id(): missing".into()),
        Some(f) => {
            let shape = (
                normalize(f.get(0)),
                f.get::<_, bool>(1),
                f.get::<_, String>(2),
                f.get::<_, String>(3),
            );
            let want = (
                CURRENT_TENANT_SRC.to_owned(),
                false,
                "s".to_owned(),
                "uuid".to_owned(),
            );
            if shape != want {
                out.push(format!(
                    "app.current_tenant_id(): (body, definer, volatility, result) is {shape:?}, expected {want:?}"
                ));
            }
        }
    }

    let leakproof = client
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = ANY($1) AND p.proleakproof",
            &[&schemas],
        )
        .await
        .unwrap();
    for f in leakproof {
        out.push(format!("{}: LEAKPROOF function", f.get::<_, String>(0)));
    }
    out
}

#[tokio::test]
async fn every_app_table_is_isolated_by_forced_rls() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let found = violations(&admin).await;
    assert!(
        found.is_empty(),
        "catalog violations:\n{}",
        found.join("\n")
    );
    // The check saw the tables it is meant to guard (not an empty schema).
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n >= 5, "only {n} tables in app");
}

/// Each scratch object (or change, rolled back) forgets or widens something; the catalog check
/// must name it.
#[tokio::test]
async fn a_table_that_forgets_rls_is_caught() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let table =
        "CREATE TABLE app.scratch (tenant_id uuid NOT NULL, id int, PRIMARY KEY (tenant_id, id));";
    let forced = "ALTER TABLE app.scratch ENABLE ROW LEVEL SECURITY; ALTER TABLE app.scratch FORCE ROW LEVEL SECURITY;";
    let tenant = "tenant_id = (SELECT app.current_tenant_id())";
    let good_policy = format!(
        "CREATE POLICY tenant_isolation ON app.scratch USING ({tenant}) WITH CHECK ({tenant});"
    );
    let missing = format!(
        "app.scratch: missing policy {}",
        policy_shape(
            "tenant_isolation",
            "*",
            true,
            TENANT_CLAUSE,
            TENANT_CLAUSE,
            &["public".to_owned()]
        )
    );
    let cases: Vec<(String, String)> = vec![
        (
            table.to_owned(),
            "app.scratch: row-level security is not enabled".into(),
        ),
        (
            format!("{table} ALTER TABLE app.scratch ENABLE ROW LEVEL SECURITY; {good_policy}"),
            "app.scratch: row-level security is not forced".into(),
        ),
        (
            format!(
                "{table} {forced} CREATE POLICY tenant_isolation ON app.scratch FOR SELECT USING ({tenant})"
            ),
            missing.clone(),
        ),
        (
            format!("{table} {forced} {good_policy} CREATE POLICY leak ON app.scratch FOR SELECT USING (true)"),
            "app.scratch: unexpected policy leak: for r permissive to public using [true] with check []".into(),
        ),
        (
            format!(
                "{table} {forced} CREATE POLICY tenant_isolation ON app.scratch USING ({tenant} OR true) WITH CHECK ({tenant})"
            ),
            missing.clone(),
        ),
        (
            format!("{table} {forced} CREATE POLICY tenant_isolation ON app.scratch USING ({tenant})"),
            missing.clone(),
        ),
        (
            format!(
                "{table} {forced} CREATE POLICY tenant_isolation ON app.scratch AS RESTRICTIVE USING ({tenant}) WITH CHECK ({tenant})"
            ),
            missing.clone(),
        ),
        (
            format!(
                "{table} {forced} CREATE POLICY tenant_isolation ON app.scratch TO tenantry_app USING ({tenant}) WITH CHECK ({tenant})"
            ),
            missing.clone(),
        ),
        (
            format!(
                "{table} {forced} CREATE POLICY tenant_isolation ON app.scratch USING ({tenant}) WITH CHECK (true)"
            ),
            missing,
        ),
        (
            "ALTER POLICY owner_lookup ON app.tenants TO PUBLIC".into(),
            "app.tenants: unexpected policy owner_lookup: for r permissive to public using [true] with check []".into(),
        ),
        (
            "CREATE TABLE app.scratch (id int PRIMARY KEY);
             ALTER TABLE app.scratch ENABLE ROW LEVEL SECURITY; ALTER TABLE app.scratch FORCE ROW LEVEL SECURITY".into(),
            "app.scratch: no tenant_id column".into(),
        ),
        (
            format!(
                "CREATE TABLE app.scratch (id int, tenant_id uuid NOT NULL, PRIMARY KEY (id, tenant_id)); {forced} {good_policy}"
            ),
            "app.scratch: primary key does not lead with tenant_id".into(),
        ),
        (
            "CREATE VIEW app.scratch_v AS SELECT tenant_id, name FROM app.tenants".into(),
            "app.scratch_v: view without security_invoker".into(),
        ),
        (
            "CREATE FUNCTION app.scratch_f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
             ALTER FUNCTION app.scratch_f() OWNER TO tenantry_owner".into(),
            "app.scratch_f(): SECURITY DEFINER without a fixed search_path".into(),
        ),
        (
            "CREATE FUNCTION app.scratch_f() RETURNS int LANGUAGE sql SECURITY DEFINER
               SET search_path = pg_catalog, pg_temp AS 'SELECT 1';
             ALTER FUNCTION app.scratch_f() OWNER TO tenantry_owner;
             REVOKE EXECUTE ON FUNCTION app.scratch_f() FROM PUBLIC".into(),
            "app.scratch_f(): unexpected SECURITY DEFINER function".into(),
        ),
        (
            "ALTER FUNCTION app.tenant_ids() RESET search_path".into(),
            "app.tenant_ids(): SECURITY DEFINER without a fixed search_path".into(),
        ),
        (
            "ALTER FUNCTION app.tenant_ids() SET search_path = app, pg_catalog, pg_temp".into(),
            "app.tenant_ids(): SECURITY DEFINER (result, config, callers, volatility, language) is".into(),
        ),
        (
            "GRANT EXECUTE ON FUNCTION app.api_key_for_prefix(text) TO tenantry_support".into(),
            "app.api_key_for_prefix(text): SECURITY DEFINER (result, config, callers, volatility, language) is".into(),
        ),
        (
            "DROP FUNCTION app.tenant_for_auth0_org(text);
             CREATE FUNCTION app.tenant_for_auth0_org(p_org_id text)
               RETURNS TABLE (tenant_id uuid, status text, name text)
               LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
               AS $$ SELECT t.tenant_id, t.status, t.name FROM app.tenants t WHERE t.auth0_org_id = p_org_id $$;
             ALTER FUNCTION app.tenant_for_auth0_org(text) OWNER TO tenantry_owner;
             REVOKE EXECUTE ON FUNCTION app.tenant_for_auth0_org(text) FROM PUBLIC;
             GRANT EXECUTE ON FUNCTION app.tenant_for_auth0_org(text) TO tenantry_app".into(),
            "app.tenant_for_auth0_org(text): SECURITY DEFINER (result, config, callers, volatility, language) is".into(),
        ),
        (
            "GRANT EXECUTE ON FUNCTION app.tenant_ids() TO PUBLIC".into(),
            "app.tenant_ids(): SECURITY DEFINER executable by PUBLIC".into(),
        ),
        (
            "CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid LANGUAGE sql STABLE PARALLEL SAFE
               AS $$ SELECT coalesce(nullif(current_setting('app.tenant_id', true), '')::uuid, '00000000-0000-0000-0000-000000000000') $$".into(),
            "app.current_tenant_id(): (body, definer, volatility, result) is".into(),
        ),
        (
            "CREATE FUNCTION app.scratch_f(int) RETURNS int LANGUAGE sql IMMUTABLE LEAKPROOF AS 'SELECT $1'".into(),
            "app.scratch_f(integer): LEAKPROOF function".into(),
        ),
    ];
    for (ddl, expected) in &cases {
        admin.batch_execute("BEGIN").await.unwrap();
        admin.batch_execute(ddl).await.unwrap();
        let found = violations(&admin).await;
        admin.batch_execute("ROLLBACK").await.unwrap();
        assert!(
            found.iter().any(|v| v.starts_with(expected.as_str())),
            "expected {expected:?} for\n{ddl}\ngot {found:?}"
        );
    }
    // And after all the rollbacks the real schema is clean again.
    assert!(violations(&admin).await.is_empty());
}

/// What a lookup answers the app role, one row per line as text: the same with no tenant set
/// (how the app calls it, before a tenant is known) and from inside tenant A's transaction.
async fn answers(
    raw: &Client,
    db: &Db,
    as_a: TenantId,
    sql: &str,
    params: &[Param<'_>],
) -> Vec<String> {
    let bare: Vec<String> = raw
        .query_typed(sql, params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut t = tx(db, as_a).await;
    let in_tx: Vec<String> = t
        .query(sql, params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    t.commit().await.unwrap();
    assert_eq!(
        bare, in_tx,
        "{sql}: the answer depends on the caller's tenant"
    );
    bare
}

/// [`answers`] for a lookup of one text argument.
async fn lookup(
    raw: &Client,
    db: &Db,
    as_a: TenantId,
    sql: &str,
    arg: Option<String>,
) -> Vec<String> {
    answers(raw, db, as_a, sql, &[(&arg, Type::TEXT)]).await
}

/// Each SECURITY DEFINER lookup, called by the app role with another tenant's identifiers and
/// with near misses of them: it answers exactly what its contract says (the columns it names,
/// for the one key it is given, matched exactly) and nothing for anything else.
#[tokio::test]
async fn security_definer_lookups_answer_only_their_contract() {
    let test = TestDb::new().await;
    let db = test.pool(2);
    let admin = test.admin().await;
    let a = tenant(&db, "alpha").await;
    let b = tenant(&db, "bravo").await;
    // A tenant with no Auth0 organization (API keys only).
    let c = TenantId::new();
    tenants::provision(
        &db,
        &NewTenant {
            tenant_id: c,
            name: "No org".into(),
            slug: "charlie".into(),
            auth0_org_id: None,
            plan: "team".into(),
        },
        "system:test",
    )
    .await
    .unwrap();
    admin
        .execute(
            "UPDATE app.tenants SET status = 'suspended' WHERE tenant_id = $1",
            &[&b.as_uuid()],
        )
        .await
        .unwrap();
    let mut keys = Vec::new();
    for t in [a, b] {
        let mut x = tx(&db, t).await;
        keys.push(ApiKeys::create(&mut x, "ci", &[Scope::Read]).await.unwrap());
        x.commit().await.unwrap();
    }
    let b_key = &keys[1];
    // Billing customers for A and B; chunks: A's waiting since now, B's embedded (and old),
    // C's waiting for two hours.
    let (a_id, b_id, c_id) = (a.as_uuid(), b.as_uuid(), c.as_uuid());
    for (t, customer) in [
        (a_id, Some("cus_alpha")),
        (b_id, Some("cus_bravo")),
        (c_id, None),
    ] {
        if let Some(customer) = customer {
            admin
                .execute(
                    "INSERT INTO app.billing_customers (tenant_id, stripe_customer_id) VALUES ($1, $2)",
                    &[&t, &customer],
                )
                .await
                .unwrap();
        }
        admin
            .execute(
                "WITH d AS (INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'docs') RETURNING dataset_id),
                      r AS (INSERT INTO app.records (tenant_id, dataset_id, key, data)
                            SELECT $1, dataset_id, 'r1', '{}' FROM d RETURNING dataset_id)
                 INSERT INTO app.chunks (tenant_id, dataset_id, record_key, chunk_no, record_version,
                                         column_name, content, embedding, embedding_model, created_at)
                 SELECT $1, dataset_id, 'r1', 0, 1, 'body', 'text',
                        CASE WHEN $1 = $2 THEN '[1,0,0]'::vector END,
                        CASE WHEN $1 = $2 THEN 'm' END,
                        CASE WHEN $1 = $3 THEN now() ELSE now() - interval '2 hours' END
                 FROM r",
                &[&t, &b_id, &a_id],
            )
            .await
            .unwrap();
    }
    let raw = connect(&test.app_url).await;
    let row = |t: TenantId, status: &str| format!("({t},{status})");
    let none: Vec<String> = Vec::new();

    // Auth0 organization -> (tenant, status): exactly the org's tenant, for that exact id.
    let org = "SELECT f::text FROM app.tenant_for_auth0_org($1) f";
    assert_eq!(
        lookup(&raw, &db, a, org, Some("org_bravo".into())).await,
        [row(b, "suspended")]
    );
    assert_eq!(
        lookup(&raw, &db, a, org, Some("org_alpha".into())).await,
        [row(a, "active")]
    );
    for near in [
        None,
        Some(String::new()),
        Some("bravo".into()),
        Some(b.to_string()),
        Some("cus_bravo".into()),
        Some("ORG_BRAVO".into()),
        Some("org_bravo ".into()),
        Some("org_brav".into()),
        Some("org_%".into()),
        Some("%".into()),
        Some("org_bravo' OR 'x' = 'x".into()),
    ] {
        assert_eq!(
            lookup(&raw, &db, a, org, near.clone()).await,
            none,
            "tenant_for_auth0_org({near:?})"
        );
    }

    // API-key prefix -> (tenant, key id, hash, revoked, tenant status, scopes): the one key.
    let hash: String = admin
        .query_one(
            "SELECT encode(hash, 'hex') FROM app.api_keys WHERE prefix = $1",
            &[&b_key.prefix],
        )
        .await
        .unwrap()
        .get(0);
    let key = "SELECT f::text FROM app.api_key_for_prefix($1) f";
    assert_eq!(
        lookup(&raw, &db, a, key, Some(b_key.prefix.clone())).await,
        [format!(
            "({b},{},\"\\\\x{hash}\",f,suspended,{{read}})",
            b_key.key_id
        )]
    );
    for near in [
        None,
        Some(String::new()),
        Some("%".into()),
        Some(b_key.prefix[..11].to_owned()),
        Some(format!("{}%", &b_key.prefix[..6])),
        Some(b_key.prefix.to_uppercase()),
        Some(b_key.key.clone()),
        Some(b_key.key_id.to_string()),
        Some(hash.clone()),
        Some(b.to_string()),
    ] {
        assert_eq!(
            lookup(&raw, &db, a, key, near.clone()).await,
            none,
            "api_key_for_prefix({near:?})"
        );
    }

    // Stripe customer -> tenant id.
    let customer = "SELECT f::text FROM app.tenant_for_stripe_customer($1) f";
    assert_eq!(
        lookup(&raw, &db, a, customer, Some("cus_bravo".into())).await,
        [b.to_string()]
    );
    for near in [
        None,
        Some(String::new()),
        Some("cus_%".into()),
        Some("cus_brav".into()),
        Some("org_bravo".into()),
        Some(b.to_string()),
    ] {
        assert_eq!(
            lookup(&raw, &db, a, customer, near.clone()).await,
            none,
            "tenant_for_stripe_customer({near:?})"
        );
    }

    // Tenants with chunks waiting longer than the interval: ids only, and only those.
    let pending = "SELECT f::text FROM app.tenants_with_pending_chunks($1::interval) f ORDER BY 1";
    assert_eq!(
        lookup(&raw, &db, a, pending, Some("1 hour".into())).await,
        [c.to_string()]
    );
    assert_eq!(
        lookup(&raw, &db, a, pending, Some("3 hours".into())).await,
        none
    );
    let mut waiting = vec![a.to_string(), c.to_string()];
    waiting.sort();
    assert_eq!(
        lookup(&raw, &db, a, pending, Some("0 seconds".into())).await,
        waiting
    );

    // Every tenant, id and status, in id order: its whole contract.
    let mut all = [(a, "active"), (b, "suspended"), (c, "active")];
    all.sort_by_key(|(t, _)| t.as_uuid());
    let all: Vec<String> = all.iter().map(|(t, s)| row(*t, s)).collect();
    assert_eq!(
        answers(&raw, &db, a, "SELECT f::text FROM app.tenant_ids() f", &[]).await,
        all
    );
}

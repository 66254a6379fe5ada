//! The catalog test: no table slips through without forced RLS, no view without security_invoker,
//! no SECURITY DEFINER function without a fixed search_path, no LEAKPROOF function.

use tenantry_tests::TestDb;
use tokio_postgres::Client;

/// Tables in the app schemas that are global on purpose, with the reason. Keep it short.
const GLOBAL_TABLES: &[(&str, &str)] = &[];

/// Schemas whose tables hold application data.
const APP_SCHEMAS: &[&str] = &["app"];

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
        // Policies: each command covered by a permissive tenant policy with the right clauses.
        let policies = client
            .query(
                "SELECT polname, polcmd::text, polpermissive,
                        coalesce(pg_get_expr(polqual, polrelid), ''),
                        coalesce(pg_get_expr(polwithcheck, polrelid), ''),
                        ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END FROM unnest(polroles) r)
                 FROM pg_policy WHERE polrelid = $1::int8::oid",
                &[&oid],
            )
            .await
            .unwrap();
        let tenant_expr =
            |e: &str| e.contains("tenant_id") && e.contains("app.current_tenant_id()");
        for cmd in ["r", "a", "w", "d"] {
            let covered = policies.iter().any(|p| {
                let (pcmd, permissive, qual, check, roles): (
                    String,
                    bool,
                    String,
                    String,
                    Vec<String>,
                ) = (p.get(1), p.get(2), p.get(3), p.get(4), p.get(5));
                let applies_to_app = roles.iter().any(|r| r == "public" || r == "tenantry_app");
                let clauses_ok = match cmd {
                    "r" | "d" => tenant_expr(&qual),
                    "a" => tenant_expr(&check),
                    _ => tenant_expr(&qual) && tenant_expr(&check),
                };
                permissive && applies_to_app && (pcmd == cmd || pcmd == "*") && clauses_ok
            });
            if !covered {
                out.push(format!(
                    "{name}: no tenant policy for command {cmd} with USING and WITH CHECK"
                ));
            }
        }
        // Any other permissive policy widens access: it must be tenant-scoped too, or be the
        // owner's read-only lookup policy used by SECURITY DEFINER functions.
        for p in &policies {
            let (pname, pcmd, permissive, qual, check, roles): (
                String,
                String,
                bool,
                String,
                String,
                Vec<String>,
            ) = (p.get(0), p.get(1), p.get(2), p.get(3), p.get(4), p.get(5));
            if !permissive {
                continue;
            }
            let owner_lookup = roles == ["tenantry_owner"] && pcmd == "r";
            let scoped = (qual.is_empty() || tenant_expr(&qual))
                && (check.is_empty() || tenant_expr(&check));
            if !owner_lookup && !scoped {
                out.push(format!(
                    "{name}: policy {pname} is not confined to the current tenant"
                ));
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

    let definers = client
        .query(
            "SELECT p.oid::regprocedure::text, coalesce(array_to_string(p.proconfig, ','), ''),
                    pg_get_userbyid(p.proowner)::text,
                    has_function_privilege('public', p.oid, 'EXECUTE')
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = ANY($1) AND p.prosecdef",
            &[&schemas],
        )
        .await
        .unwrap();
    for f in definers {
        let (name, config, owner, public): (String, String, String, bool) =
            (f.get(0), f.get(1), f.get(2), f.get(3));
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

/// Each scratch table forgets something; the catalog check must name it.
#[tokio::test]
async fn a_table_that_forgets_rls_is_caught() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let cases = [
        (
            "CREATE TABLE app.scratch (tenant_id uuid NOT NULL, id int, PRIMARY KEY (tenant_id, id))",
            "app.scratch: row-level security is not enabled",
        ),
        (
            "CREATE TABLE app.scratch (tenant_id uuid NOT NULL, id int, PRIMARY KEY (tenant_id, id));
             ALTER TABLE app.scratch ENABLE ROW LEVEL SECURITY;
             CREATE POLICY p ON app.scratch USING (tenant_id = (SELECT app.current_tenant_id()))
               WITH CHECK (tenant_id = (SELECT app.current_tenant_id()))",
            "app.scratch: row-level security is not forced",
        ),
        (
            "CREATE TABLE app.scratch (tenant_id uuid NOT NULL, id int, PRIMARY KEY (tenant_id, id));
             ALTER TABLE app.scratch ENABLE ROW LEVEL SECURITY; ALTER TABLE app.scratch FORCE ROW LEVEL SECURITY;
             CREATE POLICY p ON app.scratch FOR SELECT USING (tenant_id = (SELECT app.current_tenant_id()))",
            "app.scratch: no tenant policy for command a with USING and WITH CHECK",
        ),
        (
            "CREATE TABLE app.scratch (tenant_id uuid NOT NULL, id int, PRIMARY KEY (tenant_id, id));
             ALTER TABLE app.scratch ENABLE ROW LEVEL SECURITY; ALTER TABLE app.scratch FORCE ROW LEVEL SECURITY;
             CREATE POLICY p ON app.scratch USING (tenant_id = (SELECT app.current_tenant_id()))
               WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
             CREATE POLICY leak ON app.scratch FOR SELECT USING (true)",
            "app.scratch: policy leak is not confined to the current tenant",
        ),
        (
            "CREATE TABLE app.scratch (id int PRIMARY KEY);
             ALTER TABLE app.scratch ENABLE ROW LEVEL SECURITY; ALTER TABLE app.scratch FORCE ROW LEVEL SECURITY",
            "app.scratch: no tenant_id column",
        ),
        (
            "CREATE TABLE app.scratch (id int, tenant_id uuid NOT NULL, PRIMARY KEY (id, tenant_id));
             ALTER TABLE app.scratch ENABLE ROW LEVEL SECURITY; ALTER TABLE app.scratch FORCE ROW LEVEL SECURITY;
             CREATE POLICY p ON app.scratch USING (tenant_id = (SELECT app.current_tenant_id()))
               WITH CHECK (tenant_id = (SELECT app.current_tenant_id()))",
            "app.scratch: primary key does not lead with tenant_id",
        ),
        (
            "CREATE VIEW app.scratch_v AS SELECT tenant_id, name FROM app.tenants",
            "app.scratch_v: view without security_invoker",
        ),
        (
            "CREATE FUNCTION app.scratch_f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
             ALTER FUNCTION app.scratch_f() OWNER TO tenantry_owner",
            "app.scratch_f(): SECURITY DEFINER without a fixed search_path",
        ),
        (
            "CREATE FUNCTION app.scratch_f(int) RETURNS int LANGUAGE sql IMMUTABLE LEAKPROOF AS 'SELECT $1'",
            "app.scratch_f(integer): LEAKPROOF function",
        ),
    ];
    for (ddl, expected) in cases {
        admin.batch_execute("BEGIN").await.unwrap();
        admin.batch_execute(ddl).await.unwrap();
        let found = violations(&admin).await;
        admin.batch_execute("ROLLBACK").await.unwrap();
        assert!(
            found.iter().any(|v| v == expected),
            "expected {expected:?} for\n{ddl}\ngot {found:?}"
        );
    }
    // And after all the rollbacks the real schema is clean again.
    assert!(violations(&admin).await.is_empty());
}

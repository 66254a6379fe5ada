//! Proving row-level security on its own, and breaking the migrations on purpose.
//!
//! The app role lacks some grants on purpose (the ledger is append-only, tenants cannot be
//! deleted), so an attack it runs may be refused by a missing privilege before RLS is ever asked.
//! That proves the grant, not the policy. The probe role has every DML privilege on every app
//! table but is neither the owner, nor a superuser, nor BYPASSRLS: whatever refuses it is RLS.
//!
//! [`Outcome`] is what a statement came to, compared exactly (SQLSTATE and message), so a test
//! can tell "new row violates row-level security policy" from "permission denied for table" and
//! from a foreign key or duplicate key that happened to fail first.
//!
//! [`apply_sql_mutant`] is the hook for `scripts/mutants-sql`: with `TENANTRY_TEST_SQL_MUTANT`
//! set to a `.sql` file, every fresh test database gets that file applied as the superuser, so the
//! suite can be shown to fail when a protection in the migrations is weakened.

use tenantry::db::{DbError, Param};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

/// The probe role: all DML on every app table, under RLS like the app role.
pub const PROBE_ROLE: &str = "tenantry_rls_probe";

/// The role that owns the schema (and, with forced RLS, is under the policies too).
pub const OWNER_ROLE: &str = "tenantry_owner";

/// What a statement came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and changed (or returned) this many rows.
    Rows(u64),
    /// The server refused it with this SQLSTATE and message.
    Refused {
        /// SQLSTATE.
        code: String,
        /// The primary message, exactly.
        message: String,
    },
    /// Anything else (a broken connection, a client-side error).
    Failed(String),
}

impl Outcome {
    /// Refused by a policy's WITH CHECK (or by USING, used as the check when there is none).
    pub fn rls(table: &str) -> Self {
        Self::refused(
            "42501",
            &format!("new row violates row-level security policy for table \"{table}\""),
        )
    }

    /// Refused because `ON CONFLICT DO UPDATE` found a row the policy's USING does not let it
    /// update (the row of another tenant).
    pub fn rls_using(table: &str) -> Self {
        Self::refused(
            "42501",
            &format!(
                "new row violates row-level security policy (USING expression) for table \"{table}\""
            ),
        )
    }

    /// Refused for lack of a grant (RLS was never asked).
    pub fn no_grant(table: &str) -> Self {
        Self::refused("42501", &format!("permission denied for table {table}"))
    }

    /// Any refusal, exactly.
    pub fn refused(code: &str, message: &str) -> Self {
        Self::Refused {
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    /// From a raw driver result.
    pub fn of_pg(result: Result<u64, tokio_postgres::Error>) -> Self {
        match result {
            Ok(n) => Self::Rows(n),
            Err(e) => Self::of_pg_error(&e),
        }
    }

    /// From a driver error.
    pub fn of_pg_error(e: &tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => Self::refused(db.code().code(), db.message()),
            None => Self::Failed(e.to_string()),
        }
    }

    /// From a [`TenantTx`](tenantry::db::TenantTx) result.
    pub fn of_db(result: Result<u64, DbError>) -> Self {
        match result {
            Ok(n) => Self::Rows(n),
            Err(DbError::Postgres(e)) => Self::of_pg_error(&e),
            Err(e) => Self::Failed(format!("{e:?}")),
        }
    }
}

/// A superuser connection to one test database that runs statements as the probe role (or as
/// the owner) under a given tenant setting.
pub struct Probe {
    client: Client,
}

impl Probe {
    /// Creates the probe role if the cluster does not have it yet, grants it, in this database,
    /// every DML privilege on every table of `app` (plus the schema and `app.current_tenant_id()`),
    /// and checks that it is nothing more than that.
    pub async fn new(admin_url: &str) -> Self {
        let client = crate::connect(admin_url).await;
        // Roles are cluster-wide and tests run in parallel: two may race to create it.
        client
            .batch_execute(&format!(
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PROBE_ROLE}') THEN
                     CREATE ROLE {PROBE_ROLE} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
                       NOBYPASSRLS NOREPLICATION NOINHERIT;
                   END IF;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                 END $$;
                 GRANT USAGE ON SCHEMA app TO {PROBE_ROLE};
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO {PROBE_ROLE};
                 GRANT EXECUTE ON FUNCTION app.current_tenant_id() TO {PROBE_ROLE};"
            ))
            .await
            .unwrap();
        let row = client
            .query_one(
                "SELECT rolsuper, rolbypassrls, rolinherit,
                        (SELECT count(*) FROM pg_auth_members WHERE member = r.oid),
                        (SELECT count(*) FROM pg_class WHERE relowner = r.oid),
                        (SELECT count(*) FROM pg_class c
                           WHERE c.relnamespace = 'app'::regnamespace AND c.relkind = 'r'
                             AND NOT (has_table_privilege(r.oid, c.oid, 'SELECT')
                                      AND has_table_privilege(r.oid, c.oid, 'INSERT')
                                      AND has_table_privilege(r.oid, c.oid, 'UPDATE')
                                      AND has_table_privilege(r.oid, c.oid, 'DELETE')))
                 FROM pg_roles r WHERE rolname = $1",
                &[&PROBE_ROLE],
            )
            .await
            .unwrap();
        let (sup, bypass, inherit): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
        let (memberships, owned, missing): (i64, i64, i64) = (row.get(3), row.get(4), row.get(5));
        assert_eq!(
            (sup, bypass, inherit, memberships, owned, missing),
            (false, false, false, 0, 0, 0),
            "the probe role must be plain: no superuser, no BYPASSRLS, no memberships, owning \
             nothing, with every DML privilege on every app table"
        );
        Self { client }
    }

    /// Runs `sql` as the probe role in its own transaction, with `app.tenant_id` set (locally)
    /// to `tenant` (`None`: not set at all); commits if it succeeded, so anything it could do
    /// to another tenant's rows would stay done.
    pub async fn attempt(&self, tenant: Option<&str>, sql: &str, params: &[Param<'_>]) -> Outcome {
        self.attempt_as(PROBE_ROLE, tenant, sql, params).await
    }

    /// As [`attempt`](Self::attempt), as another role (the owner, say).
    pub async fn attempt_as(
        &self,
        role: &str,
        tenant: Option<&str>,
        sql: &str,
        params: &[Param<'_>],
    ) -> Outcome {
        self.begin(role, tenant).await;
        let result = self.client.execute_typed(sql, params).await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        self.client.batch_execute(end).await.unwrap();
        Outcome::of_pg(result)
    }

    /// Runs `sql` as `role` under `tenant` and returns its rows (or its refusal); always rolled
    /// back, for statements that are meant to touch the tenant's own rows (a DELETE with no
    /// WHERE, say).
    pub async fn rows_as(
        &self,
        role: &str,
        tenant: Option<&str>,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, Outcome> {
        self.begin(role, tenant).await;
        let result = self.client.query_typed(sql, params).await;
        self.client.batch_execute("ROLLBACK").await.unwrap();
        result.map_err(|e| Outcome::of_pg_error(&e))
    }

    async fn begin(&self, role: &str, tenant: Option<&str>) {
        self.client
            .batch_execute(&format!("BEGIN; SET LOCAL ROLE {role}"))
            .await
            .unwrap();
        if let Some(t) = tenant {
            self.client
                .query_typed(
                    "SELECT set_config('app.tenant_id', $1, true)",
                    &[(&t, Type::TEXT)],
                )
                .await
                .unwrap();
        }
    }
}

static MUTANT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The opt-in hook of `scripts/mutants-sql`: when `TENANTRY_TEST_SQL_MUTANT` names a `.sql` file,
/// applies it as the superuser to the database at `admin_url` (a fresh test database). A mutant
/// that does not apply panics with "SQL mutant did not apply", which the script reports as
/// invalid rather than as caught.
pub async fn apply_sql_mutant(admin_url: &str) {
    let Some(path) = std::env::var_os("TENANTRY_TEST_SQL_MUTANT").filter(|p| !p.is_empty()) else {
        return;
    };
    let sql = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("SQL mutant did not apply: reading {path:?}: {e}"));
    // Some mutants alter cluster-wide roles; concurrent ALTER ROLE fails with "tuple
    // concurrently updated", so databases get their mutant one at a time.
    let _one_at_a_time = MUTANT_LOCK.lock().await;
    let client = crate::connect(admin_url).await;
    if let Err(e) = client.batch_execute(&sql).await {
        panic!("SQL mutant did not apply: {path:?}: {e:?}");
    }
}

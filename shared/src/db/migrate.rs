//! Numbered, forward-only SQL migrations, applied by the migrate command (never by a request).
//!
//! Each file runs in its own transaction, under an advisory lock so two cold starts or two
//! deploys never race, and is recorded with its SHA-256: an applied file that later changes is an
//! error, not a silent divergence.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;
use tokio_postgres::types::Type;

/// The `(file name, contents)` of every file in `migrations/`, in order, embedded at build time.
const EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Arbitrary but fixed: the advisory lock every migrator takes.
const LOCK_KEY: i64 = 0x7465_6e61_6e74; // "tenant"

/// One migration file.
#[derive(Clone, Debug)]
pub struct Migration {
    /// The number the file name starts with.
    pub version: i32,
    /// The file name.
    pub name: String,
    /// The SQL.
    pub sql: String,
}

impl Migration {
    /// Hex SHA-256 of the SQL.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }
}

/// What can go wrong while migrating.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A file name does not start with a number, or two files share one.
    #[error("migration file {0} is not named NNNN_name.sql with a unique number")]
    BadName(String),
    /// An applied migration's file has changed since it was applied.
    #[error("migration {name} was changed after it was applied (checksum mismatch)")]
    ChecksumMismatch {
        /// The file.
        name: String,
    },
    /// The database has a migration this build does not know: it is newer than the code.
    #[error("the database has migration {0}, which this build does not have")]
    UnknownApplied(i32),
    /// Postgres refused.
    #[error("migration {context}: {source}")]
    Postgres {
        /// Which step.
        context: String,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
}

fn pg(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> MigrateError {
    let context = context.into();
    move |source| MigrateError::Postgres { context, source }
}

/// The migrations built into this binary.
pub fn embedded() -> Result<Vec<Migration>, MigrateError> {
    let mut out: Vec<Migration> = Vec::with_capacity(EMBEDDED.len());
    for (name, sql) in EMBEDDED {
        let version = name
            .split('_')
            .next()
            .and_then(|n| n.parse::<i32>().ok())
            .ok_or_else(|| MigrateError::BadName((*name).to_owned()))?;
        if out.iter().any(|m| m.version == version) {
            return Err(MigrateError::BadName((*name).to_owned()));
        }
        out.push(Migration {
            version,
            name: (*name).to_owned(),
            sql: (*sql).to_owned(),
        });
    }
    Ok(out)
}

/// Passwords to set on the login roles after migrating (from Secrets Manager in AWS, dev
/// constants locally). `None` leaves a role's password as it is.
#[derive(Clone, Default)]
pub struct RolePasswords {
    /// For `tenantry_app`.
    pub app: Option<String>,
    /// For `tenantry_support`.
    pub support: Option<String>,
    /// For `tenantry_impersonator` (read-only impersonation sessions).
    pub impersonator: Option<String>,
    /// For `tenantry_indexer` (per-tenant vector index maintenance).
    pub indexer: Option<String>,
}

impl std::fmt::Debug for RolePasswords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RolePasswords(<redacted>)")
    }
}

/// Applies every pending migration, in order, and returns the names of those it applied.
///
/// `admin_url` is a user that may create roles and schemas (the RDS master user, or a local
/// superuser); objects are created by the owner role, which each file switches to itself.
pub async fn run(
    admin_url: &str,
    migrations: &[Migration],
    passwords: &RolePasswords,
) -> Result<Vec<String>, MigrateError> {
    let (mut client, connection) = tokio_postgres::connect(admin_url, NoTls)
        .await
        .map_err(pg("connect"))?;
    let conn_task = tokio::spawn(connection);

    let result = async {
        client
            .query_typed("SELECT pg_advisory_lock($1)", &[(&LOCK_KEY, Type::INT8)])
            .await
            .map_err(pg("lock"))?;
        client
            .batch_execute(
                "CREATE SCHEMA IF NOT EXISTS tenantry_meta;
                 REVOKE ALL ON SCHEMA tenantry_meta FROM PUBLIC;
                 CREATE TABLE IF NOT EXISTS tenantry_meta.schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now()
                 );",
            )
            .await
            .map_err(pg("bookkeeping table"))?;

        let applied = client
            .query_typed(
                "SELECT version, checksum FROM tenantry_meta.schema_migrations ORDER BY version",
                &[],
            )
            .await
            .map_err(pg("read applied"))?;
        for row in &applied {
            let version: i32 = row.get(0);
            let checksum: String = row.get(1);
            match migrations.iter().find(|m| m.version == version) {
                None => return Err(MigrateError::UnknownApplied(version)),
                Some(m) if m.checksum() != checksum => {
                    return Err(MigrateError::ChecksumMismatch {
                        name: m.name.clone(),
                    });
                }
                Some(_) => {}
            }
        }

        let mut done = Vec::new();
        for m in migrations {
            if applied.iter().any(|r| r.get::<_, i32>(0) == m.version) {
                continue;
            }
            let tx = client.transaction().await.map_err(pg(&m.name))?;
            tx.batch_execute(&m.sql).await.map_err(pg(&m.name))?;
            // Files may SET LOCAL ROLE to the owner; the bookkeeping row is the migrator's.
            tx.batch_execute("RESET ROLE").await.map_err(pg(&m.name))?;
            tx.execute_typed(
                "INSERT INTO tenantry_meta.schema_migrations (version, name, checksum) \
                 VALUES ($1, $2, $3)",
                &[
                    (&m.version, Type::INT4),
                    (&m.name, Type::TEXT),
                    (&m.checksum(), Type::TEXT),
                ],
            )
            .await
            .map_err(pg(&m.name))?;
            tx.commit().await.map_err(pg(&m.name))?;
            tracing::info!(migration = %m.name, "applied");
            done.push(m.name.clone());
        }

        for (role, password) in [
            ("tenantry_app", &passwords.app),
            ("tenantry_support", &passwords.support),
            ("tenantry_impersonator", &passwords.impersonator),
            ("tenantry_indexer", &passwords.indexer),
        ] {
            if let Some(password) = password {
                // Utility statements take no parameters: quote with format(%I, %L) server-side.
                let row = client
                    .query_typed_one(
                        "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)",
                        &[(&role, Type::TEXT), (password, Type::TEXT)],
                    )
                    .await
                    .map_err(pg("role password"))?;
                let stmt: String = row.get(0);
                client
                    .batch_execute(&stmt)
                    .await
                    .map_err(pg("role password"))?;
            }
        }
        client
            .query_typed("SELECT pg_advisory_unlock($1)", &[(&LOCK_KEY, Type::INT8)])
            .await
            .map_err(pg("unlock"))?;
        Ok(done)
    }
    .await;

    drop(client);
    let _ = conn_task.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_migrations_are_numbered_in_order() {
        let all = embedded().unwrap_or_else(|e| panic!("{e}"));
        assert!(!all.is_empty());
        assert!(all.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(all[0].version, 1);
        assert_eq!(all[0].checksum().len(), 64);
    }
}

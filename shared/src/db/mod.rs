//! Postgres: its settings ([`DbConfig`]), the connection pool, [`TenantTx`] and migrations.
//!
//! Handler code reaches tenant data only through [`TenantTx`]; [`Db`] hands out nothing else but the
//! few lookups that must run before a tenant is known (each a narrow SECURITY DEFINER function).

mod config;
pub mod migrate;
mod params;
mod tx;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use uuid::Uuid;

pub use config::{DbConfig, DbTls};
pub use params::Params;
pub use tokio_postgres::Row;
pub use tokio_postgres::types::{ToSql, Type as SqlType};
pub use tx::{Access, Param, TenantContext, TenantTx, TxSettings};

use crate::ids::TenantId;

/// A database failure, classified so the HTTP layer can answer with the right status.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had in time (pool exhausted, database down).
    #[error("database unavailable")]
    Unavailable(#[source] deadpool_postgres::PoolError),
    /// Postgres answered with an error, or the connection broke.
    #[error("database error")]
    Postgres(#[from] tokio_postgres::Error),
    /// A statement in this transaction already failed; it can only be rolled back.
    #[error("transaction aborted by an earlier error")]
    Aborted,
    /// A statement expected to return one row (or at most one) returned this many.
    #[error("expected one row, got {0}")]
    RowCount(usize),
    /// A write the code refused before sending it (a caller bug).
    #[error("invalid write: {0}")]
    Invalid(String),
    /// The configuration cannot be used (bad URL).
    #[error("database configuration: {0}")]
    Config(String),
}

impl DbError {
    /// The SQLSTATE Postgres answered with, if it answered.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            DbError::Postgres(e) => e.code(),
            _ => None,
        }
    }

    /// Row-level security (or a missing privilege) refused the statement.
    pub fn is_permission_denied(&self) -> bool {
        self.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
    }

    /// The transaction lost a conflict with another (deadlock or serialization failure).
    pub fn is_conflict(&self) -> bool {
        self.sqlstate().is_some_and(|s| {
            [
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::T_R_SERIALIZATION_FAILURE,
            ]
            .contains(s)
        })
    }

    /// The statement ran past its `statement_timeout` (or was cancelled).
    pub fn is_timeout(&self) -> bool {
        self.sqlstate() == Some(&SqlState::QUERY_CANCELED)
    }

    /// The connection went away under the statement: closed or broken (Postgres restarting, a
    /// proxy dropping it), a connection exception (class 08), or the server shutting down
    /// (57P01-57P03). Retrying later can succeed; nothing the caller sent is wrong.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            DbError::Postgres(e) => {
                e.is_closed()
                    || e.code().is_some_and(|c| {
                        c.code().starts_with("08")
                            || [
                                SqlState::ADMIN_SHUTDOWN,
                                SqlState::CRASH_SHUTDOWN,
                                SqlState::CANNOT_CONNECT_NOW,
                            ]
                            .contains(c)
                    })
                    || (e.code().is_none()
                        && std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()))
            }
            _ => false,
        }
    }
}

/// A rustls connector that verifies the server against the Mozilla roots and `ca_file`'s CAs.
fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DbError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| DbError::Config(format!("DB_SSL_ROOT_CERT {}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| DbError::Config(format!("DB_SSL_ROOT_CERT: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| DbError::Config(format!("DB_SSL_ROOT_CERT: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::aws_lc_rs::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| DbError::Config(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// One session outside the pool, with the pool's TLS settings: for work that must run outside
/// any transaction (`CREATE INDEX CONCURRENTLY`, in [`crate::rag::tenant_index`]). The
/// connection's task runs until the client is dropped.
pub async fn connect_session(
    url: &str,
    tls: &DbTls,
    connect_timeout: Duration,
) -> Result<tokio_postgres::Client, DbError> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|_| DbError::Config("the database URL is not a valid Postgres URL".into()))?;
    pg.application_name("tenantry-maintenance")
        .connect_timeout(connect_timeout);
    let client = match tls {
        DbTls::Disable => {
            let (client, conn) = pg.connect(NoTls).await?;
            tokio::spawn(conn);
            client
        }
        DbTls::Require { ca_file } => {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, conn) = pg.connect(tls_connector(ca_file.as_deref())?).await?;
            tokio::spawn(conn);
            client
        }
    };
    Ok(client)
}

/// A tenant that an Auth0 organization or API key maps to, with its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRef {
    /// The tenant.
    pub tenant_id: TenantId,
    /// `active`, `suspended` or `closed`.
    pub status: String,
}

/// An API key's stored form, found by its public prefix.
#[derive(Clone, Debug)]
pub struct StoredApiKey {
    /// The tenant and its status.
    pub tenant: TenantRef,
    /// The key's id.
    pub key_id: Uuid,
    /// SHA-256 of the whole key.
    pub hash: Vec<u8>,
    /// Whether the key has been revoked.
    pub revoked: bool,
    /// The scopes it was created with (`read`, `ingest`).
    pub scopes: Vec<String>,
}

/// An impersonation session as authentication sees it (before any tenant is known).
#[derive(Clone, Debug)]
pub struct ImpersonationLookup {
    /// The tenant it acts in.
    pub tenant_id: TenantId,
    /// The staff member who started it (Auth0 `sub`).
    pub staff_id: String,
    /// `read_only` or `read_write`.
    pub mode: String,
    /// Whether it may export.
    pub allow_export: bool,
    /// When it ends on its own.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Whether it was ended early.
    pub ended: bool,
    /// Whether an approval it needs is still missing (the tenant's, too, whenever the tenant's
    /// support access is now `ask`).
    pub awaiting_approval: bool,
    /// The tenant's status.
    pub tenant_status: String,
    /// The tenant's support access setting (`off`, `read_only`, `ask`).
    pub support_access: String,
}

/// The functions' connection pool. Cheap to clone; build it once per cold start.
#[derive(Clone, Debug)]
pub struct Db {
    pool: Pool,
}

impl Db {
    /// Builds the pool. No connection is opened until the first request needs one.
    pub fn connect(cfg: &DbConfig) -> Result<Self, DbError> {
        let mut pg: tokio_postgres::Config = cfg
            .url
            .parse()
            .map_err(|_| DbError::Config("APP_DATABASE_URL is not a valid Postgres URL".into()))?;
        pg.application_name("tenantry")
            .connect_timeout(cfg.connect_timeout)
            // Notice dead peers (an RDS Proxy that dropped us while the Lambda was frozen).
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        // Recycling only checks that the connection is open: no extra round trip per request. A
        // connection that died while the Lambda was frozen is caught by TenantTx's one retry.
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &cfg.tls {
            DbTls::Disable => Manager::from_config(pg, NoTls, manager_config),
            DbTls::Require { ca_file } => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                Manager::from_config(pg, tls_connector(ca_file.as_deref())?, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_max.max(1))
            .timeouts(Timeouts {
                wait: Some(cfg.connect_timeout),
                create: Some(cfg.connect_timeout),
                recycle: Some(cfg.connect_timeout),
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Config(e.to_string()))?;
        Ok(Self { pool })
    }

    /// Begins a transaction for `ctx`'s tenant. See [`TenantTx`].
    pub async fn begin(&self, ctx: &TenantContext, access: Access) -> Result<TenantTx, DbError> {
        self.begin_with(ctx, access, TxSettings::default()).await
    }

    /// Begins a transaction with extra per-transaction settings (a statement timeout, say).
    pub async fn begin_with(
        &self,
        ctx: &TenantContext,
        access: Access,
        settings: TxSettings,
    ) -> Result<TenantTx, DbError> {
        TenantTx::begin(self.clone(), ctx.clone(), access, settings).await
    }

    async fn checkout(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(DbError::Unavailable)
    }

    /// Which tenant an Auth0 organization belongs to (before any tenant is known).
    pub async fn tenant_for_auth0_org(&self, org_id: &str) -> Result<Option<TenantRef>, DbError> {
        let client = self.checkout().await?;
        let row = client
            .query_typed_opt(
                "SELECT tenant_id, status FROM app.tenant_for_auth0_org($1)",
                &[(&org_id, Type::TEXT)],
            )
            .await?;
        Ok(row.map(|r| TenantRef {
            tenant_id: TenantId::from(r.get::<_, Uuid>(0)),
            status: r.get(1),
        }))
    }

    /// An API key's stored hash and tenant, by its public prefix (before any tenant is known).
    pub async fn api_key_for_prefix(&self, prefix: &str) -> Result<Option<StoredApiKey>, DbError> {
        let client = self.checkout().await?;
        let row = client
            .query_typed_opt(
                "SELECT tenant_id, key_id, hash, revoked, tenant_status, scopes \
                 FROM app.api_key_for_prefix($1)",
                &[(&prefix, Type::TEXT)],
            )
            .await?;
        Ok(row.map(|r| StoredApiKey {
            tenant: TenantRef {
                tenant_id: TenantId::from(r.get::<_, Uuid>(0)),
                status: r.get(4),
            },
            key_id: r.get(1),
            hash: r.get(2),
            revoked: r.get(3),
            scopes: r.get(5),
        }))
    }

    /// An impersonation session by its id (before any tenant is known; authentication).
    pub async fn impersonation_session(
        &self,
        session_id: Uuid,
    ) -> Result<Option<ImpersonationLookup>, DbError> {
        let client = self.checkout().await?;
        let row = client
            .query_typed_opt(
                "SELECT tenant_id, staff_id, mode, allow_export, expires_at, ended, \
                        awaiting_approval, tenant_status, support_access \
                 FROM app.impersonation_for($1)",
                &[(&session_id, Type::UUID)],
            )
            .await?;
        Ok(row.map(|r| ImpersonationLookup {
            tenant_id: TenantId::from(r.get::<_, Uuid>(0)),
            staff_id: r.get(1),
            mode: r.get(2),
            allow_export: r.get(3),
            expires_at: r.get(4),
            ended: r.get(5),
            awaiting_approval: r.get(6),
            tenant_status: r.get(7),
            support_access: r.get(8),
        }))
    }

    /// Which tenant a Stripe customer bills (before any tenant is known; webhooks).
    pub async fn tenant_for_stripe_customer(
        &self,
        customer_id: &str,
    ) -> Result<Option<TenantId>, DbError> {
        let client = self.checkout().await?;
        let row = client
            .query_typed_opt(
                "SELECT t FROM app.tenant_for_stripe_customer($1) t",
                &[(&customer_id, Type::TEXT)],
            )
            .await?;
        Ok(row.map(|r| TenantId::from(r.get::<_, Uuid>(0))))
    }

    /// Tenants whose chunks have waited longer than `older_than` for an embedding (ids only).
    pub async fn tenants_with_pending_chunks(
        &self,
        older_than: std::time::Duration,
    ) -> Result<Vec<TenantId>, DbError> {
        let client = self.checkout().await?;
        let secs = older_than.as_secs_f64();
        let rows = client
            .query_typed(
                "SELECT t FROM app.tenants_with_pending_chunks(make_interval(secs => $1)) t",
                &[(&secs, Type::FLOAT8)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| TenantId::from(r.get::<_, Uuid>(0)))
            .collect())
    }

    /// Every tenant with its status, for scheduled jobs that visit tenants one at a time.
    pub async fn tenant_ids(&self) -> Result<Vec<TenantRef>, DbError> {
        self.tenant_refs(None).await
    }

    /// Those of `only` that exist, with their status (a fan-out batch's tenants).
    pub async fn tenants_among(&self, only: &[TenantId]) -> Result<Vec<TenantRef>, DbError> {
        self.tenant_refs(Some(only)).await
    }

    async fn tenant_refs(&self, only: Option<&[TenantId]>) -> Result<Vec<TenantRef>, DbError> {
        let ids: Option<Vec<Uuid>> = only.map(|o| o.iter().map(|t| t.as_uuid()).collect());
        let client = self.checkout().await?;
        let rows = client
            .query_typed(
                "SELECT tenant_id, status FROM app.tenant_ids() \
                 WHERE $1::uuid[] IS NULL OR tenant_id = ANY($1)",
                &[(&ids, Type::UUID_ARRAY)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| TenantRef {
                tenant_id: TenantId::from(r.get::<_, Uuid>(0)),
                status: r.get(1),
            })
            .collect())
    }

    /// One statement on a pool that logs in as the support role: reads across tenants, as far
    /// as that role's policies and column grants go (counts and states, never tenant data;
    /// `migrations/0011_support_plane.sql`), outside any tenant. On the app role's pool the same
    /// statement sees no tenant rows at all.
    pub async fn read_across_tenants(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, DbError> {
        let client = self.checkout().await?;
        Ok(client.query_typed(sql, params).await?)
    }
}

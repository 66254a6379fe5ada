//! The database section of the configuration: where to connect, how many connections, TLS.

use std::time::Duration;

use crate::env::{ConfigError, Env};

/// Whether connections to Postgres (or RDS Proxy) use TLS.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum DbTls {
    /// Plain TCP (the local cluster on loopback).
    #[default]
    Disable,
    /// TLS required, the server's certificate verified against the Mozilla roots (which cover
    /// RDS Proxy's Amazon-issued certificates) plus, optionally, the CAs in a PEM file.
    Require {
        /// Extra trusted CAs (PEM), e.g. the RDS CA bundle for direct instance connections.
        ca_file: Option<std::path::PathBuf>,
    },
}

/// Database settings for the functions (who log in as the app role).
#[derive(Clone)]
pub struct DbConfig {
    /// `postgres://tenantry_app:...@host:port/db`. Holds a password: never logged. Empty until
    /// resolved when the credentials come from Secrets Manager.
    pub url: String,
    /// Secrets Manager secret holding the credentials, when `url` is not given directly.
    pub secret_arn: Option<String>,
    /// Host to connect to instead of the secret's (the RDS Proxy endpoint).
    pub host_override: Option<String>,
    /// Connections per process. A Lambda serves one request at a time, so a few suffice.
    pub pool_max: usize,
    /// How long a request waits for a connection, or for a new one to open.
    pub connect_timeout: Duration,
    /// TLS to the database.
    pub tls: DbTls,
    /// The support role's URL (`postgres://tenantry_support:...`), for the admin function's
    /// cross-tenant reads. Holds a password: never logged. Unset: no support pool.
    pub support_url: Option<String>,
    /// Secrets Manager secret holding the support role's credentials (AWS).
    pub support_secret_arn: Option<String>,
    /// The impersonator role's URL (`postgres://tenantry_impersonator:...`), for read-only
    /// impersonation sessions in the tenant functions. Holds a password: never logged. Unset:
    /// read-only sessions are refused with 503.
    pub impersonation_url: Option<String>,
    /// Secrets Manager secret holding the impersonator role's credentials (AWS).
    pub impersonation_secret_arn: Option<String>,
}

impl DbConfig {
    /// Settings for a known URL, with the default timeouts.
    pub fn new(url: impl Into<String>, pool_max: usize) -> Self {
        Self {
            url: url.into(),
            pool_max,
            connect_timeout: Duration::from_secs(5),
            secret_arn: None,
            host_override: None,
            tls: DbTls::Disable,
            support_url: None,
            support_secret_arn: None,
            impersonation_url: None,
            impersonation_secret_arn: None,
        }
    }

    /// `APP_DATABASE_URL` (or `APP_DATABASE_SECRET_ARN`, resolved at cold start), `DB_HOST`,
    /// `DB_SSLMODE` and `DB_SSL_ROOT_CERT`, `DB_POOL_MAX`, `DB_CONNECT_TIMEOUT_SECS`, and for the
    /// admin function `SUPPORT_DATABASE_URL` (or `SUPPORT_DATABASE_SECRET_ARN`), for the tenant
    /// functions `IMPERSONATION_DATABASE_URL` (or `IMPERSONATION_DATABASE_SECRET_ARN`).
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            url: match (
                env.var("APP_DATABASE_URL"),
                env.var("APP_DATABASE_SECRET_ARN"),
            ) {
                (Some(url), _) => url,
                (None, Some(_)) => String::new(),
                (None, None) => {
                    return Err(ConfigError::Missing(
                        "APP_DATABASE_URL or APP_DATABASE_SECRET_ARN",
                    ));
                }
            },
            secret_arn: env.var("APP_DATABASE_SECRET_ARN"),
            host_override: env.var("DB_HOST"),
            tls: match env.var("DB_SSLMODE").as_deref() {
                None | Some("disable") => DbTls::Disable,
                Some("require") => DbTls::Require {
                    ca_file: env.var("DB_SSL_ROOT_CERT").map(Into::into),
                },
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        name: "DB_SSLMODE",
                        reason: "use disable or require".into(),
                    });
                }
            },
            support_url: env.var("SUPPORT_DATABASE_URL"),
            support_secret_arn: env.var("SUPPORT_DATABASE_SECRET_ARN"),
            impersonation_url: env.var("IMPERSONATION_DATABASE_URL"),
            impersonation_secret_arn: env.var("IMPERSONATION_DATABASE_SECRET_ARN"),
            pool_max: env.parse("DB_POOL_MAX", 4)?,
            connect_timeout: Duration::from_secs(env.parse("DB_CONNECT_TIMEOUT_SECS", 5)?),
        })
    }
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("url", &"<redacted>")
            .field("secret_arn", &self.secret_arn)
            .field(
                "support_url",
                &self.support_url.as_ref().map(|_| "<redacted>"),
            )
            .field("support_secret_arn", &self.support_secret_arn)
            .field(
                "impersonation_url",
                &self.impersonation_url.as_ref().map(|_| "<redacted>"),
            )
            .field("impersonation_secret_arn", &self.impersonation_secret_arn)
            .field("host_override", &self.host_override)
            .field("tls", &self.tls)
            .field("pool_max", &self.pool_max)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

//! Configuration from the environment, read once per cold start.
//!
//! [`Config`] puts the sections together; each is defined and parsed by the module that owns it,
//! through [`crate::env::Env`]: [`DbConfig`] in `db`, [`AuthConfig`] in `auth`, [`HttpConfig`] in
//! `http`, [`AnalyticsConfig`] in `analytics`, [`RagConfig`] in `rag`, [`BillingConfig`] in
//! `billing` (with the meter's [`MeterConfig`](crate::billing::meter::MeterConfig)),
//! [`TenantsConfig`] in `tenants`. They are
//! re-exported here, with [`ConfigError`] and [`Secret`] from `env`.
//!
//! Secrets (the database URL with its password) come from the environment locally; in AWS the
//! function's environment names them and the values are resolved at cold start
//! ([`Config::resolve`]).

pub use crate::analytics::AnalyticsConfig;
pub use crate::auth::AuthConfig;
pub use crate::billing::{BillingConfig, stripe_meter_var};
pub use crate::db::{DbConfig, DbTls};
pub use crate::env::{ConfigError, Secret};
pub use crate::http::HttpConfig;
pub use crate::rag::RagConfig;
pub use crate::tenants::TenantsConfig;

use crate::env::Env;

/// Everything a function needs, read once per cold start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Database settings.
    pub db: DbConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// HTTP limits.
    pub http: HttpConfig,
    /// Analytics limits.
    pub analytics: AnalyticsConfig,
    /// Retrieval settings.
    pub rag: RagConfig,
    /// Usage metering and billing.
    pub billing: BillingConfig,
    /// The tenant lifecycle (how long a closed tenant's data is kept).
    pub tenants: TenantsConfig,
}

impl Config {
    /// Fills in what comes from AWS: the database URL from Secrets Manager when only its ARN was
    /// configured. Logs which source each setting came from.
    pub async fn resolve(
        mut self,
        sdk: Option<&aws_config::SdkConfig>,
    ) -> Result<Self, ConfigError> {
        match (&self.db.secret_arn, self.db.url.is_empty(), sdk) {
            (Some(arn), true, Some(sdk)) => {
                self.db.url =
                    crate::secrets::database_url(sdk, arn, self.db.host_override.as_deref())
                        .await?;
                tracing::info!(source = "secrets_manager", "database credentials");
            }
            (Some(_), true, None) => {
                return Err(ConfigError::Invalid {
                    name: "APP_DATABASE_SECRET_ARN",
                    reason: "set, but no AWS configuration was loaded".into(),
                });
            }
            _ => tracing::info!(source = "environment", "database credentials"),
        }
        if let (Some(arn), None) = (&self.db.support_secret_arn, &self.db.support_url) {
            let sdk = sdk.ok_or(ConfigError::Invalid {
                name: "SUPPORT_DATABASE_SECRET_ARN",
                reason: "set, but no AWS configuration was loaded".into(),
            })?;
            self.db.support_url = Some(
                crate::secrets::database_url(sdk, arn, self.db.host_override.as_deref()).await?,
            );
            tracing::info!(source = "secrets_manager", "support database credentials");
        }
        if let (Some(arn), None) = (
            &self.db.impersonation_secret_arn,
            &self.db.impersonation_url,
        ) {
            let sdk = sdk.ok_or(ConfigError::Invalid {
                name: "IMPERSONATION_DATABASE_SECRET_ARN",
                reason: "set, but no AWS configuration was loaded".into(),
            })?;
            self.db.impersonation_url = Some(
                crate::secrets::database_url(sdk, arn, self.db.host_override.as_deref()).await?,
            );
            tracing::info!(
                source = "secrets_manager",
                "impersonation database credentials"
            );
        }
        if let Some(arn) = self.billing.secret_arn.clone() {
            let sdk = sdk.ok_or(ConfigError::Invalid {
                name: "BILLING_SECRET_ARN",
                reason: "set, but no AWS configuration was loaded".into(),
            })?;
            let s = crate::secrets::billing_secrets(sdk, &arn).await?;
            if let Some(key) = s.stripe_api_key {
                self.billing.stripe_api_key = Some(Secret::new(key));
            }
            if !s.stripe_webhook_secrets.is_empty() {
                self.billing.stripe_webhook_secrets = s
                    .stripe_webhook_secrets
                    .into_iter()
                    .map(Secret::new)
                    .collect();
            }
            if let Some(secret) = s.auth0_webhook_secret {
                self.billing.auth0_webhook_secret = Some(Secret::new(secret));
            }
            tracing::info!(source = "secrets_manager", "billing secrets");
        }
        Ok(self)
    }

    /// Whether any setting needs AWS (and so an SDK configuration at cold start).
    pub fn needs_aws(&self) -> bool {
        self.db.secret_arn.is_some()
            || self.db.support_secret_arn.is_some()
            || self.db.impersonation_secret_arn.is_some()
            || self.rag.embed_model_id.is_some()
            || self.rag.answer_model_id.is_some()
            || self.rag.embed_queue_url.is_some()
            || self.billing.usage_queue_url.is_some()
            || self.billing.secret_arn.is_some()
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `get`, so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env::new(get);
        // Auth first: AUTH0_ISSUER is the first variable checked (with nothing set, the error).
        let auth = AuthConfig::from_env(&env)?;
        Ok(Self {
            db: DbConfig::from_env(&env)?,
            auth,
            http: HttpConfig::from_env(&env)?,
            analytics: AnalyticsConfig::from_env(&env)?,
            rag: RagConfig::from_env(&env)?,
            billing: BillingConfig::from_env(&env)?,
            tenants: TenantsConfig::from_env(&env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const BASE: &[(&str, &str)] = &[
        ("APP_DATABASE_URL", "postgres://u:hunter2@h/db"),
        ("AUTH0_ISSUER", "https://example.us.auth0.com/"),
        ("AUTH0_AUDIENCE", "https://api.tenantry.dev"),
    ];

    #[test]
    fn defaults_and_derived_jwks_url() {
        let cfg = Config::from_lookup(lookup(BASE)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cfg.auth.jwks_url,
            "https://example.us.auth0.com/.well-known/jwks.json"
        );
        assert_eq!(cfg.db.pool_max, 4);
        assert_eq!(cfg.auth.leeway, Duration::from_secs(10));
        // The password never shows in Debug output (which is what ends up in logs).
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn missing_and_invalid_values_are_named() {
        let err = Config::from_lookup(lookup(&BASE[1..]))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("APP_DATABASE_URL or APP_DATABASE_SECRET_ARN is not set")
        );
        let mut pairs = BASE[1..].to_vec();
        pairs.push((
            "APP_DATABASE_SECRET_ARN",
            "arn:aws:secretsmanager:eu-west-1:1:secret:db",
        ));
        let cfg = Config::from_lookup(lookup(&pairs)).unwrap_or_else(|e| panic!("{e}"));
        assert!(cfg.db.url.is_empty() && cfg.db.secret_arn.is_some());

        let mut pairs = BASE.to_vec();
        pairs.push(("DB_POOL_MAX", "many"));
        let err = Config::from_lookup(lookup(&pairs))
            .err()
            .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("DB_POOL_MAX is invalid: not a number"));

        let mut pairs = BASE.to_vec();
        pairs.push(("DB_SSLMODE", "prefer"));
        let err = Config::from_lookup(lookup(&pairs))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("DB_SSLMODE is invalid: use disable or require")
        );

        let mut pairs = BASE.to_vec();
        pairs[1] = ("AUTH0_ISSUER", "http://evil.example/");
        assert!(Config::from_lookup(lookup(&pairs)).is_err());
    }

    #[test]
    fn the_reconciliation_fan_out_is_bounded() {
        let cfg = Config::from_lookup(lookup(BASE)).unwrap_or_else(|e| panic!("{e}"));
        let m = &cfg.billing.meter;
        assert_eq!((m.reconcile_batch, m.reconcile_concurrency), (25, 2));
        assert_eq!(cfg.billing.reconcile_queue_url, None);
        for (name, bad) in [
            ("BILLING_RECONCILE_BATCH", "0"),
            ("BILLING_RECONCILE_BATCH", "201"),
            ("BILLING_RECONCILE_CONCURRENCY", "0"),
            ("BILLING_RECONCILE_CONCURRENCY", "33"),
            ("BILLING_RECONCILE_CONCURRENCY", "-1"),
        ] {
            let mut pairs = BASE.to_vec();
            pairs.push((name, bad));
            let err = Config::from_lookup(lookup(&pairs))
                .err()
                .map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.starts_with(name)),
                "{name}={bad}: {err:?}"
            );
        }
        let mut pairs = BASE.to_vec();
        pairs.extend([
            ("BILLING_RECONCILE_BATCH", "200"),
            ("BILLING_RECONCILE_CONCURRENCY", "32"),
            (
                "BILLING_RECONCILE_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/1/r",
            ),
        ]);
        let cfg = Config::from_lookup(lookup(&pairs)).unwrap_or_else(|e| panic!("{e}"));
        let m = &cfg.billing.meter;
        assert_eq!((m.reconcile_batch, m.reconcile_concurrency), (200, 32));
        assert!(cfg.billing.reconcile_queue_url.is_some());
    }
}

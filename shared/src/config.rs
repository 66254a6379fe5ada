//! Configuration from the environment, read once per cold start.
//!
//! Secrets (the database URL with its password) come from the environment locally; in AWS the
//! function's environment names them and the values are resolved at cold start.

use std::time::Duration;

/// A configuration value that is missing or malformed. Says which variable, never its value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A variable is set but cannot be used.
    #[error("{name} is invalid: {reason}")]
    Invalid {
        /// The variable's name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

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
        }
    }
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("url", &"<redacted>")
            .field("secret_arn", &self.secret_arn)
            .field("host_override", &self.host_override)
            .field("tls", &self.tls)
            .field("pool_max", &self.pool_max)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// How bearer tokens are verified.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The Auth0 issuer, e.g. `https://example.us.auth0.com/` (with the trailing slash Auth0 uses).
    pub issuer: String,
    /// The API identifier tokens must be issued for.
    pub audience: String,
    /// Where the signing keys are; defaults to `{issuer}.well-known/jwks.json`.
    pub jwks_url: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// The namespaced claim that carries the user's roles.
    pub roles_claim: String,
    /// The least time between two JWKS fetches caused by an unknown `kid`.
    pub jwks_refetch_interval: Duration,
}

/// HTTP limits.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Larger request bodies are refused with 413 before any parsing.
    pub max_body_bytes: usize,
}

/// Limits of the analytics API.
#[derive(Clone, Debug)]
pub struct AnalyticsConfig {
    /// Most records in one ingest request.
    pub max_ingest_records: usize,
    /// Each query's `statement_timeout`.
    pub query_timeout: Duration,
    /// Hard cap on a query's `limit`.
    pub query_max_limit: u32,
}

/// Retrieval settings.
#[derive(Clone, Debug)]
pub struct RagConfig {
    /// Embedding dimension: 256, 512 or 1024 (what Titan Text Embeddings V2 offers).
    pub embed_dims: usize,
    /// Bedrock embedding model (e.g. `amazon.titan-embed-text-v2:0`); unset: the local embedder.
    pub embed_model_id: Option<String>,
    /// Bedrock calls in flight per embedding batch.
    pub embed_concurrency: usize,
    /// Bedrock Converse model for answers; unset: the local extractive answerer.
    pub answer_model_id: Option<String>,
    /// Most tokens an answer may have.
    pub answer_max_tokens: i32,
    /// SQS queue for embedding work; unset: embed in-process.
    pub embed_queue_url: Option<String>,
    /// Tenants with at most this many chunks get an exact vector scan; larger ones the HNSW index.
    pub exact_max_chunks: i64,
    /// `hnsw.ef_search` for the approximate path (candidate list size; higher: better recall).
    pub hnsw_ef_search: u32,
}

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
}

/// A secret value: usable, never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Usage metering and billing settings.
#[derive(Clone, Debug)]
pub struct BillingConfig {
    /// SQS queue for usage events (consumed by `usage-meter`); unset: in-process.
    pub usage_queue_url: Option<String>,
    /// Windows, leases, retries.
    pub meter: crate::billing::meter::MeterConfig,
    /// Stripe secret key; unset: the local billing adapter.
    pub stripe_api_key: Option<Secret>,
    /// Stripe API base URL (tests point it at a local server).
    pub stripe_api_base: String,
    /// Per-call timeout for Stripe requests.
    pub stripe_timeout: Duration,
    /// Stripe meter id per meter (for reading event summaries back).
    pub stripe_meter_ids: Vec<(crate::usage::Meter, String)>,
    /// Stripe webhook signing secrets (more than one while a secret is being rolled).
    pub stripe_webhook_secrets: Vec<Secret>,
    /// Seconds a Stripe webhook signature stays valid.
    pub stripe_webhook_tolerance_secs: i64,
    /// Shared secret Auth0's log stream / action sends in `Authorization: Bearer ...`.
    pub auth0_webhook_secret: Option<Secret>,
    /// Secrets Manager secret with `stripe_api_key`, `stripe_webhook_secrets`,
    /// `auth0_webhook_secret` (JSON), read at cold start.
    pub secret_arn: Option<String>,
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
        let var = |name: &'static str| get(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| var(name).ok_or(ConfigError::Missing(name));

        let issuer = required("AUTH0_ISSUER")?;
        if !(issuer.starts_with("https://") || issuer.starts_with("http://127.0.0.1:")) {
            return Err(ConfigError::Invalid {
                name: "AUTH0_ISSUER",
                reason: "must be an https URL (http only on 127.0.0.1, for local use)".into(),
            });
        }
        let jwks_url = var("AUTH0_JWKS_URL")
            .unwrap_or_else(|| format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/')));

        Ok(Self {
            db: DbConfig {
                url: match (var("APP_DATABASE_URL"), var("APP_DATABASE_SECRET_ARN")) {
                    (Some(url), _) => url,
                    (None, Some(_)) => String::new(),
                    (None, None) => {
                        return Err(ConfigError::Missing(
                            "APP_DATABASE_URL or APP_DATABASE_SECRET_ARN",
                        ));
                    }
                },
                secret_arn: var("APP_DATABASE_SECRET_ARN"),
                host_override: var("DB_HOST"),
                tls: match var("DB_SSLMODE").as_deref() {
                    None | Some("disable") => DbTls::Disable,
                    Some("require") => DbTls::Require {
                        ca_file: var("DB_SSL_ROOT_CERT").map(Into::into),
                    },
                    Some(_) => {
                        return Err(ConfigError::Invalid {
                            name: "DB_SSLMODE",
                            reason: "use disable or require".into(),
                        });
                    }
                },
                pool_max: parse(&var, "DB_POOL_MAX", 4)?,
                connect_timeout: Duration::from_secs(parse(&var, "DB_CONNECT_TIMEOUT_SECS", 5)?),
            },
            auth: AuthConfig {
                issuer,
                audience: required("AUTH0_AUDIENCE")?,
                jwks_url,
                leeway: Duration::from_secs(parse(&var, "AUTH_LEEWAY_SECS", 10)?),
                roles_claim: var("AUTH_ROLES_CLAIM")
                    .unwrap_or_else(|| "https://tenantry.dev/roles".into()),
                jwks_refetch_interval: Duration::from_secs(parse(
                    &var,
                    "JWKS_REFETCH_INTERVAL_SECS",
                    60,
                )?),
            },
            http: HttpConfig {
                max_body_bytes: parse(&var, "MAX_BODY_BYTES", 4 * 1024 * 1024)?,
            },
            analytics: AnalyticsConfig {
                max_ingest_records: parse(&var, "MAX_INGEST_RECORDS", 1000)?,
                query_timeout: Duration::from_millis(parse(&var, "QUERY_TIMEOUT_MS", 5000)?),
                query_max_limit: parse(&var, "QUERY_MAX_LIMIT", 10_000)?,
            },
            rag: RagConfig {
                embed_dims: match parse(&var, "EMBED_DIMS", 256)? {
                    d @ (256 | 512 | 1024) => d,
                    _ => {
                        return Err(ConfigError::Invalid {
                            name: "EMBED_DIMS",
                            reason: "use 256, 512 or 1024".into(),
                        });
                    }
                },
                embed_model_id: var("BEDROCK_EMBED_MODEL_ID"),
                embed_concurrency: parse(&var, "BEDROCK_EMBED_CONCURRENCY", 4)?,
                answer_model_id: var("BEDROCK_ANSWER_MODEL_ID"),
                answer_max_tokens: parse(&var, "BEDROCK_ANSWER_MAX_TOKENS", 800)?,
                embed_queue_url: var("EMBED_QUEUE_URL"),
                exact_max_chunks: parse(&var, "RAG_EXACT_MAX_CHUNKS", 5_000)?,
                hnsw_ef_search: match parse(&var, "RAG_HNSW_EF_SEARCH", 100)? {
                    n @ 1..=1000 => n,
                    _ => {
                        return Err(ConfigError::Invalid {
                            name: "RAG_HNSW_EF_SEARCH",
                            reason: "use 1 to 1000 (pgvector's range)".into(),
                        });
                    }
                },
            },
            billing: BillingConfig {
                usage_queue_url: var("USAGE_QUEUE_URL"),
                meter: {
                    let d = crate::billing::meter::MeterConfig::default();
                    let window_secs: i64 = parse(&var, "USAGE_WINDOW_SECS", d.window_secs)?;
                    if window_secs < 60 || 86_400 % window_secs != 0 {
                        return Err(ConfigError::Invalid {
                            name: "USAGE_WINDOW_SECS",
                            reason:
                                "at least 60 and a divisor of 86400 (windows must not cross days)"
                                    .into(),
                        });
                    }
                    crate::billing::meter::MeterConfig {
                        window_secs,
                        grace_secs: parse(&var, "USAGE_GRACE_SECS", d.grace_secs)?,
                        settle_secs: parse(&var, "BILLING_SETTLE_SECS", d.settle_secs)?,
                        lease_secs: parse(&var, "USAGE_LEASE_SECS", d.lease_secs)?,
                        attempts: parse(&var, "STRIPE_MAX_ATTEMPTS", d.attempts)?,
                        backoff_base: Duration::from_millis(parse(
                            &var,
                            "STRIPE_BACKOFF_BASE_MS",
                            d.backoff_base.as_millis() as u64,
                        )?),
                        ..d
                    }
                },
                stripe_api_key: var("STRIPE_API_KEY").map(Secret::new),
                stripe_api_base: var("STRIPE_API_BASE")
                    .unwrap_or_else(|| "https://api.stripe.com/".into()),
                stripe_timeout: Duration::from_millis(parse(&var, "STRIPE_TIMEOUT_MS", 10_000)?),
                stripe_meter_ids: crate::usage::METERS
                    .iter()
                    .filter_map(|d| var(stripe_meter_var(d.meter)).map(|id| (d.meter, id)))
                    .collect(),
                stripe_webhook_secrets: var("STRIPE_WEBHOOK_SECRETS")
                    .map(|v| {
                        v.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(Secret::new)
                            .collect()
                    })
                    .unwrap_or_default(),
                stripe_webhook_tolerance_secs: parse(&var, "STRIPE_WEBHOOK_TOLERANCE_SECS", 300)?,
                auth0_webhook_secret: var("AUTH0_WEBHOOK_SECRET").map(Secret::new),
                secret_arn: var("BILLING_SECRET_ARN"),
            },
        })
    }
}

/// The environment variable holding a meter's Stripe meter id.
pub fn stripe_meter_var(meter: crate::usage::Meter) -> &'static str {
    use crate::usage::Meter;
    match meter {
        Meter::Queries => "STRIPE_METER_ID_QUERIES",
        Meter::Questions => "STRIPE_METER_ID_QUESTIONS",
        Meter::IngestedRecords => "STRIPE_METER_ID_INGESTED_RECORDS",
        Meter::Storage => "STRIPE_METER_ID_STORAGE",
        Meter::Seats => "STRIPE_METER_ID_SEATS",
    }
}

fn parse<T: std::str::FromStr>(
    var: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
            name,
            reason: "not a number".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
}

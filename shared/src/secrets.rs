//! The database credentials from AWS Secrets Manager, read once per cold start.
//!
//! The secret is either a `postgres://` URL or the JSON form RDS and Secrets Manager rotation use
//! (`{"username", "password", "host", "port", "dbname"}`). Functions connect through RDS Proxy,
//! so `DB_HOST` (the proxy endpoint) overrides the secret's host.

use aws_config::SdkConfig;
use serde::Deserialize;

use crate::env::ConfigError;

#[derive(Deserialize)]
struct RdsSecret {
    username: String,
    password: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    dbname: Option<String>,
}

/// Why the secret could not be turned into a database URL. Never includes the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Secrets Manager refused or was unreachable.
    #[error("reading secret {arn}: {message}")]
    Fetch {
        /// Which secret.
        arn: String,
        /// What the SDK said.
        message: String,
    },
    /// The secret's value is neither a URL nor RDS JSON.
    #[error("secret {0} is neither a postgres:// URL nor RDS JSON with username and password")]
    Format(String),
}

impl From<SecretError> for ConfigError {
    fn from(e: SecretError) -> Self {
        ConfigError::Invalid {
            name: "APP_DATABASE_SECRET_ARN",
            reason: e.to_string(),
        }
    }
}

/// The billing secret's JSON: `{"stripe_api_key"?, "stripe_webhook_secrets"?: [..],
/// "auth0_webhook_secret"?}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BillingSecrets {
    /// Stripe secret key.
    #[serde(default)]
    pub stripe_api_key: Option<String>,
    /// Webhook signing secrets.
    #[serde(default)]
    pub stripe_webhook_secrets: Vec<String>,
    /// Auth0 webhook shared secret.
    #[serde(default)]
    pub auth0_webhook_secret: Option<String>,
}

impl std::fmt::Debug for BillingSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BillingSecrets(..)")
    }
}

/// Reads the billing secret (JSON).
pub async fn billing_secrets(sdk: &SdkConfig, arn: &str) -> Result<BillingSecrets, ConfigError> {
    let value = secret_string(sdk, arn)
        .await
        .map_err(|e| ConfigError::Invalid {
            name: "BILLING_SECRET_ARN",
            reason: e.to_string(),
        })?;
    serde_json::from_str(&value).map_err(|_| ConfigError::Invalid {
        name: "BILLING_SECRET_ARN",
        reason: format!(
            "secret {arn} is not JSON with stripe_api_key / stripe_webhook_secrets / auth0_webhook_secret"
        ),
    })
}

async fn secret_string(sdk: &SdkConfig, arn: &str) -> Result<String, SecretError> {
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| SecretError::Fetch {
            arn: arn.to_owned(),
            message: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
        })?;
    out.secret_string()
        .map(str::to_owned)
        .ok_or_else(|| SecretError::Format(arn.to_owned()))
}

/// Reads the secret and returns the app role's database URL.
pub async fn database_url(
    sdk: &SdkConfig,
    arn: &str,
    host_override: Option<&str>,
) -> Result<String, SecretError> {
    let value = secret_string(sdk, arn).await?;
    url_from_secret(&value, host_override).ok_or_else(|| SecretError::Format(arn.to_owned()))
}

fn url_from_secret(value: &str, host_override: Option<&str>) -> Option<String> {
    let value = value.trim();
    if value.starts_with("postgres://") || value.starts_with("postgresql://") {
        return match host_override {
            None => Some(value.to_owned()),
            Some(host) => {
                // Keep user, password and database; point at the proxy.
                let cfg: tokio_postgres::Config = value.parse().ok()?;
                let user = cfg.get_user()?;
                let password = String::from_utf8(cfg.get_password()?.to_vec()).ok()?;
                let port = cfg.get_ports().first().copied().unwrap_or(5432);
                Some(build(
                    user,
                    &password,
                    host,
                    port,
                    cfg.get_dbname().unwrap_or("postgres"),
                ))
            }
        };
    }
    let s: RdsSecret = serde_json::from_str(value).ok()?;
    let host = host_override.map(str::to_owned).or(s.host)?;
    Some(build(
        &s.username,
        &s.password,
        &host,
        s.port.unwrap_or(5432),
        s.dbname.as_deref().unwrap_or("postgres"),
    ))
}

fn build(user: &str, password: &str, host: &str, port: u16, db: &str) -> String {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    format!(
        "postgres://{}:{}@{host}:{port}/{}",
        enc(user),
        enc(password),
        enc(db)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rds_json_and_urls_become_urls_pointing_at_the_proxy() {
        let json = r#"{"username": "tenantry_app", "password": "p@ss:/word", "host": "db.internal", "port": 5432, "dbname": "tenantry", "engine": "postgres"}"#;
        assert_eq!(
            url_from_secret(json, Some("proxy.internal")).as_deref(),
            Some("postgres://tenantry%5Fapp:p%40ss%3A%2Fword@proxy.internal:5432/tenantry")
        );
        let parsed: tokio_postgres::Config = url_from_secret(json, None)
            .unwrap_or_default()
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.get_password(), Some(&b"p@ss:/word"[..]));
        assert_eq!(
            url_from_secret("postgres://u:pw@db:6432/x", Some("proxy")).as_deref(),
            Some("postgres://u:pw@proxy:6432/x")
        );
        assert_eq!(url_from_secret("hunter2", None), None);
        assert_eq!(url_from_secret(r#"{"username": "u"}"#, None), None);
    }
}

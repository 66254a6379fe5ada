//! The auth section of the configuration: which issuer, audience and keys tokens are verified
//! against.

use std::time::Duration;

use crate::env::{ConfigError, Env};

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
    /// The Auth0 organization of support staff (`SUPPORT_ORG_ID`); unset: no staff sign-in.
    pub support_org_id: Option<String>,
    /// How long a process reuses an organization → tenant or API-key lookup
    /// (`AUTH_LOOKUP_CACHE_SECS`, 5 s; 0: never; at most 60). A suspension, closure or key
    /// revocation takes effect within it.
    pub lookup_cache: Duration,
}

impl AuthConfig {
    /// `AUTH0_ISSUER` (https, or http on 127.0.0.1 for local use), `AUTH0_AUDIENCE`,
    /// `AUTH0_JWKS_URL` (derived from the issuer when unset), `AUTH_LEEWAY_SECS`,
    /// `AUTH_ROLES_CLAIM`, `JWKS_REFETCH_INTERVAL_SECS`, `SUPPORT_ORG_ID`,
    /// `AUTH_LOOKUP_CACHE_SECS`.
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let issuer = env.required("AUTH0_ISSUER")?;
        if !(issuer.starts_with("https://") || issuer.starts_with("http://127.0.0.1:")) {
            return Err(ConfigError::Invalid {
                name: "AUTH0_ISSUER",
                reason: "must be an https URL (http only on 127.0.0.1, for local use)".into(),
            });
        }
        let jwks_url = env
            .var("AUTH0_JWKS_URL")
            .unwrap_or_else(|| format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/')));
        Ok(Self {
            issuer,
            audience: env.required("AUTH0_AUDIENCE")?,
            jwks_url,
            leeway: Duration::from_secs(env.parse("AUTH_LEEWAY_SECS", 10)?),
            roles_claim: env
                .var("AUTH_ROLES_CLAIM")
                .unwrap_or_else(|| "https://tenantry.dev/roles".into()),
            jwks_refetch_interval: Duration::from_secs(
                env.parse("JWKS_REFETCH_INTERVAL_SECS", 60)?,
            ),
            support_org_id: env.var("SUPPORT_ORG_ID"),
            lookup_cache: lookup_cache(env.parse("AUTH_LOOKUP_CACHE_SECS", 5)?)?,
        })
    }
}

/// A suspension may wait out the lookup cache, so it stays short: at most a minute.
fn lookup_cache(secs: u64) -> Result<Duration, ConfigError> {
    if secs > 60 {
        return Err(ConfigError::Invalid {
            name: "AUTH_LOOKUP_CACHE_SECS",
            reason: "whole seconds, at most 60".into(),
        });
    }
    Ok(Duration::from_secs(secs))
}

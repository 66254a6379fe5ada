//! Who is calling: Auth0 access tokens (RS256 only) and tenant API keys, resolved to a [`Principal`].

pub mod api_keys;
pub mod dev;
mod jwt;
pub mod permissions;

use http::HeaderMap;
use serde::Serialize;
use uuid::Uuid;

pub use api_keys::{ApiKeyInfo, ApiKeys, NewApiKey};
pub use jwt::{JwtVerifier, VerifiedClaims};
pub use permissions::{Permission, Permissions, Role, Scope};

use crate::config::AuthConfig;
use crate::db::{Db, DbError, TenantContext, TenantRef};
use crate::ids::TenantId;

/// Who is acting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Subject {
    /// A person, signed in through Auth0.
    User {
        /// The Auth0 `sub`.
        id: String,
    },
    /// A machine, with a tenant API key.
    ApiKey {
        /// The key's id (never the key).
        key_id: Uuid,
        /// What the key was made for.
        scopes: Vec<Scope>,
    },
}

/// An authenticated caller: the tenant it acts in, who it is, and its roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The tenant every query of this request is confined to.
    pub tenant_id: TenantId,
    /// Who is acting.
    pub subject: Subject,
    /// Roles from the token's roles claim; API keys carry none.
    pub roles: Vec<String>,
    /// What the roles (a person) or the scopes (an API key) allow.
    pub permissions: Permissions,
}

impl Principal {
    /// The actor id recorded with every statement: `user:<sub>` or `api_key:<key id>`.
    pub fn actor_id(&self) -> String {
        match &self.subject {
            Subject::User { id } => format!("user:{id}"),
            Subject::ApiKey { key_id, .. } => format!("api_key:{key_id}"),
        }
    }

    /// Whether the caller may do what `p` covers.
    pub fn can(&self, p: Permission) -> bool {
        self.permissions.contains(p)
    }

    /// The context a [`crate::db::TenantTx`] for this principal runs in.
    pub fn tenant_context(&self) -> TenantContext {
        TenantContext {
            tenant_id: self.tenant_id,
            actor_id: self.actor_id(),
        }
    }
}

/// Why a caller was not authenticated. Each maps to one status and one stable code.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials at all.
    #[error("no credentials")]
    Missing,
    /// Both a bearer token and an API key: we refuse to guess which one counts.
    #[error("both a bearer token and an API key were sent")]
    Ambiguous,
    /// The bearer token failed verification. The reason is for logs, not for the caller.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// The token verified but carries no organization.
    #[error("token has no org_id")]
    NoOrganization,
    /// The token's organization is not a tenant of ours.
    #[error("unknown organization")]
    UnknownOrganization,
    /// The API key is malformed, unknown, wrong or revoked (deliberately one answer).
    #[error("invalid API key")]
    InvalidApiKey,
    /// The tenant exists but is suspended or closed.
    #[error("tenant is not active")]
    TenantInactive,
    /// The keys or the tenant mapping could not be read.
    #[error("authentication unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<DbError> for AuthError {
    fn from(e: DbError) -> Self {
        AuthError::Unavailable(Box::new(e))
    }
}

/// Turns request headers into a [`Principal`]. Build once per cold start.
#[derive(Debug)]
pub struct Authenticator {
    jwt: JwtVerifier,
    db: Db,
    roles_claim: String,
    /// When this process last recorded each key's use, so `last_used_at` costs a write at most
    /// once a minute per key rather than on every request.
    key_uses: std::sync::Mutex<std::collections::HashMap<Uuid, std::time::Instant>>,
}

/// How stale `api_keys.last_used_at` may get.
const KEY_USE_RESOLUTION: std::time::Duration = std::time::Duration::from_secs(60);

impl Authenticator {
    /// A verifier for `cfg`, mapping organizations and keys through `db`.
    pub fn new(cfg: &AuthConfig, db: Db) -> Self {
        Self {
            jwt: JwtVerifier::new(cfg),
            db,
            roles_claim: cfg.roles_claim.clone(),
            key_uses: Default::default(),
        }
    }

    /// The JWT verifier (for tests and tools that check tokens without a request).
    pub fn jwt(&self) -> &JwtVerifier {
        &self.jwt
    }

    /// Authenticates a request: `Authorization: Bearer <Auth0 access token>` or
    /// `X-Api-Key: <tenant API key>`, never both.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| {
                bearer_token(v.as_bytes()).ok_or(AuthError::InvalidToken("not a bearer token"))
            })
            .transpose()?;
        let api_key = headers
            .get("x-api-key")
            .map(|v| v.to_str().map_err(|_| AuthError::InvalidApiKey))
            .transpose()?;
        match (bearer, api_key) {
            (Some(_), Some(_)) => Err(AuthError::Ambiguous),
            (None, None) => Err(AuthError::Missing),
            (Some(token), None) => self.by_token(token).await,
            (None, Some(key)) => self.by_api_key(key).await,
        }
    }

    async fn by_token(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self.jwt.verify(token).await?;
        let org = claims.org_id.as_deref().ok_or(AuthError::NoOrganization)?;
        let tenant = self
            .db
            .tenant_for_auth0_org(org)
            .await?
            .ok_or(AuthError::UnknownOrganization)?;
        ensure_active(&tenant)?;
        let roles = claims.roles(&self.roles_claim);
        Ok(Principal {
            tenant_id: tenant.tenant_id,
            subject: Subject::User {
                id: claims.sub.clone(),
            },
            permissions: Permissions::for_roles(&roles),
            roles,
        })
    }

    async fn by_api_key(&self, key: &str) -> Result<Principal, AuthError> {
        let (key_id, scopes, tenant) = ApiKeys::verify(&self.db, key).await?;
        ensure_active(&tenant)?;
        let principal = Principal {
            tenant_id: tenant.tenant_id,
            permissions: Permissions::for_scopes(&scopes),
            subject: Subject::ApiKey { key_id, scopes },
            roles: Vec::new(),
        };
        self.record_key_use(&principal, key_id).await;
        Ok(principal)
    }

    /// Updates the key's `last_used_at` (in its tenant's transaction), at most once a minute per
    /// key and process. Best effort: a failure here is logged, never a refused request.
    async fn record_key_use(&self, principal: &Principal, key_id: Uuid) {
        let now = std::time::Instant::now();
        {
            let Ok(mut uses) = self.key_uses.lock() else {
                return;
            };
            if uses
                .get(&key_id)
                .is_some_and(|t| now.duration_since(*t) < KEY_USE_RESOLUTION)
            {
                return;
            }
            uses.insert(key_id, now);
        }
        if let Err(e) = ApiKeys::touch(&self.db, &principal.tenant_context(), key_id).await {
            tracing::warn!(error = %e, key_id = %key_id, "could not record API key use");
        }
    }
}

fn ensure_active(tenant: &TenantRef) -> Result<(), AuthError> {
    if tenant.status == "active" {
        Ok(())
    } else {
        Err(AuthError::TenantInactive)
    }
}

fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_required() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"abc"), None);
        assert_eq!(bearer_token(b"Bearer \xff"), None);
    }
}

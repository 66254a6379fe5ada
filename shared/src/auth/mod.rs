//! Who is calling: Auth0 access tokens (RS256 only) and tenant API keys, resolved to a [`Principal`].
//!
//! How tokens are verified ([`AuthConfig`]) is read from the environment here.

pub mod api_keys;
pub mod authorizer;
mod config;
pub mod dev;
mod jwt;
pub mod permissions;
pub mod staff;

use http::HeaderMap;
use serde::Serialize;
use uuid::Uuid;

pub use api_keys::{ApiKeyInfo, ApiKeys, NewApiKey};
pub use config::AuthConfig;
pub use jwt::{JwtVerifier, VerifiedClaims};
pub use permissions::{Permission, Permissions, Role, Scope};
pub use staff::{Staff, StaffPermission};

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
    /// A support staff member acting in the tenant through an impersonation session.
    Support {
        /// The staff member's Auth0 `sub`.
        id: String,
        /// The session they act under.
        session: Impersonation,
    },
}

/// The impersonation session a staff member's request acts under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Impersonation {
    /// The session's id (what the `Tenantry-Impersonation` header carries).
    pub session_id: Uuid,
    /// What the session allows.
    pub mode: ImpersonationMode,
    /// Whether the session may export the tenant's data (approved at its start).
    pub allow_export: bool,
    /// When it ends on its own.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// What an impersonation session may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImpersonationMode {
    /// Read the tenant's data; every transaction runs as a role that cannot write.
    ReadOnly,
    /// Also write the tenant's data (approved by a second `support_admin`).
    ReadWrite,
}

impl ImpersonationMode {
    /// The stored and shown name.
    pub fn name(self) -> &'static str {
        match self {
            ImpersonationMode::ReadOnly => "read_only",
            ImpersonationMode::ReadWrite => "read_write",
        }
    }

    /// The mode of a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "read_only" => Some(ImpersonationMode::ReadOnly),
            "read_write" => Some(ImpersonationMode::ReadWrite),
            _ => None,
        }
    }
}

/// The request header naming the impersonation session a staff token acts under; the response
/// carries it back (`<session id>; mode=<mode>; expires_at=<RFC 3339>`) so a console can show a
/// banner.
pub const IMPERSONATION_HEADER: &str = "tenantry-impersonation";

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
    /// The tenant is closed: its data waits for deletion, and the one thing left to do is take
    /// it (`permissions` then hold at most `export_data`; every other route is 403
    /// `tenant_closed`).
    #[serde(skip)]
    pub closed: bool,
}

impl Principal {
    /// The actor id recorded with every statement: `user:<sub>` or `api_key:<key id>`.
    pub fn actor_id(&self) -> String {
        match &self.subject {
            Subject::User { id } => format!("user:{id}"),
            Subject::ApiKey { key_id, .. } => format!("api_key:{key_id}"),
            Subject::Support { id, .. } => format!("staff:{id}"),
        }
    }

    /// The impersonation session this request acts under, if any.
    pub fn impersonation(&self) -> Option<&Impersonation> {
        match &self.subject {
            Subject::Support { session, .. } => Some(session),
            _ => None,
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
    /// The tenant is suspended: nothing it holds is served until support resumes it.
    #[error("tenant is suspended")]
    TenantSuspended,
    /// The tenant is closed.
    #[error("tenant is closed")]
    TenantClosed,
    /// A staff token on a tenant route: staff act in a tenant only through an impersonation
    /// session, never as one of its people.
    #[error("staff token on a tenant route")]
    StaffToken,
    /// Not a staff member (another organization's token, no staff role, an API key) on an admin
    /// route, or a tenant's token naming an impersonation session.
    #[error("not staff")]
    NotStaff,
    /// The impersonation session does not exist, or is another staff member's (one answer).
    #[error("unknown impersonation session")]
    ImpersonationInvalid,
    /// The impersonation session was ended.
    #[error("impersonation session ended")]
    ImpersonationEnded,
    /// The impersonation session ran out of time.
    #[error("impersonation session expired")]
    ImpersonationExpired,
    /// The impersonation session waits for an approval (a second support_admin, or the tenant).
    #[error("impersonation session awaits approval")]
    ImpersonationAwaitingApproval,
    /// The tenant's owner has turned support access off.
    #[error("support access is off")]
    SupportAccessOff,
    /// A read-write session in a tenant that now allows read-only support access.
    #[error("support access is read-only")]
    SupportAccessReadOnly,
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
    support_org_id: Option<String>,
    /// When this process last recorded each key's use, so `last_used_at` costs a write at most
    /// once a minute per key rather than on every request.
    key_uses: std::sync::Mutex<std::collections::HashMap<Uuid, std::time::Instant>>,
    /// Organization → tenant (and its status), for `AUTH_LOOKUP_CACHE_SECS`.
    orgs: crate::cache::TtlCache<String, TenantRef>,
    /// API-key prefix → the stored key (hash, revocation, tenant status), as long.
    keys: crate::cache::TtlCache<String, crate::db::StoredApiKey>,
}

/// The most organizations, and the most keys, a process remembers (past it, it starts over).
const LOOKUP_CACHE_CAPACITY: usize = 10_000;

/// How stale `api_keys.last_used_at` may get.
const KEY_USE_RESOLUTION: std::time::Duration = std::time::Duration::from_secs(60);

impl Authenticator {
    /// A verifier for `cfg`, mapping organizations and keys through `db`.
    pub fn new(cfg: &AuthConfig, db: Db) -> Self {
        Self {
            jwt: JwtVerifier::new(cfg),
            db,
            roles_claim: cfg.roles_claim.clone(),
            support_org_id: cfg.support_org_id.clone(),
            key_uses: Default::default(),
            orgs: crate::cache::TtlCache::new(cfg.lookup_cache, LOOKUP_CACHE_CAPACITY),
            keys: crate::cache::TtlCache::new(cfg.lookup_cache, LOOKUP_CACHE_CAPACITY),
        }
    }

    /// The JWT verifier (for tests and tools that check tokens without a request).
    pub fn jwt(&self) -> &JwtVerifier {
        &self.jwt
    }

    /// Authenticates a request: `Authorization: Bearer <Auth0 access token>` or
    /// `X-Api-Key: <tenant API key>`, never both.
    ///
    /// Exactly one credential: two `Authorization` headers, two `X-Api-Key` headers, one of each,
    /// or a value holding a comma (API Gateway joins repeated headers with commas; no token or
    /// key contains one) is [`AuthError::Ambiguous`]: we never pick one of several.
    ///
    /// A request naming an impersonation session (`Tenantry-Impersonation`) must carry the staff
    /// token of the staff member who started it, and acts in that session's tenant.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        if let Some(session) = single(headers, IMPERSONATION_HEADER)? {
            return self.by_impersonation(headers, session).await;
        }
        let authorization = single(headers, http::header::AUTHORIZATION.as_str())?;
        let api_key = single(headers, "x-api-key")?;
        if authorization.is_some() && api_key.is_some() {
            return Err(AuthError::Ambiguous);
        }
        let bearer = authorization
            .map(|v| {
                bearer_token(v.as_bytes()).ok_or(AuthError::InvalidToken("not a bearer token"))
            })
            .transpose()?;
        let api_key = api_key
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
        // Signed, but still data: an id with a control character or of absurd length is refused
        // here, before it reaches a log line or Postgres (which rejects NUL in text).
        if !plausible_id(&claims.sub) {
            return Err(AuthError::InvalidToken("implausible sub"));
        }
        let org = claims.org_id.as_deref().ok_or(AuthError::NoOrganization)?;
        if !plausible_id(org) {
            return Err(AuthError::InvalidToken("implausible org_id"));
        }
        if self.support_org_id.as_deref() == Some(org) {
            return Err(AuthError::StaffToken);
        }
        let tenant = self.tenant_of(org).await?;
        let roles = claims.roles(&self.roles_claim);
        let (permissions, closed) = admitted(&tenant, Permissions::for_roles(&roles))?;
        Ok(Principal {
            tenant_id: tenant.tenant_id,
            subject: Subject::User {
                id: claims.sub.clone(),
            },
            permissions,
            roles,
            closed,
        })
    }

    /// The tenant an organization maps to, and its status: from the database at most once per
    /// `AUTH_LOOKUP_CACHE_SECS` per organization, so a suspension or closure takes effect within
    /// that bound. An unknown organization is not remembered (its tenant may be provisioned next).
    async fn tenant_of(&self, org: &str) -> Result<TenantRef, AuthError> {
        if let Some(t) = self.orgs.get(org) {
            return Ok(t);
        }
        let read_at = self.orgs.generation();
        let tenant = self
            .db
            .tenant_for_auth0_org(org)
            .await?
            .ok_or(AuthError::UnknownOrganization)?;
        self.orgs
            .insert_read_at(read_at, org.to_owned(), tenant.clone());
        Ok(tenant)
    }

    /// Forgets what this process remembers of `tenant` (its organizations and keys), after this
    /// process changed its status or its keys: the change applies here at once, elsewhere
    /// within `AUTH_LOOKUP_CACHE_SECS`.
    pub fn forget_tenant(&self, tenant: TenantId) {
        self.orgs.forget(|t| t.tenant_id == tenant);
        self.keys.forget(|k| k.tenant.tenant_id == tenant);
    }

    /// A staff member acting in a tenant: their staff token, and a session of theirs that is
    /// usable now, in a tenant that lets support in.
    async fn by_impersonation(
        &self,
        headers: &HeaderMap,
        session: &http::HeaderValue,
    ) -> Result<Principal, AuthError> {
        let staff = self.authenticate_staff(headers).await?;
        let session_id = session
            .to_str()
            .ok()
            .and_then(|s| Uuid::parse_str(s.trim()).ok())
            .ok_or(AuthError::ImpersonationInvalid)?;
        let found = self
            .db
            .impersonation_session(session_id)
            .await?
            .filter(|s| s.staff_id == staff.id)
            .ok_or(AuthError::ImpersonationInvalid)?;
        if found.ended {
            return Err(AuthError::ImpersonationEnded);
        }
        if found.expires_at <= chrono::Utc::now() {
            return Err(AuthError::ImpersonationExpired);
        }
        if found.tenant_status == "closed" {
            return Err(AuthError::TenantClosed);
        }
        // The tenant's setting now, not at the session's start.
        if found.support_access == "off" {
            return Err(AuthError::SupportAccessOff);
        }
        let mode = ImpersonationMode::parse(&found.mode).ok_or(AuthError::ImpersonationInvalid)?;
        if mode == ImpersonationMode::ReadWrite && found.support_access != "ask" {
            return Err(AuthError::SupportAccessReadOnly);
        }
        if found.awaiting_approval {
            return Err(AuthError::ImpersonationAwaitingApproval);
        }
        Ok(Principal {
            tenant_id: found.tenant_id,
            permissions: Permissions::for_impersonation(mode, found.allow_export),
            subject: Subject::Support {
                id: staff.id,
                session: Impersonation {
                    session_id,
                    mode,
                    allow_export: found.allow_export,
                    expires_at: found.expires_at,
                },
            },
            roles: Vec::new(),
            closed: false,
        })
    }

    /// Authenticates a staff member for an admin route: exactly one bearer token (no API key:
    /// keys belong to tenants), of the staff organization, with a staff role. Whether they hold
    /// the route's permission is the caller's check.
    pub async fn authenticate_staff(&self, headers: &HeaderMap) -> Result<Staff, AuthError> {
        let authorization = single(headers, http::header::AUTHORIZATION.as_str())?;
        if single(headers, "x-api-key")?.is_some() {
            return Err(AuthError::NotStaff);
        }
        let token = authorization
            .map(|v| {
                bearer_token(v.as_bytes()).ok_or(AuthError::InvalidToken("not a bearer token"))
            })
            .transpose()?
            .ok_or(AuthError::Missing)?;
        let claims = self.jwt.verify(token).await?;
        if !plausible_id(&claims.sub) {
            return Err(AuthError::InvalidToken("implausible sub"));
        }
        let org = claims.org_id.as_deref().ok_or(AuthError::NotStaff)?;
        if !plausible_id(org) {
            return Err(AuthError::InvalidToken("implausible org_id"));
        }
        if self.support_org_id.as_deref() != Some(org) {
            return Err(AuthError::NotStaff);
        }
        let staff = Staff {
            id: claims.sub.clone(),
            roles: claims.roles(&self.roles_claim),
        };
        if !staff.is_staff() {
            return Err(AuthError::NotStaff);
        }
        Ok(staff)
    }

    async fn by_api_key(&self, key: &str) -> Result<Principal, AuthError> {
        let (key_id, scopes, tenant) = ApiKeys::verify(&self.db, &self.keys, key).await?;
        let (permissions, closed) = admitted(&tenant, Permissions::for_scopes(&scopes))?;
        let principal = Principal {
            tenant_id: tenant.tenant_id,
            permissions,
            subject: Subject::ApiKey { key_id, scopes },
            roles: Vec::new(),
            closed,
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

/// What a caller holding `permissions` may do in `tenant`, given its status, and whether it is
/// closed: everything when active; nothing when suspended; when closed, only the export (and a
/// caller who may not export is refused outright).
fn admitted(
    tenant: &TenantRef,
    permissions: Permissions,
) -> Result<(Permissions, bool), AuthError> {
    match tenant.status.as_str() {
        "active" => Ok((permissions, false)),
        "suspended" => Err(AuthError::TenantSuspended),
        _ => {
            let left = permissions.intersection(Permissions::only(Permission::ExportData));
            if left == Permissions::NONE {
                Err(AuthError::TenantClosed)
            } else {
                Ok((left, true))
            }
        }
    }
}

/// The one value of a credential header, if sent; several values (or one joined with commas by
/// a proxy) are ambiguous.
fn single<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h http::HeaderValue>, AuthError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) if !v.as_bytes().contains(&b',') => Ok(Some(v)),
        _ => Err(AuthError::Ambiguous),
    }
}

/// The longest `sub` or `org_id` we accept (Auth0's are far shorter).
const MAX_ID_LEN: usize = 256;

/// Whether a claim can be an Auth0 user or organization id: 1 to 256 characters, none of them a
/// control character.
fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && !id.chars().any(char::is_control)
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
    fn one_credential_header_or_it_is_ambiguous() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, http::HeaderValue::from_static(v));
            }
            h
        };
        let one = headers(&[("authorization", "Bearer a")]);
        assert!(matches!(single(&one, "authorization"), Ok(Some(_))));
        assert!(matches!(single(&one, "x-api-key"), Ok(None)));
        for h in [
            headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
            headers(&[("authorization", "Bearer a, Bearer b")]),
            headers(&[("authorization", "Bearer a,b")]),
        ] {
            assert!(matches!(
                single(&h, "authorization"),
                Err(AuthError::Ambiguous)
            ));
        }
        let keys = headers(&[("x-api-key", "k1"), ("x-api-key", "k2")]);
        assert!(matches!(
            single(&keys, "x-api-key"),
            Err(AuthError::Ambiguous)
        ));
    }

    #[test]
    fn ids_are_bounded_and_free_of_control_characters() {
        assert!(plausible_id("auth0|abc"));
        assert!(plausible_id("org_abc"));
        assert!(plausible_id(&"x".repeat(MAX_ID_LEN)));
        for bad in [
            String::new(),
            "x".repeat(MAX_ID_LEN + 1),
            "org\0abc".into(),
            "org\nabc".into(),
            "org\u{7f}".into(),
            "org\u{85}x".into(),
        ] {
            assert!(!plausible_id(&bad), "{bad:?}");
        }
    }

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

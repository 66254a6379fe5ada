//! The API Gateway (HTTP API) REQUEST authorizer: lets a request reach a function only if it
//! carries exactly one valid credential, a bearer JWT or an `X-Api-Key`, checked by the same
//! [`Authenticator`] the functions use.
//!
//! It answers in the simple format (payload 2.0): `{"isAuthorized": bool, "context": {...}}`.
//! The context names the tenant and the actor, never a credential. The functions authenticate
//! again (the same code) and check the route's permission, so the authorizer is a gate that keeps
//! unauthenticated traffic off the functions, not the only check.
//!
//! API Gateway's own authorizer cache needs every identity source present on every request (a
//! missing one is a 401 before the authorizer runs), which cannot express "a bearer token *or* a
//! key". So the gateway's cache is off and this process caches an allowed credential for a short
//! TTL (`AUTHORIZER_CACHE_SECS`, 30 s by default), keyed by a hash of the credential headers: a
//! revoked key or a suspended tenant is refused here within the TTL plus the lookup cache's
//! (`AUTH_LOOKUP_CACHE_SECS`, 5 s by default, which this process's `Authenticator` keeps too), and
//! by the function within the lookup cache's alone.
//!
//! Admin routes (`/admin/...`) take staff tokens only ([`Authenticator::authenticate_staff`]),
//! checked on every request (no cache: staff traffic is small and a removed staff role must stop
//! at once); every other route refuses a staff token, unless it names an impersonation session
//! of that staff member (`Tenantry-Impersonation`), which is checked on every request too.

use std::time::Duration;

use aws_lambda_events::apigw::ApiGatewayV2CustomAuthorizerV2Request;
use http::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{AuthError, Authenticator, Principal};
use crate::cache::TtlCache;

/// The most credentials the cache holds; past it, it starts over (a flood of distinct valid
/// credentials costs verification, never memory).
const CACHE_CAPACITY: usize = 10_000;

/// The authorizer: verification plus a short cache of allowed credentials.
#[derive(Debug)]
pub struct Authorizer {
    auth: Authenticator,
    cache: TtlCache<[u8; 32], Principal>,
}

/// What the authorizer decided, and why (for the log; never sent to the caller).
#[derive(Debug)]
pub struct Decision {
    /// The principal, if the request may pass.
    pub principal: Option<Principal>,
    /// Why it may not (a stable reason), or `"ok"`.
    pub reason: &'static str,
    /// Whether the answer came from the cache.
    pub cached: bool,
}

impl Authorizer {
    /// An authorizer verifying with `auth`, caching allowed credentials for `ttl` (zero: never).
    pub fn new(auth: Authenticator, ttl: Duration) -> Self {
        Self {
            auth,
            cache: TtlCache::new(ttl, CACHE_CAPACITY),
        }
    }

    /// Decides on a request's headers. `Err` only when verification itself is unavailable (the
    /// JWKS or the database): the invocation fails and API Gateway answers 500, never "allowed".
    pub async fn decide(&self, headers: &HeaderMap) -> Result<Decision, AuthError> {
        let key = cache_key(headers);
        if let Some(p) = self.cache.get(&key) {
            return Ok(Decision {
                principal: Some(p),
                reason: "ok",
                cached: true,
            });
        }
        match self.auth.authenticate(headers).await {
            Ok(p) => {
                self.remember(key, &p);
                Ok(Decision {
                    principal: Some(p),
                    reason: "ok",
                    cached: false,
                })
            }
            Err(e @ AuthError::Unavailable(_)) => Err(e),
            // The same stable code the functions answer with.
            Err(e) => Ok(Decision {
                principal: None,
                reason: crate::http::ApiError::from(e).code,
                cached: false,
            }),
        }
    }

    /// The Lambda handler: an authorizer event in, a simple response out.
    pub async fn handle(
        &self,
        event: &ApiGatewayV2CustomAuthorizerV2Request,
    ) -> Result<Value, AuthError> {
        let route = event.route_key.as_deref().unwrap_or("");
        if is_admin_route(route) {
            return Ok(match self.auth.authenticate_staff(&event.headers).await {
                Ok(staff) => {
                    tracing::info!(route, "authorized (staff)");
                    json!({ "isAuthorized": true, "context": { "actor": staff.actor_id() } })
                }
                Err(e @ AuthError::Unavailable(_)) => return Err(e),
                Err(e) => {
                    let reason = crate::http::ApiError::from(e).code;
                    tracing::info!(route, reason, "refused");
                    json!({ "isAuthorized": false, "context": {} })
                }
            });
        }
        let decision = self.decide(&event.headers).await?;
        Ok(match decision.principal {
            Some(p) => {
                tracing::info!(route, tenant_id = %p.tenant_id, cached = decision.cached, "authorized");
                json!({
                    "isAuthorized": true,
                    "context": { "tenant_id": p.tenant_id, "actor": p.actor_id() },
                })
            }
            None => {
                tracing::info!(route, reason = decision.reason, "refused");
                json!({ "isAuthorized": false, "context": {} })
            }
        })
    }

    fn remember(&self, key: [u8; 32], p: &Principal) {
        // An impersonation session is checked on every request: ended or expired, it must stop
        // at once.
        if p.impersonation().is_none() {
            self.cache.insert(key, p.clone());
        }
    }
}

/// `GET /admin/v1/...` (API Gateway's route key: method, space, path template).
fn is_admin_route(route_key: &str) -> bool {
    route_key
        .split_once(' ')
        .is_some_and(|(_, path)| path.starts_with("/admin/"))
}

/// A hash of every credential header value (names and values, in order), so two requests share
/// an entry only if they carry the same credentials.
fn cache_key(headers: &HeaderMap) -> [u8; 32] {
    let mut h = Sha256::new();
    for name in ["authorization", "x-api-key", super::IMPERSONATION_HEADER] {
        for v in headers.get_all(name) {
            h.update(name.as_bytes());
            h.update([0]);
            h.update((v.len() as u64).to_be_bytes());
            h.update(v.as_bytes());
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_tells_credentials_apart() {
        let of = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, http::HeaderValue::from_static(v));
            }
            cache_key(&h)
        };
        let a = of(&[("authorization", "Bearer a")]);
        assert_eq!(a, of(&[("authorization", "Bearer a"), ("accept", "x")]));
        assert_ne!(a, of(&[("authorization", "Bearer b")]));
        assert_ne!(a, of(&[("x-api-key", "Bearer a")]));
        assert_ne!(a, of(&[("authorization", "Bearer a"), ("x-api-key", "k")]));
        assert_ne!(
            a,
            of(&[
                ("authorization", "Bearer a"),
                ("tenantry-impersonation", "s")
            ])
        );
        assert_ne!(
            of(&[("authorization", "ab"), ("authorization", "c")]),
            of(&[("authorization", "a"), ("authorization", "bc")])
        );
    }
}

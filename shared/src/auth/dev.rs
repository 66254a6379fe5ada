//! A dev-only token issuer for the local runner, the tests and the benchmarks.
//!
//! It signs with a key from this repository (`dev/`), so nothing deployed trusts it: a deployed
//! function only accepts keys from the Auth0 issuer's JWKS.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// Mints RS256 access tokens shaped like Auth0's.
#[derive(Clone)]
pub struct DevIssuer {
    key: EncodingKey,
    /// The `kid` put in every header.
    pub kid: String,
    /// The `iss` claim.
    pub issuer: String,
    /// The `aud` claim.
    pub audience: String,
    /// The namespaced roles claim.
    pub roles_claim: String,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer").field("kid", &self.kid).finish()
    }
}

impl DevIssuer {
    /// An issuer signing with an RSA private key in PEM.
    pub fn new(
        private_key_pem: &[u8],
        kid: &str,
        issuer: &str,
        audience: &str,
        roles_claim: &str,
    ) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(Self {
            key: EncodingKey::from_rsa_pem(private_key_pem)?,
            kid: kid.to_owned(),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            roles_claim: roles_claim.to_owned(),
        })
    }

    /// The standard claims for a user of an organization, valid for `ttl` from now.
    pub fn claims(&self, sub: &str, org_id: &str, roles: &[&str], ttl: Duration) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut claims = json!({
            "iss": self.issuer,
            "aud": [self.audience, format!("{}userinfo", self.issuer)],
            "sub": sub,
            "org_id": org_id,
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs(),
            "scope": "openid profile",
        });
        claims[&self.roles_claim] = json!(roles);
        claims
    }

    /// Signs arbitrary claims with this issuer's key and `kid`.
    pub fn sign(&self, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
    }

    /// A token for a user of an organization.
    pub fn token(
        &self,
        sub: &str,
        org_id: &str,
        roles: &[&str],
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign(&self.claims(sub, org_id, roles, ttl))
    }
}

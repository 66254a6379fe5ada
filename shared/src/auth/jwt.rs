//! Auth0 access-token verification: RS256 only, keys from the issuer's JWKS.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use super::{AuthConfig, AuthError};

/// Tokens longer than this are refused unread.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The claims we use from a verified token.
#[derive(Clone, Debug, Deserialize)]
pub struct VerifiedClaims {
    /// The Auth0 user id.
    pub sub: String,
    /// The Auth0 Organization the token was issued for.
    #[serde(default)]
    pub org_id: Option<String>,
    #[serde(flatten)]
    extra: HashMap<String, serde_json::Value>,
}

impl VerifiedClaims {
    /// String roles from the namespaced roles claim; anything else there is ignored.
    pub fn roles(&self, claim: &str) -> Vec<String> {
        match self.extra.get(claim) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    /// Whether the first fetch of this cold start succeeded.
    loaded: bool,
    /// When an unknown `kid` last caused a refetch (or a fetch last failed).
    refetched_at: Option<Instant>,
}

/// Verifies Auth0 access tokens. Keys are fetched from the JWKS URL on first use, cached for the
/// cold start, and refetched on an unknown `kid` at most once per `jwks_refetch_interval` (so a
/// flood of forged `kid`s cannot turn us into a JWKS hammer). `jku` and `x5u` are never followed.
#[derive(Debug)]
pub struct JwtVerifier {
    validation: Validation,
    jwks_url: String,
    refetch_interval: Duration,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    fetching: Mutex<()>,
}

impl JwtVerifier {
    /// A verifier for the configured issuer and audience.
    pub fn new(cfg: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&[&cfg.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = cfg.leeway.as_secs();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            validation,
            jwks_url: cfg.jwks_url.clone(),
            refetch_interval: cfg.jwks_refetch_interval,
            http,
            cache: RwLock::new(KeyCache::default()),
            fetching: Mutex::new(()),
        }
    }

    /// Verifies signature, algorithm, `iss`, `aud`, `exp` and `nbf`.
    pub async fn verify(&self, token: &str) -> Result<VerifiedClaims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken("too long"));
        }
        // `alg: none` and unknown algorithms fail here: the header does not even parse.
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError::InvalidToken("malformed"))?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::InvalidToken("algorithm not allowed"));
        }
        let kid = header.kid.ok_or(AuthError::InvalidToken("no kid"))?;
        let key = self.key(&kid).await?;
        jsonwebtoken::decode::<VerifiedClaims>(token, &key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                AuthError::InvalidToken(match e.kind() {
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not yet valid",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::MissingRequiredClaim(_) => "missing claim",
                    // InvalidAlgorithm cannot happen here: the header's algorithm was checked
                    // above and every cached key is an RS256 key.
                    _ => "malformed",
                })
            })
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.cache.read().await.keys.get(kid) {
            return Ok(key.clone());
        }
        // One fetch at a time; whoever waited re-checks what the fetch brought.
        let _guard = self.fetching.lock().await;
        {
            let cache = self.cache.read().await;
            if let Some(key) = cache.keys.get(kid) {
                return Ok(key.clone());
            }
            if cache.loaded
                && cache
                    .refetched_at
                    .is_some_and(|at| at.elapsed() < self.refetch_interval)
            {
                return Err(AuthError::InvalidToken("unknown kid"));
            }
        }
        let fetched = self.fetch().await;
        let mut cache = self.cache.write().await;
        // The first load is not a refetch; every later fetch (and any failure) starts the clock.
        if cache.loaded || fetched.is_err() {
            cache.refetched_at = Some(Instant::now());
        }
        match fetched {
            Ok(keys) => {
                cache.keys = keys;
                cache.loaded = true;
            }
            // Keep serving the keys we have; with none at all, auth is down, not the caller wrong.
            Err(e) if cache.keys.is_empty() => return Err(AuthError::Unavailable(e)),
            Err(e) => tracing::warn!(error = %e, "JWKS refetch failed; keeping cached keys"),
        }
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or(AuthError::InvalidToken("unknown kid"))
    }

    async fn fetch(
        &self,
    ) -> Result<HashMap<String, DecodingKey>, Box<dyn std::error::Error + Send + Sync>> {
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<serde_json::Value>,
        }
        let jwks: Jwks = self
            .http
            .get(&self.jwks_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        // One odd key (another algorithm, an encryption key) must not hide the others.
        let keys: HashMap<_, _> = jwks
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter_map(|jwk| usable_rs256_key(&jwk))
            .collect();
        tracing::info!(keys = keys.len(), "fetched JWKS");
        Ok(keys)
    }
}

fn usable_rs256_key(jwk: &Jwk) -> Option<(String, DecodingKey)> {
    let kid = jwk.common.key_id.clone()?;
    if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
        return None;
    }
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    if matches!(jwk.common.key_algorithm, Some(a) if a != KeyAlgorithm::RS256) {
        return None;
    }
    DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
}

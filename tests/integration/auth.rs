//! Authentication, attack by attack: each forged or misused credential, then the refusal.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tenantry::auth::{ApiKeys, AuthError, Permissions, Principal, Scope, Subject};
use tenantry::db::Access;
use tenantry_tests::{
    JwksServer, TestApp, as_tenant, attacker, dev_jwk, issuer, repo_file, tenant, tx,
};
use tokio_postgres::types::Type;

const HOUR: Duration = Duration::from_secs(3600);

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}

fn api_key(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-api-key", key.parse().unwrap());
    h
}

/// A JWT from raw parts: any header, any claims, signed with any key and algorithm.
fn forge(header: Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
    format!("{msg}.{sig}")
}

fn dev_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&repo_file("dev/jwt-dev-key.pem")).unwrap()
}

async fn auth(app: &TestApp, headers: &HeaderMap) -> Result<Principal, AuthError> {
    app.app.auth.authenticate(headers).await
}

fn invalid_token(r: &Result<Principal, AuthError>) -> bool {
    matches!(r, Err(AuthError::InvalidToken(_)))
}

#[tokio::test]
async fn a_valid_token_maps_its_organization_to_the_tenant() {
    let app = TestApp::new().await;
    let db = app.app.db.clone();
    let a = tenant(&db, "alpha").await;
    let _b = tenant(&db, "bravo").await;
    let token = issuer()
        .token("auth0|alice", "org_alpha", &["admin", "analyst"], HOUR)
        .unwrap();
    let p = auth(&app, &bearer(&token)).await.unwrap();
    assert_eq!(p.tenant_id, a);
    assert_eq!(
        p.subject,
        Subject::User {
            id: "auth0|alice".into()
        }
    );
    assert_eq!(p.roles, ["admin", "analyst"]);
    assert_eq!(p.actor_id(), "user:auth0|alice");
}

#[tokio::test]
async fn forged_and_misissued_tokens_are_refused() {
    let app = TestApp::new().await;
    let db = app.app.db.clone();
    tenant(&db, "alpha").await;
    tenant(&db, "bravo").await;
    let iss = issuer();
    let now = chrono::Utc::now().timestamp();
    let good = iss.claims("auth0|alice", "org_alpha", &[], HOUR);
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };

    let cases: Vec<(&str, String)> = vec![
        ("expired", iss.sign(&with("exp", json!(now - 60))).unwrap()),
        (
            "nbf in the future",
            iss.sign(&with("nbf", json!(now + 300))).unwrap(),
        ),
        (
            "wrong issuer",
            iss.sign(&with("iss", json!("https://evil.example/")))
                .unwrap(),
        ),
        (
            "wrong audience",
            iss.sign(&with("aud", json!("https://other-api.example")))
                .unwrap(),
        ),
        ("no exp", iss.sign(&without("exp")).unwrap()),
        ("no aud", iss.sign(&without("aud")).unwrap()),
        ("no iss", iss.sign(&without("iss")).unwrap()),
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(
                    json!({"alg": "none", "typ": "JWT", "kid": "tenantry-dev-1"}).to_string()
                ),
                URL_SAFE_NO_PAD.encode(good.to_string())
            ),
        ),
        (
            "HS256 keyed with the public key",
            forge(
                json!({"alg": "HS256", "typ": "JWT", "kid": "tenantry-dev-1"}),
                &good,
                &EncodingKey::from_secret(&repo_file("dev/jwt-dev-pub.pem")),
                Algorithm::HS256,
            ),
        ),
        (
            "RS512 (not allowed even with the right key)",
            forge(
                json!({"alg": "RS512", "typ": "JWT", "kid": "tenantry-dev-1"}),
                &good,
                &dev_key(),
                Algorithm::RS512,
            ),
        ),
        (
            "PS256",
            forge(
                json!({"alg": "PS256", "typ": "JWT", "kid": "tenantry-dev-1"}),
                &good,
                &dev_key(),
                Algorithm::PS256,
            ),
        ),
        (
            "signed by another key under the trusted kid",
            attacker().sign(&good).unwrap(),
        ),
        (
            "no kid",
            forge(
                json!({"alg": "RS256", "typ": "JWT"}),
                &good,
                &dev_key(),
                Algorithm::RS256,
            ),
        ),
        ("garbage", "not.a.jwt".into()),
        (
            "oversized",
            format!("{}.{}.x", "a".repeat(5000), "b".repeat(5000)),
        ),
    ];
    // Each refusal names its reason (for the log, never the caller).
    let reasons = [
        "expired",
        "not yet valid",
        "wrong issuer",
        "wrong audience",
        "missing claim",
        "missing claim",
        "missing claim",
        "malformed",
        "algorithm not allowed",
        "algorithm not allowed",
        "algorithm not allowed",
        "bad signature",
        "no kid",
        "malformed",
        "too long",
    ];
    assert_eq!(cases.len(), reasons.len());
    for ((what, token), reason) in cases.iter().zip(reasons) {
        let r = auth(&app, &bearer(token)).await;
        assert!(
            matches!(&r, Err(AuthError::InvalidToken(w)) if *w == reason),
            "{what}: expected {reason:?}, got {r:?}"
        );
    }
    // The length limit is 8 KiB exactly: at it, a token is read (and found malformed); one
    // byte past, it is refused unread.
    let jwt = app.app.auth.jwt();
    let at_limit = format!("{}.{}.x", "a".repeat(4095), "b".repeat(4094));
    assert_eq!(at_limit.len(), 8192);
    assert!(matches!(
        jwt.verify(&at_limit).await,
        Err(AuthError::InvalidToken("malformed"))
    ));
    assert!(matches!(
        jwt.verify(&format!("{at_limit}y")).await,
        Err(AuthError::InvalidToken("too long"))
    ));

    // Tampered payload: a valid token for alpha with its payload swapped for bravo's org.
    let valid = iss.sign(&good).unwrap();
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(with("org_id", json!("org_bravo")).to_string()),
        parts[2]
    );
    assert!(invalid_token(&auth(&app, &bearer(&tampered)).await));
    // And the untampered token still works, so the refusals above were not a broken setup.
    assert!(auth(&app, &bearer(&valid)).await.is_ok());

    // jku / x5u pointing at the attacker's own JWKS are never followed.
    let evil = JwksServer::start(json!({"keys": [dev_jwk("attacker")]})).await;
    let jku = forge(
        json!({"alg": "RS256", "typ": "JWT", "kid": "tenantry-attacker-1", "jku": evil.url, "x5u": evil.url}),
        &good,
        &EncodingKey::from_rsa_pem(&repo_file("dev/jwt-attacker-key.pem")).unwrap(),
        Algorithm::RS256,
    );
    assert!(invalid_token(&auth(&app, &bearer(&jku)).await));
    assert_eq!(
        evil.fetches(),
        0,
        "the verifier fetched a URL named by the token"
    );
}

#[tokio::test]
async fn an_unknown_kid_causes_one_refetch_then_rejection() {
    let app = TestApp::new().await;
    tenant(&app.app.db, "alpha").await;
    let iss = issuer();
    let ok = iss.token("auth0|alice", "org_alpha", &[], HOUR).unwrap();
    assert!(auth(&app, &bearer(&ok)).await.is_ok());
    assert_eq!(app.jwks.fetches(), 1);

    let mut rogue = attacker();
    rogue.kid = "rotated-2".into();
    let t1 = rogue.token("auth0|alice", "org_alpha", &[], HOUR).unwrap();
    assert!(invalid_token(&auth(&app, &bearer(&t1)).await));
    assert_eq!(
        app.jwks.fetches(),
        2,
        "an unknown kid should trigger one refetch"
    );
    for kid in ["rotated-3", "rotated-4", "rotated-5"] {
        rogue.kid = kid.into();
        let t = rogue.token("auth0|alice", "org_alpha", &[], HOUR).unwrap();
        assert!(invalid_token(&auth(&app, &bearer(&t)).await));
    }
    assert_eq!(
        app.jwks.fetches(),
        2,
        "unknown kids within the interval must not refetch"
    );
    // Known keys keep working from the cache.
    assert!(auth(&app, &bearer(&ok)).await.is_ok());
    assert_eq!(app.jwks.fetches(), 2);
}

#[tokio::test]
async fn a_rotated_signing_key_is_picked_up() {
    let app = TestApp::with_refetch(Duration::ZERO).await;
    tenant(&app.app.db, "alpha").await;
    let ok = issuer()
        .token("auth0|alice", "org_alpha", &[], HOUR)
        .unwrap();
    assert!(auth(&app, &bearer(&ok)).await.is_ok());
    // Auth0 rotates: the new key (here, the "attacker" key under its own kid) joins the JWKS.
    let mut rotated = attacker();
    rotated.kid = "tenantry-attacker-1".into();
    let t = rotated
        .token("auth0|alice", "org_alpha", &[], HOUR)
        .unwrap();
    assert!(invalid_token(&auth(&app, &bearer(&t)).await));
    app.jwks
        .set(json!({"keys": [dev_jwk("dev"), dev_jwk("attacker")]}));
    assert!(auth(&app, &bearer(&t)).await.is_ok());
}

#[tokio::test]
async fn organizations_must_map_to_an_active_tenant() {
    let app = TestApp::new().await;
    let db = app.app.db.clone();
    let a = tenant(&db, "alpha").await;
    let iss = issuer();

    let mut no_org = iss.claims("auth0|alice", "org_alpha", &[], HOUR);
    no_org.as_object_mut().unwrap().remove("org_id");
    let r = auth(&app, &bearer(&iss.sign(&no_org).unwrap())).await;
    assert!(matches!(r, Err(AuthError::NoOrganization)), "{r:?}");

    let r = auth(
        &app,
        &bearer(&iss.token("auth0|alice", "org_nobody", &[], HOUR).unwrap()),
    )
    .await;
    assert!(matches!(r, Err(AuthError::UnknownOrganization)), "{r:?}");

    let mut t = tx(&db, a).await;
    let uid = a.as_uuid();
    t.execute(
        "UPDATE app.tenants SET status = 'suspended' WHERE tenant_id = $1",
        &[(&uid, Type::UUID)],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    let r = auth(
        &app,
        &bearer(&iss.token("auth0|alice", "org_alpha", &[], HOUR).unwrap()),
    )
    .await;
    assert!(matches!(r, Err(AuthError::TenantSuspended)), "{r:?}");
    let mut t = tx(&db, a).await;
    t.execute(
        "UPDATE app.tenants SET status = 'closed', closed_at = now(), delete_after = now() WHERE tenant_id = $1",
        &[(&uid, Type::UUID)],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    let r = auth(
        &app,
        &bearer(&iss.token("auth0|alice", "org_alpha", &[], HOUR).unwrap()),
    )
    .await;
    assert!(matches!(r, Err(AuthError::TenantClosed)), "{r:?}");
}

#[tokio::test]
async fn api_keys_are_checked_in_full_and_revocable() {
    let app = TestApp::new().await;
    let db = app.app.db.clone();
    let a = tenant(&db, "alpha").await;
    let b = tenant(&db, "bravo").await;
    let mut t = tx(&db, a).await;
    let key_a = ApiKeys::create(&mut t, "ci", &[Scope::Read, Scope::Ingest])
        .await
        .unwrap();
    t.commit().await.unwrap();
    let mut t = tx(&db, b).await;
    let key_b = ApiKeys::create(&mut t, "etl", &[Scope::Read, Scope::Ingest])
        .await
        .unwrap();
    t.commit().await.unwrap();

    let p = auth(&app, &api_key(&key_a.key)).await.unwrap();
    assert_eq!(p.tenant_id, a);
    assert_eq!(
        p.subject,
        Subject::ApiKey {
            key_id: key_a.key_id,
            scopes: vec![Scope::Read, Scope::Ingest],
        }
    );
    assert_eq!(
        p.permissions,
        Permissions::for_scopes(&[Scope::Read, Scope::Ingest])
    );

    // The stored row holds a hash, never the key.
    let admin = app.db.admin().await;
    let stored: Vec<u8> = admin
        .query_one(
            "SELECT hash FROM app.api_keys WHERE key_id = $1",
            &[&key_a.key_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&key_a.key[17..]));

    // Wrong secret under a valid prefix; B's prefix with A's secret; malformed.
    let secret_a = &key_a.key[17..];
    let secret_b = &key_b.key[17..];
    for (what, forged) in [
        ("wrong secret", format!("tnt_{}_{}", key_a.prefix, secret_b)),
        (
            "another tenant's prefix",
            format!("tnt_{}_{}", key_b.prefix, secret_a),
        ),
        ("truncated", key_a.key[..key_a.key.len() - 1].to_owned()),
        ("malformed", "tnt_'; drop table app.api_keys; --".to_owned()),
    ] {
        let r = auth(&app, &api_key(&forged)).await;
        assert!(matches!(r, Err(AuthError::InvalidApiKey)), "{what}: {r:?}");
    }

    // A cannot revoke B's key (RLS makes it look absent); A can revoke its own.
    let mut t = tx(&db, a).await;
    assert!(!ApiKeys::revoke(&mut t, key_b.key_id).await.unwrap());
    assert!(ApiKeys::revoke(&mut t, key_a.key_id).await.unwrap());
    t.commit().await.unwrap();
    let r = auth(&app, &api_key(&key_a.key)).await;
    assert!(matches!(r, Err(AuthError::InvalidApiKey)), "revoked: {r:?}");
    assert!(auth(&app, &api_key(&key_b.key)).await.is_ok());

    // Both kinds of credential at once is refused rather than guessed at.
    let mut both = api_key(&key_b.key);
    let token = issuer()
        .token("auth0|alice", "org_alpha", &[], HOUR)
        .unwrap();
    both.insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert!(matches!(auth(&app, &both).await, Err(AuthError::Ambiguous)));
    assert!(matches!(
        auth(&app, &HeaderMap::new()).await,
        Err(AuthError::Missing)
    ));

    // The principal's transaction is confined to its tenant.
    let mut t = db.begin(&as_tenant(b), Access::ReadOnly).await.unwrap();
    let n: i64 = t
        .query_one("SELECT count(*) FROM app.api_keys", &[])
        .await
        .unwrap()
        .get(0);
    t.commit().await.unwrap();
    assert_eq!(n, 1);
}

/// A JWKS outage: before any key was fetched, authentication is unavailable (a 500, not the
/// caller's fault); once keys are cached, they keep working, and an unknown `kid` is still a
/// refused token rather than an outage.
#[tokio::test]
async fn a_jwks_outage_is_unavailable_until_keys_are_cached_then_cached_keys_serve() {
    use tenantry::auth::{AuthConfig, JwtVerifier};
    let app = TestApp::new().await;
    let down = JwksServer::start(json!("down for maintenance")).await;
    let cfg = AuthConfig {
        jwks_url: down.url.clone(),
        jwks_refetch_interval: Duration::ZERO,
        ..app.app.config.auth.clone()
    };
    let iss = issuer();
    let ok = iss.token("auth0|alice", "org_alpha", &[], HOUR).unwrap();
    let verifier = JwtVerifier::new(&cfg);
    let r = verifier.verify(&ok).await;
    assert!(matches!(r, Err(AuthError::Unavailable(_))), "{r:?}");

    down.set(json!({"keys": [dev_jwk("dev")]}));
    assert_eq!(verifier.verify(&ok).await.unwrap().sub, "auth0|alice");
    down.set(json!("down again"));
    let fetched = down.fetches();
    let mut rogue = attacker();
    rogue.kid = "rotated-2".into();
    let unknown = rogue.token("auth0|alice", "org_alpha", &[], HOUR).unwrap();
    let r = verifier.verify(&unknown).await;
    assert!(
        matches!(r, Err(AuthError::InvalidToken("unknown kid"))),
        "{r:?}"
    );
    assert_eq!(down.fetches(), fetched + 1, "the unknown kid was looked up");
    assert_eq!(verifier.verify(&ok).await.unwrap().sub, "auth0|alice");
}

//! The API Gateway REQUEST authorizer, fed the sample events as API Gateway sends them: a valid
//! JWT and a valid key pass with their tenant in the context; a revoked key, both headers,
//! neither, and a forged token are refused; a database outage fails the invocation (API Gateway
//! answers 500), never "allowed".

use std::time::Duration;

use aws_lambda_events::apigw::ApiGatewayV2CustomAuthorizerV2Request;
use serde_json::{Value, json};
use tenantry::auth::authorizer::Authorizer;
use tenantry::auth::{ApiKeys, Authenticator, Scope};
use tenantry_tests::{TestApp, attacker, issuer, tx};

const BEARER: &str = include_str!("../../events/authorizer/bearer.json");
const API_KEY: &str = include_str!("../../events/authorizer/api-key.json");

fn event(raw: &str) -> ApiGatewayV2CustomAuthorizerV2Request {
    serde_json::from_str(raw).unwrap()
}

fn authorizer(app: &TestApp, ttl: Duration) -> Authorizer {
    Authorizer::new(
        Authenticator::new(&app.app.config.auth, app.app.db.clone()),
        ttl,
    )
}

async fn answer(a: &Authorizer, event: &ApiGatewayV2CustomAuthorizerV2Request) -> Value {
    a.handle(event).await.unwrap()
}

#[tokio::test]
async fn a_valid_token_or_key_passes_and_anything_else_is_refused() {
    let app = TestApp::new().await;
    let (tenant, token) = app.tenant_with_token("alpha").await;
    let mut t = tx(&app.app.db, tenant).await;
    let key = ApiKeys::create(&mut t, "etl", &[Scope::Ingest])
        .await
        .unwrap();
    let revoked = ApiKeys::create(&mut t, "old", &[Scope::Read])
        .await
        .unwrap();
    assert!(ApiKeys::revoke(&mut t, revoked.key_id).await.unwrap());
    t.commit().await.unwrap();
    let a = authorizer(&app, Duration::ZERO);

    let by_token = answer(&a, &event(&BEARER.replace("REPLACE_WITH_A_TOKEN", &token))).await;
    assert_eq!(
        by_token,
        json!({"isAuthorized": true, "context": {"tenant_id": tenant, "actor": "user:auth0|alpha-user"}})
    );
    let by_key = answer(&a, &event(&API_KEY.replace("REPLACE_WITH_A_KEY", &key.key))).await;
    assert_eq!(
        by_key,
        json!({"isAuthorized": true, "context": {"tenant_id": tenant, "actor": format!("api_key:{}", key.key_id)}})
    );
    // The context never carries the credential.
    assert!(!by_key.to_string().contains(&key.key));

    let refused = json!({"isAuthorized": false, "context": {}});
    let forged = attacker()
        .token(
            "auth0|alpha-user",
            "org_alpha",
            &["owner"],
            Duration::from_secs(600),
        )
        .unwrap();
    let mut both = event(&BEARER.replace("REPLACE_WITH_A_TOKEN", &token));
    both.headers.insert("x-api-key", key.key.parse().unwrap());
    let mut neither = event(BEARER);
    neither.headers.remove("authorization");
    for (what, e) in [
        (
            "revoked key",
            event(&API_KEY.replace("REPLACE_WITH_A_KEY", &revoked.key)),
        ),
        ("both headers", both),
        ("neither", neither),
        (
            "forged token",
            event(&BEARER.replace("REPLACE_WITH_A_TOKEN", &forged)),
        ),
        ("the placeholder", event(BEARER)),
    ] {
        assert_eq!(answer(&a, &e).await, refused, "{what}");
    }
}

#[tokio::test]
async fn allowed_credentials_are_cached_for_the_ttl_and_refusals_never() {
    let app = TestApp::new().await;
    let (tenant, token) = app.tenant_with_token("alpha").await;
    let mut t = tx(&app.app.db, tenant).await;
    let key = ApiKeys::create(&mut t, "etl", &[Scope::Read])
        .await
        .unwrap();
    t.commit().await.unwrap();
    let with_key = event(&API_KEY.replace("REPLACE_WITH_A_KEY", &key.key));

    let cached = authorizer(&app, Duration::from_secs(30));
    let first = cached.decide(&with_key.headers).await.unwrap();
    assert!(first.principal.is_some() && !first.cached);
    let second = cached.decide(&with_key.headers).await.unwrap();
    assert!(second.principal.is_some() && second.cached);

    // Revoked: the cached entry holds for its TTL (the function itself refuses at once, see
    // api_keys.rs); an authorizer without a cache refuses at once.
    let mut t = tx(&app.app.db, tenant).await;
    assert!(ApiKeys::revoke(&mut t, key.key_id).await.unwrap());
    t.commit().await.unwrap();
    assert!(cached.decide(&with_key.headers).await.unwrap().cached);
    let fresh = authorizer(&app, Duration::ZERO);
    let d = fresh.decide(&with_key.headers).await.unwrap();
    assert_eq!((d.principal.is_none(), d.reason), (true, "invalid_api_key"));
    // A refusal is never cached, even by an authorizer that caches.
    let other_cache = authorizer(&app, Duration::from_secs(30));
    for _ in 0..2 {
        let d = other_cache.decide(&with_key.headers).await.unwrap();
        assert_eq!((d.principal.is_none(), d.cached), (true, false));
    }
    // And an allowed entry lapses after its TTL.
    let short = authorizer(&app, Duration::from_millis(50));
    let by_token = event(&BEARER.replace("REPLACE_WITH_A_TOKEN", &token));
    assert!(!short.decide(&by_token.headers).await.unwrap().cached);
    assert!(short.decide(&by_token.headers).await.unwrap().cached);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(!short.decide(&by_token.headers).await.unwrap().cached);

    // A token is cached under its own value: another user's token is verified on its own.
    let other = issuer()
        .token(
            "auth0|bob",
            "org_nobody",
            &["admin"],
            Duration::from_secs(600),
        )
        .unwrap();
    let by_token = event(&BEARER.replace("REPLACE_WITH_A_TOKEN", &token));
    assert!(
        cached
            .decide(&by_token.headers)
            .await
            .unwrap()
            .principal
            .is_some()
    );
    let by_other = event(&BEARER.replace("REPLACE_WITH_A_TOKEN", &other));
    let d = cached.decide(&by_other.headers).await.unwrap();
    assert_eq!(
        (d.principal.is_none(), d.reason),
        (true, "unknown_organization")
    );
}

#[tokio::test]
async fn a_database_outage_fails_the_invocation_never_allows() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    let a = Authorizer::new(
        Authenticator::new(&app.app.config.auth, tenantry_tests::unreachable_db()),
        Duration::from_secs(30),
    );
    let e = event(&BEARER.replace("REPLACE_WITH_A_TOKEN", &token));
    assert!(matches!(
        a.handle(&e).await,
        Err(tenantry::auth::AuthError::Unavailable(_))
    ));
}

/// Admin routes take staff tokens only, and every other route refuses them.
#[tokio::test]
async fn staff_pass_to_admin_routes_only_and_tenants_never_do() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    let staff = TestApp::staff_token("auth0|sam", &["support"]);
    let no_role = TestApp::staff_token("auth0|nora", &[]);
    let a = authorizer(&app, Duration::from_secs(30));
    let on_admin = |credential: &str| {
        let mut e = event(&BEARER.replace("REPLACE_WITH_A_TOKEN", credential));
        e.route_key = Some("GET /admin/v1/tenants".into());
        e
    };
    assert_eq!(
        answer(&a, &on_admin(&staff)).await,
        json!({"isAuthorized": true, "context": {"actor": "staff:auth0|sam"}})
    );
    let refused = json!({"isAuthorized": false, "context": {}});
    // Twice each: an allowed tenant credential cached for a tenant route is not reused here.
    let on_tenant = event(&BEARER.replace("REPLACE_WITH_A_TOKEN", &token));
    assert_eq!(answer(&a, &on_tenant).await["isAuthorized"], true);
    for (what, e) in [
        ("a tenant's token", on_admin(&token)),
        ("a tenant's token again", on_admin(&token)),
        ("staff without a staff role", on_admin(&no_role)),
        (
            "a staff token on a tenant route",
            event(&BEARER.replace("REPLACE_WITH_A_TOKEN", &staff)),
        ),
    ] {
        assert_eq!(answer(&a, &e).await, refused, "{what}");
    }
}

/// An impersonation session is checked on every request, even by an authorizer that caches:
/// ended by the tenant, it is refused by the very next request.
#[tokio::test]
async fn an_impersonation_session_is_never_cached() {
    let app = TestApp::new().await;
    let (tenant, admin) = app.tenant_with_token("alpha").await;
    let sam = TestApp::staff_token("auth0|sam", &["support"]);
    let body = json!({"tenant": tenant.to_string(), "reason": "Customer reports wrong totals, ticket SUP-2001",
        "ticket": "SUP-2001", "minutes": 5});
    let started = app
        .call(
            "POST",
            "/admin/v1/impersonations",
            &sam,
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(started.status, 201, "{}", started.json);
    let sid = started.json["id"].as_str().unwrap().to_owned();
    let mut e = event(&BEARER.replace("REPLACE_WITH_A_TOKEN", &sam));
    e.headers
        .insert("tenantry-impersonation", sid.parse().unwrap());

    let a = authorizer(&app, Duration::from_secs(30));
    for _ in 0..2 {
        let d = a.decide(&e.headers).await.unwrap();
        assert_eq!(
            (d.principal.map(|p| p.tenant_id), d.cached),
            (Some(tenant), false)
        );
    }
    let ended = app
        .call(
            "POST",
            &format!("/v1/impersonations/{sid}/end"),
            &admin,
            None,
        )
        .await;
    assert_eq!(ended.status, 200, "{}", ended.json);
    let d = a.decide(&e.headers).await.unwrap();
    assert_eq!(
        (d.principal.is_none(), d.reason, d.cached),
        (true, "impersonation_ended", false)
    );
}

/// The cache holds every allowed credential, not just the last one: requests alternating
/// between a token and a key are both answered from it.
#[tokio::test]
async fn the_cache_holds_several_credentials_at_once() {
    let app = TestApp::new().await;
    let (tenant, token) = app.tenant_with_token("alpha").await;
    let mut t = tx(&app.app.db, tenant).await;
    let key = ApiKeys::create(&mut t, "etl", &[Scope::Read])
        .await
        .unwrap();
    t.commit().await.unwrap();
    let by_token = event(&BEARER.replace("REPLACE_WITH_A_TOKEN", &token));
    let by_key = event(&API_KEY.replace("REPLACE_WITH_A_KEY", &key.key));

    let a = authorizer(&app, Duration::from_secs(30));
    let mut cached = Vec::new();
    for e in [&by_token, &by_key, &by_token, &by_key] {
        let d = a.decide(&e.headers).await.unwrap();
        assert_eq!(d.principal.map(|p| p.tenant_id), Some(tenant));
        cached.push(d.cached);
    }
    assert_eq!(cached, [false, false, true, true]);
}

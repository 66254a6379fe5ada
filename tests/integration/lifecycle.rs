//! Tenant lifecycle: an Auth0 organization becomes exactly one tenant with exactly one Stripe
//! customer (over real HTTP, against the Stripe test server with Stripe's idempotency), however
//! often and however concurrently its `organization.created` arrives; a customer Stripe would not
//! make now is made by the scheduled reconcile; hostile events change nothing they should not.

use std::time::Duration;

use serde_json::{Value, json};
use tenantry::TenantId;
use tenantry_tests::stripe_stub::StripeStub;
use tenantry_tests::{Reply, TestApp, gateway_event, issuer};

const SECRET: &str = "auth0-lifecycle-secret-0123456789";

fn created(event_id: &str, org: &str, name: &str, display: &str) -> Value {
    json!({"specversion": "1.0", "id": event_id, "source": "urn:auth0:tenantry.eu.auth0.com",
           "type": "organization.created", "time": "2026-12-02T08:00:00Z",
           "data": {"object": {"id": org, "name": name, "display_name": display}}})
}

async fn send(app: &TestApp, body: &Value) -> Reply {
    let auth = format!("Bearer {SECRET}");
    app.send(gateway_event(
        "POST",
        "/v1/webhooks/auth0",
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        Some(&body.to_string()),
    ))
    .await
}

/// The organization's tenant row, read as the superuser: (id, name, slug, customer_pending,
/// customer_error, linked customer).
async fn tenant_of(
    app: &TestApp,
    org: &str,
) -> Vec<(
    TenantId,
    String,
    String,
    bool,
    Option<String>,
    Option<String>,
)> {
    app.db
        .admin()
        .await
        .query(
            "SELECT t.tenant_id, t.name, t.slug, t.customer_pending, t.customer_error, \
                    c.stripe_customer_id \
             FROM app.tenants t LEFT JOIN app.billing_customers c USING (tenant_id) \
             WHERE t.auth0_org_id = $1",
            &[&org],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                TenantId::from(r.get::<_, uuid::Uuid>(0)),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
            )
        })
        .collect()
}

async fn audit_actions(app: &TestApp, t: TenantId) -> Vec<(String, Option<String>, String)> {
    app.db
        .admin()
        .await
        .query(
            "SELECT action, target, actor_id FROM app.audit_events WHERE tenant_id = $1 ORDER BY seq",
            &[&t.as_uuid()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn reconcile(app: &TestApp) -> tenantry::billing::reconcile::RunOutcome {
    let a = &app.app;
    tenantry::billing::reconcile::run(
        &a.db,
        a.billing.as_ref(),
        &a.config.billing.meter,
        &a.config.billing.plans,
        &Default::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_organization_becomes_one_tenant_with_one_customer_however_often_it_arrives() {
    let stripe = StripeStub::start().await;
    let app = TestApp::with_stripe(&stripe, &[("AUTH0_WEBHOOK_SECRET", SECRET.to_owned())]).await;
    let event = created("evt_o1", "org_7kq2Acme", "acme-corp", "Acme Corp");
    // Twice at once, as Auth0's at-least-once delivery can.
    let (r1, r2) = tokio::join!(send(&app, &event), send(&app, &event));
    let mut outcomes = [
        (
            r1.status,
            r1.json["applied"].clone(),
            r1.json["duplicates"].clone(),
        ),
        (
            r2.status,
            r2.json["applied"].clone(),
            r2.json["duplicates"].clone(),
        ),
    ];
    outcomes.sort_by_key(|o| o.1.to_string());
    assert_eq!(
        outcomes,
        [(200, json!(0), json!(1)), (200, json!(1), json!(0))],
        "{} / {}",
        r1.json,
        r2.json
    );
    // And again later, once as the same event and once as a new delivery id.
    assert_eq!(send(&app, &event).await.json["duplicates"], 1);
    let again = created("evt_o2", "org_7kq2Acme", "acme-corp", "Acme Corp");
    assert_eq!(send(&app, &again).await.status, 200);

    let rows = tenant_of(&app, "org_7kq2Acme").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (tenant, name, slug, pending, error, linked) = rows[0].clone();
    assert_eq!((name.as_str(), slug.as_str()), ("Acme Corp", "acme-corp"));
    assert_eq!((pending, error), (false, None));
    let customers = stripe.created_customers();
    assert_eq!(customers.len(), 1, "{customers:?}");
    assert_eq!(linked.as_deref(), Some(customers[0].id.as_str()));
    assert_eq!(customers[0].name, "Acme Corp");
    assert_eq!(
        customers[0].metadata,
        [("tenant_id".to_owned(), tenant.to_string())]
    );
    assert_eq!(
        customers[0].idempotency_key.as_deref(),
        Some(format!("tenantry-customer-{}", tenant.as_uuid()).as_str())
    );
    let actor = "system:auth0-webhook".to_owned();
    assert_eq!(
        audit_actions(&app, tenant).await,
        [
            (
                "tenant.created".to_owned(),
                Some("acme-corp".to_owned()),
                actor.clone()
            ),
            (
                "billing.customer_linked".to_owned(),
                Some(customers[0].id.clone()),
                actor
            ),
        ]
    );
    // Its people sign in to it.
    let token = issuer()
        .token(
            "auth0|ada",
            "org_7kq2Acme",
            &["owner"],
            Duration::from_secs(600),
        )
        .unwrap();
    let me = app.call("GET", "/v1/me", &token, None).await;
    assert_eq!(me.status, 200, "{}", me.json);
    assert_eq!(me.json["tenant"]["id"], tenant.to_string());
    // The reconcile finds nothing left to do for it.
    let out = reconcile(&app).await;
    assert_eq!((out.customers_linked, out.customers_pending), (0, 0));
    assert_eq!(stripe.created_customers().len(), 1);
}

#[tokio::test]
async fn a_customer_stripe_would_not_make_is_made_by_the_reconcile() {
    let stripe = StripeStub::start().await;
    let app = TestApp::with_stripe(&stripe, &[("AUTH0_WEBHOOK_SECRET", SECRET.to_owned())]).await;
    stripe.fail_customers(1_000);
    let r = send(&app, &created("evt_g1", "org_globo9", "globo", "Globo")).await;
    // The tenant exists (its people can sign in); the event is acknowledged.
    assert_eq!(
        (r.status, &r.json["applied"]),
        (200, &json!(1)),
        "{}",
        r.json
    );
    let (tenant, _, _, pending, error, linked) = tenant_of(&app, "org_globo9").await[0].clone();
    assert!(pending);
    assert!(
        error.as_deref().is_some_and(|e| e.contains("429")),
        "{error:?}"
    );
    assert_eq!(linked, None);
    // Still refused: still pending, counted as such.
    let out = reconcile(&app).await;
    assert_eq!((out.customers_linked, out.customers_pending), (0, 1));
    assert!(stripe.created_customers().is_empty());
    // Stripe takes it again: the reconcile makes the customer, once.
    stripe.fail_customers(0);
    let out = reconcile(&app).await;
    assert_eq!((out.customers_linked, out.customers_pending), (1, 0));
    let out = reconcile(&app).await;
    assert_eq!((out.customers_linked, out.customers_pending), (0, 0));
    let customers = stripe.created_customers();
    assert_eq!(customers.len(), 1);
    let (_, _, _, pending, error, linked) = tenant_of(&app, "org_globo9").await[0].clone();
    assert_eq!((pending, error), (false, None));
    assert_eq!(linked.as_deref(), Some(customers[0].id.as_str()));
    let actions: Vec<(String, String)> = audit_actions(&app, tenant)
        .await
        .into_iter()
        .map(|(a, _, actor)| (a, actor))
        .collect();
    assert_eq!(
        actions,
        [
            (
                "tenant.created".to_owned(),
                "system:auth0-webhook".to_owned()
            ),
            (
                "billing.customer_linked".to_owned(),
                "system:billing-reconcile".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn hostile_or_malformed_organizations_change_nothing_they_should_not() {
    let app = TestApp::with_vars(&[("AUTH0_WEBHOOK_SECRET", SECRET.to_owned())]).await;
    let (acme, _) = app.tenant_with_token("acme").await;
    let before: i64 = app
        .db
        .admin()
        .await
        .query_one("SELECT count(*) FROM app.tenants", &[])
        .await
        .unwrap()
        .get(0);
    // Ids Auth0 does not issue, and no id at all: ignored.
    for org in [
        json!("org_../x"),
        json!("acme"),
        json!(""),
        json!(null),
        json!("org_"),
    ] {
        let mut e = created("evt_bad", "org_x", "x", "X");
        e["data"]["object"]["id"] = org.clone();
        e["id"] = json!(format!("evt_bad_{org}"));
        let r = send(&app, &e).await;
        assert_eq!(
            (r.status, &r.json["ignored"]),
            (200, &json!(1)),
            "{org}: {}",
            r.json
        );
    }
    let after: i64 = app
        .db
        .admin()
        .await
        .query_one("SELECT count(*) FROM app.tenants", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, before);
    // An existing tenant's organization "created" again: still one tenant, the same one, unchanged.
    let r = send(&app, &created("evt_re", "org_acme", "evil", "Evil Corp")).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let rows = tenant_of(&app, "org_acme").await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0, rows[0].2.as_str()), (acme, "acme"));
    assert_ne!(rows[0].1, "Evil Corp");
    // Another organization whose name is taken as a slug gets a marked slug, not acme's tenant;
    // a name with control characters and absurd length is cleaned and cut.
    let long = format!("Name\u{0}\u{1b}[31m{}", "x".repeat(10_000));
    let r = send(&app, &created("evt_other", "org_other1", "acme", &long)).await;
    assert_eq!(r.json["applied"], 1, "{}", r.json);
    let other = tenant_of(&app, "org_other1").await;
    assert_eq!(other.len(), 1);
    let (id, name, slug, ..) = other[0].clone();
    assert_ne!(id, acme);
    assert!(
        slug.starts_with("acme-") && slug.len() == "acme-".len() + 6,
        "{slug}"
    );
    assert_eq!(name.chars().count(), 200);
    assert!(!name.chars().any(char::is_control), "{name:?}");
    // Locally the customer comes from the local adapter, linked all the same.
    let linked = other[0].5.clone();
    assert_eq!(linked, Some(format!("cus_local_{}", id.as_uuid().simple())));
}

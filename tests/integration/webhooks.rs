//! Stripe and Auth0 webhooks through the edge, written as the attacks: missing, wrong,
//! stale and replayed credentials; events out of order; a tenant named in metadata.

use serde_json::{Value, json};
use tenantry::TenantId;
use tenantry::billing::customers;
use tenantry::billing::webhooks::stripe_signature_header;
use tenantry_tests::{Reply, TestApp, gateway_event, tx};

const SECRET: &str = "whsec_current";
const OLD_SECRET: &str = "whsec_rolled_out";
const AUTH0_SECRET: &str = "auth0-shared-secret-0123456789";

async fn app(secrets: &str) -> TestApp {
    TestApp::with_vars(&[
        ("STRIPE_WEBHOOK_SECRETS", secrets.to_owned()),
        ("AUTH0_WEBHOOK_SECRET", AUTH0_SECRET.to_owned()),
    ])
    .await
}

async fn stripe(app: &TestApp, body: &str, signature: Option<&str>) -> Reply {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(s) = signature {
        headers.push(("stripe-signature", s));
    }
    app.send(gateway_event(
        "POST",
        "/v1/webhooks/stripe",
        &headers,
        Some(body),
    ))
    .await
}

/// `body` sent with a valid signature by the current secret, made now.
async fn signed(app: &TestApp, body: &str) -> Reply {
    let sig = stripe_signature_header(body.as_bytes(), SECRET, now());
    stripe(app, body, Some(&sig)).await
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn subscription(id: &str, customer: &str, status: &str, created: i64) -> String {
    json!({"id": id, "object": "event", "type": "customer.subscription.updated", "created": created,
           "data": {"object": {"id": "sub_1", "object": "subscription", "customer": customer,
                               "status": status, "metadata": {"tenant_id": "someone-else"}}}})
    .to_string()
}

/// The tenant's audit log as (action, target, actor, status or event id), oldest first, read as
/// the superuser.
async fn audit_log(app: &TestApp, t: TenantId) -> Vec<(String, Option<String>, String, String)> {
    app.db
        .admin()
        .await
        .query(
            "SELECT action, target, actor_id, coalesce(details->>'status', details->>'auth0_event', '') \
             FROM app.audit_events WHERE tenant_id = $1 ORDER BY seq",
            &[&t.as_uuid()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

async fn billed_tenant(app: &TestApp, slug: &str, customer: &str) -> TenantId {
    let (t, _) = app.tenant_with_token(slug).await;
    let mut tx = tx(&app.app.db, t).await;
    customers::link(&mut tx, customer).await.unwrap();
    tx.commit().await.unwrap();
    t
}

async fn state(app: &TestApp, t: TenantId) -> customers::BillingState {
    let mut tx = tx(&app.app.db, t).await;
    let s = customers::state(&mut tx).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    s
}

#[tokio::test]
async fn stripe_signatures_missing_wrong_stale_or_tampered_are_refused() {
    let app = app(SECRET).await;
    let a = billed_tenant(&app, "alpha", "cus_alpha").await;
    let body = subscription("evt_a1", "cus_alpha", "past_due", now());
    let good = stripe_signature_header(body.as_bytes(), SECRET, now());
    let attacks: Vec<(&str, Option<String>, String)> = vec![
        ("missing", None, body.clone()),
        ("garbage", Some("nonsense".into()), body.clone()),
        (
            "wrong secret",
            Some(stripe_signature_header(
                body.as_bytes(),
                "whsec_guess",
                now(),
            )),
            body.clone(),
        ),
        (
            "stale",
            Some(stripe_signature_header(
                body.as_bytes(),
                SECRET,
                // Well past the 300 s either way, so the second the server reads its clock in
                // cannot matter (the exact boundaries are unit-tested with a fixed clock).
                now() - 330,
            )),
            body.clone(),
        ),
        (
            "future",
            Some(stripe_signature_header(
                body.as_bytes(),
                SECRET,
                now() + 330,
            )),
            body.clone(),
        ),
        (
            "tampered body",
            Some(good.clone()),
            body.replace("past_due", "active"),
        ),
        ("v0 only", Some(good.replace("v1=", "v0=")), body.clone()),
    ];
    for (name, sig, payload) in attacks {
        let r = stripe(&app, &payload, sig.as_deref()).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (400, Some("invalid_signature")),
            "{name}"
        );
    }
    assert_eq!(state(&app, a).await.status, "none", "nothing applied");
    let r = stripe(&app, &body, Some(&good)).await;
    assert_eq!((r.status, &r.json["outcome"]), (200, &json!("applied")));
    assert_eq!(state(&app, a).await.status, "past_due");
}

#[tokio::test]
async fn rotated_secrets_verify_during_the_roll() {
    // Two secrets configured (old and new), or a header carrying two v1 values.
    let app = app(&format!("{OLD_SECRET},{SECRET}")).await;
    billed_tenant(&app, "alpha", "cus_alpha").await;
    let body = subscription("evt_r1", "cus_alpha", "active", now());
    let r = stripe(
        &app,
        &body,
        Some(&stripe_signature_header(body.as_bytes(), OLD_SECRET, now())),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);

    let only_new = self::app(SECRET).await;
    billed_tenant(&only_new, "bravo", "cus_bravo").await;
    let body = subscription("evt_r2", "cus_bravo", "active", now());
    let t = now();
    let old = stripe_signature_header(body.as_bytes(), OLD_SECRET, t);
    let new = stripe_signature_header(body.as_bytes(), SECRET, t);
    let both = format!("{old},v1={}", new.split("v1=").nth(1).unwrap());
    let r = stripe(&only_new, &body, Some(&both)).await;
    assert_eq!(r.status, 200, "{}", r.json);
}

#[tokio::test]
async fn replays_and_out_of_order_events_never_move_state_backwards() {
    let app = app(SECRET).await;
    let a = billed_tenant(&app, "alpha", "cus_alpha").await;
    let b = billed_tenant(&app, "bravo", "cus_bravo").await;
    let send = |body: String| {
        let app = &app;
        async move { signed(app, &body).await }
    };
    let t = now() - 1000;
    // Newest first: active at t+20, then the older past_due at t+10 arrives late.
    assert_eq!(
        send(subscription("evt_2", "cus_alpha", "active", t + 20))
            .await
            .json["outcome"],
        "applied"
    );
    assert_eq!(
        send(subscription("evt_1", "cus_alpha", "past_due", t + 10))
            .await
            .json["outcome"],
        "applied"
    );
    assert_eq!(state(&app, a).await.status, "active");
    // Replayed: recognised, nothing changes.
    assert_eq!(
        send(subscription("evt_2", "cus_alpha", "canceled", t + 30))
            .await
            .json["outcome"],
        "duplicate"
    );
    assert_eq!(state(&app, a).await.status, "active");
    // Deleted subscription: canceled, whatever its status says.
    let deleted = json!({"id": "evt_3", "type": "customer.subscription.deleted", "created": t + 40,
        "data": {"object": {"id": "sub_1", "customer": "cus_alpha", "status": "active"}}});
    send(deleted.to_string()).await;
    assert_eq!(state(&app, a).await.status, "canceled");
    // Invoices: the newer failure stands when the older success arrives after it.
    for (id, kind, at) in [
        ("evt_5", "invoice.payment_failed", t + 60),
        ("evt_4", "invoice.paid", t + 50),
    ] {
        let e = json!({"id": id, "type": kind, "created": at,
            "data": {"object": {"id": format!("in_{id}"), "customer": "cus_alpha"}}});
        assert_eq!(send(e.to_string()).await.status, 200);
    }
    let s = state(&app, a).await;
    assert_eq!(
        (
            s.last_invoice_status.as_deref(),
            s.last_invoice_id.as_deref()
        ),
        (Some("payment_failed"), Some("in_evt_5"))
    );
    // Every event above named "someone-else" in metadata; only the customer's tenant changed.
    assert_eq!(state(&app, b).await.status, "none");
    // The attack proper: metadata names B, a real tenant, by its id. For A's customer, A changes
    // and B does not; for a customer we do not bill, nothing changes at all.
    let naming_b = |id: &str, customer: &str, status: &str| {
        json!({"id": id, "object": "event", "type": "customer.subscription.updated", "created": t + 70,
               "data": {"object": {"id": "sub_1", "object": "subscription", "customer": customer,
                                   "status": status, "metadata": {"tenant_id": b.to_string()}}}})
        .to_string()
    };
    let before_b = state(&app, b).await;
    let r = send(naming_b("evt_b1", "cus_alpha", "past_due")).await;
    assert_eq!((r.status, &r.json["outcome"]), (200, &json!("applied")));
    assert_eq!(state(&app, a).await.status, "past_due");
    let r = send(naming_b("evt_b2", "cus_stranger", "canceled")).await;
    assert_eq!((r.status, &r.json["outcome"]), (200, &json!("ignored")));
    let after_b = state(&app, b).await;
    assert_eq!(
        (after_b.status, after_b.last_invoice_status),
        (before_b.status, before_b.last_invoice_status),
        "B's billing state moved through metadata"
    );
    // Each change that took effect is in A's audit log, in order, by the webhook; the late,
    // replayed and foreign events left nothing there, and nothing reached B's.
    let stripe = "system:stripe-webhook".to_owned();
    let entry = |action: &str, target: &str, status: &str| {
        (
            action.to_owned(),
            Some(target.to_owned()),
            stripe.clone(),
            status.to_owned(),
        )
    };
    assert_eq!(
        audit_log(&app, a).await,
        vec![
            entry("billing.status_changed", "sub_1", "active"),
            entry("billing.status_changed", "sub_1", "canceled"),
            entry(
                "billing.invoice_status_changed",
                "in_evt_5",
                "payment_failed"
            ),
            entry("billing.status_changed", "sub_1", "past_due"),
        ]
    );
    assert_eq!(audit_log(&app, b).await, vec![]);
    // A customer we do not bill: acknowledged, ignored.
    let r = send(subscription("evt_9", "cus_stranger", "active", t)).await;
    assert_eq!((r.status, &r.json["outcome"]), (200, &json!("ignored")));
    // Unhandled types are acknowledged too (Stripe would otherwise retry them for days).
    let other =
        json!({"id": "evt_10", "type": "charge.refunded", "created": t, "data": {"object": {}}});
    assert_eq!(send(other.to_string()).await.json["outcome"], "ignored");
}

#[tokio::test]
async fn webhooks_without_configured_secrets_are_refused() {
    let app = TestApp::new().await;
    // What the requests below log (this test's thread only: the runtime is current-thread).
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let body = subscription("evt_1", "cus_x", "active", now());
    let sig = stripe_signature_header(body.as_bytes(), SECRET, now());
    for _ in 0..3 {
        let r = stripe(&app, &body, Some(&sig)).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (503, Some("webhook_not_configured"))
        );
        let r = auth0(
            &app,
            Some("Bearer anything"),
            &member("evt_1", true, "u", 0),
        )
        .await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (503, Some("webhook_not_configured"))
        );
    }
    // The deployment's state, not six failures: refusals at INFO, no ERROR line.
    let text = logs.text();
    assert_eq!(text.matches("webhook_not_configured").count(), 6, "{text}");
    assert!(!text.contains("ERROR"), "{text}");
}

/// A log sink for one test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

async fn auth0(app: &TestApp, authorization: Option<&str>, body: &Value) -> Reply {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    app.send(gateway_event(
        "POST",
        "/v1/webhooks/auth0",
        &headers,
        Some(&body.to_string()),
    ))
    .await
}

fn member(id: &str, added: bool, user: &str, minute: i64) -> Value {
    let time = chrono::DateTime::from_timestamp(1_795_692_000 + minute * 60, 0).unwrap();
    json!({"specversion": "1.0", "id": id, "source": "urn:auth0:tenantry.eu.auth0.com",
           "type": if added { "organization.member.added" } else { "organization.member.deleted" },
           "time": time.to_rfc3339(),
           "data": {"object": {"organization": {"id": "org_alpha", "name": "alpha"},
                               "user": {"user_id": user}}}})
}

async fn seats(app: &TestApp, t: TenantId) -> i64 {
    app.db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM app.members WHERE tenant_id = $1 AND removed_at IS NULL",
            &[&t.as_uuid()],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn auth0_members_drive_seats_once_and_in_order() {
    let app = app(SECRET).await;
    let (a, _) = app.tenant_with_token("alpha").await;
    let good = format!("Bearer {AUTH0_SECRET}");
    let e = member("evt_m1", true, "auth0|ann", 1);
    for (name, header) in [
        ("missing", None),
        ("wrong", Some("Bearer not-the-secret".to_owned())),
        ("prefix", Some(format!("Bearer {}", &AUTH0_SECRET[..10]))),
        ("longer", Some(format!("Bearer {AUTH0_SECRET}x"))),
        ("no scheme", Some(AUTH0_SECRET.to_owned())),
    ] {
        let r = auth0(&app, header.as_deref(), &e).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (401, Some("invalid_webhook_secret")),
            "{name}"
        );
    }
    assert_eq!(seats(&app, a).await, 0);

    let r = auth0(&app, Some(&good), &e).await;
    assert_eq!(r.json, json!({"applied": 1, "duplicates": 0, "ignored": 0}));
    // Replayed: nothing new.
    let r = auth0(&app, Some(&good), &e).await;
    assert_eq!(r.json, json!({"applied": 0, "duplicates": 1, "ignored": 0}));
    // Bob's removal (minute 5) arrives before his addition (minute 2), in one batch.
    let batch = json!([
        member("evt_m3", false, "auth0|bob", 5),
        member("evt_m2", true, "auth0|bob", 2)
    ]);
    let r = auth0(&app, Some(&good), &batch).await;
    assert_eq!(r.json["applied"], 2);
    assert_eq!(
        seats(&app, a).await,
        1,
        "Bob stays removed; Ann is the one seat"
    );
    // Ann leaves and rejoins.
    auth0(&app, Some(&good), &member("evt_m4", false, "auth0|ann", 6)).await;
    assert_eq!(seats(&app, a).await, 0);
    auth0(&app, Some(&good), &member("evt_m5", true, "auth0|ann", 7)).await;
    assert_eq!(seats(&app, a).await, 1);
    // Another organization's events, and other event types: ignored.
    let mut foreign = member("evt_m6", true, "auth0|eve", 8);
    foreign["data"]["object"]["organization"]["id"] = json!("org_unknown");
    let r = auth0(&app, Some(&good), &foreign).await;
    assert_eq!(r.json["ignored"], 1);
    // What changed membership is in the audit log, in order; the replay and Bob's late addition
    // (which changed nothing) are not.
    let auth0 = "system:auth0-webhook".to_owned();
    let entry = |action: &str, user: &str, event: &str| {
        (
            action.to_owned(),
            Some(user.to_owned()),
            auth0.clone(),
            event.to_owned(),
        )
    };
    assert_eq!(
        audit_log(&app, a).await,
        vec![
            entry("member.added", "auth0|ann", "evt_m1"),
            entry("member.removed", "auth0|bob", "evt_m3"),
            entry("member.removed", "auth0|ann", "evt_m4"),
            entry("member.added", "auth0|ann", "evt_m5"),
        ]
    );
    let untraced: i64 = app
        .db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM app.audit_events WHERE tenant_id = $1 AND request_id IS NULL",
            &[&a.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(untraced, 0, "an entry without the delivery's request id");

    // The seats meter counts exactly the current members (a daily snapshot in the ledger).
    let a_app = &app.app;
    tenantry::billing::reconcile::run(
        &a_app.db,
        a_app.billing.as_ref(),
        &a_app.config.billing.meter,
        &a_app.config.billing.plans,
        &Default::default(),
    )
    .await
    .unwrap();
    let snapshot: i64 = app
        .db
        .admin()
        .await
        .query_one(
            "SELECT quantity FROM app.usage_events WHERE tenant_id = $1 AND meter = 'seats'",
            &[&a.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(snapshot, 1);
}

/// User ids Auth0 could not have sent (empty, or longer than any it issues) are ignored, and
/// one at the limit is applied.
#[tokio::test]
async fn auth0_member_ids_outside_what_auth0_issues_are_ignored() {
    let app = app(SECRET).await;
    let (a, _) = app.tenant_with_token("alpha").await;
    let good = format!("Bearer {AUTH0_SECRET}");
    let before = seats(&app, a).await;
    let at_limit = format!("auth0|{}", "x".repeat(250));
    assert_eq!(at_limit.len(), 256);
    let too_long = format!("{at_limit}x");
    for (id, user, applied, seats_after) in [
        ("evt_u1", "", 0, before),
        ("evt_u2", too_long.as_str(), 0, before),
        ("evt_u3", at_limit.as_str(), 1, before + 1),
    ] {
        let r = auth0(&app, Some(&good), &member(id, true, user, 1)).await;
        assert_eq!(r.status, 200, "{id}: {}", r.json);
        assert_eq!(
            r.json,
            json!({"applied": applied, "duplicates": 0, "ignored": 1 - applied}),
            "{id}"
        );
        assert_eq!(seats(&app, a).await, seats_after, "{id}");
    }
}

/// A paid invoice after a failed one brings the tenant's invoice state back to paid (both of
/// Stripe's names for it).
#[tokio::test]
async fn a_newer_paid_invoice_replaces_a_failed_one() {
    let app = app(SECRET).await;
    let a = billed_tenant(&app, "alpha", "cus_alpha").await;
    let t = now() - 1000;
    for (id, kind, at, expect) in [
        ("evt_i1", "invoice.payment_failed", t, "payment_failed"),
        ("evt_i2", "invoice.paid", t + 10, "paid"),
        ("evt_i3", "invoice.payment_failed", t + 20, "payment_failed"),
        ("evt_i4", "invoice.payment_succeeded", t + 30, "paid"),
    ] {
        let body = json!({"id": id, "type": kind, "created": at,
            "data": {"object": {"id": format!("in_{id}"), "customer": "cus_alpha"}}})
        .to_string();
        let r = signed(&app, &body).await;
        assert_eq!(
            (r.status, &r.json["outcome"]),
            (200, &json!("applied")),
            "{id}"
        );
        let s = state(&app, a).await;
        assert_eq!(
            (
                s.last_invoice_status.as_deref(),
                s.last_invoice_id.as_deref()
            ),
            (Some(expect), Some(format!("in_{id}").as_str())),
            "{id}"
        );
    }
}

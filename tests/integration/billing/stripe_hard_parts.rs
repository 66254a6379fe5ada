//! The scenarios that need the Stripe test server's hard parts: summaries that lag, pages, the
//! 24-hour dedupe window (and the check that keeps a resend past it from counting twice),
//! rejections after a 200, and calls that outlive their client.

use tenantry_tests::stripe_stub::DEDUPE_WINDOW;

use super::*;

#[tokio::test]
async fn reconciliation_leaves_a_delivery_in_doubt_alone_and_the_resend_settles_it() {
    // The call in doubt is one the client gave up on: this waits for its timeout to fire.
    let b = setup(1, &[client_timeout(IN_DOUBT_TIMEOUT_MS)]).await;
    clear_of_midnight().await;
    let (t, customer) = b.tenants[0].clone();
    let mut generated = Generated::default();
    // Two closed windows of one meter. Stripe takes the first, but its answer is held until our
    // client has given up: in doubt, the delivery stays pending under its lease, and the second
    // window waits behind it.
    b.record(vec![
        generated.event(t, Meter::Queries, 6, minutes_ago(3)),
        generated.event(t, Meter::Queries, 4, minutes_ago(2)),
    ])
    .await;
    let gate = Gate::new();
    b.stub.fault(&[Fault::AcceptThenHold(gate.clone())]);
    let out = b.flush_tenant(t).await;
    assert_eq!(
        (out.pending, out.delivered, out.calls),
        (2, 0, 1),
        "{out:?}"
    );
    gate.reached().await;
    assert_eq!(b.stub.total(&customer, "tenantry_queries"), 6);
    assert_eq!(b.stub.summarized_total(&customer, "tenantry_queries"), 6);

    // Ledger 10, Stripe 6, nothing delivered as far as our records go: a naive comparison would
    // take Stripe's 6 back. The pending delivery makes the day in flight instead.
    let r = b.reconcile().await;
    assert_eq!(r.repaired, 0, "{r:?}");
    assert_eq!(r.in_flight, 1, "{r:?}");
    assert!(b.repairs().await.is_empty());
    assert_eq!(b.stub.meter_event_calls(), 1, "the lease holds the meter");
    assert_eq!(b.stub.total(&customer, "tenantry_queries"), 6);

    // Stripe finishes the call (the answer goes nowhere); the lease runs out; the resend carries
    // the same identifier and gets Stripe's duplicate answer, then the second window goes.
    gate.open();
    gate.passed().await;
    assert_eq!(b.expire_leases().await, 1);
    let out = b.flush_tenant(t).await;
    assert_eq!(
        (out.delivered, out.duplicates, out.calls),
        (2, 1, 2),
        "{out:?}"
    );
    let r = b.reconcile().await;
    assert_eq!((r.in_sync, r.repaired, r.in_flight), (1, 0, 0), "{r:?}");
    assert!(b.repairs().await.is_empty());
    b.assert_totals(&generated).await;
}

#[tokio::test]
async fn reconciliation_during_summary_lag_leaves_the_day_alone_until_it_settles() {
    let b = setup(2, &[("BILLING_SETTLE_SECS", "900".to_owned())]).await;
    clear_of_midnight().await;
    let mut generated = Generated::default();
    let mut events = Vec::new();
    for (i, (t, _)) in b.tenants.iter().enumerate() {
        events.push(generated.event(*t, Meter::Queries, 5 + i as i64, minutes_ago(3)));
        events.push(generated.event(*t, Meter::Questions, 2, minutes_ago(2)));
    }
    b.record(events).await;
    // Stripe takes everything, but its summaries lag ten minutes on its clock, and on top of
    // that the test holds them.
    b.stub.set_summary_lag(std::time::Duration::from_secs(600));
    b.stub.hold_summaries();
    b.flush().await;
    let shown = |b: &Billing| -> Vec<(i64, i64)> {
        b.tenants
            .iter()
            .flat_map(|(_, c)| ["tenantry_queries", "tenantry_questions"].map(|e| (c.clone(), e)))
            .map(|(c, e)| (b.stub.total(&c, e), b.stub.summarized_total(&c, e)))
            .collect()
    };
    assert_eq!(shown(&b), [(5, 0), (2, 0), (6, 0), (2, 0)]);

    // Within the settle window reconciliation leaves every day alone: no correction, nothing
    // sent (a comparison now would bill everything twice).
    let calls = b.stub.meter_event_calls();
    let r = b.reconcile().await;
    assert_eq!((r.repaired, r.in_flight, r.in_sync), (0, 4, 0), "{r:?}");
    assert!(b.repairs().await.is_empty());
    assert_eq!(b.stub.meter_event_calls(), calls);

    // Released, the events are still within their lag; once Stripe's clock passes it they show.
    b.stub.release_summaries();
    assert_eq!(shown(&b), [(5, 0), (2, 0), (6, 0), (2, 0)]);
    b.stub.advance(std::time::Duration::from_secs(600));
    assert_eq!(shown(&b), [(5, 5), (2, 2), (6, 6), (2, 2)]);
    // Consistent now, but still within the settle window: still left alone.
    let r = b.reconcile().await;
    assert_eq!((r.repaired, r.in_flight), (0, 4), "{r:?}");

    // Past the settle window: in sync, nothing to repair.
    b.past_the_settle_window().await;
    let r = b.reconcile().await;
    assert_eq!((r.in_sync, r.repaired, r.in_flight), (4, 0, 0), "{r:?}");
    assert!(b.repairs().await.is_empty());
    assert_eq!(b.stub.meter_event_calls(), calls);
    b.assert_totals(&generated).await;
}

impl Billing {
    /// Moves every delivery's first call 25 hours back, past Stripe's dedupe window (the product's
    /// clock is the database's: as the superuser).
    async fn first_sent_a_day_ago(&self) {
        self.app
            .db
            .admin()
            .await
            .execute(
                "UPDATE app.usage_deliveries SET first_sent_at = first_sent_at - interval '25 hours'",
                &[],
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_resend_after_a_25_hour_outage_settles_from_stripes_summary_and_never_counts_twice() {
    // The call in doubt is one the client gave up on: this waits for its timeout to fire.
    let b = setup(
        1,
        &[
            ("BILLING_SETTLE_SECS", "900".to_owned()),
            client_timeout(IN_DOUBT_TIMEOUT_MS),
        ],
    )
    .await;
    clear_of_midnight().await;
    let (t, customer) = b.tenants[0].clone();
    let mut generated = Generated::default();
    // Two meters, two first calls: Stripe takes the queries event but our client never hears
    // (in doubt); the questions event is refused with a 503 (not taken).
    let at = minutes_ago(3);
    b.record(vec![generated.event(t, Meter::Queries, 8, at)])
        .await;
    let gate = Gate::new();
    b.stub.fault(&[Fault::AcceptThenHold(gate.clone())]);
    let out = b.flush_tenant(t).await;
    assert_eq!((out.pending, out.delivered), (1, 0), "{out:?}");
    gate.open();
    gate.passed().await;
    // (The queries delivery keeps its lease while in doubt: this flush calls for questions only.)
    b.record(vec![generated.event(t, Meter::Questions, 5, at)])
        .await;
    b.stub.fault(&vec![Fault::Status(503); 4]);
    let out = b.flush_tenant(t).await;
    assert_eq!((out.pending, out.delivered), (1, 0), "{out:?}");
    assert_eq!(b.stub.total(&customer, "tenantry_queries"), 8);
    assert_eq!(b.stub.total(&customer, "tenantry_questions"), 0);

    // A 25-hour outage: every call fails, and Stripe's identifier dedupe runs out meanwhile.
    b.stub.set_outage(true);
    b.expire_leases().await;
    let out = b.flush_tenant(t).await;
    assert_eq!(out.delivered, 0, "{out:?}");
    b.stub
        .advance(DEDUPE_WINDOW + std::time::Duration::from_secs(3600));
    b.stub.set_outage(false);
    // Our first calls were made more than a day ago too.
    b.first_sent_a_day_ago().await;
    b.expire_leases().await;

    // The resend asks Stripe's summary first: the queries event is there (settled, not sent
    // again); the questions one is not (sent now).
    let calls = b.stub.meter_event_calls();
    let summaries = b.stub.summary_requests().len();
    let out = b.flush_tenant(t).await;
    assert_eq!((out.delivered, out.duplicates), (2, 1), "{out:?}");
    assert_eq!(
        b.stub.meter_event_calls(),
        calls + 1,
        "only the absent one is sent"
    );
    assert_eq!(b.stub.summary_requests().len(), summaries + 2);
    let id = tenantry::billing::meter::identifier(
        t,
        Meter::Queries,
        tenantry::usage::window_start(at, 60),
        0,
    );
    assert_eq!(
        b.stub
            .events()
            .iter()
            .filter(|e| e.identifier == id)
            .count(),
        1,
        "never taken twice"
    );
    assert_eq!(b.stub.total(&customer, "tenantry_queries"), 8);
    assert_eq!(b.stub.total(&customer, "tenantry_questions"), 5);

    // Nothing for reconciliation to take back.
    b.past_the_settle_window().await;
    let r = b.reconcile().await;
    assert_eq!((r.repaired, r.in_flight), (0, 0), "{r:?}");
    b.assert_totals(&generated).await;
}

#[tokio::test]
async fn a_correction_in_the_same_window_does_not_confuse_the_check_past_the_dedupe_window() {
    let b = setup(1, &[client_timeout(IN_DOUBT_TIMEOUT_MS)]).await;
    clear_of_midnight().await;
    let (t, customer) = b.tenants[0].clone();
    let mut generated = Generated::default();
    let at = minutes_ago(3);
    // The window's first event: Stripe takes it, our client never hears.
    b.record(vec![generated.event(t, Meter::Queries, 8, at)])
        .await;
    let gate = Gate::new();
    b.stub.fault(&[Fault::AcceptThenHold(gate.clone())]);
    b.flush_tenant(t).await;
    gate.open();
    gate.passed().await;
    // A late event for the same window (a correction, stamped at the same time) queues behind
    // it; an outage keeps both from going out, and lasts past Stripe's dedupe window.
    b.record(vec![generated.event(t, Meter::Queries, 3, at)])
        .await;
    b.stub.set_outage(true);
    b.expire_leases().await;
    b.flush_tenant(t).await;
    b.stub
        .advance(DEDUPE_WINDOW + std::time::Duration::from_secs(3600));
    b.stub.set_outage(false);
    b.first_sent_a_day_ago().await;
    b.expire_leases().await;
    // The first is settled from the summary (Stripe has 8 in the range; the correction was never
    // sent), the correction is sent: 11, once each.
    let calls = b.stub.meter_event_calls();
    let out = b.flush_tenant(t).await;
    assert_eq!((out.delivered, out.duplicates), (2, 1), "{out:?}");
    assert_eq!(b.stub.meter_event_calls(), calls + 1);
    assert_eq!(b.stub.total(&customer, "tenantry_queries"), 11);
    b.past_the_settle_window().await;
    let r = b.reconcile().await;
    assert_eq!((r.repaired, r.in_flight), (0, 0), "{r:?}");
    b.assert_totals(&generated).await;
}

#[tokio::test]
async fn a_resend_past_the_dedupe_window_that_stripes_summary_cannot_explain_is_left_to_support() {
    let b = setup(1, &[client_timeout(IN_DOUBT_TIMEOUT_MS)]).await;
    clear_of_midnight().await;
    let (t, customer) = b.tenants[0].clone();
    let at = minutes_ago(3);
    b.record(vec![event(t, Meter::Queries, 8, at)]).await;
    b.stub.fault(&vec![Fault::Status(503); 4]);
    b.flush_tenant(t).await;
    // Something else put 3 in the window at Stripe: neither "has it" (8) nor "does not" (0).
    let window = tenantry::usage::window_start(at, 60);
    b.stub
        .inject(&customer, "tenantry_queries", 3, window.timestamp());
    b.first_sent_a_day_ago().await;
    b.expire_leases().await;
    let calls = b.stub.meter_event_calls();
    let out = b.flush_tenant(t).await;
    assert_eq!((out.failed, out.delivered), (1, 0), "{out:?}");
    assert_eq!(b.stub.meter_event_calls(), calls, "no guess is sent");
    let states = b.delivery_states().await;
    assert_eq!(states[0].3, "failed", "{states:?}");
    let reason: String = b
        .app
        .db
        .admin()
        .await
        .query_one("SELECT reason FROM app.usage_deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reason.contains("Stripe shows 3"), "{reason}");
    // Reconciliation leaves the day to support: no correction that would take the 3 back.
    b.past_the_settle_window().await;
    let r = b.reconcile().await;
    assert_eq!((r.repaired, r.in_flight), (0, 1), "{r:?}");
    assert!(b.repairs().await.is_empty());
}

#[tokio::test]
async fn a_month_of_daily_summaries_is_read_across_pages_and_reconciled_completely() {
    let b = setup(1, &[]).await;
    let today = clear_of_midnight().await;
    let (t, customer) = b.tenants[0].clone();
    let a = &b.app.app;
    // Thirty days of usage, oldest first, a different amount each day.
    let days: Vec<NaiveDate> = (0..30).map(|i| today - chrono::Days::new(29 - i)).collect();
    let mut generated = Generated::default();
    let mut per_day = BTreeMap::new();
    let mut events = Vec::new();
    for (i, day) in days.iter().enumerate() {
        let q = 1 + i as i64;
        per_day.insert(*day, q);
        events.push(generated.event(
            t,
            Meter::Queries,
            q,
            day_start(*day) + chrono::Duration::minutes(1),
        ));
    }
    b.record(events).await;
    b.flush().await;
    b.assert_totals(&generated).await;

    // Pages of 7 (the adapter asks for 100): 30 days take five pages, newest first, and drift on
    // the oldest day is on the last one.
    b.stub.set_summary_page_size(7);
    let injected = b.stub.inject(
        &customer,
        "tenantry_queries",
        100,
        (day_start(days[0]) + chrono::Duration::hours(12)).timestamp(),
    );
    let seen = b.stub.summary_requests().len();
    let from = day_start(days[0]);
    let to = day_start(today) + chrono::Duration::days(1);
    let got = a
        .billing
        .day_totals(Meter::Queries, &customer, from, to)
        .await
        .unwrap();
    let mut expected: Vec<(NaiveDate, i64)> = per_day.iter().map(|(d, q)| (*d, *q)).collect();
    expected[0].1 += 100;
    assert_eq!(got, expected);
    let pages: Vec<_> = b.stub.summary_requests().split_off(seen);
    assert_eq!(
        pages
            .iter()
            .map(|p| (p.status, p.returned, p.has_more))
            .collect::<Vec<_>>(),
        [
            (200, 7, true),
            (200, 7, true),
            (200, 7, true),
            (200, 7, true),
            (200, 2, false)
        ]
    );
    assert!(pages.iter().all(|p| p.limit.as_deref() == Some("100")));
    assert!(pages[0].starting_after.is_none());
    assert!(pages[1..].iter().all(|p| p.starting_after.is_some()));
    assert!(b.stub.lose(&injected));

    // Reconciliation reads the current month. With pages a third of the month's days, the
    // month's first day is on the last page: drift injected there is found and repaired.
    let month_start = today.with_day(1).unwrap();
    let month_days: Vec<NaiveDate> = per_day
        .keys()
        .copied()
        .filter(|d| *d >= month_start)
        .chain([month_start])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let per_page = month_days.len().div_ceil(3);
    b.stub.set_summary_page_size(per_page);
    b.stub.inject(
        &customer,
        "tenantry_queries",
        50,
        (day_start(month_start) + chrono::Duration::hours(12)).timestamp(),
    );
    let seen = b.stub.summary_requests().len();
    let r = b.reconcile().await;
    assert_eq!(
        (r.days_checked, r.in_sync, r.repaired, r.in_flight),
        (month_days.len(), month_days.len() - 1, 1, 0),
        "{r:?}"
    );
    let findings = b.findings(r.run_id).await;
    let repaired: Vec<_> = findings.iter().filter(|f| f.2 == "repaired").collect();
    assert_eq!(repaired.len(), 1, "{findings:?}");
    assert_eq!((repaired[0].1, repaired[0].3), (month_start, Some(-50)));
    assert_eq!(
        b.repairs().await,
        [("queries".to_owned(), -50, "delivered".to_owned())]
    );
    let queries_pages = b.stub.summary_requests()[seen..]
        .iter()
        .filter(|p| p.meter == "mtr_queries")
        .count();
    assert_eq!(queries_pages, month_days.len().div_ceil(per_page));
    let r = b.reconcile().await;
    assert_eq!(r.repaired, 0, "{r:?}");
    b.assert_totals(&generated).await;
}

#[tokio::test]
async fn an_error_report_marks_the_rejected_delivery_alerts_support_and_reconciliation_repairs_it()
{
    let b = setup(1, &[("STRIPE_WEBHOOK_SECRETS", WEBHOOK_SECRET.to_owned())]).await;
    clear_of_midnight().await;
    let (t, customer) = b.tenants[0].clone();
    let mut generated = Generated::default();
    let at = minutes_ago(3);
    let id = tenantry::billing::meter::identifier(
        t,
        Meter::Queries,
        tenantry::usage::window_start(at, 60),
        0,
    );
    b.stub.reject_async(&id, "meter_event_customer_not_found");
    b.record(vec![
        generated.event(t, Meter::Queries, 12, at),
        generated.event(t, Meter::Questions, 3, at),
    ])
    .await;
    let out = b.flush_tenant(t).await;
    assert_eq!(
        (out.delivered, out.failed),
        (2, 0),
        "Stripe answered 200 to both: {out:?}"
    );
    // Stripe then drops the queries event and says so in an error report.
    let reports = b.stub.error_reports();
    assert_eq!(
        reports
            .iter()
            .map(|r| (r.identifier.as_str(), r.code.as_str()))
            .collect::<Vec<_>>(),
        [(id.as_str(), "meter_event_customer_not_found")]
    );
    assert_eq!(b.stub.total(&customer, "tenantry_queries"), 0);
    assert_eq!(b.stub.total(&customer, "tenantry_questions"), 3);

    // The report arrives as a thin event, signed like any webhook; its details are read back.
    let events = b.stub.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["object"], "v2.core.event");
    assert!(
        events[0].get("data").is_none(),
        "a thin event carries no data"
    );
    // While Stripe cannot be asked, the delivery is refused (503) so Stripe redelivers it.
    b.stub.set_outage(true);
    let r = b.send_webhook(&events[0]).await;
    assert_eq!(r.status, 503, "{}", r.json);
    assert_eq!(r.json["code"], "provider_unavailable");
    b.stub.set_outage(false);
    // Delivered (again: a redelivery), it marks the delivery once.
    assert_eq!(b.deliver_webhooks(&events).await, ["applied"]);
    assert_eq!(b.deliver_webhooks(&events).await, ["duplicate"]);
    assert_eq!(b.stub.thin_event_reads(), 3);
    let admin = b.app.db.admin().await;
    let marked: Vec<(String, String, Option<String>)> = admin
        .query(
            "SELECT meter, status, rejected FROM app.usage_deliveries ORDER BY meter",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(marked[0].0, "queries");
    assert_eq!(marked[0].1, "delivered");
    assert!(
        marked[0]
            .2
            .as_deref()
            .is_some_and(|r| r.contains("meter_event_customer_not_found")),
        "{marked:?}"
    );
    assert_eq!(marked[1].2, None, "only the named delivery is marked");
    let audit: Vec<String> = admin
        .query(
            "SELECT details->>'units' FROM app.audit_events \
             WHERE action = 'billing.deliveries_rejected'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(audit, ["12"]);
    // Support finds it.
    let staff = TestApp::staff_token("auth0|support", &["support"]);
    let r = b
        .app
        .call("GET", "/admin/v1/deliveries?status=rejected", &staff, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let found = r.json["deliveries"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{}", r.json);
    assert_eq!(found[0]["identifier"], id.as_str());
    // The alert the template's metric filter counts is the one the handler logs.
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml"),
    )
    .unwrap();
    assert!(template.contains(&format!(
        "$.fields.message = \"{}\"",
        tenantry::billing::webhooks::REJECTED_ALERT
    )));

    // Reconciliation sends the missing 12 again under a new identifier, and says why.
    let r = b.reconcile().await;
    assert_eq!((r.repaired, r.in_sync), (1, 1), "{r:?}");
    assert_eq!(
        b.repairs().await,
        [("queries".to_owned(), 12, "delivered".to_owned())]
    );
    let detail: String = admin
        .query_one(
            "SELECT detail FROM app.billing_reconciliations WHERE action = 'repaired'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(detail.contains("12 unit(s) rejected by Stripe"), "{detail}");
    let r = b.reconcile().await;
    assert_eq!((r.repaired, r.in_sync), (0, 2), "{r:?}");
    b.assert_totals(&generated).await;
}

#[tokio::test]
async fn thin_events_are_verified_and_read_back_never_trusted() {
    let b = setup(1, &[("STRIPE_WEBHOOK_SECRETS", WEBHOOK_SECRET.to_owned())]).await;
    let (t, _) = b.tenants[0].clone();
    b.record(vec![event(t, Meter::Queries, 4, minutes_ago(3))])
        .await;
    b.flush_tenant(t).await;
    let id = tenantry::billing::meter::identifier(
        t,
        Meter::Queries,
        tenantry::usage::window_start(minutes_ago(3), 60),
        0,
    );
    // An attacker's thin event, with data naming our delivery: unsigned, refused.
    let forged = json!({"id": "evt_forged1", "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered", "created": "2026-12-06T10:00:00Z",
        "data": {"reason": {"error_types": [{"code": "x", "sample_errors": [
            {"error_message": "x", "request": {"identifier": id}}]}]}}});
    let r = b
        .app
        .send(tenantry_tests::gateway_event(
            "POST",
            "/v1/webhooks/stripe",
            &[
                ("content-type", "application/json"),
                (
                    "stripe-signature",
                    &format!("t={},v1=00", Utc::now().timestamp()),
                ),
            ],
            Some(&forged.to_string()),
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.json);
    // Signed (a leaked secret, say) but unknown to Stripe: its own data is never read.
    assert_eq!(b.deliver_webhooks(&[forged]).await, ["ignored"]);
    let reason: Option<String> = b
        .app
        .db
        .admin()
        .await
        .query_one("SELECT reason FROM app.usage_deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason, None);
    // Identifiers that are not ours, or name no delivery, change nothing.
    for bad in [
        "tnt_zz",
        "tnt_0190000000007000800000000000a0e1",
        "cus_1",
        "",
    ] {
        assert_eq!(
            tenantry::billing::webhooks::tenant_of_identifier(bad),
            None,
            "{bad}"
        );
    }
    assert_eq!(
        tenantry::billing::webhooks::tenant_of_identifier(&id),
        Some(t)
    );
}

//! Billing periods as Stripe bills them: a subscription that starts mid-month, its periods learnt
//! from webhooks (in any order, or not at all: then read from Stripe), the previous period open
//! until its invoice is finalized, and late usage billed in the next period — to the unit, in
//! the ledger, in Stripe's invoices and in what the tenant is shown.

use serde_json::Value;

use super::*;

async fn setup_periods() -> Billing {
    let b = setup(
        1,
        &[
            ("STRIPE_WEBHOOK_SECRETS", WEBHOOK_SECRET.to_owned()),
            ("BILLING_SETTLE_SECS", "900".to_owned()),
        ],
    )
    .await;
    clear_of_midnight().await;
    b
}

/// An anchor at an odd time of day, `days` ago.
fn anchor(days: i64) -> DateTime<Utc> {
    let t = Utc::now() - chrono::Duration::days(days);
    t.date_naive().and_hms_opt(13, 37, 11).unwrap().and_utc()
}

impl Billing {
    /// The tenant's periods: (start, end, finalized), oldest first, as the superuser.
    async fn periods(&self) -> Vec<(DateTime<Utc>, DateTime<Utc>, bool)> {
        self.app
            .db
            .admin()
            .await
            .query(
                "SELECT period_start, period_end, finalized_at IS NOT NULL \
                 FROM app.billing_periods ORDER BY period_start",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// `GET /v1/usage` as the first tenant's owner.
    pub(super) async fn usage(&self) -> Value {
        let token = tenantry_tests::issuer()
            .token(
                "auth0|u",
                "org_billed-0",
                &["owner"],
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let r = self.app.call("GET", "/v1/usage", &token, None).await;
        assert_eq!(r.status, 200, "{}", r.json);
        r.json
    }

    /// Deliveries: (window_start, event_time, late, value, status), in window order.
    async fn deliveries(&self) -> Vec<(DateTime<Utc>, DateTime<Utc>, bool, i64, String)> {
        self.app
            .db
            .admin()
            .await
            .query(
                "SELECT window_start, event_time, late, value, status FROM app.usage_deliveries \
                 ORDER BY window_start, seq",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect()
    }
}

fn month_after(t: DateTime<Utc>) -> DateTime<Utc> {
    t.checked_add_months(chrono::Months::new(1)).unwrap()
}

#[tokio::test]
async fn a_mid_month_subscription_keeps_its_last_period_open_until_finalized_then_bills_late_usage_in_the_next()
 {
    let b = setup_periods().await;
    let (t, customer) = b.tenants[0].clone();
    let q = "tenantry_queries";
    // Subscribed 40 days ago at 13:37:11: the first period ended 9 or 10 days ago, and its
    // invoice is still a draft (held).
    let a0 = anchor(40);
    let (p0, p1) = (a0, month_after(a0));
    b.stub.hold_invoices();
    b.stub.subscribe(&customer, a0);
    let events = b.stub.take_events();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "customer.subscription.created",
            "customer.subscription.updated"
        ]
    );
    // Out of order and twice: the same periods.
    let mut reversed = events.clone();
    reversed.reverse();
    assert_eq!(b.deliver_webhooks(&reversed).await, ["applied", "applied"]);
    assert_eq!(
        b.deliver_webhooks(&events).await,
        ["duplicate", "duplicate"]
    );
    assert_eq!(
        b.periods().await,
        [(p0, p1, false), (p1, month_after(p1), false)]
    );

    // The tenant sees the subscription's period, and the last one still waiting for its invoice.
    let u = b.usage().await;
    assert_eq!(u["period"]["source"], "subscription", "{u}");
    assert_eq!(
        u["period"]["start"],
        p1.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert_eq!(u["awaiting_invoice"].as_array().unwrap().len(), 1, "{u}");

    // Usage in the previous period (open) is billed there; this period's, here.
    let mut generated = Generated::default();
    let in_p0 = p1 - chrono::Duration::days(1);
    b.record(vec![
        generated.event(t, Meter::Queries, 5, in_p0),
        generated.event(t, Meter::Queries, 7, minutes_ago(3)),
    ])
    .await;
    b.flush_tenant(t).await;
    assert_eq!(b.stub.invoiced(&customer, q, p0), 5);
    assert_eq!(b.stub.invoiced(&customer, q, p1), 7);
    assert!(b.deliveries().await.iter().all(|d| d.0 == d.1 && !d.2));

    // Stripe finalizes the previous period's invoice; the webhook closes the period.
    b.stub.release_invoices();
    let events = b.stub.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "invoice.finalized");
    assert_eq!(b.deliver_webhooks(&events).await, ["applied"]);
    assert_eq!(
        b.periods().await,
        [(p0, p1, true), (p1, month_after(p1), false)]
    );

    // The stub bills like Stripe: an event stamped in the finalized period is taken and never
    // billed — which is what a delivery stamped where its usage happened would now get.
    let naive = b
        .stub
        .inject(&customer, "tenantry_questions", 1000, in_p0.timestamp());
    assert_eq!(b.stub.total(&customer, "tenantry_questions"), 1000);
    assert_eq!(b.stub.invoiced(&customer, "tenantry_questions", p0), 0);
    assert_eq!(b.stub.invoiced(&customer, "tenantry_questions", p1), 0);
    assert!(b.stub.lose(&naive));

    // Usage for the finalized period arrives late: billed at the next period's start.
    b.record(vec![generated.event(
        t,
        Meter::Queries,
        11,
        in_p0 - chrono::Duration::hours(5),
    )])
    .await;
    let out = b.flush_tenant(t).await;
    assert_eq!((out.delivered, out.failed), (1, 0), "{out:?}");
    let late: Vec<_> = b.deliveries().await.into_iter().filter(|d| d.2).collect();
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!((late[0].1, late[0].3), (p1, 11));
    assert_eq!(
        b.stub.invoiced(&customer, q, p0),
        5,
        "the finalized invoice is unchanged"
    );
    assert_eq!(b.stub.invoiced(&customer, q, p1), 7 + 11);
    // Ledger = what Stripe bills over both invoices, to the unit.
    assert_eq!(generated.get(t, Meter::Queries), 5 + 7 + 11);
    assert_eq!(b.stub.total(&customer, q), 5 + 7 + 11);

    // What the tenant is shown: this period bills 18, of which 11 late; 7 recorded in it.
    let u = b.usage().await;
    let queries = u["meters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["meter"] == "queries")
        .unwrap()
        .clone();
    assert_eq!(
        (
            &queries["recorded"],
            &queries["acknowledged"],
            &queries["late"],
            &queries["unsent"]
        ),
        (&json!(7), &json!(18), &json!(11), &json!(0)),
        "{u}"
    );
    assert!(u["awaiting_invoice"].as_array().unwrap().is_empty(), "{u}");

    // Reconciliation compares from the open period's first day: in sync, the late units counted
    // on the day they are billed, nothing repaired, each row naming its period.
    b.past_the_settle_window().await;
    let r = b.reconcile().await;
    assert_eq!((r.repaired, r.in_flight), (0, 0), "{r:?}");
    assert!(r.in_sync >= 2, "{r:?}");
    let rows = b
        .app
        .db
        .admin()
        .await
        .query(
            "SELECT day, period_start, ledger_total, stripe_total, drift, detail \
             FROM app.billing_reconciliations WHERE meter = 'queries' ORDER BY day",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for row in &rows {
        let day: NaiveDate = row.get(0);
        assert!(
            day >= p1.date_naive(),
            "a day of a finalized period compared: {day}"
        );
        assert_eq!(row.get::<_, Option<DateTime<Utc>>>(1), Some(p1));
        assert_eq!(row.get::<_, Option<i64>>(4), Some(0));
    }
    let first: &tokio_postgres::Row = &rows[0];
    assert_eq!(first.get::<_, NaiveDate>(0), p1.date_naive());
    assert_eq!(first.get::<_, Option<i64>>(3), Some(11));
    assert!(
        first
            .get::<_, Option<String>>(5)
            .unwrap_or_default()
            .contains("11 late unit"),
    );
    assert!(b.repairs().await.is_empty());
    // The period's bill as Stripe's preview has it (18 queries at the stub's price), kept for
    // the tenant by reconciliation.
    let u = b.usage().await;
    let cents = tenantry_tests::stripe_stub::UNIT_CENTS[0].1;
    assert_eq!(u["estimate"]["amount_due"], 18 * cents, "{u}");
    assert_eq!(u["estimate"]["currency"], "usd");
    assert_eq!(
        u["estimate"]["period_end"],
        month_after(p1).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );

    // The tenant's audit log has the periods and the finalization.
    let actions: Vec<String> = b
        .app
        .db
        .admin()
        .await
        .query(
            "SELECT action FROM app.audit_events WHERE action LIKE 'billing.period%' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        actions,
        [
            "billing.period_recorded",
            "billing.period_recorded",
            "billing.period_finalized"
        ]
    );
}

#[tokio::test]
async fn missed_webhooks_are_repaired_by_reading_the_subscription_and_its_invoices() {
    let b = setup_periods().await;
    let (t, customer) = b.tenants[0].clone();
    let a0 = anchor(40);
    let (p0, p1) = (a0, month_after(a0));
    b.stub.subscribe(&customer, a0);
    // Every webhook is lost.
    assert_eq!(b.stub.take_events().len(), 3);
    assert!(b.periods().await.is_empty());

    // Reconciliation finds no period holding now: it reads the subscription and its invoices.
    let r = b.reconcile().await;
    assert_eq!(r.period_calls, 2, "{r:?}");
    assert_eq!(b.stub.period_reads(), (1, 1));
    assert_eq!(
        b.periods().await,
        [(p0, p1, true), (p1, month_after(p1), false)]
    );
    // Steady state: nothing more to read.
    let r = b.reconcile().await;
    assert_eq!(r.period_calls, 0, "{r:?}");
    assert_eq!(b.stub.period_reads(), (1, 1));

    // Usage for the finalized period goes to the next, as if the webhooks had come.
    let mut generated = Generated::default();
    b.record(vec![generated.event(
        t,
        Meter::Questions,
        4,
        p1 - chrono::Duration::days(2),
    )])
    .await;
    b.flush_tenant(t).await;
    assert_eq!(b.stub.invoiced(&customer, "tenantry_questions", p0), 0);
    assert_eq!(b.stub.invoiced(&customer, "tenantry_questions", p1), 4);
    assert_eq!(b.stub.total(&customer, "tenantry_questions"), 4);
}

#[tokio::test]
async fn a_plan_change_that_resets_the_anchor_cuts_the_period_short_and_a_delivery_never_sent_moves_to_the_next()
 {
    let b = setup_periods().await;
    let (t, customer) = b.tenants[0].clone();
    let a0 = anchor(10);
    let sub = b.stub.subscribe(&customer, a0);
    b.deliver_webhooks(&b.stub.take_events()).await;
    // Usage in the current period, two windows, planned while Stripe is down: the first is
    // called (and refused, 503: as far as we know Stripe may have it), the second never is.
    let mut generated = Generated::default();
    b.record(vec![
        generated.event(t, Meter::Queries, 9, minutes_ago(4)),
        generated.event(t, Meter::Queries, 2, minutes_ago(2)),
    ])
    .await;
    b.stub.set_outage(true);
    b.flush_tenant(t).await;
    b.stub.set_outage(false);
    let admin = b.app.db.admin().await;
    let sent: Vec<bool> = admin
        .query(
            "SELECT first_sent_at IS NOT NULL FROM app.usage_deliveries ORDER BY window_start",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sent, [true, false]);
    admin
        .execute("UPDATE app.usage_deliveries SET lease_until = NULL", &[])
        .await
        .unwrap();

    // A plan change resets the anchor now: the period ends here and its invoice is finalized an
    // hour later, before the delivery goes out.
    b.stub.reset_anchor(&sub);
    let cut = b.stub.now();
    b.stub.advance(std::time::Duration::from_secs(3600));
    let events = b.stub.take_events();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["customer.subscription.updated", "invoice.finalized"]
    );
    // The invoice first: its end alone must close the period the plan change cut short.
    let reversed: Vec<Value> = events.iter().rev().cloned().collect();
    b.deliver_webhooks(&reversed[..1]).await;
    assert_eq!(b.periods().await, [(a0, cut, true)]);
    b.deliver_webhooks(&reversed[1..]).await;
    let periods = b.periods().await;
    assert_eq!(periods.len(), 2, "{periods:?}");
    assert_eq!(periods[0], (a0, cut, true));
    assert_eq!((periods[1].0, periods[1].2), (cut, false));

    // The one never sent moves to the new period (nothing went out under its identifier); the
    // one called keeps its time, and Stripe takes it into the finalized period, where it is
    // never billed (README, "What is not covered yet": reconciliation cannot see it either).
    let out = b.flush_tenant(t).await;
    assert_eq!(out.delivered, 2, "{out:?}");
    let d = b.deliveries().await;
    assert_eq!(
        d.iter().map(|d| (d.1 == cut, d.2, d.3)).collect::<Vec<_>>(),
        [(false, false, 9), (true, true, 2)],
        "{d:?}"
    );
    assert_eq!(b.stub.invoiced(&customer, "tenantry_queries", cut), 2);
    assert_eq!(b.stub.invoiced(&customer, "tenantry_queries", a0), 0);
    assert_eq!(b.stub.total(&customer, "tenantry_queries"), 11);
    assert_eq!(generated.get(t, Meter::Queries), 11);
}

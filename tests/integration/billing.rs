//! Usage billing end to end against a local Stripe test server over real HTTP: the `usage-meter`
//! handler, the outbox, the Stripe adapter (async-stripe), and reconciliation. After every
//! scenario the ledger's totals equal Stripe's, per tenant and meter, exactly.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use tenantry::TenantId;
use tenantry::billing::meter::{FlushMemo, MeterConfig, UsageMessage, flush_tenant, handle_sqs};
use tenantry::billing::reconcile::{Mode, ReconcileInput, run};
use tenantry::billing::{BillingSink, MeterEvent, Sent, SinkError, SinkFuture, customers};
use tenantry::usage::{Meter, UsageEvent};
use tenantry_tests::{Fault, StripeStub, TestApp, tenant, tx};

struct Billing {
    stub: StripeStub,
    app: TestApp,
    tenants: Vec<(TenantId, String)>,
}

/// `n` tenants, each linked to its own Stripe customer.
async fn setup(n: usize, extra: &[(&str, String)]) -> Billing {
    let stub = StripeStub::start().await;
    let app = TestApp::with_stripe(&stub, extra).await;
    let mut tenants = Vec::new();
    for i in 0..n {
        let slug = format!("billed-{i}");
        let t = tenant(&app.app.db, &slug).await;
        let customer = stub.customer(&format!("cus_billed{i}"));
        let mut tx = tx(&app.app.db, t).await;
        customers::link(&mut tx, &customer).await.unwrap();
        tx.commit().await.unwrap();
        tenants.push((t, customer));
    }
    Billing { stub, app, tenants }
}

fn event(tenant: TenantId, meter: Meter, quantity: i64, at: DateTime<Utc>) -> UsageEvent {
    UsageEvent {
        event_id: uuid::Uuid::now_v7(),
        tenant_id: tenant,
        meter,
        quantity,
        occurred_at: at,
        source: "test".into(),
    }
}

fn minutes_ago(m: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::minutes(m)
}

fn sqs(messages: &[(&str, &[UsageEvent])]) -> SqsEvent {
    let mut e = SqsEvent::default();
    for (id, events) in messages {
        let mut m = SqsMessage::default();
        m.message_id = Some((*id).to_owned());
        m.body = Some(
            serde_json::to_string(&UsageMessage {
                events: events.to_vec(),
            })
            .unwrap(),
        );
        e.records.push(m);
    }
    e
}

impl Billing {
    async fn deliver(&self, event: SqsEvent) -> SqsBatchResponse {
        let a = &self.app.app;
        handle_sqs(
            &a.db,
            a.billing.as_ref(),
            &a.config.billing.meter,
            &FlushMemo::default(),
            event,
        )
        .await
    }

    async fn deliver_with(
        &self,
        cfg: &tenantry::billing::meter::MeterConfig,
        event: SqsEvent,
    ) -> SqsBatchResponse {
        let a = &self.app.app;
        handle_sqs(&a.db, a.billing.as_ref(), cfg, &FlushMemo::default(), event).await
    }

    async fn flush(&self) {
        let a = &self.app.app;
        let input = ReconcileInput { mode: Mode::Flush };
        run(&a.db, a.billing.as_ref(), &a.config.billing.meter, &input)
            .await
            .unwrap();
    }

    /// Ledger totals per (tenant, meter), read as the superuser.
    async fn ledger(&self) -> BTreeMap<(TenantId, String), i64> {
        let admin = self.app.db.admin().await;
        admin
            .query(
                "SELECT tenant_id, meter, sum(quantity)::int8 FROM app.usage_events GROUP BY 1, 2",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    (TenantId::from(r.get::<_, uuid::Uuid>(0)), r.get(1)),
                    r.get(2),
                )
            })
            .collect()
    }

    /// Asserts Stripe holds exactly the ledger's totals for every tenant and meter.
    async fn assert_in_step(&self) {
        let ledger = self.ledger().await;
        for (t, customer) in &self.tenants {
            for d in tenantry::usage::METERS {
                let l = ledger.get(&(*t, d.name.to_owned())).copied().unwrap_or(0);
                let s = self.stub.total(customer, d.event_name);
                assert_eq!(l, s, "tenant {t} meter {}: ledger {l}, Stripe {s}", d.name);
            }
        }
        assert_eq!(self.stub.concurrency_violations(), 0);
    }

    async fn delivery_states(&self) -> Vec<(String, i32, i64, String)> {
        let admin = self.app.db.admin().await;
        admin
            .query(
                "SELECT meter, seq, value, status FROM app.usage_deliveries ORDER BY window_start, meter, seq",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }
}

#[tokio::test]
async fn the_same_message_twice_and_concurrently_is_counted_once() {
    let b = setup(2, &[]).await;
    let (t0, t1) = (b.tenants[0].0, b.tenants[1].0);
    let events = [
        event(t0, Meter::Queries, 3, minutes_ago(5)),
        event(t0, Meter::Questions, 1, minutes_ago(5)),
        event(t1, Meter::Queries, 7, minutes_ago(4)),
    ];
    let batch = || sqs(&[("m-1", &events[..2]), ("m-2", &events[2..])]);
    // Delivered, redelivered, and delivered twice at the same moment.
    assert!(b.deliver(batch()).await.batch_item_failures.is_empty());
    assert!(b.deliver(batch()).await.batch_item_failures.is_empty());
    let (x, y) = tokio::join!(b.deliver(batch()), b.deliver(batch()));
    assert!(x.batch_item_failures.is_empty() && y.batch_item_failures.is_empty());
    b.flush().await;

    let ledger = b.ledger().await;
    assert_eq!(ledger[&(t0, "queries".to_owned())], 3);
    assert_eq!(ledger[&(t1, "queries".to_owned())], 7);
    b.assert_in_step().await;
    // One meter event per (tenant, meter, window): three, however often the batch came.
    assert_eq!(b.stub.events().len(), 3);
    assert!(
        b.delivery_states()
            .await
            .iter()
            .all(|(_, seq, _, s)| *seq == 0 && s == "delivered")
    );
}

/// A sink that lets Stripe accept the event and then "crashes" before the answer is recorded.
#[derive(Debug)]
struct CrashAfterSend(Arc<dyn BillingSink>);

impl BillingSink for CrashAfterSend {
    fn kind(&self) -> &'static str {
        "crashing"
    }
    fn send<'a>(&'a self, event: &'a MeterEvent) -> SinkFuture<'a, Sent> {
        Box::pin(async move {
            self.0.send(event).await?;
            Err(SinkError::Retryable("process died before recording".into()))
        })
    }
    fn day_totals<'a>(
        &'a self,
        meter: Meter,
        customer: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> SinkFuture<'a, Vec<(chrono::NaiveDate, i64)>> {
        self.0.day_totals(meter, customer, from, to)
    }
}

#[tokio::test]
async fn a_crash_after_stripe_accepted_is_settled_by_the_duplicate_answer() {
    let b = setup(1, &[("USAGE_LEASE_SECS", "2".to_owned())]).await;
    let (t, _) = b.tenants[0].clone();
    let a = &b.app.app;
    assert!(
        b.deliver(sqs(&[(
            "m",
            &[event(t, Meter::Queries, 5, minutes_ago(3))]
        )]))
        .await
        .batch_item_failures
        .is_empty()
    );
    // handle_sqs already flushed through the real sink; start over with a window of its own.
    let late = event(t, Meter::Questions, 2, minutes_ago(3));
    let cfg = a.config.billing.meter.clone();
    tenantry::billing::meter::record_events(&a.db, cfg.window_secs, vec![late]).await;
    let crashing = CrashAfterSend(Arc::clone(&a.billing));
    let mut once = cfg.clone();
    once.attempts = 1;
    let out = flush_tenant(&a.db, &crashing, &once, t).await.unwrap();
    assert_eq!(out.pending, 1, "{out:?}");
    assert_eq!(
        b.stub.total("cus_billed0", "tenantry_questions"),
        2,
        "Stripe has it"
    );

    // The next run sends the same identifier with the same value: Stripe says duplicate.
    let out = flush_tenant(&a.db, a.billing.as_ref(), &cfg, t)
        .await
        .unwrap();
    assert_eq!((out.delivered, out.duplicates), (1, 1), "{out:?}");
    b.assert_in_step().await;

    // The same through a timeout: Stripe records the event, the answer never comes in time
    // (the client gives up after 1.5 s, Stripe answers after 2.5 s).
    b.stub
        .fault(&[Fault::AcceptThenHang(std::time::Duration::from_millis(
            2500,
        ))]);
    tenantry::billing::meter::record_events(
        &a.db,
        cfg.window_secs,
        vec![event(t, Meter::IngestedRecords, 40, minutes_ago(3))],
    )
    .await;
    let out = flush_tenant(&a.db, a.billing.as_ref(), &cfg, t)
        .await
        .unwrap();
    assert_eq!(
        (out.pending, out.calls),
        (1, 1),
        "timed out, not retried at once: {out:?}"
    );
    // Within the lease nobody calls Stripe again for this customer and meter.
    let out = flush_tenant(&a.db, a.billing.as_ref(), &cfg, t)
        .await
        .unwrap();
    assert_eq!(out.calls, 0, "{out:?}");
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    let out = flush_tenant(&a.db, a.billing.as_ref(), &cfg, t)
        .await
        .unwrap();
    assert_eq!((out.delivered, out.duplicates), (1, 1), "{out:?}");
    b.assert_in_step().await;
}

#[tokio::test]
async fn a_late_event_becomes_a_deterministic_correction() {
    let b = setup(1, &[]).await;
    let t = b.tenants[0].0;
    let at = minutes_ago(3);
    b.deliver(sqs(&[("m1", &[event(t, Meter::Queries, 10, at)])]))
        .await;
    b.flush().await;
    // Arrives after its window was sent.
    b.deliver(sqs(&[("m2", &[event(t, Meter::Queries, 4, at)])]))
        .await;
    b.flush().await;
    b.flush().await;
    let states = b.delivery_states().await;
    assert_eq!(
        states,
        [
            ("queries".to_owned(), 0, 10, "delivered".to_owned()),
            ("queries".to_owned(), 1, 4, "delivered".to_owned())
        ]
    );
    let ids: Vec<String> = b.stub.events().into_iter().map(|e| e.identifier).collect();
    let window = tenantry::usage::window_start(at, 60);
    assert_eq!(
        ids,
        [0, 1].map(|seq| tenantry::billing::meter::identifier(t, Meter::Queries, window, seq))
    );
    b.assert_in_step().await;
}

#[tokio::test]
async fn a_stripe_outage_leaves_usage_safe_and_recovery_sends_it_all() {
    let b = setup(3, &[]).await;
    // Throttled and failing calls first: retried with backoff, then delivered.
    b.stub.fault(&[Fault::Status(429), Fault::Status(500)]);
    let t0 = b.tenants[0].0;
    b.deliver(sqs(&[(
        "m0",
        &[event(t0, Meter::Queries, 1, minutes_ago(3))],
    )]))
    .await;
    assert_eq!(b.stub.meter_event_calls(), 3);
    b.assert_in_step().await;

    // A whole batch during an outage: the messages still succeed (the ledger has them).
    b.stub.set_outage(true);
    let events: Vec<UsageEvent> = b
        .tenants
        .iter()
        .flat_map(|(t, _)| {
            [
                event(*t, Meter::Queries, 2, minutes_ago(3)),
                event(*t, Meter::Questions, 5, minutes_ago(2)),
            ]
        })
        .collect();
    let r = b.deliver(sqs(&[("m1", &events)])).await;
    assert!(r.batch_item_failures.is_empty());
    b.flush().await;
    assert_eq!(b.stub.events().len(), 1, "nothing got through the outage");
    assert!(
        b.delivery_states()
            .await
            .iter()
            .filter(|(_, _, _, s)| s == "pending")
            .count()
            >= 3
    );
    b.stub.set_outage(false);
    b.flush().await;
    b.assert_in_step().await;
    assert!(
        b.delivery_states()
            .await
            .iter()
            .all(|(_, _, _, s)| s == "delivered")
    );
}

#[tokio::test]
async fn refusals_and_out_of_range_timestamps_are_recorded_not_retried_forever() {
    let b = setup(2, &[]).await;
    let (t0, t1) = (b.tenants[0].0, b.tenants[1].0);
    // t1's customer does not exist at Stripe: a 4xx, recorded with the reason.
    let mut tx = tx(&b.app.app.db, t1).await;
    customers::link(&mut tx, "cus_unknown").await.unwrap();
    tx.commit().await.unwrap();
    let too_old = Utc::now() - chrono::Duration::days(40);
    b.deliver(sqs(&[
        ("m0", &[event(t0, Meter::Queries, 6, too_old)]),
        ("m1", &[event(t1, Meter::Queries, 2, minutes_ago(3))]),
    ]))
    .await;
    let calls = b.stub.meter_event_calls();
    b.flush().await;
    b.flush().await;
    assert_eq!(b.stub.meter_event_calls(), calls, "nothing retried");
    let admin = b.app.db.admin().await;
    let rows: Vec<(String, Option<String>)> = admin
        .query(
            "SELECT status, reason FROM app.usage_deliveries ORDER BY status",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, "expired");
    assert!(rows[0].1.as_deref().unwrap().contains("35 days"));
    assert_eq!(rows[1].0, "failed");
    assert!(
        rows[1].1.as_deref().unwrap().contains("No such customer"),
        "{rows:?}"
    );
    assert!(b.stub.events().is_empty(), "never sent blindly");
}

#[tokio::test]
async fn drift_in_stripe_is_found_and_repaired_by_reconciliation() {
    let b = setup(2, &[]).await;
    let (t0, t1) = (b.tenants[0].0, b.tenants[1].0);
    let at = minutes_ago(3);
    b.deliver(sqs(&[(
        "m",
        &[
            event(t0, Meter::Queries, 10, at),
            event(t1, Meter::Questions, 4, at),
        ],
    )]))
    .await;
    b.flush().await;
    b.assert_in_step().await;
    // Stripe gains 7 it never got from us, and loses one event it had.
    b.stub
        .inject("cus_billed0", "tenantry_queries", 7, at.timestamp());
    let lost = b
        .stub
        .events()
        .into_iter()
        .find(|e| e.customer == "cus_billed1")
        .unwrap();
    assert!(b.stub.lose(&lost.identifier));

    let a = &b.app.app;
    let out = run(
        &a.db,
        a.billing.as_ref(),
        &a.config.billing.meter,
        &ReconcileInput::default(),
    )
    .await
    .unwrap();
    assert_eq!(out.repaired, 2, "{out:?}");
    // Snapshots were written too (seats: each tenant has no members, so none; storage none).
    b.assert_in_step().await;
    assert_eq!(b.stub.total("cus_billed0", "tenantry_queries"), 10);
    assert_eq!(b.stub.total("cus_billed1", "tenantry_questions"), 4);

    // The findings are recorded for the tenant, and a second run finds nothing to repair.
    let r = b
        .app
        .call(
            "GET",
            "/v1/usage",
            &tenantry_tests::issuer()
                .token(
                    "auth0|u",
                    "org_billed-0",
                    &[],
                    std::time::Duration::from_secs(60),
                )
                .unwrap(),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let issues = r.json["last_reconciliation"]["issues"].as_array().unwrap();
    assert_eq!(issues.len(), 1, "{}", r.json);
    assert_eq!(issues[0]["action"], "repaired");
    assert_eq!(issues[0]["drift"], -7);
    let again = run(
        &a.db,
        a.billing.as_ref(),
        &a.config.billing.meter,
        &ReconcileInput::default(),
    )
    .await
    .unwrap();
    assert_eq!(again.repaired, 0, "{again:?}");
    b.assert_in_step().await;
}

#[tokio::test]
async fn a_burst_of_100k_events_across_200_tenants_bills_exactly() {
    let b = setup(200, &[]).await;
    let meters = [Meter::Queries, Meter::Questions, Meter::IngestedRecords];
    let mut batches = Vec::new();
    let mut n = 0u64;
    for chunk in 0..100 {
        let mut messages: Vec<(String, Vec<UsageEvent>)> = Vec::new();
        for m in 0..10 {
            let events: Vec<UsageEvent> = (0..100)
                .map(|i| {
                    n += 1;
                    let k = (chunk * 1000 + m * 100 + i) as usize;
                    let (t, _) = b.tenants[k % 200];
                    event(
                        t,
                        meters[k % 3],
                        1 + (k % 5) as i64,
                        minutes_ago(2 + (k % 4) as i64),
                    )
                })
                .collect();
            messages.push((format!("m-{chunk}-{m}"), events));
        }
        batches.push(messages);
    }
    assert_eq!(n, 100_000);
    let calls_before = b.stub.meter_event_calls();
    let mut open = b.app.app.config.billing.meter.clone();
    open.grace_secs = 86_400;
    for messages in &batches {
        let refs: Vec<(&str, &[UsageEvent])> = messages
            .iter()
            .map(|(id, e)| (id.as_str(), e.as_slice()))
            .collect();
        // The burst arrives while its windows are still open (a day of grace here): nothing
        // is sent yet, however many batches touch a window.
        let r = b.deliver_with(&open, sqs(&refs)).await;
        assert!(r.batch_item_failures.is_empty());
    }
    assert_eq!(b.stub.meter_event_calls(), calls_before);
    // The windows close; one flush sends one event per tenant, meter and window.
    b.flush().await;
    let admin = b.app.db.admin().await;
    let count: i64 = admin
        .query_one("SELECT count(*) FROM app.usage_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 100_000);
    b.assert_in_step().await;
    // Stripe calls bounded by tenants x meters x windows (4 one-minute windows here).
    let calls = b.stub.meter_event_calls() - calls_before;
    let windows: i64 = admin
        .query_one(
            "SELECT count(DISTINCT (tenant_id, meter, window_start)) FROM app.usage_events",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        calls, windows as u64,
        "one call per tenant, meter and window"
    );
    assert!(calls <= 200 * 3 * 4, "{calls} calls");
}

#[tokio::test]
async fn the_ledger_is_append_only_and_deliveries_keep_their_value() {
    let b = setup(1, &[]).await;
    let t = b.tenants[0].0;
    b.deliver(sqs(&[(
        "m",
        &[event(t, Meter::Queries, 3, minutes_ago(3))],
    )]))
    .await;
    let mut tx = tx(&b.app.app.db, t).await;
    for attack in [
        "UPDATE app.usage_events SET quantity = 1",
        "DELETE FROM app.usage_events",
        "UPDATE app.usage_deliveries SET value = 1",
        // The identifier derives from (tenant, meter, window, seq): none of them can change.
        "UPDATE app.usage_deliveries SET seq = seq + 1",
        "UPDATE app.usage_deliveries SET window_start = now()",
        "DELETE FROM app.usage_deliveries",
        "UPDATE app.billing_reconciliations SET drift = 0",
    ] {
        let mut probe = tenantry_tests::tx(&b.app.app.db, t).await;
        let err = probe.execute(attack, &[]).await.unwrap_err();
        assert!(err.is_permission_denied(), "{attack}: {err:?}");
    }
    // The same event id again is a no-op, not a second row.
    let e = event(t, Meter::Queries, 3, minutes_ago(1));
    let first = tenantry::usage::ledger::record(&mut tx, &[e.clone(), e.clone()], 60)
        .await
        .unwrap();
    let again = tenantry::usage::ledger::record(&mut tx, &[e], 60)
        .await
        .unwrap();
    assert_eq!((first, again), (1, 0));
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn the_sample_events_are_what_the_functions_take() {
    let b = setup(0, &[]).await;
    let acme = TenantId::from(uuid::Uuid::from_u128(
        0x0190_0000_0000_7000_8000_0000_0000_a0e1,
    ));
    tenantry::tenants::provision(
        &b.app.app.db,
        &tenantry::tenants::NewTenant {
            tenant_id: acme,
            name: "Acme".into(),
            slug: "acme".into(),
            auth0_org_id: Some("org_acme".into()),
            plan: "team".into(),
        },
        "system:test",
    )
    .await
    .unwrap();
    let event: SqsEvent =
        serde_json::from_str(include_str!("../../events/usage-meter/sqs-batch.json")).unwrap();
    let r = b.deliver(event).await;
    let failed: Vec<&str> = r
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        failed,
        ["2e1424d4-f796-459a-8184-9c92662be6da"],
        "only the negative quantity"
    );
    let ledger = b.ledger().await;
    assert_eq!(ledger[&(acme, "queries".to_owned())], 1);
    assert_eq!(ledger[&(acme, "questions".to_owned())], 1);

    for raw in [
        include_str!("../../events/billing-reconcile/reconcile.json"),
        include_str!("../../events/billing-reconcile/flush.json"),
    ] {
        let input: ReconcileInput = serde_json::from_str(raw).unwrap();
        let a = &b.app.app;
        let out = run(&a.db, a.billing.as_ref(), &a.config.billing.meter, &input)
            .await
            .unwrap();
        assert_eq!((out.tenants, out.tenant_errors), (1, 0), "{raw}");
    }
}

#[tokio::test]
async fn billable_requests_queue_their_usage_through_sqs_or_else_the_ledger() {
    let moto = tenantry_tests::Moto::start();
    let (sqs_client, url) = moto.queue("tenantry-usage").await;
    let sdk = moto.sdk_config().await;
    // The HTTP side: usage to SQS (the real SDK, against moto).
    let app = TestApp::with_sdk_vars(&[("USAGE_QUEUE_URL", url.clone())], sdk).await;
    let (t, token) = app.tenant_with_token("alpha").await;
    app.create_dataset(
        &token,
        r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}], "text_columns": ["body"]}"#,
    )
    .await;
    app.ingest(
        &token,
        "notes",
        &serde_json::json!([{"key": "n1", "data": {"body": "Customs held the Lisbon shipment."}},
                            {"key": "n2", "data": {"body": "Refund for the dented box."}}]),
    )
    .await;
    for _ in 0..3 {
        let r = app
            .call("POST", "/v1/query", &token, Some(r#"{"dataset": "notes"}"#))
            .await;
        assert_eq!(r.status, 200, "{}", r.json);
    }
    let r = app
        .call(
            "POST",
            "/v1/ask",
            &token,
            Some(r#"{"question": "What did customs hold?"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);

    // Ingest wrote its event in its own transaction; queries and asks went to the queue.
    let admin = app.db.admin().await;
    let in_ledger = |meter: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "SELECT coalesce(sum(quantity), 0)::int8 FROM app.usage_events WHERE tenant_id = $1 AND meter = $2",
                    &[&t.as_uuid(), &meter],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(in_ledger("ingested_records").await, 2);
    assert_eq!(in_ledger("queries").await, 0, "queued, not yet recorded");
    let event = tenantry_tests::sqs_receive_all(&sqs_client, &url).await;
    assert_eq!(event.records.len(), 4);

    // The usage-meter function takes the batch into the ledger (and again, redelivered).
    let a = &app.app;
    for _ in 0..2 {
        let r = handle_sqs(
            &a.db,
            a.billing.as_ref(),
            &a.config.billing.meter,
            &FlushMemo::default(),
            event.clone(),
        )
        .await;
        assert!(r.batch_item_failures.is_empty());
    }
    assert_eq!(in_ledger("queries").await, 3);
    assert_eq!(in_ledger("questions").await, 1);

    // The queue is gone: usage goes straight to the ledger, and the request still succeeds.
    sqs_client
        .delete_queue()
        .queue_url(&url)
        .send()
        .await
        .unwrap();
    let r = app
        .call("POST", "/v1/query", &token, Some(r#"{"dataset": "notes"}"#))
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(in_ledger("queries").await, 4);

    // Neither queue nor database: the request fails rather than serve unbilled.
    let down = tenantry_tests::unreachable_db();
    let ctx = tenantry_tests::as_tenant(t);
    let err =
        tenantry::usage::queue::emit(a.usage_queue.as_ref(), &down, 60, &ctx, &[event_now(t)])
            .await
            .unwrap_err();
    assert!(err.to_string().contains("usage not recorded"), "{err}");
}

fn event_now(t: TenantId) -> UsageEvent {
    UsageEvent::now(t, Meter::Queries, 1, "test")
}

/// A sink whose calls take `delay` and then fail as "provider unavailable" (never reach Stripe).
#[derive(Debug)]
struct SlowFailing(std::time::Duration);

impl BillingSink for SlowFailing {
    fn kind(&self) -> &'static str {
        "slow-failing"
    }
    fn send<'a>(&'a self, _: &'a MeterEvent) -> SinkFuture<'a, Sent> {
        Box::pin(async move {
            tokio::time::sleep(self.0).await;
            Err(SinkError::Retryable("slow and down".into()))
        })
    }
    fn day_totals<'a>(
        &'a self,
        _: Meter,
        _: &'a str,
        _: DateTime<Utc>,
        _: DateTime<Utc>,
    ) -> SinkFuture<'a, Vec<(chrono::NaiveDate, i64)>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

#[tokio::test]
async fn a_sender_whose_lease_ran_out_cannot_release_another_senders_claim() {
    use std::time::Duration;
    let b = setup(
        1,
        &[
            ("USAGE_LEASE_SECS", "3".to_owned()),
            ("STRIPE_TIMEOUT_MS", "5000".to_owned()),
        ],
    )
    .await;
    let t = b.tenants[0].0;
    let a = &b.app.app;
    let cfg = a.config.billing.meter.clone();
    tenantry::billing::meter::record_events(
        &a.db,
        cfg.window_secs,
        vec![event(t, Meter::Queries, 9, minutes_ago(3))],
    )
    .await;
    // A claims, then spends 4 s in a call that fails: its 3 s lease runs out meanwhile.
    let stale = SlowFailing(Duration::from_secs(4));
    let once = MeterConfig {
        attempts: 1,
        ..cfg.clone()
    };
    let sender_a = async { flush_tenant(&a.db, &stale, &once, t).await.unwrap() };
    // B claims after A's lease ran out and its call takes 2 s (3.5 s .. 5.5 s); A settles at
    // about 4 s, and C tries at 4.5 s, while B's call is in flight.
    b.stub.fault(&[Fault::Slow(Duration::from_secs(2))]);
    let sender_b = async {
        tokio::time::sleep(Duration::from_millis(3500)).await;
        flush_tenant(&a.db, a.billing.as_ref(), &cfg, t)
            .await
            .unwrap()
    };
    let sender_c = async {
        tokio::time::sleep(Duration::from_millis(4500)).await;
        flush_tenant(&a.db, a.billing.as_ref(), &cfg, t)
            .await
            .unwrap()
    };
    let (out_a, out_b, out_c) = tokio::join!(sender_a, sender_b, sender_c);
    assert_eq!((out_a.pending, out_a.calls), (1, 1), "{out_a:?}");
    assert_eq!((out_b.delivered, out_b.calls), (1, 1), "{out_b:?}");
    assert_eq!(out_c.calls, 0, "B still holds the meter: {out_c:?}");
    assert_eq!(b.stub.concurrency_violations(), 0);
    b.assert_in_step().await;
    assert_eq!(b.delivery_states().await[0].3, "delivered");
}

#[tokio::test]
async fn a_revoked_stripe_key_leaves_usage_pending_not_refused() {
    let b = setup(1, &[]).await;
    let t = b.tenants[0].0;
    let a = &b.app.app;
    let mut revoked = a.config.billing.clone();
    revoked.stripe_api_key = Some(tenantry::config::Secret::new("sk_test_revoked"));
    let old_key = tenantry_stripe::StripeBilling::from_config(&revoked)
        .unwrap()
        .unwrap();
    tenantry::billing::meter::record_events(
        &a.db,
        a.config.billing.meter.window_secs,
        vec![event(t, Meter::Questions, 4, minutes_ago(3))],
    )
    .await;
    let out = flush_tenant(&a.db, &old_key, &a.config.billing.meter, t)
        .await
        .unwrap();
    assert_eq!((out.pending, out.failed), (1, 0), "{out:?}");
    // With the current key, it goes through.
    let out = flush_tenant(&a.db, a.billing.as_ref(), &a.config.billing.meter, t)
        .await
        .unwrap();
    assert_eq!(out.delivered, 1, "{out:?}");
    b.assert_in_step().await;
    // In Lambda, a Stripe function refuses to start without a key or a meter id.
    let mut missing = a.config.billing.clone();
    assert!(tenantry_stripe::require_stripe(&missing).is_ok());
    missing.stripe_meter_ids.pop();
    assert!(tenantry_stripe::require_stripe(&missing).is_err());
    missing.stripe_api_key = None;
    assert!(tenantry_stripe::require_stripe(&missing).is_err());
}

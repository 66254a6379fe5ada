//! Usage billing end to end against a local Stripe test server over real HTTP: the `usage-meter`
//! handler, the outbox, the Stripe adapter (async-stripe), and reconciliation. After every
//! scenario the ledger's totals equal Stripe's, per tenant and meter, exactly; the scenarios that
//! model Stripe's hard parts (summaries that lag, pages, a 24-hour dedupe window, rejections after
//! a 200, calls that outlive their client) also check both against what the test itself
//! generated. Ordering comes from gates, notifications and the stub's own clock, never from
//! sleeps; lease and settle windows (the product's `now()` in SQL) are crossed by moving the
//! timestamps in the database as the superuser. Every wait for another task gives up after a
//! minute ([`within`], [`Gate`]) instead of hanging the run, and the scenarios that depend on the
//! calendar stay clear of midnight ([`clear_of_midnight`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde_json::json;
use tenantry::TenantId;
use tenantry::billing::meter::{
    FlushMemo, FlushOutcome, MeterConfig, UsageMessage, flush_tenant, handle_sqs,
};
use tenantry::billing::reconcile::{
    Mode, ReconcileInput, RunOutcome, TenantReport, reconcile_tenant, run,
};
use tenantry::billing::{BillingSink, MeterEvent, Sent, SinkError, SinkFuture, customers};
use tenantry::usage::{Meter, UsageEvent};
use tenantry_tests::stripe_stub::Gate;
use tenantry_tests::{Fault, StripeStub, TestApp, tenant, tx};

mod periods;
mod scale;
mod stripe_hard_parts;

/// The Stripe webhook signing secret of the scenarios that deliver Stripe's events.
const WEBHOOK_SECRET: &str = "whsec_billing";

struct Billing {
    stub: StripeStub,
    app: TestApp,
    tenants: Vec<(TenantId, String)>,
}

/// The Stripe client's timeout (`STRIPE_TIMEOUT_MS`), as a variable for [`setup`].
fn client_timeout(ms: u64) -> (&'static str, String) {
    ("STRIPE_TIMEOUT_MS", ms.to_string())
}

/// The client timeout of the scenarios whose call in doubt is a call that timed out: they wait for
/// this to fire (Stripe holds the answer at a gate until it has), so it is short.
const IN_DOUBT_TIMEOUT_MS: u64 = 1500;

/// The client timeout of every other scenario: far longer than any call takes on a loaded
/// machine, so only a call a test holds on purpose is ever in doubt.
const CLIENT_TIMEOUT_MS: u64 = 60_000;

/// `n` tenants, each linked to its own Stripe customer. `extra` wins over the defaults (including
/// the client timeout, [`CLIENT_TIMEOUT_MS`] unless `extra` sets one).
async fn setup(n: usize, extra: &[(&str, String)]) -> Billing {
    let stub = StripeStub::start().await;
    // The first setting of a name wins: `extra`, then this, then `with_stripe`'s defaults.
    let mut vars = extra.to_vec();
    vars.push(client_timeout(CLIENT_TIMEOUT_MS));
    let app = TestApp::with_stripe(&stub, &vars).await;
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

fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).unwrap().and_utc()
}

/// How long a test waits for something another task must do (a notification, a call at a gate)
/// before it fails instead of hanging the run: 60 s, or `TENANTRY_TEST_WAIT_SECS` (scripts/mutants
/// sets it lower, so a mutant that breaks an ordering fails in seconds rather than a minute).
fn wait() -> std::time::Duration {
    let secs = std::env::var("TENANTRY_TEST_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    std::time::Duration::from_secs(secs)
}

/// Waits for `f`; panics, naming `what` never happened, if it has not finished within [`wait`].
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    let wait = wait();
    tokio::time::timeout(wait, f)
        .await
        .unwrap_or_else(|_| panic!("{what} never happened (waited {wait:?})"))
}

/// How far into a UTC day [`clear_of_midnight`] waits: past the oldest "minutes ago" a scenario
/// stamps (five) and its windows' closing.
const AFTER_MIDNIGHT: chrono::Duration = chrono::Duration::minutes(5);

/// How much of a UTC day's end [`clear_of_midnight`] waits out: far more than any scenario takes
/// from the guard to its last reconciliation, even on a loaded machine.
const BEFORE_MIDNIGHT: chrono::Duration = chrono::Duration::minutes(3);

/// Keeps the calendar out of the assertions of the scenarios that reconcile, or otherwise count
/// on usage stamped "minutes ago" or "today" being today, in the current month (reconciliation
/// reads the current UTC month up to the end of today, and reports per UTC day). Two times of day
/// would break them:
///
/// - the first minutes of a UTC day: usage stamped minutes ago falls on yesterday (on the 1st, in
///   last month, outside the period read) — so in the first [`AFTER_MIDNIGHT`] this waits until
///   then;
/// - the last minutes of one: the scenario would start on one day (on the last of a month, in one
///   month) and reconcile on the next — so in the last [`BEFORE_MIDNIGHT`] this waits until
///   [`AFTER_MIDNIGHT`] into the next day.
///
/// Returns today (UTC), which stays today until the scenario is done as long as it takes less
/// than [`BEFORE_MIDNIGHT`] from here. Call it after `setup` and before stamping any usage. It
/// orders nothing (a sleep of up to eight minutes, and only near midnight).
async fn clear_of_midnight() -> NaiveDate {
    loop {
        let now = Utc::now();
        let today = day_start(now.date_naive());
        let tomorrow = today + chrono::Duration::days(1);
        let until = if now < today + AFTER_MIDNIGHT {
            today + AFTER_MIDNIGHT
        } else if now >= tomorrow - BEFORE_MIDNIGHT {
            tomorrow + AFTER_MIDNIGHT
        } else {
            return now.date_naive();
        };
        // Checked again after the sleep (the wall clock may have been adjusted meanwhile).
        tokio::time::sleep((until - now).to_std().unwrap()).await;
    }
}

/// What a test generated, per tenant and meter: what the ledger and Stripe must end up with.
#[derive(Debug, Default)]
struct Generated(BTreeMap<(TenantId, Meter), i64>);

impl Generated {
    /// A usage event, counted.
    fn event(&mut self, t: TenantId, meter: Meter, quantity: i64, at: DateTime<Utc>) -> UsageEvent {
        *self.0.entry((t, meter)).or_default() += quantity;
        event(t, meter, quantity, at)
    }

    fn get(&self, t: TenantId, meter: Meter) -> i64 {
        self.0.get(&(t, meter)).copied().unwrap_or(0)
    }
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

    /// Sends one Stripe event to the webhook route, signed with [`WEBHOOK_SECRET`].
    async fn send_webhook(&self, event: &serde_json::Value) -> tenantry_tests::Reply {
        let body = event.to_string();
        let sig = tenantry::billing::webhooks::stripe_signature_header(
            body.as_bytes(),
            WEBHOOK_SECRET,
            Utc::now().timestamp(),
        );
        self.app
            .send(tenantry_tests::gateway_event(
                "POST",
                "/v1/webhooks/stripe",
                &[
                    ("content-type", "application/json"),
                    ("stripe-signature", &sig),
                ],
                Some(&body),
            ))
            .await
    }

    /// Delivers Stripe events to the webhook route, signed; asserts each is taken.
    async fn deliver_webhooks(&self, events: &[serde_json::Value]) -> Vec<String> {
        let mut outcomes = Vec::new();
        for e in events {
            let r = self.send_webhook(e).await;
            assert_eq!(r.status, 200, "{}", r.json);
            outcomes.push(r.json["outcome"].as_str().unwrap_or_default().to_owned());
        }
        outcomes
    }

    async fn flush(&self) {
        self.run_all(Mode::Flush).await;
    }

    /// One run over every tenant, whatever its errors.
    async fn run_all(&self, mode: Mode) -> RunOutcome {
        let a = &self.app.app;
        let input = ReconcileInput::all(mode);
        run(
            &a.db,
            a.billing.as_ref(),
            &a.config.billing.meter,
            &a.config.billing.plans,
            &input,
        )
        .await
        .unwrap()
    }

    /// One active tenant's reconciliation under `cfg`, with Stripe's side read through `sink`.
    async fn reconcile_one(
        &self,
        t: TenantId,
        sink: &dyn BillingSink,
        cfg: &MeterConfig,
    ) -> TenantReport {
        let a = &self.app.app;
        reconcile_tenant(
            &a.db,
            sink,
            cfg,
            &a.config.billing.plans,
            t,
            true,
            uuid::Uuid::now_v7(),
        )
        .await
        .unwrap()
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

    /// Asserts the ledger holds exactly what the test generated, per tenant and meter (nothing
    /// else), and that Stripe bills exactly that and its summaries show exactly that.
    async fn assert_totals(&self, generated: &Generated) {
        let ledger = self.ledger().await;
        for ((t, meter), total) in &ledger {
            let m = Meter::from_name(meter).unwrap();
            assert_eq!(
                *total,
                generated.get(*t, m),
                "tenant {t} meter {meter}: ledger {total}, generated {}",
                generated.get(*t, m)
            );
        }
        for (t, customer) in &self.tenants {
            for d in tenantry::usage::METERS {
                let g = generated.get(*t, d.meter);
                let l = ledger.get(&(*t, d.name.to_owned())).copied().unwrap_or(0);
                assert_eq!(
                    l, g,
                    "tenant {t} meter {}: ledger {l}, generated {g}",
                    d.name
                );
                let billed = self.stub.total(customer, d.event_name);
                assert_eq!(
                    billed, g,
                    "tenant {t} meter {}: Stripe bills {billed}, generated {g}",
                    d.name
                );
                let shown = self.stub.summarized_total(customer, d.event_name);
                assert_eq!(
                    shown, g,
                    "tenant {t} meter {}: summaries show {shown}, generated {g}",
                    d.name
                );
            }
        }
        assert_eq!(self.stub.concurrency_violations(), 0);
    }

    async fn record(&self, events: Vec<UsageEvent>) {
        let a = &self.app.app;
        for (t, r) in tenantry::billing::meter::record_events(
            &a.db,
            a.config.billing.meter.window_secs,
            events,
        )
        .await
        {
            assert!(r.is_ok(), "tenant {t}: {r:?}");
        }
    }

    async fn flush_tenant(&self, t: TenantId) -> FlushOutcome {
        let a = &self.app.app;
        flush_tenant(&a.db, a.billing.as_ref(), &a.config.billing.meter, t)
            .await
            .unwrap()
    }

    async fn reconcile(&self) -> RunOutcome {
        let out = self.run_all(Mode::Reconcile).await;
        assert_eq!(out.tenant_errors, 0, "{out:?}");
        out
    }

    /// Runs out every live lease now (as the superuser: the product leases on the database's
    /// clock); returns how many there were.
    async fn expire_leases(&self) -> u64 {
        self.app
            .db
            .admin()
            .await
            .execute(
                "UPDATE app.usage_deliveries SET lease_until = now() - interval '1 second' \
                 WHERE status = 'pending' AND lease_until > now()",
                &[],
            )
            .await
            .unwrap()
    }

    /// Moves every settled delivery back past the settle window (`BILLING_SETTLE_SECS`), as if
    /// that long had passed since.
    async fn past_the_settle_window(&self) {
        let secs = (self.app.app.config.billing.meter.settle_secs + 1) as f64;
        self.app
            .db
            .admin()
            .await
            .execute(
                "UPDATE app.usage_deliveries SET settled_at = settled_at - make_interval(secs => $1) \
                 WHERE settled_at IS NOT NULL",
                &[&secs],
            )
            .await
            .unwrap();
    }

    /// Reconciliation's corrections: (meter, value, status), in the order planned.
    async fn repairs(&self) -> Vec<(String, i64, String)> {
        let admin = self.app.db.admin().await;
        admin
            .query(
                "SELECT meter, value, status FROM app.usage_deliveries WHERE kind = 'repair' \
                 ORDER BY created_at, meter",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// What a run recorded: (meter, day, action, drift).
    async fn findings(&self, run_id: uuid::Uuid) -> Vec<(String, NaiveDate, String, Option<i64>)> {
        let admin = self.app.db.admin().await;
        admin
            .query(
                "SELECT meter, day, action, drift FROM app.billing_reconciliations \
                 WHERE run_id = $1 ORDER BY meter, day",
                &[&run_id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
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
    fn create_customer<'a>(
        &'a self,
        tenant: tenantry::TenantId,
        name: &'a str,
    ) -> SinkFuture<'a, String> {
        self.0.create_customer(tenant, name)
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

    fn window_total<'a>(
        &'a self,
        meter: Meter,
        customer: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> SinkFuture<'a, i64> {
        self.0.window_total(meter, customer, from, to)
    }
}

#[tokio::test]
async fn a_crash_after_stripe_accepted_is_settled_by_the_duplicate_answer() {
    // Its second half waits for the client to give up on a call Stripe holds.
    let b = setup(1, &[client_timeout(IN_DOUBT_TIMEOUT_MS)]).await;
    let (t, _) = b.tenants[0].clone();
    let a = &b.app.app;
    let mut generated = Generated::default();
    assert!(
        b.deliver(sqs(&[(
            "m",
            &[generated.event(t, Meter::Queries, 5, minutes_ago(3))]
        )]))
        .await
        .batch_item_failures
        .is_empty()
    );
    // handle_sqs already flushed through the real sink; start over with a window of its own.
    let late = generated.event(t, Meter::Questions, 2, minutes_ago(3));
    let cfg = a.config.billing.meter.clone();
    b.record(vec![late]).await;
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
    let out = b.flush_tenant(t).await;
    assert_eq!((out.delivered, out.duplicates), (1, 1), "{out:?}");
    b.assert_in_step().await;

    // The same through a timeout: Stripe records the event and holds its answer until the test
    // lets it go; the client gives up first (STRIPE_TIMEOUT_MS).
    let gate = Gate::new();
    b.stub.fault(&[Fault::AcceptThenHold(gate.clone())]);
    b.record(vec![generated.event(
        t,
        Meter::IngestedRecords,
        40,
        minutes_ago(3),
    )])
    .await;
    let out = b.flush_tenant(t).await;
    assert_eq!(
        (out.pending, out.calls),
        (1, 1),
        "timed out, not retried at once: {out:?}"
    );
    // Within the lease nobody calls Stripe again for this customer and meter.
    let out = b.flush_tenant(t).await;
    assert_eq!(out.calls, 0, "{out:?}");
    // Stripe finishes the call (its answer goes nowhere), then the lease runs out.
    gate.open();
    gate.passed().await;
    assert_eq!(b.expire_leases().await, 1);
    let out = b.flush_tenant(t).await;
    assert_eq!((out.delivered, out.duplicates), (1, 1), "{out:?}");
    b.assert_totals(&generated).await;
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
    clear_of_midnight().await;
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

    let out = b.reconcile().await;
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
                    &["owner"],
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
    let again = b.reconcile().await;
    assert_eq!(again.repaired, 0, "{again:?}");
    b.assert_in_step().await;
}

#[tokio::test]
async fn a_burst_of_100k_events_across_200_tenants_bills_exactly() {
    let b = setup(200, &[]).await;
    let meters = [Meter::Queries, Meter::Questions, Meter::IngestedRecords];
    let mut batches = Vec::new();
    let mut n = 0u64;
    let mut generated = Generated::default();
    for chunk in 0..100 {
        let mut messages: Vec<(String, Vec<UsageEvent>)> = Vec::new();
        for m in 0..10 {
            let events: Vec<UsageEvent> = (0..100)
                .map(|i| {
                    n += 1;
                    let k = (chunk * 1000 + m * 100 + i) as usize;
                    let (t, _) = b.tenants[k % 200];
                    generated.event(
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
    // The ledger holds, per tenant and meter, exactly what was generated; Stripe bills exactly
    // that, and its summaries show it.
    assert_eq!(generated.0.len(), 200 * 3);
    assert_eq!(generated.0.values().sum::<i64>(), 300_000);
    b.assert_totals(&generated).await;
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
        serde_json::from_str(include_str!("../../../events/usage-meter/sqs-batch.json")).unwrap();
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
        include_str!("../../../events/billing-reconcile/reconcile.json"),
        include_str!("../../../events/billing-reconcile/flush.json"),
    ] {
        let input: ReconcileInput = serde_json::from_str(raw).unwrap();
        let a = &b.app.app;
        let out = run(
            &a.db,
            a.billing.as_ref(),
            &a.config.billing.meter,
            &a.config.billing.plans,
            &input,
        )
        .await
        .unwrap();
        assert_eq!((out.tenants, out.tenant_errors), (1, 0), "{raw}");
    }
}

#[tokio::test]
async fn queries_record_their_usage_with_their_answer_and_asks_queue_theirs_through_sqs_or_else_the_ledger()
 {
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

    // Ingest and queries wrote their events in their own transactions; the ask's went to the
    // queue.
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
    assert_eq!(in_ledger("queries").await, 3);
    assert_eq!(in_ledger("questions").await, 0, "queued, not yet recorded");
    let event = tenantry_tests::sqs_receive_all(&sqs_client, &url).await;
    assert_eq!(event.records.len(), 1);

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
        .call(
            "POST",
            "/v1/ask",
            &token,
            Some(r#"{"question": "What did customs hold?"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(in_ledger("questions").await, 2);

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

/// A sink whose call waits until the test releases it and then fails as "provider unavailable"
/// (it never reaches Stripe): a sender stalled in its call past its lease.
#[derive(Debug, Default)]
struct Stalled {
    in_call: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl BillingSink for Stalled {
    fn kind(&self) -> &'static str {
        "stalled"
    }
    fn send<'a>(&'a self, _: &'a MeterEvent) -> SinkFuture<'a, Sent> {
        Box::pin(async move {
            self.in_call.notify_one();
            within(
                "the test releasing the stalled call",
                self.release.notified(),
            )
            .await;
            Err(SinkError::Retryable("stalled, then down".into()))
        })
    }
    fn create_customer<'a>(&'a self, _: tenantry::TenantId, _: &'a str) -> SinkFuture<'a, String> {
        Box::pin(async { Err(SinkError::Retryable("stalled, then down".into())) })
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

    fn window_total<'a>(
        &'a self,
        _: Meter,
        _: &'a str,
        _: DateTime<Utc>,
        _: DateTime<Utc>,
    ) -> SinkFuture<'a, i64> {
        Box::pin(async { Ok(0) })
    }
}

#[tokio::test]
async fn a_sender_whose_lease_ran_out_cannot_release_another_senders_claim() {
    // B's call is held at Stripe while A settles and C tries: B's client must not give up (and
    // retry while its first call is still in progress) however long that takes on a loaded
    // machine, nor its lease run out meanwhile.
    let b = setup(
        1,
        &[
            client_timeout(CLIENT_TIMEOUT_MS),
            ("USAGE_LEASE_SECS", "600".into()),
        ],
    )
    .await;
    let t = b.tenants[0].0;
    let a = &b.app.app;
    let cfg = a.config.billing.meter.clone();
    let mut generated = Generated::default();
    b.record(vec![generated.event(t, Meter::Queries, 9, minutes_ago(3))])
        .await;
    let stalled = Stalled::default();
    let once = MeterConfig {
        attempts: 1,
        ..cfg.clone()
    };
    // B's call to Stripe is held in progress until the test opens the gate.
    let b_at_stripe = Gate::new();
    b.stub.fault(&[Fault::Hold(b_at_stripe.clone())]);
    let a_settled = tokio::sync::Notify::new();

    // A claims the delivery and stalls in its call.
    let sender_a = async {
        let out = flush_tenant(&a.db, &stalled, &once, t).await.unwrap();
        a_settled.notify_one();
        out
    };
    let rest = async {
        within(
            "A's call reaching the stalled sink",
            stalled.in_call.notified(),
        )
        .await;
        // A's lease runs out while it is stuck.
        assert_eq!(b.expire_leases().await, 1);
        // B claims it and calls Stripe, and while B's call is in progress:
        let sender_b = async {
            flush_tenant(&a.db, a.billing.as_ref(), &cfg, t)
                .await
                .unwrap()
        };
        let meanwhile = async {
            b_at_stripe.reached().await;
            // A's call fails and A settles what it believes it holds...
            stalled.release.notify_one();
            within("A settling after its call failed", a_settled.notified()).await;
            // ...which changes nothing: B's claim and lease stand.
            let admin = b.app.db.admin().await;
            let row = admin
                .query_one(
                    "SELECT status, claim_id IS NOT NULL, coalesce(lease_until > now(), false) \
                     FROM app.usage_deliveries",
                    &[],
                )
                .await
                .unwrap();
            let held: (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
            // C tries now: B still holds the meter, so C must not call Stripe.
            let out_c = flush_tenant(&a.db, a.billing.as_ref(), &cfg, t)
                .await
                .unwrap();
            b_at_stripe.open();
            (held, out_c)
        };
        tokio::join!(sender_b, meanwhile)
    };
    let (out_a, (out_b, (held, out_c))) = tokio::join!(sender_a, rest);
    assert_eq!((out_a.pending, out_a.calls), (1, 1), "{out_a:?}");
    assert_eq!(
        held,
        ("pending".to_owned(), true, true),
        "A released B's claim"
    );
    assert_eq!(out_c.calls, 0, "B still holds the meter: {out_c:?}");
    assert_eq!((out_b.delivered, out_b.calls), (1, 1), "{out_b:?}");
    assert_eq!(b.stub.meter_event_calls(), 1);
    assert_eq!(b.delivery_states().await[0].3, "delivered");
    b.assert_totals(&generated).await;
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

#[tokio::test]
async fn support_sees_failed_deliveries_and_retries_them_once_the_cause_is_fixed() {
    let b = setup(1, &[]).await;
    clear_of_midnight().await;
    let (t, customer) = b.tenants[0].clone();
    // The customer is wrong at first: Stripe refuses for good, and the delivery is failed.
    let mut t_tx = tx(&b.app.app.db, t).await;
    customers::link(&mut t_tx, "cus_unknown").await.unwrap();
    t_tx.commit().await.unwrap();
    b.deliver(sqs(&[(
        "m",
        &[event(t, Meter::Queries, 4, minutes_ago(3))],
    )]))
    .await;
    b.flush().await;
    let support = TestApp::staff_token("auth0|sam", &["support"]);
    let admin_staff = TestApp::staff_token("auth0|sue", &["support_admin"]);
    let r = b
        .app
        .call("GET", "/admin/v1/deliveries", &support, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let failed = r.json["deliveries"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{}", r.json);
    assert_eq!(failed[0]["tenant_id"], t.to_string());
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("No such customer")
    );
    // Support fixes the link, then retries: plain support may not, support_admin may, with a
    // reason.
    let mut t_tx = tx(&b.app.app.db, t).await;
    customers::link(&mut t_tx, &customer).await.unwrap();
    t_tx.commit().await.unwrap();
    // Until the retry, reconciliation reports the day as refused by Stripe: rejected, never
    // repaired (a correction now would bill the 4 units twice once support retries).
    b.past_the_settle_window().await;
    let a = &b.app.app;
    let r = b
        .reconcile_one(t, a.billing.as_ref(), &a.config.billing.meter)
        .await;
    assert_eq!(
        (r.days_checked, r.in_sync, r.repaired, r.in_flight),
        (1, 0, 0, 0),
        "{r:?}"
    );
    let rows = tenant_findings(&b, t).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("queries", "rejected")
    );
    assert!(
        rows[0]
            .2
            .as_deref()
            .is_some_and(|d| d.starts_with("4 unit(s) refused")),
        "{rows:?}"
    );
    let path = format!("/admin/v1/tenants/{t}/deliveries/retry");
    let body = json!({"reason": "Customer id corrected, SUP-88"}).to_string();
    let r = b.app.call("POST", &path, &support, Some(&body)).await;
    assert_eq!(r.status, 403);
    let r = b
        .app
        .call("POST", &path, &admin_staff, Some(r#"{"reason": "x"}"#))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(b.stub.total(&customer, "tenantry_queries"), 0);
    let r = b.app.call("POST", &path, &admin_staff, Some(&body)).await;
    assert_eq!(
        (r.status, &r.json["retried"], &r.json["flush"]["delivered"]),
        (200, &json!(1), &json!(1)),
        "{}",
        r.json
    );
    assert_eq!(b.stub.total(&customer, "tenantry_queries"), 4);
    // Again: nothing failed, nothing sent twice.
    let r = b.app.call("POST", &path, &admin_staff, Some(&body)).await;
    assert_eq!(r.json["retried"], 0);
    assert_eq!(b.stub.total(&customer, "tenantry_queries"), 4);
    let r = b
        .app
        .call("GET", "/admin/v1/deliveries", &support, None)
        .await;
    assert_eq!(r.json["deliveries"], json!([]));
    // A reconcile for this one tenant, on demand: in step.
    let r = b
        .app
        .call(
            "POST",
            &format!("/admin/v1/tenants/{t}/reconcile"),
            &admin_staff,
            Some("{}"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["report"]["repaired"], 0, "{}", r.json);
    let r = b
        .app
        .call(
            "GET",
            "/v1/audit?action=billing.deliveries_retried",
            &tenantry_tests::issuer()
                .token(
                    "auth0|o",
                    "org_billed-0",
                    &["admin"],
                    std::time::Duration::from_secs(600),
                )
                .unwrap(),
            None,
        )
        .await;
    assert_eq!(r.json["events"].as_array().unwrap().len(), 1, "{}", r.json);
}

/// A run's own account of itself. A flush run reports what its flushes delivered. A
/// reconciliation run snapshots seats for active tenants only (a suspended one accrues nothing,
/// yet is still reconciled), and a tenant that fails (injected: its findings, or its new
/// customer's link, cannot be written) is counted and skipped while the others still run; once
/// the fault is gone, the next run completes them.
#[tokio::test]
async fn a_run_counts_its_work_snapshots_active_tenants_only_and_outlives_a_failing_tenant() {
    let b = setup(3, &[]).await;
    clear_of_midnight().await;
    let (t0, t1, t2) = (b.tenants[0].0, b.tenants[1].0, b.tenants[2].0);
    let t3 = tenant(&b.app.app.db, "pending").await;
    let admin = b.app.db.admin().await;
    for t in [t0, t1] {
        admin
            .execute(
                "INSERT INTO app.members (tenant_id, auth0_user_id) VALUES ($1, 'auth0|seat')",
                &[&t.as_uuid()],
            )
            .await
            .unwrap();
    }
    b.record(
        [(t0, 3), (t1, 4), (t2, 5)]
            .map(|(t, q)| event(t, Meter::Queries, q, minutes_ago(3)))
            .to_vec(),
    )
    .await;

    let out = b.run_all(Mode::Flush).await;
    assert_eq!((out.tenants, out.tenant_errors), (4, 0), "{out:?}");
    assert_eq!((out.flush.delivered, out.flush.failed), (3, 0), "{out:?}");
    assert_eq!(out.flush.delivered as usize, b.stub.events().len());

    admin
        .execute(
            "UPDATE app.tenants SET status = 'suspended' WHERE tenant_id = $1",
            &[&t1.as_uuid()],
        )
        .await
        .unwrap();
    admin
        .execute(
            "UPDATE app.tenants SET customer_pending = true WHERE tenant_id = $1",
            &[&t3.as_uuid()],
        )
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION public.injected_fault() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN IF NEW.tenant_id IN ('{t2}', '{t3}') THEN \
                    RAISE EXCEPTION 'injected fault' USING ERRCODE = 'XX000'; END IF; \
                  RETURN NEW; END $$; \
             CREATE TRIGGER fault BEFORE INSERT ON app.billing_reconciliations \
               FOR EACH ROW EXECUTE FUNCTION public.injected_fault(); \
             CREATE TRIGGER fault BEFORE INSERT ON app.billing_customers \
               FOR EACH ROW EXECUTE FUNCTION public.injected_fault();"
        ))
        .await
        .unwrap();
    let count = |sql: &'static str| {
        let admin = &admin;
        move |t: TenantId| async move {
            let n: i64 = admin.query_one(sql, &[&t.as_uuid()]).await.unwrap().get(0);
            n
        }
    };
    let seats = count(
        "SELECT count(*) FROM app.usage_events WHERE tenant_id = $1 AND meter = 'seats' AND source = 'snapshot'",
    );
    let findings = count("SELECT count(*) FROM app.billing_reconciliations WHERE tenant_id = $1");
    // New usage the reconciliation's own flush delivers.
    b.record(vec![event(t0, Meter::Queries, 2, minutes_ago(2))])
        .await;
    let sent = b.stub.events().len();

    let out = b.run_all(Mode::Reconcile).await;
    assert_eq!((out.tenants, out.tenant_errors), (4, 2), "{out:?}");
    assert!(out.flush.delivered > 0, "{out:?}");
    assert_eq!(out.flush.delivered as usize, b.stub.events().len() - sent);
    assert_eq!((out.customers_linked, out.customers_pending), (0, 0));
    assert_eq!((seats(t0).await, seats(t1).await), (1, 0));
    assert!(findings(t0).await > 0 && findings(t1).await > 0);
    assert_eq!((findings(t2).await, findings(t3).await), (0, 0));

    admin
        .batch_execute(
            "DROP TRIGGER fault ON app.billing_reconciliations; \
             DROP TRIGGER fault ON app.billing_customers;",
        )
        .await
        .unwrap();
    let out = b.run_all(Mode::Reconcile).await;
    assert_eq!((out.tenants, out.tenant_errors), (4, 0), "{out:?}");
    assert_eq!((out.customers_linked, out.customers_pending), (1, 0));
    assert!(findings(t2).await > 0);
    assert_eq!((seats(t0).await, seats(t1).await), (1, 0));
}

/// The tenant's recorded findings (meter, action, detail), read as the superuser.
async fn tenant_findings(b: &Billing, t: TenantId) -> Vec<(String, String, Option<String>)> {
    b.app
        .db
        .admin()
        .await
        .query(
            "SELECT meter, action, detail FROM app.billing_reconciliations WHERE tenant_id = $1 \
             ORDER BY meter, day",
            &[&t.as_uuid()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Answers as `inner`, except that Stripe's summaries of `meter` are unavailable.
#[derive(Debug)]
struct SummariesDown {
    inner: Arc<dyn BillingSink>,
    meter: Meter,
}

impl BillingSink for SummariesDown {
    fn kind(&self) -> &'static str {
        "summaries-down"
    }
    fn send<'a>(&'a self, event: &'a MeterEvent) -> SinkFuture<'a, Sent> {
        self.inner.send(event)
    }
    fn create_customer<'a>(&'a self, t: TenantId, name: &'a str) -> SinkFuture<'a, String> {
        self.inner.create_customer(t, name)
    }
    fn day_totals<'a>(
        &'a self,
        meter: Meter,
        customer: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> SinkFuture<'a, Vec<(chrono::NaiveDate, i64)>> {
        if meter == self.meter {
            return Box::pin(async { Err(SinkError::Retryable("summaries down".into())) });
        }
        self.inner.day_totals(meter, customer, from, to)
    }

    fn window_total<'a>(
        &'a self,
        meter: Meter,
        customer: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> SinkFuture<'a, i64> {
        self.inner.window_total(meter, customer, from, to)
    }
}

/// Stripe's summaries of one meter unavailable: that meter's days are reported as such, with
/// the reason, and nothing is repaired; the other meters are reconciled as usual (here: ahead of
/// Stripe by usage in a window still open, so in flight, neither repaired nor refused).
#[tokio::test]
async fn summaries_unavailable_for_one_meter_leave_only_that_meter_unreconciled() {
    let b = setup(1, &[]).await;
    clear_of_midnight().await;
    let t = b.tenants[0].0;
    b.record(vec![
        event(t, Meter::Queries, 3, minutes_ago(3)),
        event(t, Meter::Questions, 2, minutes_ago(3)),
    ])
    .await;
    b.flush().await;
    b.past_the_settle_window().await;
    // And one query now, in a window still open: the ledger is ahead of Stripe by it, in flight.
    b.record(vec![event(t, Meter::Queries, 1, Utc::now())])
        .await;
    let sink = SummariesDown {
        inner: b.app.app.billing.clone(),
        meter: Meter::Questions,
    };
    let calls = b.stub.meter_event_calls();
    // A grace of an hour keeps that window open however long this takes (windows are a minute).
    let open = MeterConfig {
        grace_secs: 3600,
        ..b.app.app.config.billing.meter.clone()
    };
    let r = b.reconcile_one(t, &sink, &open).await;
    assert_eq!(
        (r.days_checked, r.in_sync, r.repaired, r.in_flight),
        (2, 0, 0, 1),
        "{r:?}"
    );
    let rows = tenant_findings(&b, t).await;
    let shown: Vec<(&str, &str)> = rows
        .iter()
        .map(|(m, a, _)| (m.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        shown,
        [("queries", "in_flight"), ("questions", "unavailable")]
    );
    assert_eq!(rows[0].2.as_deref(), Some("windows not yet closed"));
    assert!(
        rows[1]
            .2
            .as_deref()
            .is_some_and(|d| d.contains("summaries down")),
        "{rows:?}"
    );
    assert_eq!(b.stub.meter_event_calls(), calls);
}

/// A flush says what it did: nothing for a tenant without a billing customer (and says so);
/// for one with a customer, each closed window planned, then delivered.
#[tokio::test]
async fn a_flush_reports_what_it_planned_and_a_tenant_without_a_customer() {
    let b = setup(1, &[]).await;
    let t = b.tenants[0].0;
    let lone = tenant(&b.app.app.db, "no-customer").await;
    b.record(vec![
        event(t, Meter::Queries, 6, minutes_ago(3)),
        event(t, Meter::Queries, 4, minutes_ago(2)),
        event(lone, Meter::Queries, 5, minutes_ago(3)),
    ])
    .await;
    assert_eq!(
        b.flush_tenant(lone).await,
        FlushOutcome {
            no_customer: true,
            ..FlushOutcome::default()
        }
    );
    let out = b.flush_tenant(t).await;
    assert_eq!(
        (out.no_customer, out.planned, out.delivered, out.calls),
        (false, 2, 2, 2),
        "{out:?}"
    );
    assert_eq!(b.stub.events().len(), 2);
}

#[tokio::test]
async fn reconciliation_records_past_their_retention_go_and_only_the_tenants_own() {
    let b = setup(
        2,
        &[("BILLING_RECONCILIATION_RETENTION_DAYS", "30".to_owned())],
    )
    .await;
    // Today's summary is dated by the UTC day the run starts in.
    clear_of_midnight().await;
    let ((t, _), (other, _)) = (b.tenants[0].clone(), b.tenants[1].clone());
    let admin = b.app.db.admin().await;
    // Old and recent records for both tenants (as if written by earlier runs).
    for (tenant, age_days) in [(t, 40), (t, 31), (t, 29), (other, 40)] {
        admin
            .execute(
                "INSERT INTO app.billing_reconciliations \
                   (tenant_id, run_id, meter, day, ledger_total, action, created_at) \
                 VALUES ($1, gen_random_uuid(), 'queries', current_date - $2::int, 0, 'in_sync', \
                         now() - make_interval(days => $2::int))",
                &[&tenant.as_uuid(), &age_days],
            )
            .await
            .unwrap();
    }
    // And the daily summaries of old runs (40 days ago for both, 29 for this tenant).
    for (tenant, age_days) in [(t, 40), (t, 29), (other, 40)] {
        admin
            .execute(
                "INSERT INTO app.billing_reconciliation_days \
                   (tenant_id, day, runs, first_run_at, last_run_at, last_run_id, checked, \
                    actions, issues, repaired, drift) \
                 VALUES ($1, (now() AT TIME ZONE 'UTC')::date - $2::int, 1, \
                         now() - make_interval(days => $2::int), \
                         now() - make_interval(days => $2::int), gen_random_uuid(), 0, '{}', \
                         '[]', 0, 0)",
                &[&tenant.as_uuid(), &age_days],
            )
            .await
            .unwrap();
    }
    let a = &b.app.app;
    let r = b
        .reconcile_one(t, a.billing.as_ref(), &a.config.billing.meter)
        .await;
    assert_eq!(r.pruned, 3, "{r:?}");
    let summaries: Vec<(uuid::Uuid, i64)> = admin
        .query(
            "SELECT tenant_id, ((now() AT TIME ZONE 'UTC')::date - day)::int8 \
             FROM app.billing_reconciliation_days \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut want = vec![(t.as_uuid(), 0), (t.as_uuid(), 29), (other.as_uuid(), 40)];
    want.sort();
    assert_eq!(
        summaries, want,
        "today's run's summary, and what the retention keeps"
    );
    let left: Vec<(uuid::Uuid, i64)> = admin
        .query(
            "SELECT tenant_id, (current_date - day)::int8 FROM app.billing_reconciliations \
             WHERE day < current_date ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut want = vec![(t.as_uuid(), 29), (other.as_uuid(), 40)];
    want.sort();
    assert_eq!(
        left, want,
        "the other tenant's records are not this run's to delete"
    );

    // The app role cannot use it to wipe recent records: asked for none, it keeps a week (the
    // 29-day-old record and summary go; a 3-day-old record and today's summary stay).
    admin
        .execute(
            "INSERT INTO app.billing_reconciliations \
               (tenant_id, run_id, meter, day, ledger_total, action, created_at) \
             VALUES ($1, gen_random_uuid(), 'queries', current_date - 3, 0, 'in_sync', \
                     now() - interval '3 days')",
            &[&t.as_uuid()],
        )
        .await
        .unwrap();
    let mut tx = tx(&a.db, t).await;
    let gone: i64 = tx
        .query_one("SELECT app.prune_reconciliations(0)", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    assert_eq!(gone, 2);
    let kept: i64 = admin
        .query_one(
            "SELECT count(*) FROM app.billing_reconciliations \
             WHERE tenant_id = $1 AND day = current_date - 3",
            &[&t.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);
}

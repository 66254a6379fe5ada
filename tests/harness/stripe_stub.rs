//! A local Stripe test server: the part of the API Tenantry uses — customers, meters, meter events,
//! meter event summaries grouped by day — over real HTTP, modelling what makes Stripe hard rather
//! than an instantly consistent store:
//!
//! - **A clock of its own** ([`StripeStub::now`], moved on by [`StripeStub::advance`]): the wall
//!   clock plus whatever the test advanced. Summary lag and the identifier dedupe window are
//!   measured on it, in minutes and hours, so a test's own running time never crosses them and a
//!   test crosses them only by saying so.
//! - **Eventually consistent summaries**: an accepted event appears in
//!   `/v1/billing/meters/{id}/event_summaries` only once its lag has passed on the stub's clock
//!   ([`set_summary_lag`](StripeStub::set_summary_lag)), and not at all while the test holds the
//!   summaries ([`hold_summaries`](StripeStub::hold_summaries) /
//!   [`release_summaries`](StripeStub::release_summaries)).
//! - **Pagination like Stripe's list API**: `limit` (default 10, 1 to 100), `has_more`,
//!   `starting_after`, newest day first; a test can make pages smaller than the client asks
//!   ([`set_summary_page_size`](StripeStub::set_summary_page_size)) so that a month of days
//!   takes several pages.
//! - **An identifier dedupe window** of 24 hours ([`DEDUPE_WINDOW`]): a resend within it gets
//!   Stripe's duplicate-identifier refusal; after it, the event is taken (and counted) again.
//! - **Asynchronous rejections**: an event answered 200 and then dropped from the summaries and the
//!   bill, with an error report (what Stripe sends as `v1.billing.meter.error_report_triggered`)
//!   ([`reject_async`](StripeStub::reject_async)), sent as a thin event (among
//!   [`take_events`](StripeStub::take_events)) whose details `GET /v2/core/events/{id}` answers.
//! - **Subscriptions with anchors, and their invoices** ([`subscribe`](StripeStub::subscribe)):
//!   monthly periods from any anchor, a draft invoice at each period's end finalized about an hour
//!   later (or when the test releases it), usage accepted after finalization never billed
//!   ([`invoiced`](StripeStub::invoiced)), and the Stripe events each change makes, for the test to
//!   deliver as webhooks ([`take_events`](StripeStub::take_events)). See `subscriptions.rs`.
//! - Stripe's timestamp window (35 days back, 5 minutes ahead, on the stub's clock), faults on
//!   demand ([`Fault`]: 429, 5xx, answers that come after the client gave up, calls held at a
//!   [`Gate`] until the test opens it), outages, drift injection, and a check of Stripe's
//!   one-concurrent-call-per-customer-per-meter rule.

mod customers;
mod meter_events;
mod subscriptions;
mod summaries;

pub use customers::StubCustomer;
pub use subscriptions::{FINALIZE_AFTER_SECS, StubInvoice, UNIT_CENTS};

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::watch;

pub use summaries::SummaryRequest;

/// The test key the stub accepts.
pub const STRIPE_TEST_KEY: &str = "sk_test_tenantry_local";

/// How long Stripe refuses a meter event identifier it has already taken.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What the next meter-event call does instead of (or before) its normal answer.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status (429 or 5xx) and a Stripe error body; the event is not recorded.
    Status(u16),
    /// Record the event, then answer only after this long (the client times out first): the
    /// "Stripe accepted it, we never heard" case, on the wall clock.
    AcceptThenHang(Duration),
    /// Answer normally after this long.
    Slow(Duration),
    /// Wait at the gate (the call is in progress at Stripe) until the test opens it, then answer
    /// normally.
    Hold(Gate),
    /// Record the event, then hold the answer at the gate until the test opens it: the client
    /// gives up first (its timeout), and the call stays in progress at Stripe until then.
    AcceptThenHold(Gate),
}

/// A point where a meter-event call waits until the test lets it through: the test can wait for
/// a call to be there ([`reached`](Self::reached)), open it ([`open`](Self::open)), and wait until
/// Stripe is done with that call ([`passed`](Self::passed)). Ordering without sleeps; the test's
/// waits give up (panic) after [`GATE_WAIT`] rather than hang the run.
#[derive(Clone, Debug)]
pub struct Gate(Arc<GateState>);

/// How long [`Gate::reached`] and [`Gate::passed`] wait before failing the test: far longer than
/// anything they wait for takes, even on a loaded machine.
pub const GATE_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct GateState {
    reached: watch::Sender<u32>,
    open: watch::Sender<bool>,
    passed: watch::Sender<u32>,
}

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(GateState {
            reached: watch::Sender::new(0),
            open: watch::Sender::new(false),
            passed: watch::Sender::new(0),
        }))
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns once a call is waiting at the gate (or has been through it); panics if none has
    /// within [`GATE_WAIT`].
    pub async fn reached(&self) {
        let mut rx = self.0.reached.subscribe();
        tokio::time::timeout(GATE_WAIT, rx.wait_for(|n| *n > 0))
            .await
            .unwrap_or_else(|_| panic!("no meter-event call reached the gate within {GATE_WAIT:?}"))
            .unwrap();
    }

    /// Lets the calls at the gate (and any later ones) through.
    pub fn open(&self) {
        self.0.open.send_replace(true);
    }

    /// Returns once a call has been through the gate and Stripe has finished it (answered, and
    /// no longer counted as in progress for its customer and meter); panics if none has within
    /// [`GATE_WAIT`].
    pub async fn passed(&self) {
        let mut rx = self.0.passed.subscribe();
        tokio::time::timeout(GATE_WAIT, rx.wait_for(|n| *n > 0))
            .await
            .unwrap_or_else(|_| {
                panic!("no meter-event call got through the gate and finished within {GATE_WAIT:?}")
            })
            .unwrap();
    }

    async fn wait(&self) {
        self.0.reached.send_modify(|n| *n += 1);
        let mut rx = self.0.open.subscribe();
        rx.wait_for(|open| *open).await.unwrap();
    }

    fn pass(&self) {
        self.0.passed.send_modify(|n| *n += 1);
    }
}

/// One meter event Stripe took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StubEvent {
    /// The identifier.
    pub identifier: String,
    /// The meter's event name.
    pub event_name: String,
    /// The customer.
    pub customer: String,
    /// The value (may be negative).
    pub value: i64,
    /// Unix seconds.
    pub timestamp: i64,
    /// When Stripe took it (the stub's clock, Unix seconds).
    pub accepted_at: i64,
    /// From when it shows in the summaries (the stub's clock); `None` while the test holds the
    /// summaries.
    pub visible_at: Option<i64>,
    /// Rejected asynchronously: never in the summaries, never billed.
    pub rejected: bool,
}

/// What Stripe reports (as a `v1.billing.meter.error_report_triggered` event) about a meter event
/// it answered 200 and then did not count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReport {
    /// The event's identifier.
    pub identifier: String,
    /// The customer.
    pub customer: String,
    /// The meter's event name.
    pub event_name: String,
    /// Stripe's error code (e.g. `meter_event_customer_not_found`).
    pub code: String,
    /// When it was reported (the stub's clock).
    pub at: i64,
}

#[derive(Default)]
struct State {
    meters: HashMap<String, String>,
    customers: HashSet<String>,
    events: Vec<StubEvent>,
    /// Identifier → when (the stub's clock) Stripe last took it.
    identifiers: HashMap<String, i64>,
    faults: VecDeque<Fault>,
    outage: bool,
    in_flight: HashMap<(String, String), u32>,
    concurrency_violations: u32,
    meter_event_calls: u64,
    /// Seconds added to the wall clock by [`StripeStub::advance`].
    clock_offset: i64,
    summary_lag: i64,
    holding: bool,
    page_size: Option<usize>,
    /// Identifiers to take with 200 and then reject asynchronously, with the error code.
    doomed: HashMap<String, String>,
    error_reports: Vec<ErrorReport>,
    summaries: summaries::Listing,
    /// Idempotency key → (sorted parameters, the answer saved for it).
    customer_keys: HashMap<String, (Vec<(String, String)>, Value)>,
    created_customers: Vec<StubCustomer>,
    /// The next this many customer creations answer 429 (saving nothing).
    customer_failures: u32,
    customer_calls: u64,
    subscriptions: Vec<subscriptions::Subscription>,
    invoices: Vec<StubInvoice>,
    holding_invoices: bool,
    /// Stripe events not yet taken by the test, and how many were taken before.
    stripe_events: Vec<Value>,
    taken_events: usize,
    subscription_reads: u64,
    invoice_reads: u64,
    /// Thin events' full versions, by id (`GET /v2/core/events/{id}`).
    thin_events: HashMap<String, Value>,
    thin_event_reads: u64,
    /// Added to every answer (a benchmark's model of Stripe's round trip).
    latency: Duration,
}

impl State {
    fn now(&self) -> i64 {
        Utc::now().timestamp() + self.clock_offset
    }

    /// Records an error report, and sends it as Stripe does: a thin event (an event
    /// destination's: id and type only), whose details `GET /v2/core/events/{id}` answers.
    pub(crate) fn report(&mut self, report: ErrorReport) {
        let r = &report;
        let meter = self
            .meters
            .iter()
            .find(|(_, name)| **name == r.event_name)
            .map(|(id, _)| id.clone())
            .unwrap_or_default();
        let id = format!("evt_thin{:05}", self.thin_events.len() + 1);
        let created = DateTime::from_timestamp(r.at, 0).unwrap().to_rfc3339();
        let related = json!({"id": meter, "type": "billing.meter",
                             "url": format!("/v1/billing/meters/{meter}")});
        self.stripe_events.push(json!({
            "id": id, "object": "v2.core.event",
            "type": "v1.billing.meter.error_report_triggered", "created": created,
            "livemode": false, "context": null, "reason": null, "related_object": related,
        }));
        self.thin_events.insert(
            id.clone(),
            json!({
                "id": id, "object": "v2.core.event",
                "type": "v1.billing.meter.error_report_triggered", "created": created,
                "livemode": false, "context": null, "reason": null, "related_object": related,
                "data": {
                    "developer_message_summary": "There is 1 invalid event",
                    "validation_start": created, "validation_end": created,
                    "reason": {"error_count": 1, "error_types": [{
                        "code": r.code, "error_count": 1,
                        "sample_errors": [{
                            "error_message": format!("Rejected: {}", r.code),
                            "request": {"identifier": r.identifier},
                        }],
                    }]},
                },
            }),
        );
        self.error_reports.push(report);
    }

    /// Rejects `identifier`'s counted events now (they leave the summaries and the bill); false
    /// if there were none.
    fn reject_now(&mut self, identifier: &str, code: &str) -> bool {
        let at = self.now();
        let mut reports = Vec::new();
        for e in self
            .events
            .iter_mut()
            .filter(|e| e.identifier == identifier && !e.rejected)
        {
            e.rejected = true;
            reports.push(ErrorReport {
                identifier: e.identifier.clone(),
                customer: e.customer.clone(),
                event_name: e.event_name.clone(),
                code: code.to_owned(),
                at,
            });
        }
        let found = !reports.is_empty();
        for r in reports {
            self.report(r);
        }
        found
    }
}

/// The server. Dropping it stops it.
pub struct StripeStub {
    /// `http://127.0.0.1:port/`
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StripeStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The meter id the stub gives each meter: `mtr_<name>`.
pub fn meter_id(meter: tenantry::usage::Meter) -> String {
    format!("mtr_{}", meter.name())
}

impl StripeStub {
    /// Starts one with a meter per Tenantry meter (`mtr_<name>`). Summaries are consistent at
    /// once and pages as large as the client asks, until a test says otherwise.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let mut state = State::default();
        for d in tenantry::usage::METERS {
            state
                .meters
                .insert(meter_id(d.meter), d.event_name.to_owned());
        }
        let state = Arc::new(Mutex::new(state));
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { url, state, task }
    }

    /// The environment the app needs to talk to this server.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("STRIPE_API_KEY", STRIPE_TEST_KEY.to_owned()),
            ("STRIPE_API_BASE", self.url.clone()),
        ];
        for d in tenantry::usage::METERS {
            v.push((
                tenantry::config::stripe_meter_var(d.meter),
                meter_id(d.meter),
            ));
        }
        v
    }

    /// Creates a customer; returns its id.
    pub fn customer(&self, id: &str) -> String {
        self.state.lock().unwrap().customers.insert(id.to_owned());
        id.to_owned()
    }

    /// The customers made through `POST /v1/customers`, in order.
    pub fn created_customers(&self) -> Vec<StubCustomer> {
        self.state.lock().unwrap().created_customers.clone()
    }

    /// The next `n` customer creations answer 429, as Stripe does before running a request.
    pub fn fail_customers(&self, n: u32) {
        self.state.lock().unwrap().customer_failures = n;
    }

    /// `POST /v1/customers` calls received (failed ones included).
    pub fn customer_calls(&self) -> u64 {
        self.state.lock().unwrap().customer_calls
    }

    /// Queues faults for the next meter-event calls, in order.
    pub fn fault(&self, faults: &[Fault]) {
        self.state
            .lock()
            .unwrap()
            .faults
            .extend(faults.iter().cloned());
    }

    /// Every answer from now on waits this long first (Stripe's round trip, for benchmarks).
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().unwrap().latency = latency;
    }

    /// While on, every meter-event call answers 503 (the events are not recorded).
    pub fn set_outage(&self, on: bool) {
        self.state.lock().unwrap().outage = on;
    }

    /// The stub's clock: the wall clock plus what [`advance`](Self::advance) added.
    pub fn now(&self) -> DateTime<Utc> {
        let now = self.state.lock().unwrap().now();
        DateTime::from_timestamp(now, 0).unwrap()
    }

    /// Moves the stub's clock on (summary lag, the dedupe window, subscription periods and
    /// invoice finalization run on it).
    pub fn advance(&self, by: Duration) {
        let mut s = self.state.lock().unwrap();
        s.clock_offset += by.as_secs() as i64;
        s.tick();
    }

    /// Subscribes `customer` with monthly periods from `anchor` (which may be in the past: the
    /// periods since are rolled and invoiced, and those invoices finalized an hour after their
    /// period unless held); returns the subscription's id.
    pub fn subscribe(&self, customer: &str, anchor: DateTime<Utc>) -> String {
        self.state
            .lock()
            .unwrap()
            .subscribe(customer, anchor.timestamp())
    }

    /// Ends the subscription's current period now and starts a new one (a plan change that
    /// resets the billing anchor); the ended period is invoiced.
    pub fn reset_anchor(&self, subscription: &str) {
        self.state.lock().unwrap().reset_anchor(subscription);
    }

    /// Holds invoice finalization until [`release_invoices`](Self::release_invoices).
    pub fn hold_invoices(&self) {
        self.state.lock().unwrap().holding_invoices = true;
    }

    /// Finalizes, now, every held invoice that is due, and stops holding.
    pub fn release_invoices(&self) {
        let mut s = self.state.lock().unwrap();
        s.holding_invoices = false;
        let now = s.now();
        let due: Vec<usize> = (0..s.invoices.len())
            .filter(|i| s.invoices[*i].finalized_at.is_none())
            .filter(|i| s.invoices[*i].created + FINALIZE_AFTER_SECS <= now)
            .collect();
        for i in due {
            s.finalize(i, now);
        }
        s.tick();
    }

    /// The invoices so far, oldest first.
    pub fn invoices(&self) -> Vec<StubInvoice> {
        let mut s = self.state.lock().unwrap();
        s.tick();
        s.invoices.clone()
    }

    /// What Stripe bills `customer` for `event_name` in the period of its subscription that
    /// starts at `period_start` (see `subscriptions.rs`).
    pub fn invoiced(&self, customer: &str, event_name: &str, period_start: DateTime<Utc>) -> i64 {
        let mut s = self.state.lock().unwrap();
        s.tick();
        s.invoiced(customer, event_name, period_start.timestamp())
    }

    /// The Stripe events made since the last call, oldest first (`data.object` in the API's
    /// current shape), for the test to deliver as webhooks.
    pub fn take_events(&self) -> Vec<Value> {
        let mut s = self.state.lock().unwrap();
        s.tick();
        let taken = std::mem::take(&mut s.stripe_events);
        s.taken_events += taken.len();
        taken
    }

    /// `GET /v2/core/events/{id}` calls so far.
    pub fn thin_event_reads(&self) -> u64 {
        self.state.lock().unwrap().thin_event_reads
    }

    /// `GET /v1/subscriptions` and `GET /v1/invoices` calls so far.
    pub fn period_reads(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap();
        (s.subscription_reads, s.invoice_reads)
    }

    /// Events accepted from now on show in the summaries only `lag` (on the stub's clock) after
    /// Stripe took them.
    pub fn set_summary_lag(&self, lag: Duration) {
        self.state.lock().unwrap().summary_lag = lag.as_secs() as i64;
    }

    /// Events accepted from now on stay out of the summaries until
    /// [`release_summaries`](Self::release_summaries) (they are taken and will be billed).
    pub fn hold_summaries(&self) {
        self.state.lock().unwrap().holding = true;
    }

    /// Stops holding: held events show in the summaries once their lag (counted from when Stripe
    /// took them) has passed — at once, with no lag set.
    pub fn release_summaries(&self) {
        let mut s = self.state.lock().unwrap();
        s.holding = false;
        let lag = s.summary_lag;
        for e in s.events.iter_mut().filter(|e| e.visible_at.is_none()) {
            e.visible_at = Some(e.accepted_at + lag);
        }
    }

    /// Answers at most `n` summaries per page, whatever `limit` the client asks (Stripe honours
    /// up to 100; smaller pages make a month of days take several).
    pub fn set_summary_page_size(&self, n: usize) {
        assert!(n > 0);
        self.state.lock().unwrap().page_size = Some(n);
    }

    /// Every summary list request answered (or refused), in order.
    pub fn summary_requests(&self) -> Vec<SummaryRequest> {
        self.state.lock().unwrap().summaries.requests.clone()
    }

    /// Stripe answers the event with `identifier` 200 but then rejects it asynchronously with
    /// `code`: it never shows in the summaries and is not billed, and an [`ErrorReport`] says
    /// so. If Stripe already took it, it is dropped from the summaries now. The identifier stays
    /// taken (a resend within the dedupe window gets the duplicate answer).
    pub fn reject_async(&self, identifier: &str, code: &str) {
        let mut s = self.state.lock().unwrap();
        if !s.reject_now(identifier, code) {
            s.doomed.insert(identifier.to_owned(), code.to_owned());
        }
    }

    /// Stripe's error reports so far (events answered 200 and then not counted).
    pub fn error_reports(&self) -> Vec<ErrorReport> {
        self.state.lock().unwrap().error_reports.clone()
    }

    /// Adds an event Tenantry did not send (drift), in the summaries at once; returns its
    /// identifier.
    pub fn inject(&self, customer: &str, event_name: &str, value: i64, timestamp: i64) -> String {
        let mut s = self.state.lock().unwrap();
        let now = s.now();
        let identifier = format!("injected_{}", s.events.len());
        s.identifiers.insert(identifier.clone(), now);
        s.events.push(StubEvent {
            identifier: identifier.clone(),
            event_name: event_name.to_owned(),
            customer: customer.to_owned(),
            value,
            timestamp,
            accepted_at: now,
            visible_at: Some(now),
            rejected: false,
        });
        identifier
    }

    /// Loses an event Stripe had (drift the other way); returns whether it existed.
    pub fn lose(&self, identifier: &str) -> bool {
        let mut s = self.state.lock().unwrap();
        let before = s.events.len();
        s.events.retain(|e| e.identifier != identifier);
        before != s.events.len()
    }

    /// Every event taken (an identifier taken again after the dedupe window appears twice).
    pub fn events(&self) -> Vec<StubEvent> {
        self.state.lock().unwrap().events.clone()
    }

    /// What Stripe bills a customer for a meter event name: every event it took and did not
    /// reject, whether or not the summaries show it yet.
    pub fn total(&self, customer: &str, event_name: &str) -> i64 {
        self.state
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| e.customer == customer && e.event_name == event_name && !e.rejected)
            .map(|e| e.value)
            .sum()
    }

    /// What the summaries show now for a customer and meter event name (all days).
    pub fn summarized_total(&self, customer: &str, event_name: &str) -> i64 {
        let s = self.state.lock().unwrap();
        let now = s.now();
        s.events
            .iter()
            .filter(|e| e.customer == customer && e.event_name == event_name)
            .filter(|e| summaries::shows(e, now))
            .map(|e| e.value)
            .sum()
    }

    /// Calls to `POST /v1/billing/meter_events` so far.
    pub fn meter_event_calls(&self) -> u64 {
        self.state.lock().unwrap().meter_event_calls
    }

    /// Times two calls for the same customer and meter overlapped.
    pub fn concurrency_violations(&self) -> u32 {
        self.state.lock().unwrap().concurrency_violations
    }
}

fn error(
    status: u16,
    kind: &str,
    code: Option<&str>,
    message: &str,
) -> hyper::Response<Full<Bytes>> {
    let mut e = json!({"type": kind, "message": message});
    if let Some(c) = code {
        e["code"] = json!(c);
    }
    respond(status, json!({ "error": e }))
}

fn respond(status: u16, body: Value) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("request-id", "req_stub")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn handle(
    state: &Arc<Mutex<State>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {STRIPE_TEST_KEY}"));
    if !authorized {
        return error(
            401,
            "invalid_request_error",
            None,
            "Invalid API Key provided.",
        );
    }
    let latency = state.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let method = req.method().clone();
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    match (method.as_str(), path.as_str()) {
        // In a task of its own: a client that gives up does not cancel Stripe's processing (nor
        // the in-flight bookkeeping).
        ("POST", "/v1/billing/meter_events") => {
            let state = state.clone();
            tokio::spawn(async move { meter_events::create(&state, &form).await })
                .await
                .unwrap_or_else(|_| error(500, "api_error", None, "stub task failed"))
        }
        ("POST", "/v1/customers") => customers::create(state, idempotency_key, &form),
        ("GET", p) if p.starts_with("/v2/core/events/") => {
            let mut s = state.lock().unwrap();
            s.thin_event_reads += 1;
            if s.outage {
                return error(503, "api_error", None, "Injected outage.");
            }
            let id = p.trim_start_matches("/v2/core/events/");
            match s.thin_events.get(id) {
                Some(e) => respond(200, e.clone()),
                None => error(
                    404,
                    "invalid_request_error",
                    Some("resource_missing"),
                    &format!("No such event: '{id}'"),
                ),
            }
        }
        ("POST", "/v1/invoices/create_preview") => {
            subscriptions::preview(&mut state.lock().unwrap(), &form)
        }
        ("GET", "/v1/subscriptions") => {
            subscriptions::list_subscriptions(&mut state.lock().unwrap(), &query)
        }
        ("GET", "/v1/invoices") => subscriptions::list_invoices(&mut state.lock().unwrap(), &query),
        ("GET", p) if p.starts_with("/v1/billing/meters/") && p.ends_with("/event_summaries") => {
            let id = p
                .trim_start_matches("/v1/billing/meters/")
                .trim_end_matches("/event_summaries");
            list_summaries(state, id, &query)
        }
        _ => error(
            404,
            "invalid_request_error",
            Some("resource_missing"),
            "Unrecognized request URL.",
        ),
    }
}

fn list_summaries(
    state: &Arc<Mutex<State>>,
    meter: &str,
    query: &HashMap<String, String>,
) -> hyper::Response<Full<Bytes>> {
    let mut s = state.lock().unwrap();
    summaries::list(&mut s, meter, query)
}

//! A local Stripe test server: the part of the API Tenantry uses — customers, meters, meter events
//! (with Stripe's duplicate-identifier refusal and its timestamp window), meter event summaries
//! grouped by day — over real HTTP, with faults on demand (429, 500, timeouts that happen after
//! the event was accepted, slow answers), drift injection, and a check of Stripe's
//! one-concurrent-call-per-customer-per-meter rule.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The test key the stub accepts.
pub const STRIPE_TEST_KEY: &str = "sk_test_tenantry_local";

/// What the next meter-event call does instead of (or before) its normal answer.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answer with this status (429 or 5xx) and a Stripe error body; the event is not recorded.
    Status(u16),
    /// Record the event, then answer only after this long (the client times out first): the
    /// "Stripe accepted it, we never heard" case.
    AcceptThenHang(Duration),
    /// Answer normally after this long.
    Slow(Duration),
}

/// One meter event Stripe holds.
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
}

#[derive(Default)]
struct State {
    meters: HashMap<String, String>,
    customers: HashSet<String>,
    events: Vec<StubEvent>,
    identifiers: HashSet<String>,
    faults: VecDeque<Fault>,
    outage: bool,
    in_flight: HashMap<(String, String), u32>,
    concurrency_violations: u32,
    meter_event_calls: u64,
    summary_calls: u64,
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
    /// Starts one with a meter per Tenantry meter (`mtr_<name>`).
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

    /// Queues faults for the next meter-event calls, in order.
    pub fn fault(&self, faults: &[Fault]) {
        self.state.lock().unwrap().faults.extend(faults);
    }

    /// While on, every meter-event call answers 503 (the events are not recorded).
    pub fn set_outage(&self, on: bool) {
        self.state.lock().unwrap().outage = on;
    }

    /// Adds an event Tenantry did not send (drift).
    pub fn inject(&self, customer: &str, event_name: &str, value: i64, timestamp: i64) {
        let mut s = self.state.lock().unwrap();
        let identifier = format!("injected_{}", s.events.len());
        s.identifiers.insert(identifier.clone());
        s.events.push(StubEvent {
            identifier,
            event_name: event_name.to_owned(),
            customer: customer.to_owned(),
            value,
            timestamp,
        });
    }

    /// Loses an event Stripe had (drift the other way); returns whether it existed.
    pub fn lose(&self, identifier: &str) -> bool {
        let mut s = self.state.lock().unwrap();
        let before = s.events.len();
        s.events.retain(|e| e.identifier != identifier);
        before != s.events.len()
    }

    /// Every event held.
    pub fn events(&self) -> Vec<StubEvent> {
        self.state.lock().unwrap().events.clone()
    }

    /// The sum of a customer's events for a meter event name.
    pub fn total(&self, customer: &str, event_name: &str) -> i64 {
        self.state
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| e.customer == customer && e.event_name == event_name)
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
    let method = req.method().clone();
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
            tokio::spawn(async move { meter_event(&state, &form).await })
                .await
                .unwrap_or_else(|_| error(500, "api_error", None, "stub task failed"))
        }
        ("GET", p) if p.starts_with("/v1/billing/meters/") && p.ends_with("/event_summaries") => {
            let id = p
                .trim_start_matches("/v1/billing/meters/")
                .trim_end_matches("/event_summaries");
            summaries(state, id, &query)
        }
        _ => error(
            404,
            "invalid_request_error",
            Some("resource_missing"),
            "Unrecognized request URL.",
        ),
    }
}

async fn meter_event(
    state: &Arc<Mutex<State>>,
    form: &HashMap<String, String>,
) -> hyper::Response<Full<Bytes>> {
    let event_name = form.get("event_name").cloned().unwrap_or_default();
    let customer = form
        .get("payload[stripe_customer_id]")
        .cloned()
        .unwrap_or_default();
    let key = (customer.clone(), event_name.clone());
    let fault = {
        let mut s = state.lock().unwrap();
        s.meter_event_calls += 1;
        let n = s.in_flight.entry(key.clone()).or_default();
        *n += 1;
        if *n > 1 {
            s.concurrency_violations += 1;
        }
        if s.outage {
            Some(Fault::Status(503))
        } else {
            s.faults.pop_front()
        }
    };
    let response = async {
        match fault {
            Some(Fault::Status(status)) => {
                let kind = if status == 429 {
                    "invalid_request_error"
                } else {
                    "api_error"
                };
                let code = (status == 429).then_some("rate_limit");
                return error(status, kind, code, "Injected failure.");
            }
            Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
            Some(Fault::AcceptThenHang(_)) | None => {}
        }
        let answer = accept(state, form, &event_name, &customer);
        if let Some(Fault::AcceptThenHang(d)) = fault {
            tokio::time::sleep(d).await;
        }
        answer
    }
    .await;
    if let Some(n) = state.lock().unwrap().in_flight.get_mut(&key) {
        *n -= 1;
    }
    response
}

fn accept(
    state: &Arc<Mutex<State>>,
    form: &HashMap<String, String>,
    event_name: &str,
    customer: &str,
) -> hyper::Response<Full<Bytes>> {
    let mut s = state.lock().unwrap();
    if !s.meters.values().any(|n| n == event_name) {
        return error(
            400,
            "invalid_request_error",
            Some("resource_missing"),
            "No active meter was found for the event name.",
        );
    }
    if !s.customers.contains(customer) {
        return error(
            400,
            "invalid_request_error",
            Some("resource_missing"),
            &format!("No such customer: '{customer}'"),
        );
    }
    let Some(value) = form
        .get("payload[value]")
        .and_then(|v| v.parse::<i64>().ok())
    else {
        return error(
            400,
            "invalid_request_error",
            Some("parameter_invalid_integer"),
            "The value must be a whole number.",
        );
    };
    let now = chrono::Utc::now().timestamp();
    let timestamp = form
        .get("timestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or(now);
    if timestamp < now - 35 * 86_400 || timestamp > now + 300 {
        return error(
            400,
            "invalid_request_error",
            Some("parameter_invalid_integer"),
            "Timestamp must be within the past 35 calendar days and not more than 5 minutes in the future.",
        );
    }
    let identifier = form
        .get("identifier")
        .cloned()
        .unwrap_or_else(|| format!("auto_{}", s.events.len()));
    if !s.identifiers.insert(identifier.clone()) {
        return error(
            400,
            "invalid_request_error",
            None,
            &format!("An event already exists with identifier {identifier}."),
        );
    }
    s.events.push(StubEvent {
        identifier: identifier.clone(),
        event_name: event_name.to_owned(),
        customer: customer.to_owned(),
        value,
        timestamp,
    });
    respond(
        200,
        json!({"object": "billing.meter_event", "created": now, "event_name": event_name,
               "identifier": identifier, "livemode": false,
               "payload": {"stripe_customer_id": customer, "value": value.to_string()},
               "timestamp": timestamp}),
    )
}

fn summaries(
    state: &Arc<Mutex<State>>,
    meter: &str,
    q: &HashMap<String, String>,
) -> hyper::Response<Full<Bytes>> {
    let mut s = state.lock().unwrap();
    s.summary_calls += 1;
    if s.outage {
        return error(503, "api_error", None, "Injected outage.");
    }
    let Some(event_name) = s.meters.get(meter).cloned() else {
        return error(
            404,
            "invalid_request_error",
            Some("resource_missing"),
            &format!("No such billing meter: '{meter}'"),
        );
    };
    let (Some(customer), Some(start), Some(end)) = (
        q.get("customer"),
        q.get("start_time").and_then(|v| v.parse::<i64>().ok()),
        q.get("end_time").and_then(|v| v.parse::<i64>().ok()),
    ) else {
        return error(
            400,
            "invalid_request_error",
            Some("parameter_missing"),
            "customer, start_time and end_time are required.",
        );
    };
    if q.get("value_grouping_window").map(String::as_str) != Some("day")
        || start % 86_400 != 0
        || end % 86_400 != 0
    {
        return error(
            400,
            "invalid_request_error",
            None,
            "With value_grouping_window=day, start_time and end_time must align with UTC day boundaries.",
        );
    }
    let mut days: BTreeMap<i64, i64> = BTreeMap::new();
    for e in s.events.iter().filter(|e| {
        e.customer == *customer
            && e.event_name == event_name
            && e.timestamp >= start
            && e.timestamp < end
    }) {
        *days
            .entry(e.timestamp - e.timestamp.rem_euclid(86_400))
            .or_default() += e.value;
    }
    let data: Vec<Value> = days
        .iter()
        .rev()
        .map(|(day, v)| {
            json!({"id": format!("mtrusg_{meter}_{day}"), "object": "billing.meter_event_summary",
                   "aggregated_value": *v as f64, "start_time": day, "end_time": day + 86_400,
                   "livemode": false, "meter": meter})
        })
        .collect();
    respond(
        200,
        json!({"object": "list", "data": data, "has_more": false,
               "url": format!("/v1/billing/meters/{meter}/event_summaries")}),
    )
}

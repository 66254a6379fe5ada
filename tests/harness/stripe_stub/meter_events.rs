//! `POST /v1/billing/meter_events`: Stripe's checks (meter, customer, value, the timestamp window
//! on the stub's clock), the identifier dedupe window, summary lag and holds, asynchronous
//! rejections, the faults a test queued, and the one-call-per-customer-and-meter check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::json;

use super::{DEDUPE_WINDOW, ErrorReport, Fault, State, StubEvent, error, respond};

pub(super) async fn create(
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
        match &fault {
            Some(Fault::Status(status)) => {
                let kind = if *status == 429 {
                    "invalid_request_error"
                } else {
                    "api_error"
                };
                let code = (*status == 429).then_some("rate_limit");
                return error(*status, kind, code, "Injected failure.");
            }
            Some(Fault::Slow(d)) => tokio::time::sleep(*d).await,
            Some(Fault::Hold(gate)) => gate.wait().await,
            Some(Fault::AcceptThenHang(_) | Fault::AcceptThenHold(_)) | None => {}
        }
        let answer = accept(state, form, &event_name, &customer);
        match &fault {
            Some(Fault::AcceptThenHang(d)) => tokio::time::sleep(*d).await,
            Some(Fault::AcceptThenHold(gate)) => gate.wait().await,
            _ => {}
        }
        answer
    }
    .await;
    if let Some(n) = state.lock().unwrap().in_flight.get_mut(&key) {
        *n -= 1;
    }
    if let Some(Fault::Hold(gate) | Fault::AcceptThenHold(gate)) = &fault {
        gate.pass();
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
    let now = s.now();
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
    let window = DEDUPE_WINDOW.as_secs() as i64;
    if s.identifiers
        .get(&identifier)
        .is_some_and(|taken| now - taken < window)
    {
        return error(
            400,
            "invalid_request_error",
            None,
            &format!("An event already exists with identifier {identifier}."),
        );
    }
    s.identifiers.insert(identifier.clone(), now);
    let visible_at = (!s.holding).then_some(now + s.summary_lag);
    // Answered 200 either way: a rejection comes later, in an error report.
    let doomed = s.doomed.remove(&identifier);
    s.events.push(StubEvent {
        identifier: identifier.clone(),
        event_name: event_name.to_owned(),
        customer: customer.to_owned(),
        value,
        timestamp,
        accepted_at: now,
        visible_at,
        rejected: doomed.is_some(),
    });
    if let Some(code) = doomed {
        s.report(ErrorReport {
            identifier: identifier.clone(),
            customer: customer.to_owned(),
            event_name: event_name.to_owned(),
            code,
            at: now,
        });
    }
    respond(
        200,
        json!({"object": "billing.meter_event", "created": now, "event_name": event_name,
               "identifier": identifier, "livemode": false,
               "payload": {"stripe_customer_id": customer, "value": value.to_string()},
               "timestamp": timestamp}),
    )
}

//! `GET /v1/billing/meters/{id}/event_summaries`: per-day sums of what the summaries show (events
//! taken, past their lag, not held, not rejected), listed the way Stripe lists: newest first,
//! `limit` from 1 to 100 (default 10), `has_more`, and `starting_after` naming a summary of an
//! earlier page. Every request is kept, so a test can see how a client paged.

use std::collections::{BTreeMap, HashMap};

use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{Value, json};

use super::{State, StubEvent, error, respond};

/// One summary list request, as the stub saw and answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryRequest {
    /// The meter id in the path.
    pub meter: String,
    /// `customer`.
    pub customer: String,
    /// `limit`, as sent.
    pub limit: Option<String>,
    /// `starting_after`, as sent.
    pub starting_after: Option<String>,
    /// The status answered.
    pub status: u16,
    /// Summaries on the page.
    pub returned: usize,
    /// `has_more` answered.
    pub has_more: bool,
}

/// The requests seen, and the ids handed out: one per (meter, customer, day), stable across
/// pages and requests.
#[derive(Default)]
pub(super) struct Listing {
    pub(super) requests: Vec<SummaryRequest>,
    ids: HashMap<(String, String, i64), String>,
    keys: HashMap<String, (String, String, i64)>,
}

impl Listing {
    fn id(&mut self, meter: &str, customer: &str, day: i64) -> String {
        let key = (meter.to_owned(), customer.to_owned(), day);
        if let Some(id) = self.ids.get(&key) {
            return id.clone();
        }
        let id = format!("mtrusg_{:08}", self.ids.len() + 1);
        self.ids.insert(key.clone(), id.clone());
        self.keys.insert(id.clone(), key);
        id
    }
}

/// Whether the summaries show `e` at `now` (the stub's clock).
pub(super) fn shows(e: &StubEvent, now: i64) -> bool {
    !e.rejected && e.visible_at.is_some_and(|at| at <= now)
}

pub(super) fn list(
    s: &mut State,
    meter: &str,
    q: &HashMap<String, String>,
) -> hyper::Response<Full<Bytes>> {
    let mut seen = SummaryRequest {
        meter: meter.to_owned(),
        customer: q.get("customer").cloned().unwrap_or_default(),
        limit: q.get("limit").cloned(),
        starting_after: q.get("starting_after").cloned(),
        status: 200,
        returned: 0,
        has_more: false,
    };
    let response = page(s, meter, q, &mut seen);
    seen.status = response.status().as_u16();
    s.summaries.requests.push(seen);
    response
}

fn page(
    s: &mut State,
    meter: &str,
    q: &HashMap<String, String>,
    seen: &mut SummaryRequest,
) -> hyper::Response<Full<Bytes>> {
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
    // No grouping window: one summary for the whole range, which must align with minutes.
    if q.get("value_grouping_window").is_none() {
        if start % 60 != 0 || end % 60 != 0 || end <= start {
            return error(
                400,
                "invalid_request_error",
                None,
                "start_time and end_time must align with minute boundaries.",
            );
        }
        let now = s.now();
        let total: i64 = s
            .events
            .iter()
            .filter(|e| {
                e.customer == *customer
                    && e.event_name == event_name
                    && e.timestamp >= start
                    && e.timestamp < end
                    && shows(e, now)
            })
            .map(|e| e.value)
            .sum();
        let id = s.summaries.id(meter, customer, start);
        seen.returned = 1;
        return respond(
            200,
            json!({"object": "list", "url": format!("/v1/billing/meters/{meter}/event_summaries"),
                   "has_more": false, "data": [{
                "id": id, "object": "billing.meter_event_summary", "aggregated_value": total,
                "start_time": start, "end_time": end, "livemode": false, "meter": meter,
            }]}),
        );
    }
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
    let limit = match q.get("limit").map(|v| v.parse::<usize>()) {
        None => 10,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => {
            return error(
                400,
                "invalid_request_error",
                Some("parameter_invalid_integer"),
                "Invalid limit: must be between 1 and 100.",
            );
        }
    };
    let page_size = s.page_size.map_or(limit, |p| p.min(limit));

    let now = s.now();
    let mut days: BTreeMap<i64, i64> = BTreeMap::new();
    for e in s.events.iter().filter(|e| {
        e.customer == *customer
            && e.event_name == event_name
            && e.timestamp >= start
            && e.timestamp < end
            && shows(e, now)
    }) {
        *days
            .entry(e.timestamp - e.timestamp.rem_euclid(86_400))
            .or_default() += e.value;
    }
    // Newest first, like Stripe's lists; `starting_after` continues after (older than) a summary
    // an earlier page handed out.
    let mut listed: Vec<(i64, i64)> = days.into_iter().rev().collect();
    if let Some(after) = q.get("starting_after") {
        match s.summaries.keys.get(after) {
            Some((m, c, day)) if m == meter && c == customer => {
                let day = *day;
                listed.retain(|(d, _)| *d < day);
            }
            _ => {
                return error(
                    400,
                    "invalid_request_error",
                    Some("resource_missing"),
                    &format!("No such billing meter event summary: '{after}'"),
                );
            }
        }
    }
    let has_more = listed.len() > page_size;
    listed.truncate(page_size);
    let data: Vec<Value> = listed
        .iter()
        .map(|(day, v)| {
            let id = s.summaries.id(meter, customer, *day);
            json!({"id": id, "object": "billing.meter_event_summary",
                   "aggregated_value": *v as f64, "start_time": day, "end_time": day + 86_400,
                   "livemode": false, "meter": meter})
        })
        .collect();
    seen.returned = data.len();
    seen.has_more = has_more;
    respond(
        200,
        json!({"object": "list", "data": data, "has_more": has_more,
               "url": format!("/v1/billing/meters/{meter}/event_summaries")}),
    )
}

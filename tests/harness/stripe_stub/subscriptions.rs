//! Subscriptions and their invoices, as Stripe bills metered usage:
//!
//! - A subscription has monthly periods from its billing anchor (any day and time). When the
//!   stub's clock passes a period's end, the period rolls: the next one starts, and a **draft**
//!   invoice for the ended period is created at its end.
//! - About an hour later (on the stub's clock) Stripe **finalizes** the draft, unless the test
//!   holds finalization ([`hold_invoices`](super::StripeStub::hold_invoices)). From then on the
//!   invoice is fixed: an event accepted after finalization with a timestamp in that period is
//!   taken (200) and never billed — what [`invoiced`](super::StripeStub::invoiced) shows.
//! - A plan change can reset the billing anchor ([`reset_anchor`](super::StripeStub::reset_anchor)):
//!   the current period ends now and is invoiced (draft), and a new one starts.
//! - Every change is a Stripe event (`customer.subscription.created` / `.updated`,
//!   `invoice.finalized`) in the API's current shape (periods on the items, the invoice's
//!   subscription under `parent.subscription_details`), kept for the test to deliver, sign, drop or
//!   reorder ([`take_events`](super::StripeStub::take_events)).
//! - `GET /v1/subscriptions?customer=` and `GET /v1/invoices?customer=&created[gte]=` answer what
//!   it has, one page (`has_more: false`); `POST /v1/invoices/create_preview` the current
//!   period's bill at [`UNIT_CENTS`].

use std::collections::HashMap;

use chrono::{DateTime, Months, Utc};
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{Value, json};

use super::{State, respond};

/// How long after a period's end Stripe finalizes its invoice.
pub const FINALIZE_AFTER_SECS: i64 = 3600;

#[derive(Clone, Debug)]
pub(super) struct Subscription {
    pub id: String,
    pub customer: String,
    /// The current period.
    pub start: i64,
    pub end: i64,
    pub anchor: i64,
    /// Periods rolled since the anchor (the next end is the anchor plus this many months + 1).
    pub rolled: u32,
}

/// An invoice the stub made for a period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StubInvoice {
    /// `in_...`
    pub id: String,
    /// The customer.
    pub customer: String,
    /// The subscription.
    pub subscription: String,
    /// The usage period it bills.
    pub period_start: i64,
    /// The usage period it bills (end).
    pub period_end: i64,
    /// When it was created (the period's end, or the anchor reset).
    pub created: i64,
    /// When it was finalized, once it is.
    pub finalized_at: Option<i64>,
    /// How many events Stripe had taken when it was finalized (orders an event and the
    /// finalization within the same second).
    events_at_finalization: usize,
}

fn months_after(anchor: i64, n: u32) -> i64 {
    let a = DateTime::<Utc>::from_timestamp(anchor, 0).unwrap();
    a.checked_add_months(Months::new(n)).unwrap().timestamp()
}

impl State {
    pub(super) fn push_event(&mut self, kind: &str, object: Value) {
        let n = self.stripe_events.len() + self.taken_events;
        let created = self.now();
        self.stripe_events.push(json!({
            "id": format!("evt_stub{n:05}"), "object": "event", "type": kind,
            "created": created, "api_version": "2026-09-30.endive", "livemode": false,
            "data": {"object": object},
        }));
    }

    fn subscription_json(&self, s: &Subscription) -> Value {
        json!({
            "id": s.id, "object": "subscription", "customer": s.customer, "status": "active",
            "billing_cycle_anchor": s.anchor, "ended_at": null,
            "items": {"object": "list", "has_more": false, "data": [{
                "id": format!("si_{}", &s.id[4..]), "object": "subscription_item",
                "current_period_start": s.start, "current_period_end": s.end,
            }]},
        })
    }

    pub(super) fn invoice_json(&self, i: &StubInvoice) -> Value {
        json!({
            "id": i.id, "object": "invoice", "customer": i.customer,
            "status": if i.finalized_at.is_some() { "open" } else { "draft" },
            "billing_reason": "subscription_cycle",
            "period_start": i.period_start, "period_end": i.period_end, "created": i.created,
            "parent": {"type": "subscription_details",
                       "subscription_details": {"subscription": i.subscription}},
            "status_transitions": {"finalized_at": i.finalized_at},
        })
    }

    /// Ends subscription `idx`'s current period at `at` and starts the next one there.
    fn roll(&mut self, idx: usize, at: i64, next_end: i64) {
        let s = self.subscriptions[idx].clone();
        let id = format!("in_stub{:04}", self.invoices.len() + 1);
        self.invoices.push(StubInvoice {
            id,
            customer: s.customer.clone(),
            subscription: s.id.clone(),
            period_start: s.start,
            period_end: at,
            created: at,
            finalized_at: None,
            events_at_finalization: 0,
        });
        let sub = &mut self.subscriptions[idx];
        sub.start = at;
        sub.end = next_end;
        let json = self.subscription_json(&self.subscriptions[idx].clone());
        self.push_event("customer.subscription.updated", json);
    }

    /// Brings every subscription and invoice up to the stub's clock.
    pub(super) fn tick(&mut self) {
        let now = self.now();
        for idx in 0..self.subscriptions.len() {
            while self.subscriptions[idx].end <= now {
                let s = &mut self.subscriptions[idx];
                s.rolled += 1;
                let (at, next) = (s.end, months_after(s.anchor, s.rolled + 1));
                self.roll(idx, at, next);
            }
        }
        if self.holding_invoices {
            return;
        }
        let due: Vec<usize> = (0..self.invoices.len())
            .filter(|i| {
                let inv = &self.invoices[*i];
                inv.finalized_at.is_none() && inv.created + FINALIZE_AFTER_SECS <= now
            })
            .collect();
        for i in due {
            let at = self.invoices[i].created + FINALIZE_AFTER_SECS;
            self.finalize(i, at);
        }
    }

    pub(super) fn finalize(&mut self, i: usize, at: i64) {
        self.invoices[i].finalized_at = Some(at);
        self.invoices[i].events_at_finalization = self.events.len();
        let json = self.invoice_json(&self.invoices[i].clone());
        self.push_event("invoice.finalized", json);
    }

    pub(super) fn subscribe(&mut self, customer: &str, anchor: i64) -> String {
        let id = format!("sub_stub{:04}", self.subscriptions.len() + 1);
        let s = Subscription {
            id: id.clone(),
            customer: customer.to_owned(),
            start: anchor,
            end: months_after(anchor, 1),
            anchor,
            rolled: 0,
        };
        let json = self.subscription_json(&s);
        self.subscriptions.push(s);
        self.push_event("customer.subscription.created", json);
        self.tick();
        id
    }

    pub(super) fn reset_anchor(&mut self, sub: &str) {
        let now = self.now();
        let idx = self
            .subscriptions
            .iter()
            .position(|s| s.id == sub)
            .expect("no such subscription");
        let s = &mut self.subscriptions[idx];
        s.anchor = now;
        s.rolled = 0;
        self.roll(idx, now, months_after(now, 1));
    }

    /// What Stripe bills `customer` for `event_name` on the invoice of the period starting at
    /// `period_start` of its subscription: the events it took (and did not reject) stamped in the
    /// period, taken before the invoice was finalized (all of them, while it is not).
    pub(super) fn invoiced(&self, customer: &str, event_name: &str, period_start: i64) -> i64 {
        let (end, finalized) = self
            .invoices
            .iter()
            .find(|i| i.customer == customer && i.period_start == period_start)
            .map(|i| {
                (
                    i.period_end,
                    i.finalized_at.map(|f| (f, i.events_at_finalization)),
                )
            })
            .or_else(|| {
                self.subscriptions
                    .iter()
                    .find(|s| s.customer == customer && s.start == period_start)
                    .map(|s| (s.end, None))
            })
            .expect("no such period");
        self.events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.customer == customer && e.event_name == event_name && !e.rejected)
            .filter(|(_, e)| e.timestamp >= period_start && e.timestamp < end)
            .filter(|(n, e)| {
                finalized.is_none_or(|(f, taken)| {
                    e.accepted_at < f || (e.accepted_at == f && *n < taken)
                })
            })
            .map(|(_, e)| e.value)
            .sum()
    }
}

pub(super) fn list_subscriptions(
    s: &mut State,
    query: &HashMap<String, String>,
) -> hyper::Response<Full<Bytes>> {
    s.tick();
    s.subscription_reads += 1;
    let customer = query.get("customer").cloned().unwrap_or_default();
    let data: Vec<Value> = s
        .subscriptions
        .iter()
        .filter(|x| x.customer == customer)
        .map(|x| s.subscription_json(x))
        .collect();
    respond(
        200,
        json!({"object": "list", "url": "/v1/subscriptions", "has_more": false, "data": data}),
    )
}

pub(super) fn list_invoices(
    s: &mut State,
    query: &HashMap<String, String>,
) -> hyper::Response<Full<Bytes>> {
    s.tick();
    s.invoice_reads += 1;
    let customer = query.get("customer").cloned().unwrap_or_default();
    let gte: i64 = query
        .get("created[gte]")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let data: Vec<Value> = s
        .invoices
        .iter()
        .rev()
        .filter(|i| i.customer == customer && i.created >= gte)
        .map(|i| s.invoice_json(i))
        .collect();
    respond(
        200,
        json!({"object": "list", "url": "/v1/invoices", "has_more": false, "data": data}),
    )
}

/// What the stub charges per unit of each meter event name, in cents (a flat price each;
/// everything else is free): what invoice previews add up.
pub const UNIT_CENTS: [(&str, i64); 2] = [("tenantry_queries", 2), ("tenantry_questions", 10)];

pub(super) fn preview(
    s: &mut State,
    form: &HashMap<String, String>,
) -> hyper::Response<Full<Bytes>> {
    s.tick();
    let customer = form.get("customer").cloned().unwrap_or_default();
    let wanted = form.get("subscription");
    let Some(sub) = s
        .subscriptions
        .iter()
        .find(|x| x.customer == customer && wanted.is_none_or(|w| *w == x.id))
        .cloned()
    else {
        return super::error(
            400,
            "invalid_request_error",
            Some("invoice_upcoming_none"),
            "No upcoming invoices for customer.",
        );
    };
    let amount: i64 = UNIT_CENTS
        .iter()
        .map(|(name, cents)| cents * s.invoiced(&customer, name, sub.start))
        .sum();
    respond(
        200,
        json!({"object": "invoice", "customer": customer, "amount_due": amount, "total": amount,
               "currency": "usd", "period_start": sub.start, "period_end": sub.end,
               "status": "draft"}),
    )
}

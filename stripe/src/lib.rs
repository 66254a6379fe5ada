//! The Stripe Billing adapter ([`StripeBilling`], a [`BillingSink`]) on `async-stripe` 1.0, and the
//! `main`s of the functions that talk to Stripe (`usage-meter`, `billing-reconcile`,
//! `auth0-webhook`, which makes a new tenant's customer, and `stripe-webhook`, which reads meter
//! error reports back). Only these
//! link Stripe's client; everything else about billing lives in `tenantry::billing`.
//!
//! - Meter events carry the delivery's deterministic identifier; a resend of one Stripe already
//!   has gets Stripe's duplicate-identifier refusal, which counts as delivered. No
//!   `Idempotency-Key` is sent: Stripe replays a saved 500 for the same key for 24 hours, which
//!   would turn one transient failure into a day of them; the identifier is the dedupe.
//! - Customers are created with an `Idempotency-Key` derived from the tenant id
//!   (`tenantry-customer-<tenant>`), and the tenant id in their metadata: a retry, a redelivered
//!   event or a concurrent creation gets the same customer. (Stripe replays a saved 500 for that
//!   key for 24 hours; the tenant then stays pending and the reconcile tries again.)
//! - The client makes one attempt per call (`RequestStrategy::Once`, no retries of its own); the
//!   meter retries with backoff and jitter, and knows which errors are worth it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use stripe::{RequestStrategy, StripeError, StripeRequest};
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use stripe_billing::billing_meter_event_summary::{
    ListIdBillingMeterEventSummary, ListIdBillingMeterEventSummaryValueGroupingWindow,
};
use stripe_client_core::{RequestBuilder, StripeMethod};
use stripe_core::customer::CreateCustomer;
use tenantry::App;
use tenantry::billing::periods::{FinalizedInvoice, SubscriptionPeriod};
use tenantry::billing::{BillingSink, MeterEvent, Sent, SinkError, SinkFuture};
use tenantry::config::{BillingConfig, ConfigError};
use tenantry::usage::Meter;

/// What Stripe says when an identifier was already used (HTTP 400, `invalid_request_error`).
const DUPLICATE_PREFIX: &str = "An event already exists with identifier";

/// Stripe Billing Meters through `async-stripe`.
pub struct StripeBilling {
    client: stripe::Client,
    meter_ids: HashMap<Meter, String>,
    timeout: Duration,
    /// For the v2 API (thin events' details): async-stripe's client builds v1 URLs only.
    v2: reqwest::Client,
    base: String,
    key: tenantry::config::Secret,
}

impl std::fmt::Debug for StripeBilling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeBilling")
            .field("meter_ids", &self.meter_ids)
            .finish_non_exhaustive()
    }
}

impl StripeBilling {
    /// The adapter for `cfg`, if it has a Stripe key (None: use the local adapter).
    pub fn from_config(cfg: &BillingConfig) -> Result<Option<Self>, ConfigError> {
        let Some(key) = &cfg.stripe_api_key else {
            return Ok(None);
        };
        let mut base = cfg.stripe_api_base.clone();
        if !base.ends_with('/') {
            // The client appends `v1/...` to the base verbatim.
            base.push('/');
        }
        let timeout = cfg.stripe_timeout;
        let client = stripe::ClientBuilder::new(key.expose())
            .url(base.clone())
            .request_strategy(RequestStrategy::Once)
            .timeout(timeout)
            .app_info("tenantry", Some(env!("CARGO_PKG_VERSION").into()), None)
            .build()
            .map_err(|e| ConfigError::Invalid {
                name: "STRIPE_API_BASE",
                reason: e.to_string(),
            })?;
        // Well inside the webhook function's own timeout (10 s), so a slow Stripe gets a 503
        // (and a redelivery) rather than a killed invocation.
        let v2 = reqwest::Client::builder()
            .timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| ConfigError::Invalid {
                name: "STRIPE_API_BASE",
                reason: e.to_string(),
            })?;
        Ok(Some(Self {
            client,
            meter_ids: cfg.stripe_meter_ids.iter().cloned().collect(),
            timeout,
            v2,
            base,
            key: key.clone(),
        }))
    }
}

/// Stripe's answer, sorted into what the meter does with it.
fn classify(e: StripeError) -> SinkError {
    match e {
        StripeError::Stripe(err, status) => {
            let message = err.message.clone().unwrap_or_default();
            let code = err.code.as_ref().map(|c| c.as_str().to_owned());
            // Not about this event: throttling, Stripe's side, our credentials (a rotated or
            // revoked key), or a meter not (yet) active. The delivery stays pending and is sent
            // once that is fixed; refusing it for good would drop the usage.
            let not_the_events_fault = status == 429
                || status == 409
                || status >= 500
                || status == 401
                || status == 403
                || message.starts_with("No active meter");
            if not_the_events_fault {
                SinkError::Retryable(format!("HTTP {status}: {message}"))
            } else {
                SinkError::Rejected {
                    status,
                    code,
                    message,
                }
            }
        }
        // No answer: Stripe may still be working on it.
        StripeError::Timeout => SinkError::InDoubt("timeout".into()),
        StripeError::ClientError(m) => SinkError::InDoubt(m),
        // An answer, but not Stripe's JSON (a proxy's 502 page): nothing in progress.
        StripeError::JSONDeserialize(m) => SinkError::Retryable(m),
        StripeError::ConfigError(m) => SinkError::Retryable(format!("client configuration: {m}")),
    }
}

fn is_duplicate(e: &StripeError) -> bool {
    matches!(e, StripeError::Stripe(err, 400)
        if err.message.as_deref().is_some_and(|m| m.starts_with(DUPLICATE_PREFIX)))
}

impl BillingSink for StripeBilling {
    fn kind(&self) -> &'static str {
        "stripe"
    }

    fn send<'a>(&'a self, event: &'a MeterEvent) -> SinkFuture<'a, Sent> {
        Box::pin(async move {
            let payload = HashMap::from([
                ("stripe_customer_id".to_owned(), event.customer.clone()),
                ("value".to_owned(), event.value.to_string()),
            ]);
            let result = CreateBillingMeterEvent::new(event.event_name.clone(), payload)
                .identifier(event.identifier.clone())
                .timestamp(event.timestamp.timestamp())
                .customize()
                .timeout(self.timeout)
                .send(&self.client)
                .await;
            match result {
                Ok(_) => Ok(Sent::Accepted),
                Err(e) if is_duplicate(&e) => Ok(Sent::Duplicate),
                Err(e) => Err(classify(e)),
            }
        })
    }

    fn create_customer<'a>(
        &'a self,
        tenant: tenantry::TenantId,
        name: &'a str,
    ) -> SinkFuture<'a, String> {
        Box::pin(async move {
            let key =
                stripe::IdempotencyKey::try_from(format!("tenantry-customer-{}", tenant.as_uuid()))
                    .map_err(|e| SinkError::Retryable(format!("idempotency key: {e}")))?;
            let metadata = HashMap::from([("tenant_id".to_owned(), tenant.to_string())]);
            let customer = CreateCustomer::new()
                .name(name.to_owned())
                .metadata(metadata)
                .customize()
                .request_strategy(RequestStrategy::Idempotent(key))
                .timeout(self.timeout)
                .send(&self.client)
                .await
                .map_err(classify)?;
            Ok(customer.id.to_string())
        })
    }

    fn day_totals<'a>(
        &'a self,
        meter: Meter,
        customer: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> SinkFuture<'a, Vec<(NaiveDate, i64)>> {
        Box::pin(async move {
            let id = self.meter_id(meter)?;
            let mut out = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut req = ListIdBillingMeterEventSummary::new(
                    id,
                    customer,
                    to.timestamp(),
                    from.timestamp(),
                )
                .value_grouping_window(ListIdBillingMeterEventSummaryValueGroupingWindow::Day)
                .limit(100);
                if let Some(a) = &after {
                    req = req.starting_after(a.as_str());
                }
                let page = req
                    .customize()
                    .timeout(self.timeout)
                    .send(&self.client)
                    .await
                    .map_err(classify)?;
                for s in &page.data {
                    if let Some(day) = DateTime::from_timestamp(s.start_time, 0) {
                        out.push((day.date_naive(), s.aggregated_value.round() as i64));
                    }
                }
                match (page.has_more, page.data.last()) {
                    (true, Some(last)) => after = Some(last.id.to_string()),
                    _ => break,
                }
            }
            out.sort();
            Ok(out)
        })
    }

    fn window_total<'a>(
        &'a self,
        meter: Meter,
        customer: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> SinkFuture<'a, i64> {
        Box::pin(async move {
            let id = self.meter_id(meter)?;
            // No grouping window: one summary for the whole range (none when it is empty).
            let page =
                ListIdBillingMeterEventSummary::new(id, customer, to.timestamp(), from.timestamp())
                    .customize()
                    .timeout(self.timeout)
                    .send(&self.client)
                    .await
                    .map_err(classify)?;
            Ok(page
                .data
                .iter()
                .map(|s| s.aggregated_value.round() as i64)
                .sum())
        })
    }

    fn meter_error_report<'a>(
        &'a self,
        event_id: &'a str,
    ) -> SinkFuture<'a, Vec<tenantry::billing::RejectedEvent>> {
        Box::pin(async move {
            if !event_id.starts_with("evt_")
                || !event_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(SinkError::Rejected {
                    status: 0,
                    code: Some("invalid_event_id".into()),
                    message: "not a Stripe event id".into(),
                });
            }
            let url = format!("{}v2/core/events/{event_id}", self.base);
            let response = self
                .v2
                .get(url)
                .bearer_auth(self.key.expose())
                .send()
                .await
                .map_err(|e| SinkError::Retryable(format!("v2 event read: {e}")))?;
            let status = response.status().as_u16();
            if status == 429 || status >= 500 || status == 401 || status == 403 {
                return Err(SinkError::Retryable(format!("HTTP {status}")));
            }
            let text = response
                .text()
                .await
                .map_err(|e| SinkError::Retryable(format!("v2 event read: {e}")))?;
            let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if status >= 400 {
                return Err(SinkError::Rejected {
                    status,
                    code: body["error"]["code"].as_str().map(str::to_owned),
                    message: body["error"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
            Ok(rejected_events(&body))
        })
    }

    fn upcoming_invoice<'a>(
        &'a self,
        customer: &'a str,
        subscription: Option<&'a str>,
    ) -> SinkFuture<'a, Option<tenantry::billing::Estimate>> {
        Box::pin(async move {
            let result: Result<PreviewFields, _> =
                RequestBuilder::new(StripeMethod::Post, "/invoices/create_preview")
                    .form(&PreviewParams {
                        customer,
                        subscription,
                    })
                    .customize()
                    .timeout(self.timeout)
                    .send(&self.client)
                    .await;
            match result {
                Ok(p) => Ok(Some(tenantry::billing::Estimate {
                    amount_due: p.amount_due,
                    currency: p.currency,
                    period_end: p.period_end.and_then(at),
                })),
                // Nothing to invoice: no subscription (or none with anything on it).
                Err(StripeError::Stripe(err, 400 | 404))
                    if err
                        .code
                        .as_ref()
                        .is_some_and(|c| c.as_str() == "invoice_upcoming_none") =>
                {
                    Ok(None)
                }
                Err(e) => Err(classify(e)),
            }
        })
    }

    fn subscriptions<'a>(&'a self, customer: &'a str) -> SinkFuture<'a, Vec<SubscriptionPeriod>> {
        Box::pin(async move {
            let params = ListParams {
                customer,
                limit: 100,
                status: Some("all"),
                created: None,
                starting_after: None,
            };
            let subs: Vec<SubscriptionFields> = self
                .list_all("/subscriptions", params, |s: &SubscriptionFields| {
                    Some(s.id.clone())
                })
                .await?;
            Ok(subs.iter().filter_map(SubscriptionFields::period).collect())
        })
    }

    fn finalized_invoices<'a>(
        &'a self,
        customer: &'a str,
        created_from: DateTime<Utc>,
    ) -> SinkFuture<'a, Vec<FinalizedInvoice>> {
        Box::pin(async move {
            let params = ListParams {
                customer,
                limit: 100,
                status: None,
                created: Some(Gte {
                    gte: created_from.timestamp(),
                }),
                starting_after: None,
            };
            let invoices: Vec<InvoiceFields> = self
                .list_all("/invoices", params, |i: &InvoiceFields| i.id.clone())
                .await?;
            Ok(invoices
                .iter()
                .filter_map(InvoiceFields::finalized)
                .collect())
        })
    }
}

/// A page of a Stripe list, as far as we read it.
#[derive(miniserde::Deserialize)]
struct Page<T> {
    data: Vec<T>,
    has_more: bool,
}

/// The fields of a subscription we read: the current period on the subscription (API versions
/// before 2025-03-31) or on its items (since).
#[derive(miniserde::Deserialize)]
struct SubscriptionFields {
    id: String,
    status: String,
    current_period_start: Option<i64>,
    current_period_end: Option<i64>,
    ended_at: Option<i64>,
    items: Option<Page<ItemFields>>,
}

#[derive(miniserde::Deserialize)]
struct ItemFields {
    current_period_start: Option<i64>,
    current_period_end: Option<i64>,
}

/// The fields of an invoice we read (its subscription at the top before 2025-03-31, under
/// `parent.subscription_details` since).
#[derive(miniserde::Deserialize)]
struct InvoiceFields {
    id: Option<String>,
    status: Option<String>,
    subscription: Option<String>,
    parent: Option<ParentFields>,
    period_start: i64,
    period_end: i64,
    status_transitions: Option<TransitionFields>,
    billing_reason: Option<String>,
}

#[derive(miniserde::Deserialize)]
struct ParentFields {
    subscription_details: Option<SubscriptionDetailsFields>,
}

#[derive(miniserde::Deserialize)]
struct SubscriptionDetailsFields {
    subscription: Option<String>,
}

#[derive(miniserde::Deserialize)]
struct TransitionFields {
    finalized_at: Option<i64>,
}

#[derive(Clone, Copy, serde::Serialize)]
struct ListParams<'a> {
    customer: &'a str,
    limit: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<Gte>,
    #[serde(skip_serializing_if = "Option::is_none")]
    starting_after: Option<&'a str>,
}

/// The fields of an invoice preview we read.
#[derive(miniserde::Deserialize)]
struct PreviewFields {
    amount_due: i64,
    currency: String,
    period_end: Option<i64>,
}

#[derive(serde::Serialize)]
struct PreviewParams<'a> {
    customer: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription: Option<&'a str>,
}

#[derive(Clone, Copy, serde::Serialize)]
struct Gte {
    gte: i64,
}

impl StripeBilling {
    /// The Stripe meter id of `meter` (a refusal when it is not configured).
    fn meter_id(&self, meter: Meter) -> Result<&str, SinkError> {
        self.meter_ids
            .get(&meter)
            .map(String::as_str)
            .ok_or_else(|| SinkError::Rejected {
                status: 0,
                code: Some("meter_not_configured".into()),
                message: format!("no Stripe meter id for {}", meter.name()),
            })
    }

    /// Every page of a list endpoint (`id` is how to continue after an item).
    async fn list_all<T: miniserde::Deserialize>(
        &self,
        path: &str,
        params: ListParams<'_>,
        id: impl Fn(&T) -> Option<String>,
    ) -> Result<Vec<T>, SinkError> {
        let mut out: Vec<T> = Vec::new();
        let mut after: Option<String> = None;
        // A customer has a handful of subscriptions and about one invoice a month: ten pages
        // of 100 is far more than a sync ever reads; stop rather than loop on a broken cursor.
        for _ in 0..10 {
            let params = ListParams {
                starting_after: after.as_deref(),
                ..params
            };
            let page: Page<T> = RequestBuilder::new(StripeMethod::Get, path)
                .query(&params)
                .customize()
                .timeout(self.timeout)
                .send(&self.client)
                .await
                .map_err(classify)?;
            let next = if page.has_more {
                page.data.last().and_then(&id)
            } else {
                None
            };
            out.extend(page.data);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
        Ok(out)
    }
}

/// The samples of a `v1.billing.meter.error_report_triggered` event (its `data.reason`):
/// each error type's code, and each sample's identifier and message.
fn rejected_events(event: &serde_json::Value) -> Vec<tenantry::billing::RejectedEvent> {
    let empty = Vec::new();
    let types = event["data"]["reason"]["error_types"]
        .as_array()
        .unwrap_or(&empty);
    types
        .iter()
        .flat_map(|t| {
            let code = t["code"].as_str().unwrap_or_default().to_owned();
            t["sample_errors"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .filter_map(move |e| {
                    Some(tenantry::billing::RejectedEvent {
                        identifier: e["request"]["identifier"].as_str()?.to_owned(),
                        code: code.clone(),
                        message: e["error_message"].as_str().unwrap_or_default().to_owned(),
                    })
                })
        })
        .collect()
}

fn at(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

impl SubscriptionFields {
    fn period(&self) -> Option<SubscriptionPeriod> {
        let items = self
            .items
            .as_ref()
            .map(|l| l.data.as_slice())
            .unwrap_or_default();
        SubscriptionPeriod::from_stripe(
            self.id.clone(),
            self.status.clone(),
            (self.current_period_start, self.current_period_end),
            items
                .iter()
                .map(|i| (i.current_period_start, i.current_period_end)),
            self.ended_at,
        )
    }
}

impl InvoiceFields {
    /// A finalized subscription invoice (any status but `draft`), if this is one.
    fn finalized(&self) -> Option<FinalizedInvoice> {
        if matches!(self.status.as_deref(), None | Some("draft")) {
            return None;
        }
        let subscription = self.subscription.clone().or_else(|| {
            self.parent
                .as_ref()?
                .subscription_details
                .as_ref()?
                .subscription
                .clone()
        });
        let finalized_at = self
            .status_transitions
            .as_ref()?
            .finalized_at
            .and_then(at)?;
        FinalizedInvoice::from_stripe(
            self.id.clone(),
            subscription,
            self.billing_reason.as_deref(),
            (self.period_start, self.period_end),
            finalized_at,
        )
    }
}

/// Builds the app with Stripe when a key is configured, the local adapter otherwise — except in
/// Lambda, where a missing key or meter id is a startup error: the local adapter would mark usage
/// delivered that never reached Stripe.
pub async fn app_from_env() -> Result<App, lambda_runtime::Error> {
    let builder = tenantry::app::AppBuilder::from_env().await?;
    let billing = &builder.config().billing;
    if tenantry::app::in_lambda() {
        require_stripe(billing)?;
    }
    let sink = StripeBilling::from_config(billing)?.map(|s| Arc::new(s) as Arc<dyn BillingSink>);
    Ok(builder.billing(sink).build()?)
}

/// The whole `main` of an HTTP function that calls Stripe (`auth0-webhook`, which makes billing
/// customers for `organization.created`; `stripe-webhook`, which reads meter error reports):
/// the usual HTTP wiring with Stripe as the billing port. In Lambda a Stripe key is required
/// (the local adapter's customers and reports exist nowhere).
pub async fn run_http_function(function: &'static str) -> Result<(), lambda_http::Error> {
    tenantry::telemetry::init(tenantry::app::log_format());
    let routes = tenantry::api::routes_for(function);
    if routes.is_empty() {
        return Err(format!("no routes for function {function}").into());
    }
    let builder = tenantry::app::AppBuilder::from_env().await?;
    let billing = &builder.config().billing;
    if tenantry::app::in_lambda() && billing.stripe_api_key.is_none() {
        return Err(ConfigError::Invalid {
            name: "STRIPE_API_KEY",
            reason: "required in Lambda (set it in the BILLING_SECRET_ARN secret)".into(),
        }
        .into());
    }
    let sink = StripeBilling::from_config(billing)?.map(|s| Arc::new(s) as Arc<dyn BillingSink>);
    let app = builder.billing(sink).build()?;
    tenantry::app::refuse_local_billing_in_lambda(&app, tenantry::app::in_lambda())?;
    lambda_http::run(tenantry::http::router(Arc::new(app), &routes)).await
}

/// Checks that `cfg` can bill through Stripe: a key and a meter id for every meter.
pub fn require_stripe(cfg: &BillingConfig) -> Result<(), ConfigError> {
    if cfg.stripe_api_key.is_none() {
        return Err(ConfigError::Invalid {
            name: "STRIPE_API_KEY",
            reason: "required in Lambda (set it in the BILLING_SECRET_ARN secret)".into(),
        });
    }
    for d in tenantry::usage::METERS {
        if !cfg.stripe_meter_ids.iter().any(|(m, _)| *m == d.meter) {
            return Err(ConfigError::Invalid {
                name: "STRIPE_METER_ID_*",
                reason: format!("no Stripe meter id for {}", d.name),
            });
        }
    }
    Ok(())
}

/// The whole `main` of the SQS-triggered `usage-meter` function.
pub async fn run_usage_meter() -> Result<(), lambda_runtime::Error> {
    tenantry::telemetry::init(tenantry::app::log_format());
    let app = Arc::new(app_from_env().await?);
    let memo = Arc::new(tenantry::billing::meter::FlushMemo::default());
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| {
            let (app, memo) = (Arc::clone(&app), Arc::clone(&memo));
            async move {
                Ok::<_, std::convert::Infallible>(
                    tenantry::billing::meter::handle_sqs(
                        &app.db,
                        app.billing.as_ref(),
                        &app.config.billing.meter,
                        &memo,
                        event.payload,
                    )
                    .await,
                )
            }
        },
    ))
    .await
}

/// The whole `main` of the `billing-reconcile` function: the schedules' input, and the batches
/// its fan-out queue delivers (see `tenantry::billing::reconcile::handle_event`).
pub async fn run_billing_reconcile() -> Result<(), lambda_runtime::Error> {
    tenantry::telemetry::init(tenantry::app::log_format());
    let app = Arc::new(app_from_env().await?);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let app = Arc::clone(&app);
            async move {
                let out = tenantry::billing::reconcile::handle_event(
                    &app.db,
                    app.billing.as_ref(),
                    &app.config.billing.meter,
                    &app.config.billing.plans,
                    app.reconcile_queue.as_deref(),
                    event.payload,
                )
                .await?;
                Ok::<_, lambda_runtime::Error>(out)
            }
        },
    ))
    .await
}

//! Billing: the ledger's usage carried to Stripe Billing Meters, reconciled against Stripe, and the
//! billing state Stripe's and Auth0's webhooks report.
//!
//! - [`BillingSink`]: the port to the billing provider — send a meter event, read back per-day
//!   totals. Adapters: [`LocalBilling`] here (records what it would send; the local runner and the
//!   default), and the Stripe adapter in the `tenantry-stripe` crate (linked only by the functions
//!   that talk to Stripe).
//! - [`meter`]: windows → deliveries (the outbox) → the sink, with deterministic identifiers.
//! - [`reconcile`]: ledger vs the provider per tenant, meter and day; repairs; snapshots.
//! - [`periods`]: billing periods from the tenant's subscription, open until Stripe finalizes
//!   their invoice; late usage.
//! - [`plans`]: plan entitlements (included quantities, soft and hard limits) and the counters
//!   that enforce them.
//! - [`webhooks`]: Stripe (signed) and Auth0 (shared secret) webhooks.
//! - [`BillingConfig`]: the billing section of the configuration (the meter's own part is
//!   [`meter::MeterConfig`]), read from the environment here.

pub mod customers;
pub mod meter;
pub mod periods;
pub mod plans;
pub mod reconcile;
pub mod webhooks;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use crate::TenantId;
use crate::env::{ConfigError, Env, Secret};
use crate::usage::Meter;

/// Usage metering and billing settings.
#[derive(Clone, Debug)]
pub struct BillingConfig {
    /// SQS queue for usage events (consumed by `usage-meter`); unset: in-process.
    pub usage_queue_url: Option<String>,
    /// SQS queue the scheduled reconciliation fans out to, a message per batch of tenants
    /// (consumed by `billing-reconcile` itself); unset: one run visits every tenant.
    pub reconcile_queue_url: Option<String>,
    /// Windows, leases, retries.
    pub meter: meter::MeterConfig,
    /// Stripe secret key; unset: the local billing adapter.
    pub stripe_api_key: Option<Secret>,
    /// Stripe API base URL (tests point it at a local server).
    pub stripe_api_base: String,
    /// Per-call timeout for Stripe requests.
    pub stripe_timeout: Duration,
    /// Stripe meter id per meter (for reading event summaries back).
    pub stripe_meter_ids: Vec<(Meter, String)>,
    /// Stripe webhook signing secrets (more than one while a secret is being rolled).
    pub stripe_webhook_secrets: Vec<Secret>,
    /// Seconds a Stripe webhook signature stays valid.
    pub stripe_webhook_tolerance_secs: i64,
    /// Shared secret Auth0's log stream / action sends in `Authorization: Bearer ...`.
    pub auth0_webhook_secret: Option<Secret>,
    /// What each plan includes and where it stops (`PLAN_ENTITLEMENTS`).
    pub plans: plans::PlanConfig,
    /// Secrets Manager secret with `stripe_api_key`, `stripe_webhook_secrets`,
    /// `auth0_webhook_secret` (JSON), read at cold start.
    pub secret_arn: Option<String>,
}

impl BillingConfig {
    /// `USAGE_QUEUE_URL`, `BILLING_RECONCILE_QUEUE_URL`, the meter's settings ([`meter::MeterConfig`]), `STRIPE_API_KEY`,
    /// `STRIPE_API_BASE`, `STRIPE_TIMEOUT_MS`, one [`stripe_meter_var`] per meter,
    /// `STRIPE_WEBHOOK_SECRETS` (comma-separated), `STRIPE_WEBHOOK_TOLERANCE_SECS`,
    /// `AUTH0_WEBHOOK_SECRET`, `BILLING_SECRET_ARN`, `PLAN_ENTITLEMENTS`.
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            usage_queue_url: env.var("USAGE_QUEUE_URL"),
            reconcile_queue_url: env.var("BILLING_RECONCILE_QUEUE_URL"),
            meter: meter::MeterConfig::from_env(env)?,
            stripe_api_key: env.var("STRIPE_API_KEY").map(Secret::new),
            stripe_api_base: env
                .var("STRIPE_API_BASE")
                .unwrap_or_else(|| "https://api.stripe.com/".into()),
            stripe_timeout: Duration::from_millis(env.parse("STRIPE_TIMEOUT_MS", 10_000)?),
            stripe_meter_ids: crate::usage::METERS
                .iter()
                .filter_map(|d| env.var(stripe_meter_var(d.meter)).map(|id| (d.meter, id)))
                .collect(),
            stripe_webhook_secrets: env
                .var("STRIPE_WEBHOOK_SECRETS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(Secret::new)
                        .collect()
                })
                .unwrap_or_default(),
            stripe_webhook_tolerance_secs: env.parse("STRIPE_WEBHOOK_TOLERANCE_SECS", 300)?,
            auth0_webhook_secret: env.var("AUTH0_WEBHOOK_SECRET").map(Secret::new),
            secret_arn: env.var("BILLING_SECRET_ARN"),
            plans: plans::PlanConfig::from_env(env)?,
        })
    }
}

/// The environment variable holding a meter's Stripe meter id.
pub fn stripe_meter_var(meter: Meter) -> &'static str {
    match meter {
        Meter::Queries => "STRIPE_METER_ID_QUERIES",
        Meter::Questions => "STRIPE_METER_ID_QUESTIONS",
        Meter::IngestedRecords => "STRIPE_METER_ID_INGESTED_RECORDS",
        Meter::Storage => "STRIPE_METER_ID_STORAGE",
        Meter::Seats => "STRIPE_METER_ID_SEATS",
    }
}

/// A meter event as the provider takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterEvent {
    /// The provider's meter event name.
    pub event_name: String,
    /// The provider's customer id.
    pub customer: String,
    /// The value (positive).
    pub value: i64,
    /// Deterministic: the same delivery always carries the same identifier.
    pub identifier: String,
    /// When it counts (seconds since the epoch).
    pub timestamp: DateTime<Utc>,
}

/// A meter event the provider answered 200 and then did not count (a sample of a meter error
/// report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedEvent {
    /// The event's identifier (ours: `tnt_<tenant>_...`).
    pub identifier: String,
    /// The provider's error code (e.g. `meter_event_customer_not_found`).
    pub code: String,
    /// The provider's message.
    pub message: String,
}

/// An estimate of the current period's bill.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Estimate {
    /// In the currency's smallest unit (cents).
    pub amount_due: i64,
    /// ISO 4217, lower case.
    pub currency: String,
    /// The end of the period it bills.
    pub period_end: Option<DateTime<Utc>>,
}

/// The provider took the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Newly accepted.
    Accepted,
    /// It already had an event with this identifier: delivered before (a retry after a crash).
    Duplicate,
}

/// Why a call to the provider failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The provider answered that it cannot take it now (429, 5xx): retry with backoff.
    #[error("provider unavailable: {0}")]
    Retryable(String),
    /// No answer (timeout, broken connection): the call may still be in progress at the
    /// provider. Not retried at once (the provider allows one call per customer and meter at a
    /// time); the delivery keeps its lease and is sent again, with the same identifier, after
    /// the lease runs out.
    #[error("provider call in doubt: {0}")]
    InDoubt(String),
    /// Refused for good (other 4xx): recorded against the window, never retried blindly.
    #[error("provider refused ({status}{}): {message}", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The provider's error code, if any.
        code: Option<String>,
        /// The provider's message.
        message: String,
    },
}

/// A boxed provider future.
pub type SinkFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SinkError>> + Send + 'a>>;

/// The billing provider.
pub trait BillingSink: Send + Sync + std::fmt::Debug {
    /// Which adapter, for the startup log and `/v1/usage`.
    fn kind(&self) -> &'static str;

    /// Sends one meter event. A duplicate identifier is [`Sent::Duplicate`], not an error.
    fn send<'a>(&'a self, event: &'a MeterEvent) -> SinkFuture<'a, Sent>;

    /// Creates the tenant's customer, named `name`, with the tenant id in its metadata; the same
    /// tenant always gets the same customer (an idempotency key derived from its id), however
    /// often or concurrently this is called.
    fn create_customer<'a>(&'a self, tenant: TenantId, name: &'a str) -> SinkFuture<'a, String>;

    /// The provider's totals per UTC day for `customer` on `meter` in `[from, to)` (whole days).
    fn day_totals<'a>(
        &'a self,
        meter: crate::usage::Meter,
        customer: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> SinkFuture<'a, Vec<(NaiveDate, i64)>>;

    /// The provider's total for `customer` on `meter` in `[from, to)` (minute-aligned), as one
    /// summary: whether an event sent long ago got through, before it is sent again.
    fn window_total<'a>(
        &'a self,
        meter: crate::usage::Meter,
        customer: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> SinkFuture<'a, i64>;

    /// The events a meter error report names (`v1.billing.meter.error_report_triggered`, a thin
    /// event: its details are read back by id). The default, for a provider without
    /// asynchronous rejections (the local adapter): a refusal.
    fn meter_error_report<'a>(&'a self, event_id: &'a str) -> SinkFuture<'a, Vec<RejectedEvent>> {
        let _ = event_id;
        Box::pin(async {
            Err(SinkError::Rejected {
                status: 0,
                code: Some("not_supported".into()),
                message: "this billing adapter has no meter error reports".into(),
            })
        })
    }

    /// The customer's next invoice as it stands (Stripe's invoice preview): the estimate of the
    /// current period's bill. None: nothing to invoice (no subscription). Default: None.
    fn upcoming_invoice<'a>(
        &'a self,
        customer: &'a str,
        subscription: Option<&'a str>,
    ) -> SinkFuture<'a, Option<Estimate>> {
        let _ = (customer, subscription);
        Box::pin(async { Ok(None) })
    }

    /// The customer's subscriptions and their current periods (the repair for missed
    /// subscription webhooks). The default, for a provider without subscriptions (the local
    /// adapter): none, so the tenant is billed by calendar month.
    fn subscriptions<'a>(
        &'a self,
        customer: &'a str,
    ) -> SinkFuture<'a, Vec<periods::SubscriptionPeriod>> {
        let _ = customer;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// The customer's subscription invoices created since `created_from` that Stripe has
    /// finalized (the repair for a missed `invoice.finalized`). Default: none.
    fn finalized_invoices<'a>(
        &'a self,
        customer: &'a str,
        created_from: DateTime<Utc>,
    ) -> SinkFuture<'a, Vec<periods::FinalizedInvoice>> {
        let _ = (customer, created_from);
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// The local billing adapter: keeps the meter events it would send (deduplicated by identifier,
/// as Stripe does) in memory, and answers totals from them. Named in logs and `/v1/usage`.
#[derive(Debug, Default)]
pub struct LocalBilling {
    events: Mutex<HashMap<String, MeterEvent>>,
    customers: Mutex<HashMap<TenantId, String>>,
}

impl LocalBilling {
    /// Everything it has accepted, oldest first.
    pub fn events(&self) -> Vec<MeterEvent> {
        let mut all: Vec<MeterEvent> = self
            .events
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| (a.timestamp, &a.identifier).cmp(&(b.timestamp, &b.identifier)));
        all
    }
}

impl BillingSink for LocalBilling {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn send<'a>(&'a self, event: &'a MeterEvent) -> SinkFuture<'a, Sent> {
        Box::pin(async move {
            let mut events = self
                .events
                .lock()
                .map_err(|_| SinkError::Retryable("local billing state poisoned".into()))?;
            if events.contains_key(&event.identifier) {
                return Ok(Sent::Duplicate);
            }
            tracing::info!(
                event_name = %event.event_name,
                value = event.value,
                identifier = %event.identifier,
                "local billing: meter event recorded (not sent anywhere)"
            );
            events.insert(event.identifier.clone(), event.clone());
            Ok(Sent::Accepted)
        })
    }

    fn create_customer<'a>(&'a self, tenant: TenantId, name: &'a str) -> SinkFuture<'a, String> {
        Box::pin(async move {
            let mut customers = self
                .customers
                .lock()
                .map_err(|_| SinkError::Retryable("local billing state poisoned".into()))?;
            let id = customers
                .entry(tenant)
                .or_insert_with(|| format!("cus_local_{}", tenant.as_uuid().simple()));
            tracing::info!(tenant_id = %tenant, name_chars = name.chars().count(),
                "local billing: customer recorded (not created anywhere)");
            Ok(id.clone())
        })
    }

    fn day_totals<'a>(
        &'a self,
        meter: crate::usage::Meter,
        customer: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> SinkFuture<'a, Vec<(NaiveDate, i64)>> {
        Box::pin(async move {
            let name = meter.def().event_name;
            let mut days: std::collections::BTreeMap<NaiveDate, i64> = Default::default();
            for e in self.events() {
                if e.event_name == name
                    && e.customer == customer
                    && e.timestamp >= from
                    && e.timestamp < to
                {
                    *days.entry(e.timestamp.date_naive()).or_default() += e.value;
                }
            }
            Ok(days.into_iter().collect())
        })
    }

    fn window_total<'a>(
        &'a self,
        meter: crate::usage::Meter,
        customer: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> SinkFuture<'a, i64> {
        Box::pin(async move {
            let name = meter.def().event_name;
            Ok(self
                .events()
                .iter()
                .filter(|e| e.event_name == name && e.customer == customer)
                .filter(|e| e.timestamp >= from && e.timestamp < to)
                .map(|e| e.value)
                .sum())
        })
    }
}

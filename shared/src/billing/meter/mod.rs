//! The meter: the usage ledger carried to the billing provider, exactly once per unit of usage.
//!
//! This module owns how usage is windowed, leased and retried ([`MeterConfig`], read from the
//! environment here) and the deterministic identifier of each delivery ([`identifier`]). The rest
//! is in two submodules, whose items are also re-exported here:
//!
//! - [`outbox`]: from ledger to provider. Per tenant, plan deliveries for the closed windows,
//!   claim them with a lease, send them and settle what the provider answered ([`flush_tenant`],
//!   [`flush_tenants`], [`send_with_retries`], [`FlushOutcome`]); and which tenants a queue batch
//!   makes due for a flush ([`FlushMemo`]). Its docs give the steps, and why a crash anywhere
//!   neither counts twice nor drops anything.
//! - [`consumer`]: the usage queue's consumer, the `usage-meter` function's handler
//!   ([`handle_sqs`]): the queue's messages ([`UsageMessage`]) written to the ledger
//!   ([`record_events`], [`record_events_with`]), then a flush of the tenants due one.

pub mod consumer;
pub mod outbox;

use std::time::Duration;

use chrono::{DateTime, Utc};

pub use consumer::{UsageMessage, handle_sqs, record_events, record_events_with};
pub(crate) use outbox::lock_customer;
pub use outbox::{FlushMemo, FlushOutcome, flush_tenant, flush_tenants, send_with_retries};

use crate::TenantId;
use crate::env::{ConfigError, Env};
use crate::usage::Meter;

/// How the meter windows, leases and retries.
#[derive(Clone, Debug)]
pub struct MeterConfig {
    /// Aggregation window length; divides a day.
    pub window_secs: i64,
    /// A window is closed this long after its end (late queue deliveries still make it).
    pub grace_secs: i64,
    /// How long a claimed delivery is reserved for its sender.
    pub lease_secs: i64,
    /// Calls per delivery before giving up for this run (the lease then lapses; a later run
    /// tries again).
    pub attempts: u32,
    /// First backoff; doubled per attempt, capped at `backoff_max`, fully jittered.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Oldest event time the provider accepts (Stripe: 35 days), with a safety margin.
    pub max_age: chrono::Duration,
    /// Tenants flushed at once.
    pub concurrency: usize,
    /// Reconciliation leaves a day alone while a delivery for it settled less than this ago
    /// (the provider's totals are eventually consistent).
    pub settle_secs: i64,
    /// Reconciliation records older than this many days are deleted by the daily run (at
    /// least 7).
    pub reconciliation_retention_days: i32,
    /// Tenants per message when reconciliation fans out over its queue.
    pub reconcile_batch: usize,
    /// Tenants one reconciliation (or one queue message) works on at once.
    pub reconcile_concurrency: usize,
}

impl Default for MeterConfig {
    fn default() -> Self {
        Self {
            window_secs: 3600,
            grace_secs: 120,
            lease_secs: 60,
            attempts: 4,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            max_age: chrono::Duration::days(35) - chrono::Duration::hours(1),
            concurrency: 8,
            settle_secs: 900,
            reconciliation_retention_days: 90,
            reconcile_batch: 25,
            reconcile_concurrency: 2,
        }
    }
}

impl MeterConfig {
    /// `USAGE_WINDOW_SECS` (at least 60 and a divisor of a day), `USAGE_GRACE_SECS`,
    /// `BILLING_SETTLE_SECS`, `USAGE_LEASE_SECS`, `STRIPE_MAX_ATTEMPTS`,
    /// `STRIPE_BACKOFF_BASE_MS`, `BILLING_RECONCILIATION_RETENTION_DAYS` (at least 7),
    /// `BILLING_RECONCILE_BATCH` (1 to 200), `BILLING_RECONCILE_CONCURRENCY` (1 to 32); the
    /// rest as [`MeterConfig::default`].
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let window_secs: i64 = env.parse("USAGE_WINDOW_SECS", d.window_secs)?;
        if window_secs < 60 || 86_400 % window_secs != 0 {
            return Err(ConfigError::Invalid {
                name: "USAGE_WINDOW_SECS",
                reason: "at least 60 and a divisor of 86400 (windows must not cross days)".into(),
            });
        }
        let retention: i32 = env.parse(
            "BILLING_RECONCILIATION_RETENTION_DAYS",
            d.reconciliation_retention_days,
        )?;
        if retention < 7 {
            return Err(ConfigError::Invalid {
                name: "BILLING_RECONCILIATION_RETENTION_DAYS",
                reason: "at least 7 days".into(),
            });
        }
        let reconcile_batch: usize = env.parse("BILLING_RECONCILE_BATCH", d.reconcile_batch)?;
        // 200 ids are about 8 KB: ten such messages stay well inside one SQS batch call.
        if !(1..=200).contains(&reconcile_batch) {
            return Err(ConfigError::Invalid {
                name: "BILLING_RECONCILE_BATCH",
                reason: "from 1 to 200 tenants per message".into(),
            });
        }
        let reconcile_concurrency: usize =
            env.parse("BILLING_RECONCILE_CONCURRENCY", d.reconcile_concurrency)?;
        if !(1..=32).contains(&reconcile_concurrency) {
            return Err(ConfigError::Invalid {
                name: "BILLING_RECONCILE_CONCURRENCY",
                reason: "from 1 to 32 tenants at once".into(),
            });
        }
        Ok(Self {
            window_secs,
            reconciliation_retention_days: retention,
            reconcile_batch,
            reconcile_concurrency,
            grace_secs: env.parse("USAGE_GRACE_SECS", d.grace_secs)?,
            settle_secs: env.parse("BILLING_SETTLE_SECS", d.settle_secs)?,
            lease_secs: env.parse("USAGE_LEASE_SECS", d.lease_secs)?,
            attempts: env.parse("STRIPE_MAX_ATTEMPTS", d.attempts)?,
            backoff_base: Duration::from_millis(
                env.parse("STRIPE_BACKOFF_BASE_MS", d.backoff_base.as_millis() as u64)?,
            ),
            ..d
        })
    }

    /// Windows that start at or before this are closed at `now`.
    pub fn closed_before(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::seconds(self.window_secs + self.grace_secs)
    }
}

/// The deterministic identifier of a delivery (what `app.usage_deliveries.identifier` derives).
pub fn identifier(tenant: TenantId, meter: Meter, window_start: DateTime<Utc>, seq: i32) -> String {
    format!(
        "tnt_{}_{}_{}_{}",
        tenant.as_uuid().simple(),
        meter.name(),
        window_start.timestamp(),
        seq
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_deterministic_and_short_enough() {
        let t = TenantId::from(uuid::Uuid::from_u128(
            0x0190_0000_0000_7000_8000_0000_0000_a0e1,
        ));
        let w = DateTime::from_timestamp(1_764_115_200, 0).unwrap();
        let id = identifier(t, Meter::IngestedRecords, w, 3);
        assert_eq!(
            id,
            "tnt_0190000000007000800000000000a0e1_ingested_records_1764115200_3"
        );
        assert!(id.len() <= 100);
        assert_eq!(id, identifier(t, Meter::IngestedRecords, w, 3));
    }

    #[test]
    fn a_window_closes_once_its_grace_has_passed_too() {
        let cfg = MeterConfig {
            window_secs: 60,
            grace_secs: 30,
            ..MeterConfig::default()
        };
        let now = DateTime::from_timestamp(1_764_115_290, 0).unwrap();
        // Windows starting at or before 90 s ago (one window and its grace) are closed.
        assert_eq!(
            cfg.closed_before(now),
            DateTime::from_timestamp(1_764_115_200, 0).unwrap()
        );
    }

    #[test]
    fn every_setting_is_read_from_its_variable() {
        let vars = [
            ("USAGE_WINDOW_SECS", "120"),
            ("USAGE_GRACE_SECS", "7"),
            ("BILLING_SETTLE_SECS", "8"),
            ("USAGE_LEASE_SECS", "9"),
            ("STRIPE_MAX_ATTEMPTS", "2"),
            ("STRIPE_BACKOFF_BASE_MS", "11"),
            ("BILLING_RECONCILIATION_RETENTION_DAYS", "12"),
        ];
        let cfg = MeterConfig::from_env(&Env::new(move |n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        }))
        .unwrap();
        let d = MeterConfig::default();
        let read = (
            cfg.window_secs,
            cfg.grace_secs,
            cfg.settle_secs,
            cfg.lease_secs,
            cfg.attempts,
            cfg.backoff_base,
        );
        assert_eq!(read, (120, 7, 8, 9, 2, Duration::from_millis(11)));
        assert_eq!(cfg.reconciliation_retention_days, 12);
        assert_ne!(d.reconciliation_retention_days, 12);
        let defaults = (
            d.window_secs,
            d.grace_secs,
            d.settle_secs,
            d.lease_secs,
            d.attempts,
            d.backoff_base,
        );
        assert_ne!(read.0, defaults.0);
        assert_ne!(read.1, defaults.1);
        assert_ne!(read.2, defaults.2);
        assert_ne!(read.3, defaults.3);
        assert_ne!(read.4, defaults.4);
        assert_ne!(read.5, defaults.5);
    }

    #[test]
    fn windows_are_at_least_a_minute_and_divide_a_day() {
        let of = |v: &'static str| {
            MeterConfig::from_env(&Env::new(move |n| {
                (n == "USAGE_WINDOW_SECS").then(|| v.to_owned())
            }))
        };
        for ok in ["60", "300", "3600", "86400"] {
            assert_eq!(of(ok).unwrap().window_secs.to_string(), ok);
        }
        // 30 divides a day but is too short; 70 and 90,000 are long enough but do not divide it.
        for bad in ["30", "70", "90000", "0", "-60"] {
            assert!(
                matches!(
                    of(bad),
                    Err(ConfigError::Invalid {
                        name: "USAGE_WINDOW_SECS",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}

//! Usage metering: what is billable, the append-only ledger it lands in, and how a request makes
//! its usage durable before it succeeds.
//!
//! - [`Meter`]: the meters, defined once (name, Stripe event name, aggregation, unit).
//! - [`ledger`]: `app.usage_events`, idempotent by event id, written in the tenant's TenantTx.
//! - [`queue`]: the usage queue port (SQS in AWS, in-process locally) and [`queue::emit`], which
//!   falls back to writing the ledger when the queue cannot take the event.
//!
//! Sending to Stripe, reconciliation and webhooks live in [`crate::billing`].

pub mod ledger;
pub mod queue;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::TenantId;

/// A billable meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Meter {
    /// `POST /v1/query` calls.
    Queries,
    /// `POST /v1/ask` calls.
    Questions,
    /// Records inserted or changed by ingest (unchanged re-sends are free).
    IngestedRecords,
    /// Daily snapshot of stored record data (current and kept earlier versions), in KiB (billed
    /// as KiB-days).
    Storage,
    /// Daily snapshot of members, billed as seat-days.
    Seats,
}

/// How a meter's events add up in a window (and in Stripe's meter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Quantities add up.
    Sum,
}

/// A meter's definition.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MeterDef {
    /// The meter.
    pub meter: Meter,
    /// Its name in the ledger and the API.
    pub name: &'static str,
    /// The `event_name` of its Stripe meter.
    pub event_name: &'static str,
    /// How events aggregate.
    pub aggregation: Aggregation,
    /// What one unit is.
    pub unit: &'static str,
    /// Whether it is measured by a daily snapshot (by reconciliation) rather than per request.
    pub snapshot: bool,
}

/// Every meter, once.
pub const METERS: [MeterDef; 5] = [
    MeterDef {
        meter: Meter::Queries,
        name: "queries",
        event_name: "tenantry_queries",
        aggregation: Aggregation::Sum,
        unit: "query",
        snapshot: false,
    },
    MeterDef {
        meter: Meter::Questions,
        name: "questions",
        event_name: "tenantry_questions",
        aggregation: Aggregation::Sum,
        unit: "question",
        snapshot: false,
    },
    MeterDef {
        meter: Meter::IngestedRecords,
        name: "ingested_records",
        event_name: "tenantry_ingested_records",
        aggregation: Aggregation::Sum,
        unit: "record",
        snapshot: false,
    },
    MeterDef {
        meter: Meter::Storage,
        name: "storage",
        event_name: "tenantry_storage_kib_days",
        aggregation: Aggregation::Sum,
        unit: "KiB-day",
        snapshot: true,
    },
    MeterDef {
        meter: Meter::Seats,
        name: "seats",
        event_name: "tenantry_seat_days",
        aggregation: Aggregation::Sum,
        unit: "seat-day",
        snapshot: true,
    },
];

impl Meter {
    /// Its definition.
    pub fn def(self) -> &'static MeterDef {
        // METERS lists the meters in declaration order (a test checks it).
        &METERS[self as usize]
    }

    /// Its ledger name.
    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// The meter with this ledger name.
    pub fn from_name(name: &str) -> Option<Self> {
        METERS.iter().find(|d| d.name == name).map(|d| d.meter)
    }
}

/// One usage event, as handlers emit it and the queue carries it. Unknown fields are ignored, so
/// an emitter deployed ahead of the meter (with a new field) does not send its usage to the DLQ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Time-ordered (v7), unique: the ledger's idempotency key.
    pub event_id: Uuid,
    /// Whose usage.
    pub tenant_id: TenantId,
    /// Which meter.
    pub meter: Meter,
    /// How much (positive).
    pub quantity: i64,
    /// When it happened (server time).
    pub occurred_at: DateTime<Utc>,
    /// What emitted it (`api:query`, `snapshot`, ...).
    pub source: String,
}

impl UsageEvent {
    /// A new event now, with a fresh v7 id.
    pub fn now(tenant_id: TenantId, meter: Meter, quantity: i64, source: &str) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            tenant_id,
            meter,
            quantity,
            occurred_at: Utc::now(),
            source: source.to_owned(),
        }
    }

    /// Whether the ledger would take it: positive quantity, a short source, and not from the
    /// future (beyond `skew`).
    pub fn validate(&self, now: DateTime<Utc>, skew: chrono::Duration) -> Result<(), String> {
        if self.quantity <= 0 {
            return Err(format!("quantity must be positive, got {}", self.quantity));
        }
        if self.source.is_empty() || self.source.len() > 64 {
            return Err("source must be 1 to 64 characters".into());
        }
        if self.occurred_at > now + skew {
            return Err("occurred_at is in the future".into());
        }
        Ok(())
    }
}

/// The start of the window of length `window_secs` (which divides a day) that holds `t`.
pub fn window_start(t: DateTime<Utc>, window_secs: i64) -> DateTime<Utc> {
    let secs = t.timestamp();
    let start = secs - secs.rem_euclid(window_secs);
    DateTime::from_timestamp(start, 0).unwrap_or(t)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn meters_round_trip_by_name_and_serde() {
        for d in METERS {
            assert_eq!(Meter::from_name(d.name), Some(d.meter));
            assert_eq!(
                serde_json::to_value(d.meter).unwrap(),
                serde_json::json!(d.name)
            );
            assert_eq!(d.meter.def().event_name, d.event_name);
        }
        assert_eq!(Meter::from_name("nope"), None);
    }

    #[test]
    fn windows_align_to_their_length() {
        let t = DateTime::parse_from_rfc3339("2026-11-26T13:47:12Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            window_start(t, 3600).to_rfc3339(),
            "2026-11-26T13:00:00+00:00"
        );
        assert_eq!(
            window_start(t, 300).to_rfc3339(),
            "2026-11-26T13:45:00+00:00"
        );
        assert_eq!(
            window_start(t, 86_400).to_rfc3339(),
            "2026-11-26T00:00:00+00:00"
        );
    }

    #[test]
    fn events_from_the_future_or_without_quantity_are_refused() {
        let now = Utc::now();
        let skew = chrono::Duration::minutes(5);
        let mut e = UsageEvent::now(TenantId::new(), Meter::Queries, 1, "api:query");
        assert!(e.validate(now, skew).is_ok());
        e.quantity = 0;
        assert!(e.validate(now, skew).is_err());
        e.quantity = 1;
        e.occurred_at = now + chrono::Duration::minutes(6);
        assert!(e.validate(now, skew).is_err());
    }
}

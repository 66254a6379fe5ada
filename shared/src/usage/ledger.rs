//! `app.usage_events`: the ledger. Append-only (the app role may only SELECT and INSERT), one row
//! per event id, so writing the same event twice, or concurrently, records it once.

use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::{Meter, UsageEvent};
use crate::TenantId;
use crate::db::{DbError, Param, TenantTx};

/// Writes `events` (all of the transaction's tenant) in one statement; returns how many were new.
/// `window_secs` fixes each event's aggregation window.
pub async fn record(
    tx: &mut TenantTx,
    events: &[UsageEvent],
    window_secs: i64,
) -> Result<u64, DbError> {
    if events.is_empty() {
        return Ok(0);
    }
    let insert = Insert::new(tx.tenant_id(), events, window_secs)?;
    tx.execute(Insert::SQL, &insert.params()).await
}

/// The ledger's insert of some events, built apart from running it: [`record`] runs it, and a
/// read that records its usage in its own transaction sends it in the same flight as its query
/// ([`TenantTx::writes_then_query_and_commit`](crate::db::TenantTx::writes_then_query_and_commit)).
#[derive(Debug)]
pub struct Insert<'e> {
    tenant: Uuid,
    ids: Vec<Uuid>,
    meters: Vec<&'static str>,
    quantities: Vec<i64>,
    times: Vec<DateTime<Utc>>,
    sources: Vec<&'e str>,
    window: f64,
}

impl<'e> Insert<'e> {
    /// Idempotent by event id: an event already recorded is left as it is.
    pub const SQL: &'static str = "INSERT INTO app.usage_events \
         (tenant_id, event_id, meter, quantity, occurred_at, window_start, source) \
         SELECT $1, e.id, e.meter, e.quantity, e.at, \
                date_bin(make_interval(secs => $7), e.at, timestamptz '1970-01-01 00:00:00+00'), e.source \
         FROM unnest($2::uuid[], $3::text[], $4::int8[], $5::timestamptz[], $6::text[]) \
              AS e(id, meter, quantity, at, source) \
         ON CONFLICT (tenant_id, event_id) DO NOTHING";

    /// The insert of `events`, all of which must be `tenant`'s.
    pub fn new(
        tenant: TenantId,
        events: &'e [UsageEvent],
        window_secs: i64,
    ) -> Result<Self, DbError> {
        if let Some(e) = events.iter().find(|e| e.tenant_id != tenant) {
            // A caller bug, and RLS would refuse the row anyway; say which.
            return Err(DbError::Invalid(format!(
                "usage event {} belongs to another tenant than the transaction",
                e.event_id
            )));
        }
        Ok(Self {
            tenant: tenant.as_uuid(),
            ids: events.iter().map(|e| e.event_id).collect(),
            meters: events.iter().map(|e| e.meter.name()).collect(),
            quantities: events.iter().map(|e| e.quantity).collect(),
            times: events.iter().map(|e| e.occurred_at).collect(),
            sources: events.iter().map(|e| e.source.as_str()).collect(),
            window: window_secs as f64,
        })
    }

    /// [`Self::SQL`]'s parameters.
    pub fn params(&self) -> Vec<Param<'_>> {
        vec![
            (&self.tenant, Type::UUID),
            (&self.ids, Type::UUID_ARRAY),
            (&self.meters, Type::TEXT_ARRAY),
            (&self.quantities, Type::INT8_ARRAY),
            (&self.times, Type::TIMESTAMPTZ_ARRAY),
            (&self.sources, Type::TEXT_ARRAY),
            (&self.window, Type::FLOAT8),
        ]
    }
}

/// Ledger totals per meter and UTC day in `[from, to)`.
pub async fn day_totals(
    tx: &mut TenantTx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(Meter, chrono::NaiveDate, i64)>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let rows = tx
        .query(
            "SELECT meter, (occurred_at AT TIME ZONE 'UTC')::date AS day, sum(quantity)::int8 \
             FROM app.usage_events \
             WHERE tenant_id = $1 AND occurred_at >= $2 AND occurred_at < $3 \
             GROUP BY 1, 2 ORDER BY 1, 2",
            &[
                (&tenant, Type::UUID),
                (&from, Type::TIMESTAMPTZ),
                (&to, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((Meter::from_name(r.get(0))?, r.get(1), r.get(2))))
        .collect())
}

//! Which provider customer bills a tenant, and the billing state webhooks report.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::Type;

use crate::db::{DbError, TenantTx};

/// The tenant's billing state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BillingState {
    /// The provider's customer id.
    pub customer_id: String,
    /// `none`, `active`, `past_due` or `canceled`.
    pub status: String,
    /// The subscription the status came from.
    pub subscription_id: Option<String>,
    /// `paid` or `payment_failed`, from the newest invoice event.
    pub last_invoice_status: Option<String>,
    /// That invoice.
    pub last_invoice_id: Option<String>,
    /// When the status last changed (the provider event's time).
    pub status_event_at: Option<DateTime<Utc>>,
    /// The current period's bill as Stripe's invoice preview last said (reconciliation reads
    /// it), and when. Not shown with the state: `/v1/usage` shows it only while it is this
    /// period's.
    #[serde(skip)]
    pub estimate: Option<EstimateView>,
}

/// A stored estimate of the current period's bill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EstimateView {
    /// In cents (the currency's smallest unit).
    pub amount_due: i64,
    /// ISO 4217, lower case.
    pub currency: String,
    /// The end of the period it bills.
    pub period_end: Option<DateTime<Utc>>,
    /// When it was read from Stripe.
    pub as_of: DateTime<Utc>,
}

/// Stores the estimate read from the provider for the transaction's tenant (None: clears it).
pub async fn store_estimate(tx: &mut TenantTx, e: Option<&super::Estimate>) -> Result<(), DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let amount = e.map(|e| e.amount_due);
    let currency = e.map(|e| e.currency.as_str());
    let period_end = e.and_then(|e| e.period_end);
    tx.execute(
        "UPDATE app.billing_customers SET estimate_amount_due = $2, estimate_currency = $3, \
           estimate_period_end = $4, estimated_at = CASE WHEN $2::int8 IS NULL THEN NULL ELSE now() END \
         WHERE tenant_id = $1",
        &[
            (&tenant, Type::UUID),
            (&amount, Type::INT8),
            (&currency, Type::TEXT),
            (&period_end, Type::TIMESTAMPTZ),
        ],
    )
    .await?;
    Ok(())
}

/// Links the transaction's tenant to a provider customer (replacing an earlier link).
pub async fn link(tx: &mut TenantTx, customer_id: &str) -> Result<(), DbError> {
    let tenant = tx.tenant_id().as_uuid();
    tx.execute(
        "INSERT INTO app.billing_customers (tenant_id, stripe_customer_id) VALUES ($1, $2) \
         ON CONFLICT (tenant_id) DO UPDATE SET stripe_customer_id = EXCLUDED.stripe_customer_id, \
           updated_at = now()",
        &[(&tenant, Type::UUID), (&customer_id, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// The tenant's billing state, if it has a customer.
pub async fn state(tx: &mut TenantTx) -> Result<Option<BillingState>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    Ok(tx
        .query_opt(
            "SELECT stripe_customer_id, billing_status, subscription_id, last_invoice_status, \
                    last_invoice_id, status_event_at, estimate_amount_due, estimate_currency, \
                    estimate_period_end, estimated_at \
             FROM app.billing_customers WHERE tenant_id = $1",
            &[(&tenant, Type::UUID)],
        )
        .await?
        .map(|r| BillingState {
            customer_id: r.get(0),
            status: r.get(1),
            subscription_id: r.get(2),
            last_invoice_status: r.get(3),
            last_invoice_id: r.get(4),
            status_event_at: r.get(5),
            estimate: match (
                r.get::<_, Option<i64>>(6),
                r.get::<_, Option<String>>(7),
                r.get(9),
            ) {
                (Some(amount_due), Some(currency), Some(as_of)) => Some(EstimateView {
                    amount_due,
                    currency,
                    period_end: r.get(8),
                    as_of,
                }),
                _ => None,
            },
        }))
}

/// What [`ensure_customer`] came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// The customer was made and linked now.
    Created(String),
    /// The tenant has a customer (linked before, or meanwhile by someone else).
    Linked(String),
    /// The tenant is not waiting for one (provisioned otherwise; left alone).
    NotPending,
}

/// Why a customer could not be made for a tenant (it stays pending; the reconcile retries).
#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The billing provider.
    #[error(transparent)]
    Provider(#[from] super::SinkError),
}

/// Makes and links the billing customer of a tenant that is waiting for one
/// (`customer_pending`), through `sink` (idempotent by tenant, so a retry, a redelivered event or
/// two concurrent callers all get the same customer). The provider is called outside any
/// transaction; the link, the pending flag and the audit entry commit together. On a provider
/// failure the tenant stays pending with the reason recorded, for support and the next attempt.
pub async fn ensure_customer(
    db: &crate::db::Db,
    sink: &dyn super::BillingSink,
    tenant: crate::TenantId,
    actor_id: &str,
    request_id: Option<&str>,
) -> Result<Ensured, EnsureError> {
    use crate::db::{Access, TenantContext};
    let ctx = TenantContext {
        tenant_id: tenant,
        actor_id: actor_id.to_owned(),
    };
    let t = tenant.as_uuid();
    let mut tx = db.begin(&ctx, Access::ReadOnly).await?;
    let row = tx
        .query_opt(
            "SELECT ten.name, ten.customer_pending, c.stripe_customer_id \
             FROM app.tenants ten LEFT JOIN app.billing_customers c ON c.tenant_id = ten.tenant_id \
             WHERE ten.tenant_id = $1",
            &[(&t, Type::UUID)],
        )
        .await?;
    tx.commit().await?;
    let Some(row) = row else {
        return Ok(Ensured::NotPending);
    };
    let (name, pending, linked): (String, bool, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    if !pending {
        return Ok(linked.map_or(Ensured::NotPending, Ensured::Linked));
    }
    let created = match linked {
        // Linked by hand while pending: that customer stands, none is made.
        Some(id) => Ok(id),
        None => sink.create_customer(tenant, &name).await,
    };
    let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
    let customer = match created {
        Ok(id) => id,
        Err(e) => {
            let reason: String = e.to_string().chars().take(500).collect();
            tx.execute(
                "UPDATE app.tenants SET customer_error = $2, updated_at = now() WHERE tenant_id = $1",
                &[(&t, Type::UUID), (&reason, Type::TEXT)],
            )
            .await?;
            tx.commit().await?;
            return Err(e.into());
        }
    };
    // A customer linked meanwhile (by hand, or a concurrent caller) stays: the same tenant's
    // provider customer is the same one anyway.
    let inserted = tx
        .execute(
            "INSERT INTO app.billing_customers (tenant_id, stripe_customer_id) VALUES ($1, $2) \
             ON CONFLICT (tenant_id) DO NOTHING",
            &[(&t, Type::UUID), (&customer, Type::TEXT)],
        )
        .await?;
    tx.execute(
        "UPDATE app.tenants SET customer_pending = false, customer_error = NULL, updated_at = now() \
         WHERE tenant_id = $1",
        &[(&t, Type::UUID)],
    )
    .await?;
    if inserted == 1 {
        crate::audit::record(
            &mut tx,
            crate::audit::Action::CustomerLinked,
            Some(&customer),
            serde_json::json!({}),
            request_id,
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(tenant_id = %tenant, "billing customer linked");
    Ok(if inserted == 1 {
        Ensured::Created(customer)
    } else {
        Ensured::Linked(customer)
    })
}

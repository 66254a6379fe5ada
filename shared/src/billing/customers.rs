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
                    last_invoice_id, status_event_at \
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
        }))
}

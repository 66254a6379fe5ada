//! Provisioning tenants. A new tenant is inserted under its own id, through its own [`TenantTx`]:
//! even creation obeys RLS.

use tokio_postgres::types::Type;

use crate::db::{Access, Db, DbError, TenantContext};
use crate::ids::TenantId;

/// A tenant to create.
#[derive(Clone, Debug)]
pub struct NewTenant {
    /// Its id (chosen by the caller, so provisioning can be retried idempotently).
    pub tenant_id: TenantId,
    /// Display name.
    pub name: String,
    /// URL-safe unique slug.
    pub slug: String,
    /// The Auth0 Organization whose members sign in to it.
    pub auth0_org_id: Option<String>,
    /// `free`, `team`, `business` or `enterprise`.
    pub plan: String,
}

/// Creates the tenant if it does not exist; true if this call created it.
pub async fn provision(db: &Db, tenant: &NewTenant, actor_id: &str) -> Result<bool, DbError> {
    let ctx = TenantContext {
        tenant_id: tenant.tenant_id,
        actor_id: actor_id.to_owned(),
    };
    let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
    let id = tenant.tenant_id.as_uuid();
    let created = tx
        .execute(
            "INSERT INTO app.tenants (tenant_id, name, slug, auth0_org_id, plan) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id) DO NOTHING",
            &[
                (&id, Type::UUID),
                (&tenant.name, Type::TEXT),
                (&tenant.slug, Type::TEXT),
                (&tenant.auth0_org_id, Type::TEXT),
                (&tenant.plan, Type::TEXT),
            ],
        )
        .await?;
    tx.commit().await?;
    Ok(created == 1)
}

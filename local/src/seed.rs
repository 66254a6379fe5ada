//! The demo seed: fixed tenants, so rerunning `up` finds what it made before.

use tenantry::TenantId;
use tenantry::db::Db;
use tenantry::tenants::{NewTenant, provision};
use uuid::Uuid;

/// A seeded tenant, as the banner shows it.
pub struct DemoTenant {
    pub name: &'static str,
    pub org_id: String,
    pub env_name: &'static str,
}

const DEMO: &[(u128, &str, &str, &str, &str)] = &[
    (
        0x0190_0000_0000_7000_8000_0000_0000_a0e1,
        "Acme Analytics",
        "acme",
        "org_acme",
        "ACME",
    ),
    (
        0x0190_0000_0000_7000_8000_0000_0000_61b3,
        "Globex Corporation",
        "globex",
        "org_globex",
        "GLOBEX",
    ),
];

/// Creates the demo tenants if they are missing (idempotent).
pub async fn demo(db: &Db) -> Result<Vec<DemoTenant>, tenantry::db::DbError> {
    let mut out = Vec::new();
    for (id, name, slug, org, env_name) in DEMO {
        let created = provision(
            db,
            &NewTenant {
                tenant_id: TenantId::from(Uuid::from_u128(*id)),
                name: (*name).to_owned(),
                slug: (*slug).to_owned(),
                auth0_org_id: Some((*org).to_owned()),
                plan: "team".into(),
            },
            "system:seed",
        )
        .await?;
        tracing::info!(tenant = slug, created, "demo tenant");
        out.push(DemoTenant {
            name,
            org_id: (*org).to_owned(),
            env_name,
        });
    }
    Ok(out)
}

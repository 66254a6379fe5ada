//! The demo seed: fixed tenants with an `orders` dataset each, so rerunning `up` finds what it
//! made before (records go through the same validation and idempotent write as the API).

use serde_json::{Value, json};
use tenantry::TenantId;
use tenantry::analytics::datasets::{self, DatasetRef};
use tenantry::analytics::{DatasetSpec, ingest};
use tenantry::db::{Access, Db, TenantContext};
use tenantry::tenants::{NewTenant, provision};
use uuid::Uuid;

use crate::Error;

/// A seeded tenant, as the banner shows it.
pub struct DemoTenant {
    pub name: &'static str,
    pub org_id: String,
    pub env_name: &'static str,
}

struct Demo {
    id: u128,
    name: &'static str,
    slug: &'static str,
    org: &'static str,
    env_name: &'static str,
    regions: &'static [&'static str],
    products: &'static [&'static str],
    cities: &'static [&'static str],
}

const DEMO: &[Demo] = &[
    Demo {
        id: 0x0190_0000_0000_7000_8000_0000_0000_a0e1,
        name: "Acme Analytics",
        slug: "acme",
        org: "org_acme",
        env_name: "ACME",
        regions: &["EU", "US", "APAC"],
        products: &["widget", "gadget", "gizmo", "sprocket"],
        cities: &["Lisbon", "Berlin", "Austin", "Osaka", "Sydney"],
    },
    Demo {
        id: 0x0190_0000_0000_7000_8000_0000_0000_61b3,
        name: "Globex Corporation",
        slug: "globex",
        org: "org_globex",
        env_name: "GLOBEX",
        regions: &["NA", "LATAM"],
        products: &["turbine", "valve", "pump"],
        cities: &["Chicago", "Toronto", "Lima", "Bogota"],
    },
];

const NOTES: &[&str] = &[
    "Customer asked for express shipping to {city}.",
    "Delivered to {city}; the box arrived dented and the customer wants a partial refund.",
    "Repeat customer from {city}, gift wrapped, left a five star review.",
    "Payment failed twice before succeeding; customer in {city} called support.",
    "Bulk order for a warehouse in {city}, split across two shipments.",
    "Returned unopened from {city} within the 30 day window.",
];

fn spec() -> DatasetSpec {
    serde_json::from_value(json!({
        "name": "orders",
        "columns": [
            {"name": "region", "type": "string", "required": true},
            {"name": "product", "type": "string"},
            {"name": "city", "type": "string"},
            {"name": "amount", "type": "decimal", "scale": 2},
            {"name": "qty", "type": "integer"},
            {"name": "paid", "type": "boolean"},
            {"name": "note", "type": "string"},
            {"name": "ordered_at", "type": "timestamp"}
        ],
        "text_columns": ["note"],
        "time_column": "ordered_at"
    }))
    .unwrap_or_else(|e| unreachable!("the demo spec is valid JSON: {e}"))
}

fn records(d: &Demo) -> Vec<Value> {
    // Deterministic, so a rerun writes nothing new; dated relative to a fixed day, not today.
    let start = chrono::DateTime::parse_from_rfc3339("2026-10-01T00:00:00Z")
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_default();
    (0..300u32)
        .map(|i| {
            let city = d.cities[(i as usize * 7) % d.cities.len()];
            let note = NOTES[(i as usize * 5) % NOTES.len()].replace("{city}", city);
            json!({"key": format!("o-{}", 1000 + i), "data": {
                "region": d.regions[i as usize % d.regions.len()],
                "product": d.products[(i as usize * 3) % d.products.len()],
                "city": city,
                // Money as a decimal string: exact, as JSON carries decimals that must not pass
                // through a double.
                "amount": format!("{}.{:02}", (i * 7919) % 50_000 / 100, (i * 7919) % 100),
                "qty": 1 + i % 6,
                "paid": i % 4 != 0,
                "note": note,
                "ordered_at": (start + chrono::Duration::minutes(i64::from(i) * 437)).to_rfc3339(),
            }})
        })
        .collect()
}

/// Creates the demo tenants, their datasets and records if they are missing (idempotent).
pub async fn demo(
    db: &Db,
    embedder: &dyn tenantry::rag::embed::Embedder,
) -> Result<Vec<DemoTenant>, Error> {
    let mut out = Vec::new();
    for d in DEMO {
        let tenant_id = TenantId::from(Uuid::from_u128(d.id));
        provision(
            db,
            &NewTenant {
                tenant_id,
                name: d.name.to_owned(),
                slug: d.slug.to_owned(),
                auth0_org_id: Some(d.org.to_owned()),
                plan: "team".into(),
            },
            "system:seed",
        )
        .await?;
        let ctx = TenantContext {
            tenant_id,
            actor_id: "system:seed".into(),
        };
        let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
        let dataset = match datasets::create(&mut tx, &spec()).await? {
            Some(ds) => ds,
            None => datasets::find(&mut tx, &DatasetRef::Name("orders".into()))
                .await?
                .ok_or("the demo dataset vanished")?,
        };
        let batch = ingest::validate(&dataset, records(d))
            .map_err(|(n, e)| format!("{n} invalid demo records: {e:?}"))?;
        let outcome = ingest::write(&mut tx, &dataset, &batch).await?;
        // A billing customer per demo tenant (the local adapter takes any id; with Stripe test
        // keys, create customers with these ids or relink them).
        tenantry::billing::customers::link(&mut tx, &format!("cus_local_{}", d.slug)).await?;
        tx.commit().await?;
        // Embed what the seed chunked, so /v1/ask answers as soon as the runner is up.
        let embedded = tenantry::rag::queue::drain(db, embedder, tenant_id).await?;
        tracing::info!(
            tenant = d.slug,
            inserted = outcome.inserted,
            unchanged = outcome.unchanged,
            embedded,
            "demo data"
        );
        out.push(DemoTenant {
            name: d.name,
            org_id: d.org.to_owned(),
            env_name: d.env_name,
        });
    }
    Ok(out)
}

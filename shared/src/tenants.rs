//! Tenants' lifecycle: provisioning (a new tenant is inserted under its own id, through its own
//! [`TenantTx`](crate::db::TenantTx): even creation obeys RLS), creation from an Auth0
//! organization, and the deletion of a closed tenant's data once its retention period is over
//! ([`TenantsConfig`], read from the environment here).

use tokio_postgres::types::Type;

use crate::db::{Access, Db, DbError, TenantContext};
use crate::env::{ConfigError, Env};
use crate::ids::TenantId;

/// The tenant lifecycle's settings.
#[derive(Clone, Debug)]
pub struct TenantsConfig {
    /// How long a closed tenant's data is kept before it is deleted (its people may export it
    /// meanwhile).
    pub retention_days: u32,
}

impl TenantsConfig {
    /// `CLOSED_TENANT_RETENTION_DAYS` (30 by default; 0 to 3650).
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let retention_days = env.parse("CLOSED_TENANT_RETENTION_DAYS", 30_u32)?;
        if retention_days > 3650 {
            return Err(ConfigError::Invalid {
                name: "CLOSED_TENANT_RETENTION_DAYS",
                reason: "at most 3650 days".into(),
            });
        }
        Ok(Self { retention_days })
    }
}

/// The actor of the retention job.
const RETENTION_ACTOR: &str = "system:retention";

/// Deletes the data of every closed tenant whose retention period is over: datasets, records,
/// chunks, API keys and members, in one transaction per tenant, recorded in its audit log with
/// the counts. The tenant row, its ledger, deliveries, billing state, reconciliations, audit log
/// and support sessions stay (billing and compliance need them). Idempotent: a tenant whose data
/// is gone is skipped. Returns the tenants whose data this call deleted; a tenant that fails is
/// logged and tried again by the next run.
pub async fn delete_expired_data(db: &Db) -> Result<Vec<TenantId>, DbError> {
    let mut deleted = Vec::new();
    for t in db.tenant_ids().await? {
        if t.status != "closed" {
            continue;
        }
        match delete_if_due(db, t.tenant_id).await {
            Ok(true) => deleted.push(t.tenant_id),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(tenant_id = %t.tenant_id, error = %e, "closed tenant's data not deleted");
            }
        }
    }
    Ok(deleted)
}

async fn delete_if_due(db: &Db, tenant_id: TenantId) -> Result<bool, DbError> {
    let ctx = TenantContext {
        tenant_id,
        actor_id: RETENTION_ACTOR.to_owned(),
    };
    let id = tenant_id.as_uuid();
    let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
    let due: bool = tx
        .query_opt(
            "SELECT status = 'closed' AND delete_after <= now() AND data_deleted_at IS NULL \
             FROM app.tenants WHERE tenant_id = $1 FOR UPDATE",
            &[(&id, Type::UUID)],
        )
        .await?
        .is_some_and(|r| r.get(0));
    if !due {
        return Ok(false);
    }
    let mut counts = serde_json::Map::new();
    // Children first; each table's rows of this tenant only (RLS would confine it anyway).
    for table in ["chunks", "records", "datasets", "api_keys", "members"] {
        let n = tx
            .execute(
                &format!("DELETE FROM app.{table} WHERE tenant_id = $1"),
                &[(&id, Type::UUID)],
            )
            .await?;
        counts.insert(table.to_owned(), n.into());
    }
    tx.execute(
        "UPDATE app.tenants SET data_deleted_at = now(), updated_at = now() WHERE tenant_id = $1",
        &[(&id, Type::UUID)],
    )
    .await?;
    crate::audit::record(
        &mut tx,
        crate::audit::Action::TenantDataDeleted,
        None,
        serde_json::Value::Object(counts),
        None,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant_id = %tenant_id, "closed tenant's data deleted");
    Ok(true)
}

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

/// The tenant of an Auth0 organization, and whether this call created it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrgTenant {
    /// The tenant.
    pub tenant_id: TenantId,
    /// False when the organization already had one (a redelivery, or a concurrent creation).
    pub created: bool,
}

/// Creates the tenant of Auth0 organization `org_id` (display name `name`, slug from
/// `slug_hint`), idempotently by the organization: however often, and however concurrently, this
/// is called for one organization, it has one tenant. A new tenant is `customer_pending` (its
/// billing customer is made next, and retried by the scheduled reconcile until it is) and its
/// creation is the first entry of its audit log.
pub async fn create_for_org(
    db: &Db,
    org_id: &str,
    name: &str,
    slug_hint: &str,
    ctx: CreateContext<'_>,
) -> Result<OrgTenant, DbError> {
    if let Some(t) = db.tenant_for_auth0_org(org_id).await? {
        return Ok(OrgTenant {
            tenant_id: t.tenant_id,
            created: false,
        });
    }
    let name: String = match name.trim() {
        "" => org_id.to_owned(),
        n => n.chars().filter(|c| !c.is_control()).take(200).collect(),
    };
    // The slug is the hint's, unless another tenant has it: then with the organization's mark.
    for slug in [
        slugify(slug_hint, org_id, false),
        slugify(slug_hint, org_id, true),
    ] {
        let tenant_id = TenantId::new();
        let mut tx = db
            .begin(
                &TenantContext {
                    tenant_id,
                    actor_id: ctx.actor_id.to_owned(),
                },
                Access::ReadWrite,
            )
            .await?;
        let id = tenant_id.as_uuid();
        let inserted = tx
            .execute(
                "INSERT INTO app.tenants (tenant_id, name, slug, auth0_org_id, customer_pending) \
                 VALUES ($1, $2, $3, $4, true) ON CONFLICT DO NOTHING",
                &[
                    (&id, Type::UUID),
                    (&name, Type::TEXT),
                    (&slug, Type::TEXT),
                    (&org_id, Type::TEXT),
                ],
            )
            .await?;
        if inserted == 1 {
            let details = serde_json::json!({"auth0_org_id": org_id, "slug": slug});
            crate::audit::record(
                &mut tx,
                crate::audit::Action::TenantCreated,
                Some(&slug),
                details,
                ctx.request_id,
            )
            .await?;
            tx.commit().await?;
            return Ok(OrgTenant {
                tenant_id,
                created: true,
            });
        }
        drop(tx);
        // Refused by a unique key: the organization's (created concurrently) or the slug's.
        if let Some(t) = db.tenant_for_auth0_org(org_id).await? {
            return Ok(OrgTenant {
                tenant_id: t.tenant_id,
                created: false,
            });
        }
    }
    Err(DbError::Invalid(format!(
        "no free slug for organization {}",
        org_id.chars().take(64).collect::<String>()
    )))
}

/// Who creates a tenant, for its transaction and audit entry.
#[derive(Clone, Copy, Debug)]
pub struct CreateContext<'a> {
    /// The actor (`system:auth0-webhook`, a support person).
    pub actor_id: &'a str,
    /// The request that did it.
    pub request_id: Option<&'a str>,
}

/// A slug from `hint` (lower case; anything but letters and digits becomes `-`), 2 to 63
/// characters; `marked` appends six hex characters of the organization id's hash, for when the
/// plain slug is taken.
fn slugify(hint: &str, org_id: &str, marked: bool) -> String {
    use sha2::Digest as _;
    let mut slug = String::new();
    for c in hint.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (slug.is_empty() || slug.ends_with('-'))) {
            slug.push(c);
        }
    }
    let mut slug: String = slug.trim_end_matches('-').chars().take(56).collect();
    if slug.len() < 2 {
        slug = format!("org-{slug}").trim_end_matches('-').to_owned();
    }
    if marked {
        let digest = sha2::Sha256::digest(org_id.as_bytes());
        let mark: String = digest.iter().take(3).map(|b| format!("{b:02x}")).collect();
        slug = format!("{}-{mark}", slug.trim_end_matches('-'));
    }
    slug
}

#[cfg(test)]
mod tests {
    use super::slugify;

    #[test]
    fn slugs_fit_the_tenants_check() {
        let ok = |s: &str| {
            let b = s.as_bytes();
            (2..=63).contains(&b.len())
                && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        };
        for hint in [
            "acme",
            "Acme Inc.",
            "--x--",
            "",
            "é",
            "a",
            "ünïcödé_org",
            &"z".repeat(300),
            "org_2a3b",
            "  spaced   out  ",
        ] {
            for marked in [false, true] {
                let s = slugify(hint, "org_abc", marked);
                assert!(ok(&s), "{hint:?} -> {s:?}");
            }
        }
        assert_eq!(slugify("Acme Inc.", "org_abc", false), "acme-inc");
        assert_ne!(
            slugify("acme", "org_abc", true),
            slugify("acme", "org_abd", true)
        );
    }
}

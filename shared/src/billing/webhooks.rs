//! Stripe and Auth0 webhooks: who may call, which tenant an event belongs to, and effects that
//! apply once and in the right order.
//!
//! - **Stripe**: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]` — HMAC-SHA256 with an
//!   endpoint secret over `"{t}.{raw body}"`. Any `v1` matching any configured secret (several
//!   while a secret is rolled) passes, compared in constant time; `t` must be within the tolerance
//!   (300 s) of now, either way. The tenant comes from our customer → tenant mapping, never from
//!   the event's metadata.
//! - **Auth0** (Event Streams, CloudEvents): `Authorization: Bearer <shared secret>`, compared in
//!   constant time; organization member added/removed → `app.members`, which the seats meter
//!   counts.
//!
//! Stripe's thin events (event destinations) are verified the same way; the one we act on,
//! `v1.billing.meter.error_report_triggered`, is read back from Stripe ([`apply_thin_event`]).
//!
//! Stripe's subscription events also carry the subscription's current period, and
//! `invoice.finalized` closes the period its invoice bills ([`super::periods`]).
//!
//! Both dedupe by event id in the same transaction as the effect (`app.processed_webhooks`), and
//! order effects by the event's own time, so replays and out-of-order deliveries change nothing.
//! An effect that changed something is recorded in the tenant's audit log in that transaction.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio_postgres::types::Type;

use crate::TenantId;
use crate::audit::{self, Action};
use crate::db::{Access, Db, DbError, TenantContext, TenantTx};
use crate::env::Secret;

/// Why a webhook's signature was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header, or no `t` / `v1` in it.
    #[error("missing or malformed signature header")]
    Malformed,
    /// No `v1` matches any configured secret.
    #[error("no signature matches")]
    Mismatch,
    /// The signed timestamp is outside the tolerance.
    #[error("signature timestamp outside the tolerance")]
    Stale,
}

/// Verifies a Stripe signature header over the raw body.
pub fn verify_stripe_signature(
    header: Option<&str>,
    body: &[u8],
    secrets: &[Secret],
    tolerance_secs: i64,
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Malformed)?;
    let mut t: Option<i64> = None;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k {
            "t" => t = v.parse().ok(),
            "v1" => {
                if let Ok(bytes) = hex::decode(v) {
                    candidates.push(bytes);
                }
            }
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let mut matched = false;
    for secret in secrets {
        let Some(expected) = signature(secret.expose(), t, body) else {
            continue;
        };
        for c in &candidates {
            // Every comparison runs; the result is folded without branching on secrets.
            matched |= bool::from(expected.as_slice().ct_eq(c.as_slice()));
        }
    }
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    if now.abs_diff(t) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// Whether `header` is `Bearer <secret>` (constant time in the secret's contents).
pub fn bearer_matches(header: Option<&str>, secret: &Secret) -> bool {
    let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    bool::from(token.as_bytes().ct_eq(secret.expose().as_bytes()))
}

/// The part of a Stripe event we read.
#[derive(Clone, Debug, Deserialize)]
pub struct StripeEvent {
    /// `evt_...`
    pub id: String,
    /// E.g. `customer.subscription.updated`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds: orders effects.
    pub created: i64,
    /// `{"object": {...}}`
    pub data: StripeEventData,
}

/// The event's data.
#[derive(Clone, Debug, Deserialize)]
pub struct StripeEventData {
    /// The subscription or invoice.
    pub object: StripeObject,
}

/// The fields of a subscription or invoice we read. Both shapes of Stripe's API are read: the
/// current period on the subscription (API versions before 2025-03-31) or on its items (since),
/// and an invoice's subscription at the top (before) or under `parent.subscription_details`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StripeObject {
    /// `sub_...` / `in_...`
    #[serde(default)]
    pub id: Option<String>,
    /// `cus_...`
    #[serde(default)]
    pub customer: Option<String>,
    /// A subscription's status.
    #[serde(default)]
    pub status: Option<String>,
    /// A subscription's current period (older API versions).
    #[serde(default)]
    pub current_period_start: Option<i64>,
    /// A subscription's current period end (older API versions).
    #[serde(default)]
    pub current_period_end: Option<i64>,
    /// A subscription's items, each with its current period (newer API versions).
    #[serde(default)]
    pub items: Option<StripeList<StripeItem>>,
    /// When a subscription ended.
    #[serde(default)]
    pub ended_at: Option<i64>,
    /// An invoice's subscription (older API versions; an id, or the object when expanded).
    #[serde(default)]
    pub subscription: Option<serde_json::Value>,
    /// An invoice's parent (newer API versions).
    #[serde(default)]
    pub parent: Option<InvoiceParent>,
    /// The usage period an invoice bills (start).
    #[serde(default)]
    pub period_start: Option<i64>,
    /// The usage period an invoice bills (end).
    #[serde(default)]
    pub period_end: Option<i64>,
    /// An invoice's status changes.
    #[serde(default)]
    pub status_transitions: Option<StatusTransitions>,
    /// Why an invoice was made (`subscription_cycle`, `subscription_update`, ...).
    #[serde(default)]
    pub billing_reason: Option<String>,
}

/// A Stripe list.
#[derive(Clone, Debug, Deserialize)]
pub struct StripeList<T> {
    /// The items.
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
}

/// A subscription item's current period.
#[derive(Clone, Debug, Deserialize)]
pub struct StripeItem {
    /// Start.
    #[serde(default)]
    pub current_period_start: Option<i64>,
    /// End.
    #[serde(default)]
    pub current_period_end: Option<i64>,
}

/// An invoice's parent.
#[derive(Clone, Debug, Deserialize)]
pub struct InvoiceParent {
    /// Set when the invoice is a subscription's.
    #[serde(default)]
    pub subscription_details: Option<SubscriptionDetails>,
}

/// The subscription an invoice belongs to.
#[derive(Clone, Debug, Deserialize)]
pub struct SubscriptionDetails {
    /// An id, or the object when expanded.
    #[serde(default)]
    pub subscription: Option<serde_json::Value>,
}

/// An invoice's status changes.
#[derive(Clone, Debug, Deserialize)]
pub struct StatusTransitions {
    /// When it was finalized.
    #[serde(default)]
    pub finalized_at: Option<i64>,
}

fn ts(secs: Option<i64>) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs?, 0)
}

/// An id, or an expanded object's `id`.
fn id_of(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("id")?.as_str().map(str::to_owned),
        _ => None,
    }
}

impl StripeObject {
    /// A subscription's current period, from either API shape.
    pub fn subscription_period(&self) -> Option<super::periods::SubscriptionPeriod> {
        let items = self
            .items
            .as_ref()
            .map(|l| l.data.as_slice())
            .unwrap_or_default();
        super::periods::SubscriptionPeriod::from_stripe(
            self.id.clone()?,
            self.status.clone().unwrap_or_default(),
            (self.current_period_start, self.current_period_end),
            items
                .iter()
                .map(|i| (i.current_period_start, i.current_period_end)),
            self.ended_at,
        )
    }

    /// An invoice as a finalized subscription invoice (finalized at `fallback` when the object
    /// does not say), if it is one.
    pub fn finalized_invoice(
        &self,
        fallback: DateTime<Utc>,
    ) -> Option<super::periods::FinalizedInvoice> {
        let subscription = self.subscription.as_ref().and_then(id_of).or_else(|| {
            self.parent
                .as_ref()?
                .subscription_details
                .as_ref()?
                .subscription
                .as_ref()
                .and_then(id_of)
        });
        let finalized_at = self
            .status_transitions
            .as_ref()
            .and_then(|t| t.finalized_at);
        super::periods::FinalizedInvoice::from_stripe(
            self.id.clone(),
            subscription,
            self.billing_reason.as_deref(),
            (self.period_start?, self.period_end?),
            ts(finalized_at).unwrap_or(fallback),
        )
    }
}

/// What a webhook delivery did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Applied (or, when older than what we know, recorded without changing state).
    Applied,
    /// Seen before: nothing done.
    Duplicate,
    /// Not for us: an event type we do not act on, or a customer/organization we do not know.
    Ignored,
}

/// A subscription status, as the tenant's billing status.
fn billing_status(kind: &str, status: Option<&str>) -> Option<&'static str> {
    if kind == "customer.subscription.deleted" {
        return Some("canceled");
    }
    match status? {
        "active" | "trialing" => Some("active"),
        "past_due" | "unpaid" => Some("past_due"),
        "canceled" | "incomplete_expired" => Some("canceled"),
        _ => None,
    }
}

/// Applies a verified Stripe event (`request_id`: the delivery's, for the audit entry).
pub async fn apply_stripe_event(
    db: &Db,
    event: &StripeEvent,
    request_id: Option<&str>,
) -> Result<Outcome, DbError> {
    let subscription = event.kind.starts_with("customer.subscription.");
    let finalized = event.kind == "invoice.finalized";
    let invoice = match event.kind.as_str() {
        "invoice.paid" | "invoice.payment_succeeded" => Some("paid"),
        "invoice.payment_failed" => Some("payment_failed"),
        _ => None,
    };
    if !subscription && !finalized && invoice.is_none() {
        return Ok(Outcome::Ignored);
    }
    let Some(customer) = event.data.object.customer.as_deref() else {
        return Ok(Outcome::Ignored);
    };
    let Some(tenant) = db.tenant_for_stripe_customer(customer).await? else {
        tracing::info!(event_id = %event.id, "stripe event for a customer we do not bill; ignored");
        return Ok(Outcome::Ignored);
    };
    let at = DateTime::from_timestamp(event.created, 0).unwrap_or_else(Utc::now);
    let mut tx = begin(db, tenant, "system:stripe-webhook").await?;
    if !first_time(&mut tx, "stripe", &event.id, &event.kind).await? {
        tx.commit().await?;
        return Ok(Outcome::Duplicate);
    }
    let t = tenant.as_uuid();
    let object_id = event.data.object.id.as_deref();
    if finalized {
        if let Some(inv) = event.data.object.finalized_invoice(at) {
            super::periods::finalize(&mut tx, &inv, "webhook", request_id).await?;
        }
    } else if subscription {
        if let Some(period) = event.data.object.subscription_period() {
            super::periods::record(&mut tx, &period, "webhook", request_id).await?;
        }
        if let Some(status) = billing_status(&event.kind, event.data.object.status.as_deref()) {
            let changed = tx
                .execute(
                    "UPDATE app.billing_customers SET billing_status = $2, subscription_id = $3, \
                   status_event_at = $4, updated_at = now() \
                 WHERE tenant_id = $1 AND (status_event_at IS NULL OR status_event_at <= $4)",
                    &[
                        (&t, Type::UUID),
                        (&status, Type::TEXT),
                        (&object_id, Type::TEXT),
                        (&at, Type::TIMESTAMPTZ),
                    ],
                )
                .await?;
            if changed > 0 {
                let details = json!({"status": status, "subscription_id": object_id, "stripe_event": event.id});
                audit::record(
                    &mut tx,
                    Action::BillingStatusChanged,
                    object_id,
                    details,
                    request_id,
                )
                .await?;
            }
        }
    } else if let Some(status) = invoice {
        let changed = tx
            .execute(
                "UPDATE app.billing_customers SET last_invoice_status = $2, last_invoice_id = $3, \
               invoice_event_at = $4, updated_at = now() \
             WHERE tenant_id = $1 AND (invoice_event_at IS NULL OR invoice_event_at <= $4)",
                &[
                    (&t, Type::UUID),
                    (&status, Type::TEXT),
                    (&object_id, Type::TEXT),
                    (&at, Type::TIMESTAMPTZ),
                ],
            )
            .await?;
        if changed > 0 {
            let details =
                json!({"status": status, "invoice_id": object_id, "stripe_event": event.id});
            audit::record(
                &mut tx,
                Action::InvoiceStatusChanged,
                object_id,
                details,
                request_id,
            )
            .await?;
        }
    }
    tx.commit().await?;
    tracing::info!(event_id = %event.id, kind = %event.kind, tenant_id = %tenant, "stripe event applied");
    Ok(Outcome::Applied)
}

/// A Stripe thin event (`"object": "v2.core.event"`, from an event destination): only its id
/// and type; the details are read back from Stripe.
#[derive(Clone, Debug, Deserialize)]
pub struct ThinEvent {
    /// `evt_...`
    pub id: String,
    /// E.g. `v1.billing.meter.error_report_triggered`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Why a thin event could not be applied now.
#[derive(Debug, thiserror::Error)]
pub enum ThinEventError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Stripe could not be asked for the event's details: the delivery should be retried.
    #[error("the event's details could not be read from Stripe: {0}")]
    Provider(super::SinkError),
}

/// What an alert on asynchronous rejections matches in the logs (the template's metric filter).
pub const REJECTED_ALERT: &str = "meter events rejected by Stripe after a 200";

/// The tenant an identifier of ours names (`tnt_<32 hex>_...`), if it is one of ours.
pub fn tenant_of_identifier(identifier: &str) -> Option<TenantId> {
    let hex = identifier.strip_prefix("tnt_")?.get(..32)?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || identifier.as_bytes().get(36) != Some(&b'_') {
        return None;
    }
    uuid::Uuid::try_parse(hex).ok().map(TenantId::from)
}

/// `v1.billing.meter.error_report_triggered`: reads the report back from Stripe, marks each
/// delivery it names (`rejected`, whatever its status: Stripe took the call, so it may still be
/// pending here if our client never heard the 200), records it in each tenant's audit log, and
/// logs the alert. Reconciliation then repairs the difference like any other drift. Applying a
/// report twice changes nothing the second time. Other thin event types are ignored.
pub async fn apply_thin_event(
    db: &Db,
    sink: &dyn super::BillingSink,
    event: &ThinEvent,
    request_id: Option<&str>,
) -> Result<Outcome, ThinEventError> {
    if event.kind != "v1.billing.meter.error_report_triggered" {
        return Ok(Outcome::Ignored);
    }
    let rejected = match sink.meter_error_report(&event.id).await {
        Ok(r) => r,
        Err(super::SinkError::Rejected {
            status, message, ..
        }) => {
            tracing::warn!(event_id = %event.id, status, message, "meter error report not readable; ignored");
            return Ok(Outcome::Ignored);
        }
        Err(e) => return Err(ThinEventError::Provider(e)),
    };
    let mut by_tenant: std::collections::BTreeMap<TenantId, Vec<&super::RejectedEvent>> =
        Default::default();
    for r in &rejected {
        if let Some(t) = tenant_of_identifier(&r.identifier) {
            by_tenant.entry(t).or_default().push(r);
        }
    }
    let mut marked = 0usize;
    let ours = by_tenant.values().map(Vec::len).sum::<usize>();
    for (tenant, events) in by_tenant {
        let mut tx = begin(db, tenant, "system:stripe-webhook").await?;
        let ids: Vec<&str> = events.iter().map(|r| r.identifier.as_str()).collect();
        let reasons: Vec<String> = events
            .iter()
            .map(|r| {
                format!("rejected by Stripe after a 200: {}: {}", r.code, r.message)
                    .chars()
                    .take(500)
                    .collect()
            })
            .collect();
        let t = tenant.as_uuid();
        let rows = tx
            .query(
                "UPDATE app.usage_deliveries d SET rejected = u.reason \
                 FROM unnest($2::text[], $3::text[]) AS u(identifier, reason) \
                 WHERE d.tenant_id = $1 AND d.identifier = u.identifier AND d.rejected IS NULL \
                 RETURNING d.identifier, d.meter, d.value",
                &[
                    (&t, Type::UUID),
                    (&ids, Type::TEXT_ARRAY),
                    (&reasons, Type::TEXT_ARRAY),
                ],
            )
            .await?;
        if !rows.is_empty() {
            let codes: std::collections::BTreeSet<&str> =
                events.iter().map(|r| r.code.as_str()).collect();
            let units: i64 = rows.iter().map(|r| r.get::<_, i64>(2)).sum();
            let details = json!({
                "deliveries": rows.len(),
                "units": units,
                "codes": codes,
                "stripe_event": event.id,
            });
            audit::record(
                &mut tx,
                Action::DeliveriesRejected,
                Some(&event.id),
                details,
                request_id,
            )
            .await?;
            tracing::error!(event_id = %event.id, tenant_id = %tenant, deliveries = rows.len(),
                units, "{REJECTED_ALERT}");
            marked += rows.len();
        }
        tx.commit().await?;
    }
    Ok(if marked > 0 {
        Outcome::Applied
    } else if ours == 0 {
        Outcome::Ignored
    } else {
        Outcome::Duplicate
    })
}

/// An Auth0 Event Streams event (CloudEvents 1.0), the part we read.
#[derive(Clone, Debug, Deserialize)]
pub struct Auth0Event {
    /// `evt_...`: the dedupe key.
    pub id: String,
    /// E.g. `organization.member.added`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened: orders effects.
    pub time: DateTime<Utc>,
    /// `{"object": {"organization": {"id"}, "user": {"user_id"}}}`
    pub data: Auth0Data,
}

/// The event's data.
#[derive(Clone, Debug, Deserialize)]
pub struct Auth0Data {
    /// The member and organization.
    pub object: Auth0Object,
}

/// The member and organization (`organization.member.*`), or the organization itself
/// (`organization.created`: `id`, `name`, `display_name`).
#[derive(Clone, Debug, Deserialize)]
pub struct Auth0Object {
    /// The organization's id (`organization.created`).
    #[serde(default)]
    pub id: Option<String>,
    /// The organization's name, a slug (`organization.created`).
    #[serde(default)]
    pub name: Option<String>,
    /// The organization's display name (`organization.created`).
    #[serde(default)]
    pub display_name: Option<String>,
    /// The organization.
    #[serde(default)]
    pub organization: Option<Auth0Org>,
    /// The user.
    #[serde(default)]
    pub user: Option<Auth0User>,
    /// The role (`organization.member.role.*`).
    #[serde(default)]
    pub role: Option<Auth0Role>,
}

/// A role reference.
#[derive(Clone, Debug, Deserialize)]
pub struct Auth0Role {
    /// The role's name: ours when it is `owner`, `admin`, `member` or `viewer`.
    pub name: String,
}

/// An organization reference.
#[derive(Clone, Debug, Deserialize)]
pub struct Auth0Org {
    /// `org_...`
    pub id: String,
}

/// A user reference.
#[derive(Clone, Debug, Deserialize)]
pub struct Auth0User {
    /// `auth0|...`
    pub user_id: String,
}

/// Applies an authenticated Auth0 event (`request_id`: the delivery's, for the audit entry).
pub async fn apply_auth0_event(
    db: &Db,
    sink: &dyn super::BillingSink,
    event: &Auth0Event,
    request_id: Option<&str>,
) -> Result<Outcome, DbError> {
    let added = match event.kind.as_str() {
        "organization.member.added" => true,
        "organization.member.deleted" => false,
        "organization.created" => return organization_created(db, sink, event, request_id).await,
        "organization.member.role.assigned" | "organization.member.role.deleted" => {
            return member_role(db, event, request_id).await;
        }
        _ => return Ok(Outcome::Ignored),
    };
    let (Some(org), Some(user)) = (&event.data.object.organization, &event.data.object.user) else {
        return Ok(Outcome::Ignored);
    };
    if user.user_id.is_empty() || user.user_id.len() > 256 {
        return Ok(Outcome::Ignored);
    }
    let Some(tenant) = db.tenant_for_auth0_org(&org.id).await? else {
        tracing::info!(event_id = %event.id, "auth0 event for an organization we do not serve; ignored");
        return Ok(Outcome::Ignored);
    };
    let mut tx = begin(db, tenant.tenant_id, "system:auth0-webhook").await?;
    if !first_time(&mut tx, "auth0", &event.id, &event.kind).await? {
        tx.commit().await?;
        return Ok(Outcome::Duplicate);
    }
    let t = tenant.tenant_id.as_uuid();
    let removed_at: Option<DateTime<Utc>> = (!added).then_some(event.time);
    // One statement either way: insert the member (or a tombstone, for a removal that overtook
    // its addition), or update it unless we already applied a newer event for it.
    let changed = tx.execute(
        "INSERT INTO app.members (tenant_id, auth0_user_id, removed_at, membership_event_at) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id, auth0_user_id) DO UPDATE \
           SET removed_at = EXCLUDED.removed_at, membership_event_at = EXCLUDED.membership_event_at, \
               updated_at = now() \
           WHERE app.members.membership_event_at IS NULL \
              OR app.members.membership_event_at <= EXCLUDED.membership_event_at",
        &[
            (&t, Type::UUID),
            (&user.user_id, Type::TEXT),
            (&removed_at, Type::TIMESTAMPTZ),
            (&event.time, Type::TIMESTAMPTZ),
        ],
    )
    .await?;
    if changed > 0 {
        let action = if added {
            Action::MemberAdded
        } else {
            Action::MemberRemoved
        };
        let details = json!({"auth0_event": event.id});
        audit::record(&mut tx, action, Some(&user.user_id), details, request_id).await?;
    }
    tx.commit().await?;
    tracing::info!(event_id = %event.id, kind = %event.kind, tenant_id = %tenant.tenant_id, "auth0 event applied");
    Ok(Outcome::Applied)
}

const AUTH0_ACTOR: &str = "system:auth0-webhook";

/// `organization.member.role.assigned` / `.deleted`: the member's role as `app.members` mirrors
/// it (for the tenant's and support's views; requests are authorized by the token's roles
/// claim). Assigning one of our roles sets it; deleting the member's current role leaves the
/// default, `member`. Roles we do not know, members we do not have, and redeliveries change
/// nothing. Every change is in the tenant's audit log.
async fn member_role(
    db: &Db,
    event: &Auth0Event,
    request_id: Option<&str>,
) -> Result<Outcome, DbError> {
    let o = &event.data.object;
    let (Some(org), Some(user), Some(role)) = (&o.organization, &o.user, &o.role) else {
        return Ok(Outcome::Ignored);
    };
    if crate::auth::Role::parse(&role.name).is_none() || user.user_id.len() > 256 {
        return Ok(Outcome::Ignored);
    }
    let Some(tenant) = db.tenant_for_auth0_org(&org.id).await? else {
        return Ok(Outcome::Ignored);
    };
    let mut tx = begin(db, tenant.tenant_id, AUTH0_ACTOR).await?;
    if !first_time(&mut tx, "auth0", &event.id, &event.kind).await? {
        tx.commit().await?;
        return Ok(Outcome::Duplicate);
    }
    let t = tenant.tenant_id.as_uuid();
    let assigned = event.kind.ends_with(".assigned");
    // Assigned: that role. Deleted: the default, if the deleted role is the one held.
    let row = tx
        .query_opt(
            "WITH old AS (SELECT role FROM app.members \
                          WHERE tenant_id = $1 AND auth0_user_id = $2 AND removed_at IS NULL \
                          FOR UPDATE) \
             UPDATE app.members m SET role = CASE WHEN $3 THEN $4 ELSE 'member' END, \
                    updated_at = now() \
             FROM old \
             WHERE m.tenant_id = $1 AND m.auth0_user_id = $2 AND m.removed_at IS NULL \
               AND ($3 OR m.role = $4) \
               AND m.role IS DISTINCT FROM CASE WHEN $3 THEN $4 ELSE 'member' END \
             RETURNING old.role, m.role",
            &[
                (&t, Type::UUID),
                (&user.user_id, Type::TEXT),
                (&assigned, Type::BOOL),
                (&role.name, Type::TEXT),
            ],
        )
        .await?;
    if let Some(r) = row {
        let (from, to): (String, String) = (r.get(0), r.get(1));
        let details = json!({"from": from, "to": to, "auth0_event": event.id});
        audit::record(
            &mut tx,
            Action::MemberRoleChanged,
            Some(&user.user_id),
            details,
            request_id,
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(event_id = %event.id, kind = %event.kind, tenant_id = %tenant.tenant_id, "auth0 role event applied");
    Ok(Outcome::Applied)
}

/// `organization.created`: the organization's tenant, created once however often (or however
/// concurrently) the event arrives, and its billing customer. A provider failure leaves the
/// tenant `customer_pending` for the scheduled reconcile; the event is still acknowledged (the
/// tenant exists, and Auth0 redelivering it would change nothing the reconcile does not).
async fn organization_created(
    db: &Db,
    sink: &dyn super::BillingSink,
    event: &Auth0Event,
    request_id: Option<&str>,
) -> Result<Outcome, DbError> {
    let o = &event.data.object;
    let Some(org_id) = o.id.as_deref().filter(|id| valid_org_id(id)) else {
        return Ok(Outcome::Ignored);
    };
    let slug_hint = o.name.as_deref().unwrap_or(org_id);
    let name = o
        .display_name
        .as_deref()
        .or(o.name.as_deref())
        .unwrap_or(org_id);
    let ctx = crate::tenants::CreateContext {
        actor_id: AUTH0_ACTOR,
        request_id,
    };
    let tenant = crate::tenants::create_for_org(db, org_id, name, slug_hint, ctx).await?;
    let mut tx = begin(db, tenant.tenant_id, AUTH0_ACTOR).await?;
    let first = first_time(&mut tx, "auth0", &event.id, &event.kind).await?;
    tx.commit().await?;
    match super::customers::ensure_customer(db, sink, tenant.tenant_id, AUTH0_ACTOR, request_id)
        .await
    {
        Ok(_) => {}
        Err(super::customers::EnsureError::Db(e)) => return Err(e),
        Err(e) => {
            tracing::warn!(tenant_id = %tenant.tenant_id, error = %e,
                "billing customer not created; the reconcile retries it");
        }
    }
    tracing::info!(event_id = %event.id, tenant_id = %tenant.tenant_id, created = tenant.created,
        "auth0 organization applied");
    Ok(if tenant.created || first {
        Outcome::Applied
    } else {
        Outcome::Duplicate
    })
}

/// What Auth0 issues as organization ids (`org_` and up to 64 letters and digits).
fn valid_org_id(id: &str) -> bool {
    id.strip_prefix("org_").is_some_and(|rest| {
        (1..=64).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

async fn begin(db: &Db, tenant: TenantId, actor: &str) -> Result<TenantTx, DbError> {
    db.begin(
        &TenantContext {
            tenant_id: tenant,
            actor_id: actor.to_owned(),
        },
        Access::ReadWrite,
    )
    .await
}

/// Records the event as processed; false if it already was (in this same transaction as the
/// effect, so a crash either does both or neither).
async fn first_time(
    tx: &mut TenantTx,
    source: &str,
    event_id: &str,
    kind: &str,
) -> Result<bool, DbError> {
    let t = tx.tenant_id().as_uuid();
    let kind: String = kind.chars().take(255).collect();
    let n = tx
        .execute(
            "INSERT INTO app.processed_webhooks (tenant_id, source, event_id, event_type) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[
                (&t, Type::UUID),
                (&source, Type::TEXT),
                (&event_id, Type::TEXT),
                (&kind, Type::TEXT),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Stripe's `v1` signature: HMAC-SHA256 with the endpoint secret over `"{t}.{body}"`.
fn signature(secret: &str, t: i64, body: &[u8]) -> Option<Vec<u8>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac.finalize().into_bytes().to_vec())
}

/// Signs a payload the way Stripe does (for tests and examples).
pub fn stripe_signature_header(body: &[u8], secret: &str, t: i64) -> String {
    let sig = signature(secret, t, body).unwrap_or_default();
    format!("t={t},v1={}", hex::encode(sig))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_692_001;

    #[test]
    fn stripe_signatures_are_checked_like_stripe_does() {
        let body = br#"{"id": "evt_1"}"#;
        let old = Secret::new("whsec_old");
        let new = Secret::new("whsec_new");
        let good = stripe_signature_header(body, "whsec_new", NOW);
        let v = |h: &str, secrets: &[Secret], now: i64| {
            verify_stripe_signature(Some(h), body, secrets, 300, now)
        };
        assert_eq!(v(&good, std::slice::from_ref(&new), NOW), Ok(()));
        // Rotation: two configured secrets, or two v1 values in the header.
        assert_eq!(v(&good, &[old.clone(), new.clone()], NOW), Ok(()));
        let old_sig = stripe_signature_header(body, "whsec_old", NOW);
        let both = format!("{good},v1={}", old_sig.split("v1=").nth(1).unwrap());
        assert_eq!(v(&both, std::slice::from_ref(&old), NOW), Ok(()));
        // Wrong secret, tampered body, stale or future timestamp, missing parts.
        assert_eq!(
            v(&good, std::slice::from_ref(&old), NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_stripe_signature(
                Some(&good),
                br#"{"id": "evt_2"}"#,
                std::slice::from_ref(&new),
                300,
                NOW
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v(&good, std::slice::from_ref(&new), NOW + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            v(&good, std::slice::from_ref(&new), NOW - 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(v(&good, std::slice::from_ref(&new), NOW + 300), Ok(()));
        assert_eq!(v(&good, std::slice::from_ref(&new), NOW - 300), Ok(()));
        // A signed timestamp at the edge of i64 is stale, not an overflow.
        let far = stripe_signature_header(body, "whsec_new", i64::MIN);
        assert_eq!(
            v(&far, std::slice::from_ref(&new), NOW),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            v(&format!("t={NOW}"), std::slice::from_ref(&new), NOW),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_stripe_signature(None, body, std::slice::from_ref(&new), 300, NOW),
            Err(SignatureError::Malformed)
        );
        // A v0 (test-mode legacy) signature is not accepted in place of v1.
        let v0 = good.replace("v1=", "v0=");
        assert_eq!(v(&v0, &[new], NOW), Err(SignatureError::Malformed));
        // No secrets configured: nothing verifies.
        assert_eq!(v(&good, &[], NOW), Err(SignatureError::Mismatch));
    }

    #[test]
    fn bearer_secrets_must_match_exactly() {
        let s = Secret::new("s3cret-token");
        assert!(bearer_matches(Some("Bearer s3cret-token"), &s));
        assert!(!bearer_matches(Some("Bearer s3cret-tokenx"), &s));
        assert!(!bearer_matches(Some("Bearer s3cret-toke"), &s));
        assert!(!bearer_matches(Some("s3cret-token"), &s));
        assert!(!bearer_matches(Some("Basic s3cret-token"), &s));
        assert!(!bearer_matches(None, &s));
    }

    #[test]
    fn periods_and_finalized_invoices_are_read_from_both_api_shapes() {
        let obj = |v: serde_json::Value| -> StripeObject { serde_json::from_value(v).unwrap() };
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        // Before 2025-03-31: the period on the subscription; since: on its items.
        let old = obj(json!({"id": "sub_1", "status": "active",
            "current_period_start": 1_700_000_000, "current_period_end": 1_702_592_000}));
        let new = obj(
            json!({"id": "sub_1", "status": "active", "items": {"data": [
            {"current_period_start": 1_700_000_000, "current_period_end": 1_702_592_000}]}}),
        );
        for o in [old, new] {
            let p = o.subscription_period().unwrap();
            assert_eq!((p.start, p.end), (at(1_700_000_000), at(1_702_592_000)));
        }
        let ended = obj(
            json!({"id": "sub_1", "ended_at": 1_701_000_000, "items": {"data": [
            {"current_period_start": 1_700_000_000, "current_period_end": 1_702_592_000}]}}),
        );
        assert_eq!(
            ended.subscription_period().unwrap().ended_at,
            Some(at(1_701_000_000))
        );
        // No period anywhere, or no id: nothing.
        assert!(
            obj(json!({"id": "sub_1", "items": {"data": []}}))
                .subscription_period()
                .is_none()
        );
        assert!(
            obj(json!({"current_period_start": 1, "current_period_end": 2}))
                .subscription_period()
                .is_none()
        );

        let fallback = at(1_702_600_000);
        let top = obj(json!({"id": "in_1", "subscription": "sub_1",
            "period_start": 1_700_000_000, "period_end": 1_702_592_000}));
        let parent = obj(json!({"id": "in_1", "period_start": 1_700_000_000,
            "period_end": 1_702_592_000,
            "parent": {"subscription_details": {"subscription": "sub_1"}},
            "status_transitions": {"finalized_at": 1_702_595_600}}));
        let expanded = obj(json!({"id": "in_1", "subscription": {"id": "sub_1"},
            "period_start": 1_700_000_000, "period_end": 1_702_592_000}));
        let i = top.finalized_invoice(fallback).unwrap();
        assert_eq!(
            (i.subscription_id.as_str(), i.period_end, i.finalized_at),
            ("sub_1", at(1_702_592_000), fallback)
        );
        assert_eq!(
            parent.finalized_invoice(fallback).unwrap().finalized_at,
            at(1_702_595_600)
        );
        assert_eq!(
            expanded
                .finalized_invoice(fallback)
                .unwrap()
                .subscription_id,
            "sub_1"
        );
        // A usage-threshold invoice bills mid-period: it closes nothing.
        let threshold = obj(json!({"id": "in_3", "subscription": "sub_1",
            "billing_reason": "subscription_threshold",
            "period_start": 1_700_000_000, "period_end": 1_701_000_000}));
        assert!(threshold.finalized_invoice(fallback).is_none());
        // An invoice of no subscription (a one-off) is not a period's.
        assert!(
            obj(json!({"id": "in_2", "period_start": 1, "period_end": 2}))
                .finalized_invoice(fallback)
                .is_none()
        );
    }

    #[test]
    fn subscription_statuses_map_to_billing_statuses() {
        let u = "customer.subscription.updated";
        assert_eq!(billing_status(u, Some("active")), Some("active"));
        assert_eq!(billing_status(u, Some("trialing")), Some("active"));
        assert_eq!(billing_status(u, Some("past_due")), Some("past_due"));
        assert_eq!(billing_status(u, Some("canceled")), Some("canceled"));
        assert_eq!(billing_status(u, Some("incomplete")), None);
        assert_eq!(
            billing_status("customer.subscription.deleted", Some("active")),
            Some("canceled")
        );
    }
}

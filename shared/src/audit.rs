//! The tenant's audit log (`app.audit_events`, `migrations/0009_audit.sql`): what was done, by
//! whom, recorded in the same transaction as the doing, append-only and hash-chained per tenant.
//!
//! - [`record`]: one entry, in the caller's [`TenantTx`]. The database fills in who (the
//!   transaction's actor), when, under which impersonation, the sequence number and the hashes;
//!   the caller names only the [`Action`], its target and counts. Never secrets or record
//!   contents: a target is an identifier (a dataset name, a record key, a key id), details are
//!   counts and states.
//! - [`list`]: the tenant's entries, newest first, filtered, a page at a time.
//! - [`verify`]: the chain recomputed, and the first broken link named.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::db::{DbError, Params, TenantTx};

/// What was done. The names are stable: they are what a tenant filters on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A dataset was created.
    DatasetCreated,
    /// A dataset and its records were deleted.
    DatasetDeleted,
    /// A batch of records was written (details: counts).
    RecordsIngested,
    /// A record was deleted.
    RecordDeleted,
    /// An API key was created (target: its id; details: name, scopes).
    ApiKeyCreated,
    /// An API key was revoked.
    ApiKeyRevoked,
    /// Auth0 reported a member added to the organization.
    MemberAdded,
    /// Auth0 reported a member removed.
    MemberRemoved,
    /// Stripe reported a subscription status (details: the billing status).
    BillingStatusChanged,
    /// Stripe reported an invoice paid or failed.
    InvoiceStatusChanged,
    /// The tenant was created (from its Auth0 organization).
    TenantCreated,
    /// The tenant's billing customer was created and linked (target: the customer id).
    CustomerLinked,
    /// Support suspended the tenant (details: the reason).
    TenantSuspended,
    /// Support resumed the tenant.
    TenantResumed,
    /// Support changed the tenant's plan (details: from, to).
    PlanChanged,
    /// A staff member started an impersonation session (target: the session; details: mode,
    /// minutes, reason, ticket, approvals needed).
    ImpersonationStarted,
    /// A session was approved (details: by whom: staff or tenant).
    ImpersonationApproved,
    /// A session was ended early (details: by whom).
    ImpersonationEnded,
    /// A request under an impersonation session, recorded before it runs, reads and refusals
    /// included (target: the path; details: method, route, whether it was allowed).
    ImpersonatedRequest,
    /// The owner changed the tenant's support access (details: from, to).
    SupportAccessChanged,
    /// All datasets and records were exported (`GET /v1/export`).
    DataExported,
    /// Support closed the tenant (details: the reason, when its data will be deleted).
    TenantClosed,
    /// A closed tenant's data was deleted after its retention period (details: counts).
    TenantDataDeleted,
    /// Support put the tenant's failed usage deliveries back to pending (details: count, reason).
    DeliveriesRetried,
    /// Auth0 reported a member's role assigned or removed (details: from, to).
    MemberRoleChanged,
    /// A billing period of the tenant's subscription became known or was cut short (target: the
    /// subscription; details: start, end, source).
    BillingPeriodRecorded,
    /// Stripe finalized the invoice of a billing period: later usage for it is billed in the
    /// next period (target: the invoice; details: the periods).
    BillingPeriodFinalized,
    /// Stripe reported meter events it had answered 200 as rejected (target: the Stripe event;
    /// details: deliveries, units, error codes); reconciliation repairs them.
    DeliveriesRejected,
    /// A meter's count reached the plan's soft limit this billing period (target: the meter;
    /// details: plan, limits, used).
    SoftLimitReached,
}

impl Action {
    /// Every action, in the order of the list above.
    pub const ALL: [Action; 29] = [
        Action::DatasetCreated,
        Action::DatasetDeleted,
        Action::RecordsIngested,
        Action::RecordDeleted,
        Action::ApiKeyCreated,
        Action::ApiKeyRevoked,
        Action::MemberAdded,
        Action::MemberRemoved,
        Action::BillingStatusChanged,
        Action::InvoiceStatusChanged,
        Action::TenantCreated,
        Action::CustomerLinked,
        Action::TenantSuspended,
        Action::TenantResumed,
        Action::PlanChanged,
        Action::ImpersonationStarted,
        Action::ImpersonationApproved,
        Action::ImpersonationEnded,
        Action::ImpersonatedRequest,
        Action::SupportAccessChanged,
        Action::DataExported,
        Action::TenantClosed,
        Action::TenantDataDeleted,
        Action::DeliveriesRetried,
        Action::MemberRoleChanged,
        Action::BillingPeriodRecorded,
        Action::BillingPeriodFinalized,
        Action::DeliveriesRejected,
        Action::SoftLimitReached,
    ];

    /// The stable name (`dataset.created`).
    pub fn name(self) -> &'static str {
        match self {
            Action::DatasetCreated => "dataset.created",
            Action::DatasetDeleted => "dataset.deleted",
            Action::RecordsIngested => "records.ingested",
            Action::RecordDeleted => "record.deleted",
            Action::ApiKeyCreated => "api_key.created",
            Action::ApiKeyRevoked => "api_key.revoked",
            Action::MemberAdded => "member.added",
            Action::MemberRemoved => "member.removed",
            Action::BillingStatusChanged => "billing.status_changed",
            Action::InvoiceStatusChanged => "billing.invoice_status_changed",
            Action::TenantCreated => "tenant.created",
            Action::CustomerLinked => "billing.customer_linked",
            Action::TenantSuspended => "tenant.suspended",
            Action::TenantResumed => "tenant.resumed",
            Action::PlanChanged => "tenant.plan_changed",
            Action::ImpersonationStarted => "impersonation.started",
            Action::ImpersonationApproved => "impersonation.approved",
            Action::ImpersonationEnded => "impersonation.ended",
            Action::ImpersonatedRequest => "impersonation.request",
            Action::SupportAccessChanged => "tenant.support_access_changed",
            Action::DataExported => "data.exported",
            Action::TenantClosed => "tenant.closed",
            Action::TenantDataDeleted => "tenant.data_deleted",
            Action::DeliveriesRetried => "billing.deliveries_retried",
            Action::MemberRoleChanged => "member.role_changed",
            Action::BillingPeriodRecorded => "billing.period_recorded",
            Action::BillingPeriodFinalized => "billing.period_finalized",
            Action::DeliveriesRejected => "billing.deliveries_rejected",
            Action::SoftLimitReached => "billing.soft_limit_reached",
        }
    }

    /// The action of a name.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// Records `action` on `target` in the caller's transaction: it commits with the action, or not
/// at all. `request_id` ties it to the request's log lines.
pub async fn record(
    tx: &mut TenantTx,
    action: Action,
    target: Option<&str>,
    details: Value,
    request_id: Option<&str>,
) -> Result<(), DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let target: Option<String> = target.map(|t| t.chars().take(300).collect());
    let request_id = request_id.filter(|r| !r.is_empty() && r.len() <= 128);
    tx.execute(
        "INSERT INTO app.audit_events (tenant_id, action, target, details, request_id) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            (&tenant, Type::UUID),
            (&action.name(), Type::TEXT),
            (&target, Type::TEXT),
            (&details, Type::JSONB),
            (&request_id, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// One entry as the tenant reads it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEvent {
    /// Its position in the tenant's chain (1, 2, ...).
    pub seq: i64,
    /// When (the transaction's time).
    pub occurred_at: DateTime<Utc>,
    /// Who: `user:<auth0 id>`, `api_key:<id>`, `system:<component>`, or a support person.
    pub actor: String,
    /// The support session it happened under, if any.
    pub impersonation_id: Option<Uuid>,
    /// What ([`Action::name`]).
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// Counts and states.
    pub details: Value,
    /// The request that did it.
    pub request_id: Option<String>,
    /// This entry's hash (hex), which the next entry's covers.
    pub hash: String,
}

/// Which entries to list.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this action.
    pub action: Option<Action>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only entries made under this impersonation session.
    pub impersonation_id: Option<Uuid>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// Only entries before this seq (the cursor of the previous page).
    pub before_seq: Option<i64>,
    /// Page size.
    pub limit: i64,
}

/// A page of entries, newest first.
#[derive(Clone, Debug, Serialize)]
pub struct Page {
    /// The entries.
    pub events: Vec<AuditEvent>,
    /// Pass as `cursor` for the next (older) page; none when this is the last.
    pub next_cursor: Option<String>,
}

/// The tenant's entries matching `f`, newest first.
pub async fn list(tx: &mut TenantTx, f: &ListFilter) -> Result<Page, DbError> {
    let mut p = Params::new();
    let mut wheres = vec![format!(
        "tenant_id = {}",
        p.bind(tx.tenant_id().as_uuid(), Type::UUID)
    )];
    if let Some(a) = f.action {
        wheres.push(format!(
            "action = {}",
            p.bind(a.name().to_owned(), Type::TEXT)
        ));
    }
    if let Some(actor) = &f.actor {
        wheres.push(format!("actor_id = {}", p.bind(actor.clone(), Type::TEXT)));
    }
    if let Some(id) = f.impersonation_id {
        wheres.push(format!("impersonation_id = {}", p.bind(id, Type::UUID)));
    }
    if let Some(t) = f.since {
        wheres.push(format!("occurred_at >= {}", p.bind(t, Type::TIMESTAMPTZ)));
    }
    if let Some(t) = f.until {
        wheres.push(format!("occurred_at < {}", p.bind(t, Type::TIMESTAMPTZ)));
    }
    if let Some(s) = f.before_seq {
        wheres.push(format!("seq < {}", p.bind(s, Type::INT8)));
    }
    let fetch = p.bind(f.limit + 1, Type::INT8);
    let sql = format!(
        "SELECT seq, occurred_at, actor_id, impersonation_id, action, target, details, request_id, \
                encode(hash, 'hex') \
         FROM app.audit_events WHERE {} ORDER BY seq DESC LIMIT {fetch}",
        wheres.join(" AND ")
    );
    let rows = tx.query(&sql, &p.as_params()).await?;
    let more = rows.len() as i64 > f.limit;
    let events: Vec<AuditEvent> = rows
        .iter()
        .take(f.limit.max(0) as usize)
        .map(|r| AuditEvent {
            seq: r.get(0),
            occurred_at: r.get(1),
            actor: r.get(2),
            impersonation_id: r.get(3),
            action: r.get(4),
            target: r.get(5),
            details: r.get(6),
            request_id: r.get(7),
            hash: r.get(8),
        })
        .collect();
    let next_cursor = more
        .then(|| events.last().map(|e| e.seq.to_string()))
        .flatten();
    Ok(Page {
        events,
        next_cursor,
    })
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// True when every entry's hash is its content's and links to the one before, and the head
    /// names the last entry.
    pub intact: bool,
    /// Entries checked.
    pub entries: i64,
    /// The last entry's seq (0: none).
    pub last_seq: i64,
    /// The first broken link, if any.
    pub first_broken: Option<BrokenLink>,
}

/// Where the chain breaks, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    /// The first entry that does not verify (or, for `entries_missing_at_end`, the seq the head
    /// says comes after the last entry present).
    pub seq: i64,
    /// `content_changed` (its hash is not its content's), `prev_hash_mismatch` (it does not link
    /// to the entry before), `entries_missing` (the seq before it is absent),
    /// `entries_missing_at_end` (the head is past the last entry), `head_mismatch` (the head's
    /// hash is not the last entry's).
    pub reason: &'static str,
}

/// Recomputes the tenant's chain in the database and names the first broken link.
pub async fn verify(tx: &mut TenantTx) -> Result<Verification, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let row = tx
        .query_one(
            "WITH c AS ( \
               SELECT e.seq, e.prev_hash, e.hash, app.audit_hash(e) AS expected, \
                      lag(e.seq) OVER w AS before_seq, lag(e.hash) OVER w AS before_hash \
               FROM app.audit_events e WHERE e.tenant_id = $1 WINDOW w AS (ORDER BY e.seq) \
             ), broken AS ( \
               SELECT seq, CASE \
                   WHEN seq <> coalesce(before_seq, 0) + 1 THEN 'entries_missing' \
                   WHEN prev_hash <> coalesce(before_hash, decode(repeat('00', 32), 'hex')) \
                     THEN 'prev_hash_mismatch' \
                   ELSE 'content_changed' END AS reason \
               FROM c \
               WHERE seq <> coalesce(before_seq, 0) + 1 \
                  OR prev_hash <> coalesce(before_hash, decode(repeat('00', 32), 'hex')) \
                  OR hash <> expected \
               ORDER BY seq LIMIT 1 \
             ) \
             SELECT (SELECT count(*) FROM c), \
                    (SELECT coalesce(max(seq), 0) FROM c), \
                    (SELECT hash FROM c ORDER BY seq DESC LIMIT 1), \
                    (SELECT seq FROM broken), (SELECT reason FROM broken), \
                    (SELECT seq FROM app.audit_heads WHERE tenant_id = $1), \
                    (SELECT hash FROM app.audit_heads WHERE tenant_id = $1)",
            &[(&tenant, Type::UUID)],
        )
        .await?;
    let entries: i64 = row.get(0);
    let last_seq: i64 = row.get(1);
    let last_hash: Option<Vec<u8>> = row.get(2);
    let broken_seq: Option<i64> = row.get(3);
    let broken_reason: Option<String> = row.get(4);
    let head_seq: Option<i64> = row.get(5);
    let head_hash: Option<Vec<u8>> = row.get(6);
    let first_broken = match (broken_seq, broken_reason.as_deref()) {
        (Some(seq), Some(reason)) => Some(BrokenLink {
            seq,
            reason: match reason {
                "entries_missing" => "entries_missing",
                "prev_hash_mismatch" => "prev_hash_mismatch",
                _ => "content_changed",
            },
        }),
        // Every entry present links; the head must name the last one (else the newest entries
        // were removed, or the head was moved).
        _ => match head_seq {
            Some(h) if h > last_seq => Some(BrokenLink {
                seq: last_seq + 1,
                reason: "entries_missing_at_end",
            }),
            Some(h) if h < last_seq || head_hash != last_hash => Some(BrokenLink {
                seq: last_seq,
                reason: "head_mismatch",
            }),
            None if entries > 0 => Some(BrokenLink {
                seq: last_seq,
                reason: "head_mismatch",
            }),
            _ => None,
        },
    };
    Ok(Verification {
        intact: first_broken.is_none(),
        entries,
        last_seq,
        first_broken,
    })
}

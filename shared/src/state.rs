//! What a function builds once per cold start and lends to every request: the handlers' view of
//! the process. It is assembled by the wiring in [`crate::app`], which nothing else imports.

use std::sync::Arc;

use crate::analytics::planner::QueryPlanner;
use crate::auth::Authenticator;
use crate::billing::BillingSink;
use crate::config::Config;
use crate::db::Db;
use crate::rag::answer::Answerer;
use crate::rag::embed::Embedder;
use crate::rag::queue::EmbedQueue;
use crate::usage::queue::UsageQueue;

/// Configuration, pool and clients: built once per cold start, shared by reference.
#[derive(Debug)]
pub struct App {
    /// The configuration it was built from.
    pub config: Config,
    /// The app role's connection pool.
    pub db: Db,
    /// The support role's pool (the admin function's cross-tenant reads), if configured.
    pub support_db: Option<Db>,
    /// The impersonator role's pool (read-only impersonation sessions, which switch to the
    /// read-only `tenantry_impersonation` role), if configured.
    pub impersonation_db: Option<Db>,
    /// Bearer-token and API-key verification.
    pub auth: Authenticator,
    /// Text → vectors (questions, and chunks through the queue).
    pub embedder: Arc<dyn Embedder>,
    /// Sources → answer.
    pub answerer: Arc<dyn Answerer>,
    /// Question → queries in the query language (questions about figures).
    pub planner: Arc<dyn QueryPlanner>,
    /// Where embedding work goes after ingest.
    pub embed_queue: Arc<dyn EmbedQueue>,
    /// Where billable requests send their usage.
    pub usage_queue: Arc<dyn UsageQueue>,
    /// Where the scheduled reconciliation sends its batches of tenants (`billing-reconcile`
    /// with `BILLING_RECONCILE_QUEUE_URL`); unset: one run visits every tenant.
    pub reconcile_queue: Option<Arc<dyn crate::billing::reconcile::ReconcileQueue>>,
    /// The billing provider (local unless a Stripe-linked function supplies its adapter).
    pub billing: Arc<dyn BillingSink>,
    /// Which tenants' plans need no reservation (recently seen plans).
    pub plan_gate: crate::billing::plans::PlanGate,
    /// Dataset definitions read recently, which queries are compiled against before their
    /// transaction starts (checked in it).
    pub datasets: crate::analytics::datasets::Remembered,
}

/// Why a principal's transaction could not begin.
#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    /// A read-only impersonation session needs the impersonator role's pool, and this function
    /// has none (`IMPERSONATION_DATABASE_URL` / `IMPERSONATION_DATABASE_SECRET_ARN` unset).
    #[error("impersonation is not configured here")]
    NoImpersonationPool,
    /// The database refused or failed.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

impl App {
    /// Begins `principal`'s transaction: the one way a request reaches tenant data.
    ///
    /// Under a read-only impersonation session it runs on the impersonator role's pool as the
    /// impersonation role, which can read the tenant (while the session is live) and append to
    /// its audit log, nothing else: the database, not only the handler, refuses any write.
    /// Under any session, `app.impersonation_id` is set, so the audit log records it with every
    /// entry.
    pub async fn begin_for(
        &self,
        principal: &crate::auth::Principal,
        access: crate::db::Access,
        mut settings: crate::db::TxSettings,
    ) -> Result<crate::db::TenantTx, BeginError> {
        let ctx = principal.tenant_context();
        let Some(session) = principal.impersonation() else {
            return Ok(self.db.begin_with(&ctx, access, settings).await?);
        };
        settings.impersonation_id = Some(session.session_id);
        match session.mode {
            crate::auth::ImpersonationMode::ReadWrite => {
                Ok(self.db.begin_with(&ctx, access, settings).await?)
            }
            crate::auth::ImpersonationMode::ReadOnly => {
                let db = self
                    .impersonation_db
                    .as_ref()
                    .ok_or(BeginError::NoImpersonationPool)?;
                settings.impersonation_role = true;
                Ok(db.begin_with(&ctx, access, settings).await?)
            }
        }
    }
}

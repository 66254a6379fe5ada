//! What a function builds once per cold start and lends to every request: the handlers' view of
//! the process. It is assembled by the wiring in [`crate::app`], which nothing else imports.

use std::sync::Arc;

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
    /// Bearer-token and API-key verification.
    pub auth: Authenticator,
    /// Text → vectors (questions, and chunks through the queue).
    pub embedder: Arc<dyn Embedder>,
    /// Sources → answer.
    pub answerer: Arc<dyn Answerer>,
    /// Where embedding work goes after ingest.
    pub embed_queue: Arc<dyn EmbedQueue>,
    /// Where billable requests send their usage.
    pub usage_queue: Arc<dyn UsageQueue>,
    /// The billing provider (local unless a Stripe-linked function supplies its adapter).
    pub billing: Arc<dyn BillingSink>,
}

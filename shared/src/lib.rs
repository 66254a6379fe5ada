//! Tenantry's shared library: everything the Lambda functions and the local runner have in common.
//!
//! - [`state`]: the [`App`] (configuration, pool, ports) a function builds once per cold start;
//!   [`app`]: the wiring that builds it and runs each function (nothing else imports it);
//!   [`runtime`]: how in-process work runs.
//! - [`config`], [`env`](mod@env), [`secrets`]: configuration from the environment and Secrets
//!   Manager. [`config::Config`] puts the sections together; each module that owns a section
//!   (`db`, `auth`, `http`, `analytics`, `rag`, `billing`) defines and parses it through
//!   [`env::Env`], a leaf that imports nothing of the crate.
//! - [`db`]: the Postgres pool, [`db::TenantTx`] (the only door to tenant data) and migrations.
//! - [`auth`]: Auth0 JWTs and tenant API keys, resolved to a [`auth::Principal`] with its
//!   permissions.
//! - [`http`]: problem+json errors, the routing table's types and the edge serving it (axum,
//!   tower-http).
//! - [`api`]: the routing table and its handlers, shared by the Lambda functions and the local
//!   runner.
//! - [`analytics`]: datasets, ingest and the JSON query language.
//! - [`rag`]: chunks, embeddings, hybrid retrieval and answers with citations.
//! - [`usage`], [`billing`]: the usage ledger, its delivery to the billing provider,
//!   reconciliation and the billing webhooks.
//! - [`audit`]: the tenant's hash-chained, append-only audit log.
//! - [`tenants`]: provisioning; [`ids`]: identifiers validated at the edge; [`telemetry`]: logs.

pub mod analytics;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod billing;
pub(crate) mod cache;
pub mod config;
pub mod db;
pub mod env;
pub mod http;
pub mod ids;
pub mod rag;
pub mod runtime;
pub mod secrets;
#[cfg(feature = "sqs")]
mod sqs;
pub mod state;
pub mod telemetry;
pub mod tenants;
pub mod usage;
pub mod words;

pub use ids::TenantId;
pub use state::App;

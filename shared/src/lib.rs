//! Tenantry's shared library: everything the Lambda functions and the local runner have in common.
//!
//! - [`db`]: the Postgres pool, [`db::TenantTx`] (the only door to tenant data) and migrations.
//! - [`auth`]: Auth0 JWTs and tenant API keys, resolved to a [`auth::Principal`].
//! - [`http`]: request ids, problem+json errors, body limits and the routing table's dispatcher.
//! - [`api`]: the route handlers, shared by the Lambda functions and the local runner.

pub mod analytics;
pub mod api;
pub mod app;
pub mod auth;
pub mod billing;
pub mod config;
pub mod db;
pub mod http;
pub mod ids;
pub mod rag;
pub mod secrets;
mod sqs;
pub mod telemetry;
pub mod tenants;
pub mod usage;

pub use app::App;
pub use ids::TenantId;

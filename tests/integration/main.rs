//! Integration tests: one binary, real Postgres with pgvector, real PgBouncer, real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod analytics;
mod api_keys;
mod ask;
mod audit;
mod auth;
mod authorizer;
mod bedrock;
mod billing;
mod catalog;
mod contract;
mod edge;
mod embed_queue;
mod ingest_faults;
mod isolation;
mod me;
mod migrations;
mod permissions;
mod pooling;
mod rag;
mod rls_queries;
mod roles;
mod secrets;
mod tenant_tx;
mod webhooks;
mod wiring;

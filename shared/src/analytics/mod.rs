//! Datasets, records and queries: the analytics domain, independent of HTTP.
//!
//! - [`schema`]: a dataset's declared columns and their validation.
//! - [`datasets`]: creating, finding and deleting datasets through a [`TenantTx`].
//! - [`decimal`]: what a `decimal` column accepts, exactly.
//! - [`ingest`]: validating and writing batches of records (all or nothing, idempotent by key).
//! - [`query`]: the JSON query language and its compiler to parameterized SQL.
//! - [`rollup`]: per-hour or per-day, per-dimension aggregates kept with the records, read by the
//!   compiler.
//!
//! Its limits ([`AnalyticsConfig`]) are read from the environment here.
//!
//! [`TenantTx`]: crate::db::TenantTx

pub mod datasets;
pub mod decimal;
pub mod ingest;
pub mod planner;
pub mod query;
pub mod rollup;
pub mod schema;

pub use datasets::Dataset;
pub use schema::{ColumnDef, ColumnType, DatasetSpec};

use std::time::Duration;

use crate::env::{ConfigError, Env};

/// Limits of the analytics API.
#[derive(Clone, Debug)]
pub struct AnalyticsConfig {
    /// Most records in one ingest request.
    pub max_ingest_records: usize,
    /// Most records in one bulk import (whose body `MAX_BODY_BYTES` also bounds).
    pub max_import_records: usize,
    /// Each query's `statement_timeout`.
    pub query_timeout: Duration,
    /// Hard cap on a query's `limit`.
    pub query_max_limit: u32,
}

impl AnalyticsConfig {
    /// `MAX_INGEST_RECORDS`, `MAX_IMPORT_RECORDS`, `QUERY_TIMEOUT_MS`, `QUERY_MAX_LIMIT`.
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            max_ingest_records: env.parse("MAX_INGEST_RECORDS", 1000)?,
            max_import_records: env.parse("MAX_IMPORT_RECORDS", 100_000)?,
            query_timeout: Duration::from_millis(env.parse("QUERY_TIMEOUT_MS", 5000)?),
            query_max_limit: env.parse("QUERY_MAX_LIMIT", 10_000)?,
        })
    }
}

/// A problem with one part of a request: where, and what is wrong. Lists of these go back to the
/// caller in the problem document's `errors` member.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// Where: a JSON pointer-ish path (`/columns/2/name`, `/filter/and/0/value`).
    pub path: String,
    /// A stable reason code (`unknown_column`, `type_mismatch`, ...).
    pub reason: &'static str,
    /// A sentence for people.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(
        path: impl Into<String>,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            reason,
            message: message.into(),
        }
    }
}

/// True for names we accept as dataset, column and alias names: safe to embed as SQL literals.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= 63
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

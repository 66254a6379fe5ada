//! The JSON query language: what a client may ask of a dataset, and how it becomes one
//! parameterized statement.
//!
//! A query names a dataset and may filter (`eq ne lt lte gt gte in between contains is_null`,
//! combined with `and`/`or`/`not`), group (by columns, and by `minute hour day week month`
//! buckets of timestamp columns), aggregate (`count sum avg min max count_distinct percentile`),
//! order, limit and restrict to a time range.
//!
//! - [`spec`]: the query as typed values, parsed by serde; its shape is refused there, by path.
//! - [`compile`](mod@compile): the query checked against the dataset's schema and compiled to SQL
//!   built only from column names the schema declared, with every value a parameter
//!   ([`Params`](crate::db::Params)). Nothing a client sends is ever spliced into SQL text.
//! - `rollup`: the same query from the dataset's rollups, when they answer it exactly.
//! - [`run`]: the compiled statement in the tenant's transaction.

pub mod compile;
mod rollup;
pub mod spec;

use serde::Serialize;
use serde_json::Value;

pub use compile::{CompiledFilter, CompiledQuery, compile, compile_filter, compile_raw};
pub use spec::{
    AggFn, AggregateSpec, Bucket, BucketSpec, Condition, Direction, Filter, GroupKey, Literal, Op,
    Operand, OrderSpec, QuerySpec, TimeRangeSpec,
};

use crate::db::{DbError, TenantTx};

/// Bounds on what one query may ask for.
#[derive(Clone, Copy, Debug)]
pub struct QueryLimits {
    /// Rows returned when the query sets no limit.
    pub default_limit: u32,
    /// The hard cap on `limit`.
    pub max_limit: u32,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            default_limit: 100,
            max_limit: 10_000,
        }
    }
}

/// An output column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutputColumn {
    /// Its name.
    pub name: String,
    /// Its type (`string integer number decimal boolean timestamp`).
    #[serde(rename = "type")]
    pub ty: &'static str,
}

/// A query's answer.
#[derive(Clone, Debug, Serialize)]
pub struct QueryResult {
    /// Output columns.
    pub columns: Vec<OutputColumn>,
    /// Rows, each an array in column order.
    pub rows: Vec<Value>,
    /// Rows returned.
    pub row_count: usize,
    /// True if the limit cut the result short.
    pub truncated: bool,
}

/// Runs a compiled query in the tenant's transaction.
pub async fn run(tx: &mut TenantTx, q: &CompiledQuery) -> Result<QueryResult, DbError> {
    let rows = tx.query(&q.sql, &q.params.as_params()).await?;
    Ok(result(q, &rows))
}

/// Runs a compiled query as the transaction's last statement, committing in the same flight
/// ([`TenantTx::query_and_commit`]). With `before` (a check that the dataset is still the one
/// it was compiled against, the ledger's insert of its usage), those go first in that flight and
/// commit with it, and the query itself runs read-only
/// ([`TenantTx::writes_then_query_and_commit`]).
pub async fn run_and_commit(
    tx: TenantTx,
    q: &CompiledQuery,
    before: &[(&str, &[crate::db::Param<'_>])],
) -> Result<QueryResult, DbError> {
    let params = q.params.as_params();
    let rows = if before.is_empty() {
        tx.query_and_commit(&q.sql, &params).await?
    } else {
        tx.writes_then_query_and_commit(before, &q.sql, &params)
            .await?
    };
    Ok(result(q, &rows))
}

fn result(q: &CompiledQuery, rows: &[crate::db::Row]) -> QueryResult {
    let truncated = rows.len() > q.limit;
    let rows: Vec<Value> = rows
        .iter()
        .take(q.limit)
        .map(|r| r.get::<_, Value>(0))
        .collect();
    QueryResult {
        columns: q.columns.clone(),
        row_count: rows.len(),
        rows,
        truncated,
    }
}

//! The JSON query language and its compiler to parameterized SQL.
//!
//! A query names a dataset and may filter (`eq ne lt lte gt gte in between contains is_null`,
//! combined with `and`/`or`/`not`), group (by columns, and by `minute hour day week month`
//! buckets of timestamp columns), aggregate (`count sum avg min max count_distinct percentile`),
//! order, limit and restrict to a time range. Everything is validated against the dataset's
//! schema first; the SQL is built from column names the schema declared (checked identifiers)
//! and every value is a parameter. Nothing a client sends is ever spliced into SQL text.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_postgres::types::{ToSql, Type};

use super::datasets::Dataset;
use super::schema::{ColumnDef, ColumnType};
use super::{FieldError, is_identifier};
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

const MAX_FILTER_DEPTH: usize = 8;
const MAX_CONDITIONS: usize = 100;
const MAX_IN_VALUES: usize = 1_000;
const MAX_GROUP_BY: usize = 5;
const MAX_AGGREGATES: usize = 20;

/// A query as the client sends it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// The dataset, by name or id.
    pub dataset: String,
    /// A condition tree.
    #[serde(default)]
    pub filter: Option<Value>,
    /// Column names, or `{"column", "bucket", "as"?}` time buckets.
    #[serde(default)]
    pub group_by: Vec<Value>,
    /// `{"fn", "column"?, "p"?, "as"?}`.
    #[serde(default)]
    pub aggregates: Vec<AggregateSpec>,
    /// Columns to return when neither grouping nor aggregating (default: all).
    #[serde(default)]
    pub select: Vec<String>,
    /// `{"by", "dir"?}` on output names.
    #[serde(default)]
    pub order_by: Vec<OrderSpec>,
    /// Rows to return.
    #[serde(default)]
    pub limit: Option<u64>,
    /// `{"from"?, "to"?, "column"?}`: from inclusive, to exclusive.
    #[serde(default)]
    pub time_range: Option<TimeRangeSpec>,
}

/// An aggregate.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    /// Which function.
    #[serde(rename = "fn")]
    pub func: AggFn,
    /// Its column (`count` may omit it).
    #[serde(default)]
    pub column: Option<String>,
    /// For `percentile`: 0..=1.
    #[serde(default)]
    pub p: Option<f64>,
    /// Output name.
    #[serde(default, rename = "as")]
    pub alias: Option<String>,
}

/// Aggregate functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AggFn {
    /// Rows (or non-null values of a column).
    Count,
    /// Sum of a numeric column.
    Sum,
    /// Mean of a numeric column.
    Avg,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Distinct non-null values.
    CountDistinct,
    /// Continuous percentile of a numeric column.
    Percentile,
}

/// A time bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    /// Minute.
    Minute,
    /// Hour.
    Hour,
    /// Day (UTC).
    Day,
    /// ISO week (Monday, UTC).
    Week,
    /// Calendar month (UTC).
    Month,
}

impl Bucket {
    fn as_str(self) -> &'static str {
        match self {
            Bucket::Minute => "minute",
            Bucket::Hour => "hour",
            Bucket::Day => "day",
            Bucket::Week => "week",
            Bucket::Month => "month",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketSpec {
    column: String,
    bucket: Bucket,
    #[serde(default, rename = "as")]
    alias: Option<String>,
}

/// An ordering.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSpec {
    /// An output name.
    pub by: String,
    /// `asc` (default) or `desc`; nulls always last.
    #[serde(default)]
    pub dir: Direction,
}

/// Sort direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Ascending.
    #[default]
    Asc,
    /// Descending.
    Desc,
}

/// A time range.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRangeSpec {
    /// Inclusive start (RFC 3339).
    #[serde(default)]
    pub from: Option<String>,
    /// Exclusive end (RFC 3339).
    #[serde(default)]
    pub to: Option<String>,
    /// The timestamp column (default: the dataset's time column).
    #[serde(default)]
    pub column: Option<String>,
}

/// An output column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutputColumn {
    /// Its name.
    pub name: String,
    /// Its type (`string integer number boolean timestamp`).
    #[serde(rename = "type")]
    pub ty: &'static str,
}

/// A statement parameter the compiler owns, with its declared type.
pub type BoxedParam = (Box<dyn ToSql + Sync + Send>, Type);

/// A filter compiled on its own: a condition on `r` (a row of `app.records` of the dataset), for a
/// caller that embeds it in a statement of its own (retrieval filters by column values this way).
pub struct CompiledFilter {
    /// The condition; its parameters are numbered from the `first_param` given to
    /// [`compile_filter`].
    pub sql: String,
    /// Its parameters, in order.
    pub params: Vec<BoxedParam>,
}

impl std::fmt::Debug for CompiledFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledFilter")
            .field("sql", &self.sql)
            .field("params", &self.params.len())
            .finish()
    }
}

/// Compiles a filter (the query language's `filter`) against `ds`, numbering its parameters from
/// `$first_param`. Errors are named by path under `path`.
pub fn compile_filter(
    filter: &Value,
    ds: &Dataset,
    first_param: usize,
    path: &str,
) -> Result<CompiledFilter, Vec<FieldError>> {
    let mut c = Compiler {
        ds,
        base: first_param.saturating_sub(1),
        params: Vec::new(),
        errors: Vec::new(),
        conditions: 0,
    };
    let sql = c.filter(filter, path, 0);
    match sql {
        Some(sql) if c.errors.is_empty() => Ok(CompiledFilter {
            sql,
            params: c.params,
        }),
        _ => Err(c.errors),
    }
}

/// A query compiled to one SQL statement and its parameters.
pub struct CompiledQuery {
    /// The SQL: one `jsonb` array per row.
    pub sql: String,
    params: Vec<BoxedParam>,
    /// What each position of a row is.
    pub columns: Vec<OutputColumn>,
    /// Rows requested (one more is fetched to tell whether there were more).
    pub limit: usize,
}

impl std::fmt::Debug for CompiledQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledQuery")
            .field("sql", &self.sql)
            .field("params", &self.params.len())
            .field("columns", &self.columns)
            .finish()
    }
}

impl CompiledQuery {
    /// The parameters, typed, in the form statements take.
    pub fn params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.params
            .iter()
            .map(|(v, t)| (v.as_ref() as &(dyn ToSql + Sync), t.clone()))
            .collect()
    }
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
    let rows = tx.query(&q.sql, &q.params()).await?;
    let truncated = rows.len() > q.limit;
    let rows: Vec<Value> = rows
        .iter()
        .take(q.limit)
        .map(|r| r.get::<_, Value>(0))
        .collect();
    Ok(QueryResult {
        columns: q.columns.clone(),
        row_count: rows.len(),
        rows,
        truncated,
    })
}

/// Compiles a query against its dataset. The tenant is `$1` and the dataset `$2`, on top of RLS.
pub fn compile(
    spec: &QuerySpec,
    ds: &Dataset,
    tenant: uuid::Uuid,
    limits: QueryLimits,
) -> Result<CompiledQuery, Vec<FieldError>> {
    let mut c = Compiler {
        ds,
        base: 0,
        params: vec![
            (Box::new(tenant), Type::UUID),
            (Box::new(ds.id), Type::UUID),
        ],
        errors: Vec::new(),
        conditions: 0,
    };
    let mut wheres = vec![
        "r.tenant_id = $1".to_owned(),
        "r.dataset_id = $2".to_owned(),
    ];
    if let Some(sql) = spec.filter.as_ref().and_then(|f| c.filter(f, "/filter", 0)) {
        wheres.push(sql);
    }
    if let Some(range) = &spec.time_range {
        c.time_range(range, &mut wheres);
    }

    let limit = match spec.limit {
        None => limits.default_limit as usize,
        Some(0) => {
            c.err("/limit", "invalid_limit", "limit must be at least 1.");
            0
        }
        Some(n) if n > u64::from(limits.max_limit) => {
            c.err(
                "/limit",
                "limit_too_large",
                format!("limit is at most {}.", limits.max_limit),
            );
            0
        }
        Some(n) => n as usize,
    };

    // Outputs: (name, type, SQL expression).
    let mut outputs: Vec<(String, &'static str, String)> = Vec::new();
    let mut group_exprs = Vec::new();
    let aggregate_mode = !spec.group_by.is_empty() || !spec.aggregates.is_empty();
    if aggregate_mode {
        if !spec.select.is_empty() {
            c.err("/select", "select_with_aggregates", "select is for row queries; with group_by or aggregates, the outputs are the groups and aggregates.");
        }
        if spec.group_by.len() > MAX_GROUP_BY {
            c.err(
                "/group_by",
                "too_many_groups",
                format!("At most {MAX_GROUP_BY} group_by entries."),
            );
        }
        for (i, g) in spec.group_by.iter().enumerate() {
            if let Some((name, ty, expr)) = c.group_key(g, &format!("/group_by/{i}")) {
                group_exprs.push(expr.clone());
                outputs.push((name, ty, expr));
            }
        }
        if spec.aggregates.len() > MAX_AGGREGATES {
            c.err(
                "/aggregates",
                "too_many_aggregates",
                format!("At most {MAX_AGGREGATES} aggregates."),
            );
        }
        let default_count = [AggregateSpec {
            func: AggFn::Count,
            column: None,
            p: None,
            alias: None,
        }];
        let aggregates = if spec.aggregates.is_empty() {
            &default_count[..]
        } else {
            &spec.aggregates
        };
        for (i, a) in aggregates.iter().enumerate() {
            if let Some(out) = c.aggregate(a, &format!("/aggregates/{i}")) {
                outputs.push(out);
            }
        }
    } else {
        outputs.push(("key".into(), "string", "r.key".into()));
        outputs.push(("version".into(), "integer", "r.version".into()));
        let names: Vec<&str> = if spec.select.is_empty() {
            ds.columns.iter().map(|c| c.name.as_str()).collect()
        } else {
            spec.select.iter().map(String::as_str).collect()
        };
        for (i, name) in names.iter().enumerate() {
            match ds.column(name) {
                Some(col) => outputs.push((col.name.clone(), col.ty.as_str(), c.column_expr(col))),
                None => c.err(
                    format!("/select/{i}"),
                    "unknown_column",
                    format!("{} is not a column of {}.", shorten(name), ds.name),
                ),
            }
        }
    }
    for (i, (name, ..)) in outputs.iter().enumerate() {
        if outputs[..i].iter().any(|(n, ..)| n == name) {
            c.err(
                "/",
                "duplicate_output",
                format!("Two outputs are named {name}; rename one with \"as\"."),
            );
        }
    }

    // Order: what the client asked, then a deterministic tiebreak.
    let mut order = Vec::new();
    for (i, o) in spec.order_by.iter().enumerate() {
        match outputs.iter().find(|(n, ..)| *n == o.by) {
            Some((_, _, expr)) => order.push(format!(
                "{expr} {} NULLS LAST",
                if o.dir == Direction::Desc {
                    "DESC"
                } else {
                    "ASC"
                }
            )),
            None => c.err(
                format!("/order_by/{i}/by"),
                "unknown_output",
                format!("{} is not an output of this query.", shorten(&o.by)),
            ),
        }
    }
    if aggregate_mode {
        order.extend(group_exprs.iter().map(|g| format!("{g} ASC NULLS LAST")));
    } else {
        order.push("r.key ASC".into());
    }

    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let select = outputs
        .iter()
        .map(|(_, _, e)| e.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
        "SELECT jsonb_build_array({select}) FROM app.records r WHERE {}",
        wheres.join(" AND ")
    );
    if !group_exprs.is_empty() {
        sql.push_str(" GROUP BY ");
        sql.push_str(&group_exprs.join(", "));
    }
    if !order.is_empty() && (!aggregate_mode || !group_exprs.is_empty()) {
        sql.push_str(" ORDER BY ");
        sql.push_str(&order.join(", "));
    }
    let fetch = c.param(limit as i64 + 1, Type::INT8);
    sql.push_str(&format!(" LIMIT {fetch}"));
    Ok(CompiledQuery {
        sql,
        params: c.params,
        columns: outputs
            .into_iter()
            .map(|(name, ty, _)| OutputColumn { name, ty })
            .collect(),
        limit,
    })
}

struct Compiler<'d> {
    ds: &'d Dataset,
    /// Parameters already bound ahead of this compiler's (its first is `$base+1`).
    base: usize,
    params: Vec<BoxedParam>,
    errors: Vec<FieldError>,
    conditions: usize,
}

/// A typed value from the client's JSON, ready to be a parameter.
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Time(DateTime<Utc>),
}

impl Compiler<'_> {
    fn err(&mut self, path: impl Into<String>, reason: &'static str, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, reason, message));
    }

    fn param(&mut self, value: impl ToSql + Sync + Send + 'static, ty: Type) -> String {
        self.params.push((Box::new(value), ty));
        format!("${}", self.base + self.params.len())
    }

    fn column(&mut self, name: &str, path: &str) -> Option<&'_ ColumnDef> {
        let ds = self.ds;
        let found = ds.column(name);
        if found.is_none() {
            self.err(
                path,
                "unknown_column",
                format!("{} is not a column of {}.", shorten(name), ds.name),
            );
        }
        found
    }

    fn column_expr(&self, c: &ColumnDef) -> String {
        self.ds.column_expr(c)
    }

    fn scalar(&mut self, ty: ColumnType, v: &Value, path: &str) -> Option<Scalar> {
        let s = match (ty, v) {
            (ColumnType::String, Value::String(s)) if !s.contains('\0') => {
                Some(Scalar::Text(s.clone()))
            }
            (ColumnType::Integer, Value::Number(n)) => n.as_i64().map(Scalar::Int),
            (ColumnType::Number, Value::Number(n)) => n.as_f64().map(Scalar::Float),
            (ColumnType::Boolean, Value::Bool(b)) => Some(Scalar::Bool(*b)),
            (ColumnType::Timestamp, Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| Scalar::Time(t.with_timezone(&Utc))),
            _ => None,
        };
        if s.is_none() {
            let hint = if ty == ColumnType::Timestamp {
                " (RFC 3339)"
            } else {
                ""
            };
            self.err(
                path,
                "type_mismatch",
                format!("Expected a {} value{hint}.", ty.as_str()),
            );
        }
        s
    }

    fn scalar_param(&mut self, s: Scalar) -> String {
        match s {
            Scalar::Text(v) => self.param(v, Type::TEXT),
            Scalar::Int(v) => self.param(v, Type::INT8),
            Scalar::Float(v) => self.param(v, Type::FLOAT8),
            Scalar::Bool(v) => self.param(v, Type::BOOL),
            Scalar::Time(v) => self.param(v, Type::TIMESTAMPTZ),
        }
    }

    fn array_param(&mut self, ty: ColumnType, values: Vec<Scalar>) -> String {
        macro_rules! collect {
            ($variant:ident) => {
                values
                    .into_iter()
                    .filter_map(|s| match s {
                        Scalar::$variant(v) => Some(v),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            };
        }
        match ty {
            ColumnType::String => self.param(collect!(Text), Type::TEXT_ARRAY),
            ColumnType::Integer => self.param(collect!(Int), Type::INT8_ARRAY),
            ColumnType::Number => self.param(collect!(Float), Type::FLOAT8_ARRAY),
            ColumnType::Boolean => self.param(collect!(Bool), Type::BOOL_ARRAY),
            ColumnType::Timestamp => self.param(collect!(Time), Type::TIMESTAMPTZ_ARRAY),
        }
    }

    fn filter(&mut self, f: &Value, path: &str, depth: usize) -> Option<String> {
        if depth > MAX_FILTER_DEPTH {
            self.err(
                path,
                "filter_too_deep",
                format!("Filters nest at most {MAX_FILTER_DEPTH} levels."),
            );
            return None;
        }
        let Value::Object(obj) = f else {
            self.err(path, "invalid_filter", "A filter is an object: a condition, or {\"and\": [...]}, {\"or\": [...]}, {\"not\": {...}}.");
            return None;
        };
        if let (1, Some((k, v))) = (obj.len(), obj.iter().next()) {
            {
                match k.as_str() {
                    "and" | "or" => {
                        let Value::Array(items) = v else {
                            self.err(
                                format!("{path}/{k}"),
                                "invalid_filter",
                                format!("\"{k}\" takes a non-empty array of filters."),
                            );
                            return None;
                        };
                        if items.is_empty() {
                            self.err(
                                format!("{path}/{k}"),
                                "invalid_filter",
                                format!("\"{k}\" takes a non-empty array of filters."),
                            );
                            return None;
                        }
                        let parts: Vec<Option<String>> = items
                            .iter()
                            .enumerate()
                            .map(|(i, item)| {
                                self.filter(item, &format!("{path}/{k}/{i}"), depth + 1)
                            })
                            .collect();
                        let parts: Option<Vec<String>> = parts.into_iter().collect();
                        let joiner = if k == "and" { " AND " } else { " OR " };
                        return parts.map(|p| format!("({})", p.join(joiner)));
                    }
                    "not" => {
                        return self
                            .filter(v, &format!("{path}/not"), depth + 1)
                            .map(|s| format!("(NOT {s})"));
                    }
                    _ => {}
                }
            }
        }
        self.condition(obj, path)
    }

    fn condition(&mut self, obj: &Map<String, Value>, path: &str) -> Option<String> {
        self.conditions += 1;
        if self.conditions == MAX_CONDITIONS + 1 {
            self.err(
                path,
                "too_many_conditions",
                format!("A filter has at most {MAX_CONDITIONS} conditions."),
            );
        }
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "column" | "op" | "value"))
        {
            self.err(
                format!("{path}/{}", k.chars().take(64).collect::<String>()),
                "invalid_filter",
                "A condition has only column, op and value.",
            );
            return None;
        }
        let (Some(Value::String(column)), Some(Value::String(op))) =
            (obj.get("column"), obj.get("op"))
        else {
            self.err(
                path,
                "invalid_filter",
                "A condition needs a string \"column\" and \"op\".",
            );
            return None;
        };
        let col = self.column(column, &format!("{path}/column"))?.clone();
        let expr = self.column_expr(&col);
        let value = obj.get("value");
        let vpath = format!("{path}/value");
        let need_value = |this: &mut Self| {
            if value.is_none() {
                this.err(
                    &vpath,
                    "missing_value",
                    format!("Operator {op} needs a value."),
                );
            }
            value
        };
        match op.as_str() {
            "eq" | "ne" | "lt" | "lte" | "gt" | "gte" => {
                let v = need_value(self)?;
                if col.ty == ColumnType::Boolean && !matches!(op.as_str(), "eq" | "ne") {
                    self.err(
                        format!("{path}/op"),
                        "invalid_operator",
                        "Booleans compare with eq and ne only.",
                    );
                    return None;
                }
                let s = self.scalar(col.ty, v, &vpath)?;
                let p = self.scalar_param(s);
                let sql_op = match op.as_str() {
                    "eq" => "=",
                    "ne" => "<>",
                    "lt" => "<",
                    "lte" => "<=",
                    "gt" => ">",
                    _ => ">=",
                };
                Some(format!("{expr} {sql_op} {p}"))
            }
            "in" => {
                let v = need_value(self)?;
                let Value::Array(items) = v else {
                    self.err(&vpath, "type_mismatch", "in takes an array of values.");
                    return None;
                };
                if items.is_empty() || items.len() > MAX_IN_VALUES {
                    self.err(
                        &vpath,
                        "invalid_value",
                        format!("in takes 1 to {MAX_IN_VALUES} values."),
                    );
                    return None;
                }
                let scalars: Option<Vec<Scalar>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.scalar(col.ty, item, &format!("{vpath}/{i}")))
                    .collect();
                let p = self.array_param(col.ty, scalars?);
                Some(format!("{expr} = ANY({p})"))
            }
            "between" => {
                let v = need_value(self)?;
                let items = match v {
                    Value::Array(items) if items.len() == 2 => items,
                    _ => {
                        self.err(&vpath, "invalid_value", "between takes [low, high].");
                        return None;
                    }
                };
                if col.ty == ColumnType::Boolean {
                    self.err(
                        format!("{path}/op"),
                        "invalid_operator",
                        "between does not apply to booleans.",
                    );
                    return None;
                }
                let lo = self.scalar(col.ty, &items[0], &format!("{vpath}/0"));
                let hi = self.scalar(col.ty, &items[1], &format!("{vpath}/1"));
                let (lo, hi) = (lo?, hi?);
                let (lo, hi) = (self.scalar_param(lo), self.scalar_param(hi));
                Some(format!("{expr} BETWEEN {lo} AND {hi}"))
            }
            "contains" => {
                let v = need_value(self)?;
                if col.ty != ColumnType::String {
                    self.err(
                        format!("{path}/op"),
                        "invalid_operator",
                        "contains applies to string columns.",
                    );
                    return None;
                }
                let s = self.scalar(col.ty, v, &vpath)?;
                let p = self.scalar_param(s);
                // strpos, not LIKE: the client's % and _ are plain characters.
                Some(format!("strpos({expr}, {p}) > 0"))
            }
            "is_null" => {
                let want_null = match value {
                    None => true,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => {
                        self.err(
                            &vpath,
                            "type_mismatch",
                            "is_null takes true (the default) or false.",
                        );
                        return None;
                    }
                };
                Some(format!(
                    "{expr} IS {}NULL",
                    if want_null { "" } else { "NOT " }
                ))
            }
            other => {
                self.err(
                    format!("{path}/op"),
                    "invalid_operator",
                    format!(
                        "Unknown operator {}; use eq ne lt lte gt gte in between contains is_null.",
                        shorten(other)
                    ),
                );
                None
            }
        }
    }

    fn time_range(&mut self, range: &TimeRangeSpec, wheres: &mut Vec<String>) {
        let ds = self.ds;
        let column = range.column.as_deref().or(ds.time_column.as_deref());
        let Some(name) = column else {
            self.err(
                "/time_range/column",
                "no_time_column",
                "This dataset has no time column; name a timestamp column.",
            );
            return;
        };
        let Some(col) = self.column(name, "/time_range/column").cloned() else {
            return;
        };
        if col.ty != ColumnType::Timestamp {
            self.err(
                "/time_range/column",
                "not_a_timestamp_column",
                "Time ranges apply to timestamp columns.",
            );
            return;
        }
        let expr = self.column_expr(&col);
        let mut bounds = Vec::new();
        for (field, v) in [("from", &range.from), ("to", &range.to)] {
            if let Some(s) = v {
                match DateTime::parse_from_rfc3339(s) {
                    Ok(t) => bounds.push((field, t.with_timezone(&Utc))),
                    Err(_) => self.err(
                        format!("/time_range/{field}"),
                        "invalid_timestamp",
                        "Expected an RFC 3339 timestamp.",
                    ),
                }
            }
        }
        if let [("from", from), ("to", to)] = bounds.as_slice()
            && from >= to
        {
            self.err("/time_range", "empty_time_range", "from must be before to.");
            return;
        }
        for (field, t) in bounds {
            let p = self.param(t, Type::TIMESTAMPTZ);
            wheres.push(format!(
                "{expr} {} {p}",
                if field == "from" { ">=" } else { "<" }
            ));
        }
    }

    fn group_key(&mut self, g: &Value, path: &str) -> Option<(String, &'static str, String)> {
        match g {
            Value::String(name) => {
                let col = self.column(name, path)?.clone();
                let expr = self.column_expr(&col);
                Some((col.name, col.ty.as_str(), expr))
            }
            Value::Object(_) => {
                let spec: BucketSpec = match serde_json::from_value(g.clone()) {
                    Ok(s) => s,
                    Err(e) => {
                        self.err(
                            path,
                            "invalid_group_by",
                            format!("A time bucket is {{\"column\", \"bucket\", \"as\"?}}: {e}"),
                        );
                        return None;
                    }
                };
                let col = self
                    .column(&spec.column, &format!("{path}/column"))?
                    .clone();
                if col.ty != ColumnType::Timestamp {
                    self.err(
                        format!("{path}/column"),
                        "not_a_timestamp_column",
                        "Time buckets apply to timestamp columns.",
                    );
                    return None;
                }
                let name = self.alias(
                    spec.alias,
                    format!("{}_{}", col.name, spec.bucket.as_str()),
                    &format!("{path}/as"),
                )?;
                let expr = bucket_expr(spec.bucket, &self.column_expr(&col));
                Some((name, "timestamp", expr))
            }
            _ => {
                self.err(
                    path,
                    "invalid_group_by",
                    "group_by takes column names or time buckets.",
                );
                None
            }
        }
    }

    fn alias(&mut self, alias: Option<String>, default: String, path: &str) -> Option<String> {
        match alias {
            None => Some(default),
            Some(a) if is_identifier(&a) => Some(a),
            Some(_) => {
                self.err(path, "invalid_name", "Output names are 1-63 lowercase letters, digits or underscores, starting with a letter.");
                None
            }
        }
    }

    fn aggregate(
        &mut self,
        a: &AggregateSpec,
        path: &str,
    ) -> Option<(String, &'static str, String)> {
        let col = match (&a.column, a.func) {
            (None, AggFn::Count) => None,
            (None, _) => {
                self.err(
                    format!("{path}/column"),
                    "missing_column",
                    "This aggregate needs a column.",
                );
                return None;
            }
            (Some(name), _) => Some(self.column(name, &format!("{path}/column"))?.clone()),
        };
        if a.p.is_some() && a.func != AggFn::Percentile {
            self.err(
                format!("{path}/p"),
                "invalid_aggregate",
                "p applies to percentile only.",
            );
            return None;
        }
        let needs_numeric = matches!(a.func, AggFn::Sum | AggFn::Avg | AggFn::Percentile);
        if let Some(c) = &col {
            if needs_numeric && !c.ty.is_numeric() {
                self.err(
                    format!("{path}/column"),
                    "not_a_numeric_column",
                    "sum, avg and percentile need an integer or number column.",
                );
                return None;
            }
            if matches!(a.func, AggFn::Min | AggFn::Max) && c.ty == ColumnType::Boolean {
                self.err(
                    format!("{path}/column"),
                    "invalid_aggregate",
                    "min and max do not apply to booleans.",
                );
                return None;
            }
        }
        let expr = col
            .as_ref()
            .map(|c| self.column_expr(c))
            .unwrap_or_default();
        let cname = col.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        let cty = col.as_ref().map(|c| c.ty.as_str()).unwrap_or("integer");
        let (default, ty, sql) = match a.func {
            AggFn::Count if col.is_none() => ("count".to_owned(), "integer", "count(*)".to_owned()),
            AggFn::Count => (
                format!("count_{cname}"),
                "integer",
                format!("count({expr})"),
            ),
            AggFn::CountDistinct => (
                format!("count_distinct_{cname}"),
                "integer",
                format!("count(DISTINCT {expr})"),
            ),
            AggFn::Sum => (format!("sum_{cname}"), cty, format!("sum({expr})")),
            AggFn::Avg => (
                format!("avg_{cname}"),
                "number",
                format!("avg({expr})::float8"),
            ),
            AggFn::Min => (format!("min_{cname}"), cty, format!("min({expr})")),
            AggFn::Max => (format!("max_{cname}"), cty, format!("max({expr})")),
            AggFn::Percentile => {
                let p = match a.p {
                    Some(p) if (0.0..=1.0).contains(&p) => p,
                    _ => {
                        self.err(
                            format!("{path}/p"),
                            "invalid_percentile",
                            "percentile needs p between 0 and 1.",
                        );
                        return None;
                    }
                };
                let pp = self.param(p, Type::FLOAT8);
                let label = format!("{}", (p * 1000.0).round() / 10.0).replace('.', "_");
                (
                    format!("p{label}_{cname}"),
                    "number",
                    format!("percentile_cont({pp}) WITHIN GROUP (ORDER BY {expr})"),
                )
            }
        };
        let name = self.alias(a.alias.clone(), default, &format!("{path}/as"))?;
        Some((name, ty, sql))
    }
}

/// A time bucket in UTC. Fixed-width buckets use `date_bin`, which is plain arithmetic (weeks
/// start on Monday, from a Monday origin); months need `date_trunc`, which uses the transaction's
/// time zone, always UTC under TenantTx.
fn bucket_expr(bucket: Bucket, ts: &str) -> String {
    const ORIGIN: &str = "timestamptz '2000-01-03 00:00:00+00'";
    match bucket {
        Bucket::Minute => format!("date_bin('1 minute', {ts}, {ORIGIN})"),
        Bucket::Hour => format!("date_bin('1 hour', {ts}, {ORIGIN})"),
        Bucket::Day => format!("date_bin('1 day', {ts}, {ORIGIN})"),
        Bucket::Week => format!("date_bin('7 days', {ts}, {ORIGIN})"),
        Bucket::Month => format!("date_trunc('month', {ts})"),
    }
}

fn shorten(s: &str) -> String {
    let short: String = s.chars().take(64).collect();
    format!("{short:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::schema::ColumnDef;
    use serde_json::json;
    use uuid::Uuid;

    fn ds() -> Dataset {
        let col = |name: &str, ty| ColumnDef {
            name: name.into(),
            ty,
            required: false,
        };
        Dataset {
            id: Uuid::nil(),
            name: "orders".into(),
            columns: vec![
                col("region", ColumnType::String),
                col("qty", ColumnType::Integer),
                col("amount", ColumnType::Number),
                col("paid", ColumnType::Boolean),
                col("at", ColumnType::Timestamp),
            ],
            text_columns: vec![],
            time_column: Some("at".into()),
            created_at: Utc::now(),
        }
    }

    fn compile_json(q: Value) -> Result<CompiledQuery, Vec<FieldError>> {
        let spec: QuerySpec = serde_json::from_value(q).unwrap_or_else(|e| panic!("{e}"));
        compile(&spec, &ds(), Uuid::nil(), QueryLimits::default())
    }

    fn reasons(q: Value) -> Vec<(String, &'static str)> {
        compile_json(q)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.path, e.reason))
            .collect()
    }

    #[test]
    fn values_are_parameters_and_never_sql() {
        let hostile = "x'); DROP TABLE app.records; --";
        let q = compile_json(json!({
            "dataset": "orders",
            "filter": {"or": [
                {"column": "region", "op": "eq", "value": hostile},
                {"not": {"column": "region", "op": "contains", "value": "%_'\""}},
                {"column": "qty", "op": "in", "value": [1, 2, 3]},
                {"column": "at", "op": "between", "value": ["2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"]}
            ]},
            "group_by": ["region", {"column": "at", "bucket": "day"}],
            "aggregates": [{"fn": "sum", "column": "amount", "as": "total"}, {"fn": "percentile", "column": "amount", "p": 0.95}],
            "order_by": [{"by": "total", "dir": "desc"}],
            "limit": 10
        }))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(!q.sql.contains("DROP"), "{}", q.sql);
        assert!(!q.sql.contains('%'), "{}", q.sql);
        // tenant, dataset, 1 eq, 1 contains, 1 in, 2 between, 1 percentile, the limit
        assert_eq!(q.params.len(), 9);
        let names: Vec<&str> = q.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["region", "at_day", "total", "p95_amount"]);
        assert!(
            q.sql.contains(
                "GROUP BY r.s1, date_bin('1 day', r.ts, timestamptz '2000-01-03 00:00:00+00')"
            ),
            "{}",
            q.sql
        );
        assert!(
            q.sql.contains("ORDER BY sum(r.n1) DESC NULLS LAST"),
            "{}",
            q.sql
        );
        assert_eq!(q.limit, 10);
    }

    #[test]
    fn unknown_columns_operators_and_type_errors_are_named_by_path() {
        assert_eq!(
            reasons(json!({"dataset": "orders", "filter": {"and": [
                {"column": "region\"; --", "op": "eq", "value": "x"},
                {"column": "qty", "op": "eq", "value": "three"},
                {"column": "paid", "op": "lt", "value": true},
                {"column": "amount", "op": "like", "value": 1},
                {"column": "at", "op": "gt", "value": "tomorrow"},
                {"column": "qty", "op": "in", "value": []},
                {"column": "qty", "op": "eq"},
                {"column": "qty", "op": "eq", "value": 1, "sql": "1=1"}
            ]}})),
            vec![
                ("/filter/and/0/column".into(), "unknown_column"),
                ("/filter/and/1/value".into(), "type_mismatch"),
                ("/filter/and/2/op".into(), "invalid_operator"),
                ("/filter/and/3/op".into(), "invalid_operator"),
                ("/filter/and/4/value".into(), "type_mismatch"),
                ("/filter/and/5/value".into(), "invalid_value"),
                ("/filter/and/6/value".into(), "missing_value"),
                ("/filter/and/7/sql".into(), "invalid_filter"),
            ]
        );
        assert_eq!(
            reasons(
                json!({"dataset": "orders", "group_by": [{"column": "region", "bucket": "day"}],
                "aggregates": [{"fn": "sum", "column": "region"}, {"fn": "percentile", "column": "amount", "p": 2}],
                "order_by": [{"by": "nope"}], "limit": 1000000})
            ),
            vec![
                ("/limit".into(), "limit_too_large"),
                ("/group_by/0/column".into(), "not_a_timestamp_column"),
                ("/aggregates/0/column".into(), "not_a_numeric_column"),
                ("/aggregates/1/p".into(), "invalid_percentile"),
                ("/order_by/0/by".into(), "unknown_output"),
            ]
        );
    }

    #[test]
    fn deep_or_huge_filters_are_refused() {
        let mut f = json!({"column": "qty", "op": "eq", "value": 1});
        for _ in 0..12 {
            f = json!({"not": f});
        }
        assert!(
            reasons(json!({"dataset": "orders", "filter": f}))
                .iter()
                .any(|(_, r)| *r == "filter_too_deep")
        );
        let many: Vec<Value> = (0..101)
            .map(|i| json!({"column": "qty", "op": "eq", "value": i}))
            .collect();
        assert!(
            reasons(json!({"dataset": "orders", "filter": {"or": many}}))
                .iter()
                .any(|(_, r)| *r == "too_many_conditions")
        );
    }

    #[test]
    fn row_queries_select_declared_columns() {
        let q = compile_json(json!({"dataset": "orders", "select": ["region", "at"], "order_by": [{"by": "at", "dir": "desc"}]}))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let names: Vec<&str> = q.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["key", "version", "region", "at"]);
        assert!(
            q.sql
                .ends_with("ORDER BY r.ts DESC NULLS LAST, r.key ASC LIMIT $3"),
            "{}",
            q.sql
        );
        assert_eq!(q.limit, 100);
    }
}

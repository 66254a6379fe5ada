//! A [`QuerySpec`] checked against its dataset's schema and compiled to one statement.
//!
//! Column names come only from the schema (checked identifiers, mapped to their typed storage
//! columns by [`Dataset::column_expr`]); every value is bound through [`Params`]. Problems are
//! collected, not stopped at: the caller gets every one, each named by path.

use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;

use super::spec::{
    AggFn, AggregateSpec, Bucket, Condition, Direction, Filter, GroupKey, Literal, Op, Operand,
    QuerySpec, TimeRangeSpec,
};
use super::{OutputColumn, QueryLimits};
use crate::analytics::datasets::Dataset;
use crate::analytics::rollup::{Cube, Layout};
use crate::analytics::schema::{ColumnDef, ColumnType};
use crate::analytics::{FieldError, decimal, is_identifier};
use crate::db::Params;

const MAX_FILTER_DEPTH: usize = 8;
const MAX_CONDITIONS: usize = 100;
const MAX_IN_VALUES: usize = 1_000;
const MAX_GROUP_BY: usize = 5;
const MAX_AGGREGATES: usize = 20;

/// A filter compiled on its own: a condition on `r` (a row of `app.records` of the dataset), for a
/// caller that embeds it in a statement of its own (retrieval filters by column values this way).
#[derive(Debug)]
pub struct CompiledFilter {
    /// The condition.
    pub sql: String,
    /// Its parameters, `$1` first: the statement embedding the condition binds its own after
    /// these, into a clone.
    pub params: Params,
}

/// Compiles a filter against `ds`. Errors are named by path under `path`.
pub fn compile_filter(
    filter: &Filter,
    ds: &Dataset,
    path: &str,
) -> Result<CompiledFilter, Vec<FieldError>> {
    let mut c = Compiler::new(ds);
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
#[derive(Debug)]
pub struct CompiledQuery {
    /// The SQL: one `jsonb` array per row.
    pub sql: String,
    /// Its parameters.
    pub params: Params,
    /// What each position of a row is.
    pub columns: Vec<OutputColumn>,
    /// Rows requested (one more is fetched to tell whether there were more).
    pub limit: usize,
}

/// Compiles a query against its dataset. The statement names the tenant and the dataset itself,
/// on top of RLS. A query the dataset's rollups answer exactly reads them
/// ([`super::rollup`](mod@super::rollup)); any other reads the records.
pub fn compile(
    spec: &QuerySpec,
    ds: &Dataset,
    tenant: uuid::Uuid,
    limits: QueryLimits,
) -> Result<CompiledQuery, Vec<FieldError>> {
    let raw = compile_raw(spec, ds, tenant, limits)?;
    Ok(Layout::of(ds)
        .filter(|_| ds.rollups_ready)
        .and_then(|layout| super::rollup::compile(spec, ds, &layout, tenant, &raw))
        .unwrap_or(raw))
}

/// Compiles a query to read the records, whatever rollups the dataset has (the raw path, which
/// the rollups' results are tested and measured against).
pub fn compile_raw(
    spec: &QuerySpec,
    ds: &Dataset,
    tenant: uuid::Uuid,
    limits: QueryLimits,
) -> Result<CompiledQuery, Vec<FieldError>> {
    let mut c = Compiler::new(ds);
    let mut wheres = vec![
        format!("r.tenant_id = {}", c.param(tenant, Type::UUID)),
        format!("r.dataset_id = {}", c.param(ds.id, Type::UUID)),
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
        for (i, a) in aggregates(spec).iter().enumerate() {
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

pub(super) struct Compiler<'d> {
    ds: &'d Dataset,
    pub(super) params: Params,
    pub(super) errors: Vec<FieldError>,
    conditions: usize,
    /// Set while compiling a filter for rollup rows: dimensions read their rollup columns.
    pub(super) rollup: Option<&'d Cube<'d>>,
}

/// A typed value from the client's JSON, ready to be a parameter.
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    /// Exact decimal text, bound as text and cast to numeric.
    Decimal(String),
    Bool(bool),
    Time(DateTime<Utc>),
}

impl<'d> Compiler<'d> {
    pub(super) fn new(ds: &'d Dataset) -> Self {
        Self {
            ds,
            params: Params::new(),
            errors: Vec::new(),
            conditions: 0,
            rollup: None,
        }
    }

    fn err(&mut self, path: impl Into<String>, reason: &'static str, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, reason, message));
    }

    pub(super) fn param(
        &mut self,
        value: impl tokio_postgres::types::ToSql + Sync + Send + 'static,
        ty: Type,
    ) -> String {
        self.params.bind(value, ty)
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
        if let Some(cube) = self.rollup
            && let Some((k, dim)) = cube.dim(&c.name)
        {
            return cube.dim_expr(k, dim);
        }
        self.ds.column_expr(c)
    }

    fn scalar(&mut self, ty: ColumnType, v: &Literal, path: &str) -> Option<Scalar> {
        let s = match (ty, v) {
            (ColumnType::String, Literal::Text(s)) if !s.contains('\0') => {
                Some(Scalar::Text(s.clone()))
            }
            (ColumnType::Integer, Literal::Number(n)) => n.as_i64().map(Scalar::Int),
            (ColumnType::Number, Literal::Number(n)) => n.as_f64().map(Scalar::Float),
            (ColumnType::Decimal, Literal::Number(n)) => {
                decimal::literal(&serde_json::Value::Number(n.clone())).map(Scalar::Decimal)
            }
            (ColumnType::Decimal, Literal::Text(s)) => {
                decimal::literal(&serde_json::Value::String(s.clone())).map(Scalar::Decimal)
            }
            (ColumnType::Boolean, Literal::Bool(b)) => Some(Scalar::Bool(*b)),
            (ColumnType::Timestamp, Literal::Text(s)) => DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| Scalar::Time(t.with_timezone(&Utc))),
            _ => None,
        };
        if s.is_none() {
            let hint = match ty {
                ColumnType::Timestamp => " (RFC 3339)",
                ColumnType::Decimal => " (a number, or a string such as \"12.50\")",
                _ => "",
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
            Scalar::Decimal(v) => format!("{}::numeric", self.param(v, Type::TEXT)),
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
            ColumnType::Decimal => format!(
                "{}::numeric[]",
                self.param(collect!(Decimal), Type::TEXT_ARRAY)
            ),
            ColumnType::Boolean => self.param(collect!(Bool), Type::BOOL_ARRAY),
            ColumnType::Timestamp => self.param(collect!(Time), Type::TIMESTAMPTZ_ARRAY),
        }
    }

    /// Starts counting conditions again (for a second compilation of the same filter).
    pub(super) fn reset_conditions(&mut self) {
        self.conditions = 0;
    }

    pub(super) fn filter(&mut self, f: &Filter, path: &str, depth: usize) -> Option<String> {
        if depth > MAX_FILTER_DEPTH {
            self.err(
                path,
                "filter_too_deep",
                format!("Filters nest at most {MAX_FILTER_DEPTH} levels."),
            );
            return None;
        }
        let (items, key, joiner) = match f {
            Filter::And(items) => (items, "and", " AND "),
            Filter::Or(items) => (items, "or", " OR "),
            Filter::Not(inner) => {
                return self
                    .filter(inner, &format!("{path}/not"), depth + 1)
                    .map(|s| format!("(NOT {s})"));
            }
            Filter::Condition(c) => return self.condition(c, path),
        };
        // Every branch is compiled, so every problem is reported.
        let parts: Vec<Option<String>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.filter(item, &format!("{path}/{key}/{i}"), depth + 1))
            .collect();
        let parts: Option<Vec<String>> = parts.into_iter().collect();
        parts.map(|p| format!("({})", p.join(joiner)))
    }

    fn condition(&mut self, cond: &Condition, path: &str) -> Option<String> {
        self.conditions += 1;
        if self.conditions == MAX_CONDITIONS + 1 {
            self.err(
                path,
                "too_many_conditions",
                format!("A filter has at most {MAX_CONDITIONS} conditions."),
            );
        }
        let col = self
            .column(&cond.column, &format!("{path}/column"))?
            .clone();
        let expr = self.column_expr(&col);
        let op = cond.op;
        let (vpath, oppath) = (format!("{path}/value"), format!("{path}/op"));
        let operand = match (op, &cond.value) {
            (Op::IsNull, _) => None,
            (_, Some(v)) => Some(v),
            (_, None) => {
                self.err(
                    &vpath,
                    "missing_value",
                    format!("Operator {} needs a value.", op.as_str()),
                );
                return None;
            }
        };
        let operator_refused = match op {
            Op::Lt | Op::Lte | Op::Gt | Op::Gte if col.ty == ColumnType::Boolean => {
                Some("Booleans compare with eq and ne only.")
            }
            Op::Between if col.ty == ColumnType::Boolean => {
                Some("between does not apply to booleans.")
            }
            Op::Contains if col.ty != ColumnType::String => {
                Some("contains applies to string columns.")
            }
            _ => None,
        };
        if let Some(message) = operator_refused {
            self.err(oppath, "invalid_operator", message);
            return None;
        }
        match (op, operand) {
            (Op::Eq | Op::Ne | Op::Lt | Op::Lte | Op::Gt | Op::Gte, Some(Operand::Scalar(v))) => {
                let s = self.scalar(col.ty, v, &vpath)?;
                let p = self.scalar_param(s);
                let sql_op = match op {
                    Op::Eq => "=",
                    Op::Ne => "<>",
                    Op::Lt => "<",
                    Op::Lte => "<=",
                    Op::Gt => ">",
                    _ => ">=",
                };
                Some(format!("{expr} {sql_op} {p}"))
            }
            (Op::Contains, Some(Operand::Scalar(v))) => {
                let s = self.scalar(col.ty, v, &vpath)?;
                let p = self.scalar_param(s);
                // strpos, not LIKE: the client's % and _ are plain characters.
                Some(format!("strpos({expr}, {p}) > 0"))
            }
            (Op::In, Some(Operand::List(items))) => {
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
            (Op::Between, Some(Operand::List(items))) if items.len() == 2 => {
                let lo = self.scalar(col.ty, &items[0], &format!("{vpath}/0"));
                let hi = self.scalar(col.ty, &items[1], &format!("{vpath}/1"));
                let (lo, hi) = (lo?, hi?);
                let (lo, hi) = (self.scalar_param(lo), self.scalar_param(hi));
                Some(format!("{expr} BETWEEN {lo} AND {hi}"))
            }
            (Op::IsNull, _) => {
                let want_null = match &cond.value {
                    None => true,
                    Some(Operand::Scalar(Literal::Bool(b))) => *b,
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
            (Op::In, _) => {
                self.err(&vpath, "type_mismatch", "in takes an array of values.");
                None
            }
            (Op::Between, _) => {
                self.err(&vpath, "invalid_value", "between takes [low, high].");
                None
            }
            (_, _) => {
                self.err(
                    &vpath,
                    "type_mismatch",
                    format!("{} takes one value, not an array.", op.as_str()),
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

    fn group_key(&mut self, g: &GroupKey, path: &str) -> Option<(String, &'static str, String)> {
        match g {
            GroupKey::Column(name) => {
                let col = self.column(name, path)?.clone();
                let expr = self.column_expr(&col);
                Some((col.name, col.ty.as_str(), expr))
            }
            GroupKey::Bucket(spec) => {
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
                    spec.alias.clone(),
                    format!("{}_{}", col.name, spec.bucket.as_str()),
                    &format!("{path}/as"),
                )?;
                let expr = bucket_expr(spec.bucket, &self.column_expr(&col));
                Some((name, "timestamp", expr))
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
                    "sum, avg and percentile need an integer, number or decimal column.",
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
            // A decimal sum without trailing zeros: the same number however it was summed (by
            // the records or by rollups, whose deltas may carry a wider scale).
            AggFn::Sum if cty == "decimal" => (
                format!("sum_{cname}"),
                cty,
                format!("trim_scale(sum({expr}))"),
            ),
            AggFn::Sum => (format!("sum_{cname}"), cty, format!("sum({expr})")),
            // A decimal's average is exact to its scale (numeric, rounded half away from zero).
            AggFn::Avg => match col.as_ref().and_then(|c| c.scale) {
                // The sum over the count at a fixed scale of 20 (wider than any stored value's),
                // so the division's precision does not depend on how the sum was reached (the
                // records, or rollup deltas that once held other values), then rounded.
                Some(scale) if cty == "decimal" => (
                    format!("avg_{cname}"),
                    "decimal",
                    format!("round((sum({expr}) + {WIDE_ZERO}) / count({expr}), {scale})"),
                ),
                _ => (
                    format!("avg_{cname}"),
                    "number",
                    format!("avg({expr})::float8"),
                ),
            },
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
                    format!("percentile_cont({pp}) WITHIN GROUP (ORDER BY ({expr})::float8)"),
                )
            }
        };
        let name = self.alias(a.alias.clone(), default, &format!("{path}/as"))?;
        Some((name, ty, sql))
    }
}

/// Zero at scale 20: added to a decimal sum before it is divided, so the quotient's precision
/// comes from this scale alone.
pub(super) const WIDE_ZERO: &str = "0.00000000000000000000";

/// A query's aggregates: as asked, or `count` alone when it asks for none.
pub(super) fn aggregates(spec: &QuerySpec) -> std::borrow::Cow<'_, [AggregateSpec]> {
    if spec.aggregates.is_empty() {
        std::borrow::Cow::Owned(vec![AggregateSpec {
            func: AggFn::Count,
            column: None,
            p: None,
            alias: None,
        }])
    } else {
        std::borrow::Cow::Borrowed(&spec.aggregates)
    }
}

/// A time bucket in UTC. Fixed-width buckets use `date_bin`, which is plain arithmetic (weeks
/// start on Monday, from a Monday origin); months need `date_trunc`, which uses the transaction's
/// time zone, always UTC under TenantTx.
pub(super) fn bucket_expr(bucket: Bucket, ts: &str) -> String {
    const ORIGIN: &str = crate::analytics::rollup::ORIGIN;
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
    use serde_json::{Value, json};
    use uuid::Uuid;

    fn ds() -> Dataset {
        let col = |name: &str, ty| ColumnDef {
            name: name.into(),
            ty,
            required: false,
            scale: (ty == ColumnType::Decimal).then_some(2),
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
                col("price", ColumnType::Decimal),
            ],
            text_columns: vec![],
            time_column: Some("at".into()),
            rollups: vec![],
            rollups_ready: true,
            created_at: Utc::now(),
            row_version: String::new(),
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
    fn decimals_compare_as_numeric_and_average_to_their_scale() {
        let q = compile_json(json!({
            "dataset": "orders",
            "filter": {"and": [
                {"column": "price", "op": "gte", "value": "10.005"},
                {"column": "price", "op": "in", "value": [1.5, "2.25"]}
            ]},
            "aggregates": [
                {"fn": "sum", "column": "price"},
                {"fn": "avg", "column": "price"},
                {"fn": "avg", "column": "amount"},
                {"fn": "percentile", "column": "price", "p": 0.5}
            ]
        }))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(q.sql.contains("r.d1 >= $3::numeric"), "{}", q.sql);
        assert!(q.sql.contains("r.d1 = ANY($4::numeric[])"), "{}", q.sql);
        assert!(
            q.sql
                .contains("round((sum(r.d1) + 0.00000000000000000000) / count(r.d1), 2)"),
            "{}",
            q.sql
        );
        assert!(q.sql.contains("avg(r.n1)::float8"), "{}", q.sql);
        let types: Vec<&str> = q.columns.iter().map(|c| c.ty).collect();
        assert_eq!(types, ["decimal", "decimal", "number", "number"]);
        assert_eq!(
            reasons(
                json!({"dataset": "orders", "filter": {"column": "price", "op": "eq", "value": "1e3"}})
            ),
            vec![("/filter/value".to_owned(), "type_mismatch")]
        );
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
    fn every_problem_against_the_schema_is_named_by_path() {
        assert_eq!(
            reasons(json!({"dataset": "orders", "filter": {"and": [
                {"column": "region\"; --", "op": "eq", "value": "x"},
                {"column": "qty", "op": "eq", "value": "three"},
                {"column": "paid", "op": "lt", "value": true},
                {"column": "amount", "op": "contains", "value": 1},
                {"column": "at", "op": "gt", "value": "tomorrow"},
                {"column": "qty", "op": "in", "value": []},
                {"column": "qty", "op": "eq"},
                {"column": "qty", "op": "in", "value": 3},
                {"column": "qty", "op": "eq", "value": [3]},
                {"column": "qty", "op": "between", "value": [1]},
                {"column": "qty", "op": "is_null", "value": "yes"},
                {"column": "qty", "op": "eq", "value": 1.5},
                {"column": "region", "op": "eq", "value": "nul\u{0}"}
            ]}})),
            vec![
                ("/filter/and/0/column".into(), "unknown_column"),
                ("/filter/and/1/value".into(), "type_mismatch"),
                ("/filter/and/2/op".into(), "invalid_operator"),
                ("/filter/and/3/op".into(), "invalid_operator"),
                ("/filter/and/4/value".into(), "type_mismatch"),
                ("/filter/and/5/value".into(), "invalid_value"),
                ("/filter/and/6/value".into(), "missing_value"),
                ("/filter/and/7/value".into(), "type_mismatch"),
                ("/filter/and/8/value".into(), "type_mismatch"),
                ("/filter/and/9/value".into(), "invalid_value"),
                ("/filter/and/10/value".into(), "type_mismatch"),
                ("/filter/and/11/value".into(), "type_mismatch"),
                ("/filter/and/12/value".into(), "type_mismatch"),
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

    /// The parser refuses a malformed query at its first problem, naming the member.
    fn parse_error(q: Value) -> (String, String) {
        match crate::http::parse_json::<QuerySpec>(q.to_string().as_bytes()) {
            Ok(spec) => panic!("parsed: {spec:?}"),
            Err(e) => (e.path, e.message),
        }
    }

    #[test]
    fn a_malformed_query_is_refused_by_the_parser_at_the_member() {
        let cond = |extra: Value| {
            let mut c = json!({"column": "qty", "op": "eq", "value": 1});
            for (k, v) in extra.as_object().into_iter().flatten() {
                c[k] = v.clone();
            }
            json!({"dataset": "orders", "filter": {"or": [{"column": "qty", "op": "eq", "value": 1}, c]}})
        };
        for (query, path, says) in [
            (
                cond(json!({"op": "like"})),
                "/filter/or/1/op",
                "unknown variant `like`",
            ),
            (
                cond(json!({"sql": "1=1"})),
                "/filter/or/1/sql",
                "unknown field `sql`",
            ),
            // (json! sorts members: `and` is read first, then `column` beside it is refused)
            (
                cond(json!({"and": [{"column": "qty", "op": "is_null"}]})),
                "/filter/or/1/column",
                "stand alone",
            ),
            (
                json!({"dataset": "orders", "filter": {"column": "qty", "not": {"column": "qty", "op": "is_null"}}}),
                "/filter/not",
                "stand alone",
            ),
            (
                json!({"dataset": "orders", "filter": {"column": "qty", "column ": 1}}),
                "/filter/column ",
                "unknown field",
            ),
            (
                cond(json!({"value": {"a": 1}})),
                "/filter/or/1/value",
                "string, number or boolean",
            ),
            (
                cond(json!({"value": [[1]]})),
                "/filter/or/1/value",
                "string, number or boolean",
            ),
            (
                cond(json!({"column": 7})),
                "/filter/or/1/column",
                "expected a string",
            ),
            (
                json!({"dataset": "orders", "filter": {"and": [{"column": "qty"}]}}),
                "/filter/and/0",
                "missing field `op`",
            ),
            (
                json!({"dataset": "orders", "filter": {"and": []}}),
                "/filter/and",
                "non-empty array",
            ),
            (
                json!({"dataset": "orders", "filter": {"not": {"column": "qty", "op": "eq"}, "or": []}}),
                "/filter/or",
                "stand alone",
            ),
            (
                json!({"dataset": "orders", "filter": "1=1"}),
                "/filter",
                "a filter",
            ),
            (
                json!({"dataset": "orders", "group_by": [{"column": "at", "bucket": "year"}]}),
                "/group_by/0",
                "a time bucket",
            ),
            (
                json!({"dataset": "orders", "aggregates": [{"fn": "median"}]}),
                "/aggregates/0/fn",
                "unknown variant `median`",
            ),
            (
                json!({"dataset": "orders", "where": "1=1"}),
                "/where",
                "unknown field `where`",
            ),
            (
                json!({"dataset": "orders", "limit": "ten"}),
                "/limit",
                "expected u64",
            ),
        ] {
            let (got_path, message) = parse_error(query.clone());
            assert_eq!(got_path, path, "{query}: {message}");
            assert!(message.contains(says), "{query}: {message}");
        }
        // A repeated member is refused rather than one copy silently winning.
        let twice = r#"{"dataset": "orders", "filter": {"column": "qty", "op": "eq", "op": "ne", "value": 1}}"#;
        let e = crate::http::parse_json::<QuerySpec>(twice.as_bytes()).err();
        assert_eq!(
            e.as_ref().map(|e| e.path.as_str()),
            Some("/filter/op"),
            "{e:?}"
        );
        let trailing = r#"{"dataset": "orders"} {"dataset": "orders"}"#;
        let e = crate::http::parse_json::<QuerySpec>(trailing.as_bytes()).err();
        assert!(e.is_some_and(|e| e.path.is_empty() && e.message.contains("trailing")));
        // A member name in an error is cut short: a 1 MB key does not come back in the problem.
        let long = "k".repeat(1 << 20);
        let (_, message) = parse_error(cond(json!({ long: 1 })));
        assert!(message.len() < 400, "{}", message.len());
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

    /// Generated filters, well and badly formed: the parser never panics and what it accepts
    /// round-trips; what the compiler accepts binds exactly the placeholders it uses, and no
    /// client string reaches the SQL text.
    mod generated {
        use super::*;
        use proptest::prelude::*;

        const MARK: &str = "ZqX'\"; --";

        fn value() -> impl Strategy<Value = Value> {
            let scalar = prop_oneof![
                Just(json!(null)),
                any::<bool>().prop_map(Value::from),
                (-5_i64..5).prop_map(Value::from),
                (-5.0_f64..5.0).prop_map(Value::from),
                Just(json!("2026-01-01T00:00:00Z")),
                "[a-z%_ ]{0,6}".prop_map(|s| Value::from(format!("{MARK}{s}"))),
            ];
            prop_oneof![
                4 => scalar.clone(),
                2 => prop::collection::vec(scalar, 0..4).prop_map(Value::from),
                1 => Just(json!({"a": 1})),
            ]
        }

        fn condition() -> impl Strategy<Value = Value> {
            let column = prop::sample::select(vec![
                "region", "qty", "amount", "paid", "at", "nope", "x'; --",
            ]);
            let op = prop::sample::select(vec![
                "eq", "ne", "lt", "lte", "gt", "gte", "in", "between", "contains", "is_null",
                "like",
            ]);
            (
                prop::option::weighted(0.95, column),
                prop::option::weighted(0.95, op),
                prop::option::weighted(0.8, value()),
                prop::option::weighted(0.05, Just("sql")),
            )
                .prop_map(|(c, o, v, extra)| {
                    let mut m = serde_json::Map::new();
                    if let Some(c) = c {
                        m.insert("column".into(), c.into());
                    }
                    if let Some(o) = o {
                        m.insert("op".into(), o.into());
                    }
                    if let Some(v) = v {
                        m.insert("value".into(), v);
                    }
                    if let Some(k) = extra {
                        m.insert(k.into(), json!("1=1"));
                    }
                    Value::Object(m)
                })
        }

        fn filter() -> impl Strategy<Value = Value> {
            condition().prop_recursive(5, 40, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(|v| json!({"and": v})),
                    prop::collection::vec(inner.clone(), 0..4).prop_map(|v| json!({"or": v})),
                    inner.clone().prop_map(|f| json!({"not": f})),
                    (inner, condition()).prop_map(|(f, c)| json!({"and": [f], "column": c})),
                ]
            })
        }

        /// The `$n` placeholders in `sql`, in order of first appearance, deduplicated.
        fn placeholders(sql: &str) -> Vec<usize> {
            let mut out = Vec::new();
            let bytes = sql.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'$' {
                    let digits: String = sql[i + 1..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    if let Ok(n) = digits.parse::<usize>()
                        && !out.contains(&n)
                    {
                        out.push(n);
                    }
                    i += digits.len();
                }
                i += 1;
            }
            out.sort_unstable();
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn filters_parse_compile_and_bind_soundly(f in filter()) {
                let text = f.to_string();
                let Ok(parsed) = crate::http::parse_json::<Filter>(text.as_bytes()) else {
                    return Ok(());
                };
                let again = serde_json::to_string(&parsed).unwrap_or_default();
                prop_assert_eq!(
                    crate::http::parse_json::<Filter>(again.as_bytes()).ok(),
                    Some(parsed.clone())
                );
                match compile_filter(&parsed, &ds(), "/f") {
                    Ok(c) => {
                        prop_assert!(!c.sql.contains("ZqX"), "{}", c.sql);
                        prop_assert_eq!(
                            placeholders(&c.sql),
                            (1..=c.params.len()).collect::<Vec<_>>()
                        );
                        prop_assert_eq!(c.sql.matches('(').count(), c.sql.matches(')').count());
                    }
                    Err(errors) => {
                        prop_assert!(!errors.is_empty());
                        prop_assert!(errors.iter().all(|e| e.path.starts_with("/f")));
                    }
                }
                // Inside a whole query the filter's placeholders follow the tenant's and the
                // dataset's, and the limit's follow the filter's.
                let spec = QuerySpec {
                    dataset: "orders".into(),
                    filter: Some(parsed),
                    group_by: vec![],
                    aggregates: vec![],
                    select: vec![],
                    order_by: vec![],
                    limit: None,
                    time_range: None,
                };
                if let Ok(q) = compile(&spec, &ds(), Uuid::nil(), QueryLimits::default()) {
                    prop_assert!(q.sql.starts_with("SELECT jsonb_build_array("));
                    prop_assert!(q.sql.contains("WHERE r.tenant_id = $1 AND r.dataset_id = $2"));
                    prop_assert_eq!(
                        placeholders(&q.sql),
                        (1..=q.params.len()).collect::<Vec<_>>()
                    );
                    let last = format!("LIMIT ${}", q.params.len());
                    prop_assert!(q.sql.ends_with(&last), "{}", q.sql);
                }
            }
        }
    }
}

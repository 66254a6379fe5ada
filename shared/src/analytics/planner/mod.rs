//! Questions about figures, planned as queries in **our** query language ([`QuerySpec`]), never
//! as SQL: whatever a planner returns is validated and compiled by the same code as
//! `POST /v1/query`, and a plan that does not fit the dataset is refused, not run.
//!
//! - [`QueryPlanner`]: the port. It gets the question, the request time and the tenant's dataset
//!   profiles ([`profile`]: names, types, the time column and, for low-cardinality string
//!   columns, their most common values, read in the tenant's transaction under RLS).
//! - [`local::LocalPlanner`] (`local-planner-v1`): deterministic English phrasings, for the
//!   embedded mode and tests. It refuses what it cannot map rather than guessing.
//! - `bedrock::BedrockPlanner` (feature `bedrock`): Converse with one tool whose input schema is
//!   the query language, generated from the Rust types ([`query_language_schema`]).
//! - [`describe`]: the figures of a result as a sentence, and [`unsupported_figures`]: the
//!   numbers of an answer that its result does not hold.

#[cfg(feature = "bedrock")]
pub mod bedrock;
pub mod local;

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::Type;

use super::datasets::Dataset;
use super::query::{
    AggFn, AggregateSpec, Bucket, Direction, Filter, GroupKey, Literal, Op, Operand, QueryResult,
    QuerySpec,
};
use super::schema::ColumnType;
use crate::db::{DbError, TenantTx};

/// String columns with at most this many distinct values (in the sampled rows) have their values
/// shown to planners.
pub const MAX_COMMON_VALUES: usize = 30;
/// Rows sampled per column for its common values.
const PROFILE_SAMPLE_ROWS: i64 = 5_000;

/// A column as a planner sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ColumnProfile {
    /// Its name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// For a low-cardinality string column: its values, most common first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A dataset as a planner sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetProfile {
    /// Its name.
    pub name: String,
    /// Its columns.
    pub columns: Vec<ColumnProfile>,
    /// The default time column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_column: Option<String>,
}

impl DatasetProfile {
    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&ColumnProfile> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// What a planner is asked.
#[derive(Clone, Copy, Debug)]
pub struct PlanRequest<'a> {
    /// The question.
    pub question: &'a str,
    /// The request time: "last month" is relative to it, in UTC.
    pub now: DateTime<Utc>,
    /// The datasets the question may be about.
    pub datasets: &'a [DatasetProfile],
}

/// What a planner made of a question.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanOutcome {
    /// Queries that answer it (empty: not a question about figures, or refused).
    pub plans: Vec<QuerySpec>,
    /// Why a question about figures cannot be answered from the data (set with no plans).
    pub refusal: Option<String>,
    /// Candidate plans refused before running (a model's tool input that is no query).
    pub rejected: usize,
}

/// How every refusal begins.
pub const CANT: &str = "I can't answer that from your data";

impl PlanOutcome {
    /// A refusal of a question about figures, with its reason (a phrase, no full stop).
    pub fn refused(reason: impl Into<String>) -> Self {
        Self {
            plans: Vec::new(),
            refusal: Some(format!("{CANT}: {}.", reason.into())),
            rejected: 0,
        }
    }
}

/// Why no plan could be had.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Worth retrying later.
    #[error("planning temporarily unavailable: {0}")]
    Retryable(String),
    /// Will not succeed as asked.
    #[error("planning failed: {0}")]
    Fatal(String),
}

/// A boxed planning future.
pub type PlanFuture<'a> = Pin<Box<dyn Future<Output = Result<PlanOutcome, PlanError>> + Send + 'a>>;

/// Plans queries for a question about figures.
pub trait QueryPlanner: Send + Sync + std::fmt::Debug {
    /// The planner's name, reported in responses.
    fn model(&self) -> &str;
    /// Zero or more plans for `req.question`, in the query language.
    fn plan<'a>(&'a self, req: &'a PlanRequest<'a>) -> PlanFuture<'a>;
}

/// The query language as JSON Schema, generated from [`QuerySpec`]'s types (so a model's tool
/// and the parser cannot drift apart).
pub fn query_language_schema() -> Value {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<QuerySpec>();
    schema.to_value()
}

/// Profiles `datasets` for a planner, in the tenant's transaction: one statement per string
/// column that is not a retrieval text column, over at most [`PROFILE_SAMPLE_ROWS`] rows.
pub async fn profile(
    tx: &mut TenantTx,
    datasets: &[Dataset],
) -> Result<Vec<DatasetProfile>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let mut out = Vec::with_capacity(datasets.len());
    for ds in datasets {
        let mut columns = Vec::with_capacity(ds.columns.len());
        for c in &ds.columns {
            let mut values = Vec::new();
            if c.ty == ColumnType::String && !ds.text_columns.contains(&c.name) {
                let expr = ds.column_expr(c);
                let fetch = (MAX_COMMON_VALUES + 1) as i64;
                let rows = tx
                    .query(
                        &format!(
                            "SELECT v FROM (SELECT {expr} AS v FROM app.records r \
                             WHERE r.tenant_id = $1 AND r.dataset_id = $2 LIMIT $3) s \
                             WHERE v IS NOT NULL GROUP BY v ORDER BY count(*) DESC, v LIMIT $4"
                        ),
                        &[
                            (&tenant, Type::UUID),
                            (&ds.id, Type::UUID),
                            (&PROFILE_SAMPLE_ROWS, Type::INT8),
                            (&fetch, Type::INT8),
                        ],
                    )
                    .await?;
                if rows.len() <= MAX_COMMON_VALUES {
                    values = rows
                        .iter()
                        .map(|r| r.get::<_, String>(0))
                        .filter(|v| v.chars().count() <= 100)
                        .collect();
                }
            }
            columns.push(ColumnProfile {
                name: c.name.clone(),
                ty: c.ty,
                values,
            });
        }
        out.push(DatasetProfile {
            name: ds.name.clone(),
            columns,
            time_column: ds.time_column.clone(),
        });
    }
    Ok(out)
}

/// A number as answers write it: integers as they are, others rounded to two decimals with
/// trailing zeros cut.
pub fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        return format!("{n:.0}");
    }
    let s = format!("{n:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "none".to_owned(),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), format_number),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn aggregate_phrase(a: &AggregateSpec) -> String {
    let col = a.column.as_deref().unwrap_or("records");
    match a.func {
        AggFn::Count if a.column.is_none() => "the number of records".to_owned(),
        AggFn::Count => format!("the number of {col} values"),
        AggFn::Sum => format!("the total {col}"),
        AggFn::Avg => format!("the average {col}"),
        AggFn::Min => format!("the lowest {col}"),
        AggFn::Max => format!("the highest {col}"),
        AggFn::CountDistinct => format!("the number of distinct {col} values"),
        AggFn::Percentile => match a.p {
            Some(p) if (p - 0.5).abs() < f64::EPSILON => format!("the median {col}"),
            Some(p) => format!("the {}th percentile of {col}", format_number(p * 100.0)),
            None => format!("a percentile of {col}"),
        },
    }
}

fn literal(l: &Literal) -> String {
    match l {
        Literal::Bool(b) => b.to_string(),
        Literal::Number(n) => n.to_string(),
        Literal::Text(s) => s.clone(),
    }
}

fn filter_phrase(f: &Filter) -> String {
    match f {
        Filter::And(items) => items
            .iter()
            .map(filter_phrase)
            .collect::<Vec<_>>()
            .join(" and "),
        Filter::Or(items) => format!(
            "({})",
            items
                .iter()
                .map(filter_phrase)
                .collect::<Vec<_>>()
                .join(" or ")
        ),
        Filter::Not(inner) => format!("not {}", filter_phrase(inner)),
        Filter::Condition(c) => {
            let value = match &c.value {
                Some(Operand::Scalar(l)) => literal(l),
                Some(Operand::List(ls)) => ls.iter().map(literal).collect::<Vec<_>>().join(", "),
                None => String::new(),
            };
            let op = match c.op {
                Op::Eq => "is",
                Op::Ne => "is not",
                Op::Lt => "is below",
                Op::Lte => "is at most",
                Op::Gt => "is above",
                Op::Gte => "is at least",
                Op::In => "is one of",
                Op::Between => "is between",
                Op::Contains => "contains",
                Op::IsNull => "is empty",
            };
            format!("{} {op} {value}", c.column).trim_end().to_owned()
        }
    }
}

/// Where the figures come from, in words: the dataset, its filter and time range.
fn scope(spec: &QuerySpec) -> String {
    let mut s = format!("in {}", spec.dataset);
    if let Some(f) = &spec.filter {
        let _ = write!(s, " where {}", filter_phrase(f));
    }
    if let Some(t) = &spec.time_range {
        let day = |v: &Option<String>| v.as_deref().map(|x| x.get(..10).unwrap_or(x).to_owned());
        match (day(&t.from), day(&t.to)) {
            (Some(from), Some(to)) => {
                let _ = write!(s, " from {from} up to (not including) {to}");
            }
            (Some(from), None) => {
                let _ = write!(s, " from {from}");
            }
            (None, Some(to)) => {
                let _ = write!(s, " before {to}");
            }
            (None, None) => {}
        }
    }
    s
}

/// Rows an answer lists before it points at the result table.
const LISTED_ROWS: usize = 10;

/// The figures of `result` (the answer to `spec`) as a sentence: every number in it is a cell of
/// the result, formatted by [`format_number`].
pub fn describe(spec: &QuerySpec, result: &QueryResult) -> String {
    let scope = scope(spec);
    let groups = spec.group_by.len();
    if result.rows.is_empty() {
        return format!("No records match {scope}, so there is no figure to report.");
    }
    let default_count = [AggregateSpec {
        func: AggFn::Count,
        column: None,
        p: None,
        alias: None,
    }];
    let aggs = if spec.aggregates.is_empty() && groups > 0 {
        &default_count[..]
    } else {
        &spec.aggregates[..]
    };
    if aggs.is_empty() {
        return format!(
            "{} records {scope} are in the result table.",
            result.row_count
        );
    }
    let row_cells = |row: &Value| -> Vec<String> {
        row.as_array()
            .map(|cells| cells.iter().map(cell).collect())
            .unwrap_or_default()
    };
    let phrases: Vec<String> = aggs.iter().map(aggregate_phrase).collect();
    if groups == 0 {
        let cells = row_cells(&result.rows[0]);
        let parts: Vec<String> = phrases
            .iter()
            .zip(&cells)
            .map(|(p, v)| format!("{p} is {v}"))
            .collect();
        let mut text = parts.join(", and ");
        if let Some(first) = text.get(..1) {
            text = format!("{}{}", first.to_uppercase(), &text[1..]);
        }
        return format!("{text} ({scope}).");
    }
    let group_names: Vec<String> = spec
        .group_by
        .iter()
        .map(|g| match g {
            GroupKey::Column(c) => c.clone(),
            GroupKey::Bucket(b) => format!("{} of {}", b.bucket.as_str(), b.column),
        })
        .collect();
    let ranked = spec.limit.is_some() && !spec.order_by.is_empty();
    let lines: Vec<String> = result
        .rows
        .iter()
        .take(LISTED_ROWS)
        .map(|row| {
            let mut cells = row_cells(row);
            // A time bucket as wide as it is: `2026-10` for a month, not its first instant.
            for (cell, g) in cells.iter_mut().zip(&spec.group_by) {
                if let GroupKey::Bucket(b) = g {
                    let width = match b.bucket {
                        Bucket::Month => 7,
                        Bucket::Day | Bucket::Week => 10,
                        Bucket::Hour | Bucket::Minute => 16,
                    };
                    if let Some(short) = cell.get(..width) {
                        *cell = short.replace('T', " ");
                    }
                }
            }
            let (keys, values) = cells.split_at(groups.min(cells.len()));
            format!("{}: {}", keys.join(" / "), values.join(", "))
        })
        .collect();
    let extreme = if spec
        .order_by
        .first()
        .is_some_and(|o| o.dir == Direction::Desc)
    {
        "highest"
    } else {
        "lowest"
    };
    let measure = phrases
        .iter()
        .map(|p| p.trim_start_matches("the ").to_owned())
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = if ranked && result.row_count == 1 {
        let (key, value) = lines[0].split_once(": ").unwrap_or_default();
        format!("{key} has the {extreme} {measure} ({scope}): {value}.")
    } else if ranked {
        format!(
            "The {} with the {extreme} {measure} ({scope}): {}.",
            group_names.join(" and "),
            lines.join("; ")
        )
    } else {
        format!(
            "{} by {} ({scope}): {}.",
            capitalize(&phrases.join(", ")),
            group_names.join(" and "),
            lines.join("; ")
        )
    };
    if result.row_count > LISTED_ROWS {
        // The row count, not "N more": every number written is one the result holds.
        let _ = write!(
            text,
            " The first {LISTED_ROWS} are listed; the result table holds all {}.",
            result.row_count
        );
    }
    // A ranking's limit is its question ("the top 3"); any other cut is worth saying.
    if result.truncated && !ranked {
        text.push_str(" The result was cut at the query's limit.");
    }
    text
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// Figures written in `text`, in order: numbers with their sign and fraction (`1,234.5` read
/// as `1234.5`, `-3` as `-3`, a hyphen between digits is no sign) and dates as one figure
/// (`2026-10`, `2026-10-01`, `2026-10-01 14:00[:00]`, `T` read as a space).
fn figures_in(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let digit = |i: usize| chars.get(i).is_some_and(char::is_ascii_digit);
    let digits = |from: usize, n: usize| (from..from + n).all(digit);
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let after_word = i > 0 && chars[i - 1].is_alphanumeric();
        let sign = matches!(c, '-' | '\u{2212}') && digit(i + 1) && !after_word;
        if !(c.is_ascii_digit() || sign) {
            i += 1;
            continue;
        }
        let mut cur = String::new();
        if sign {
            cur.push('-');
            i += 1;
        }
        let start = i;
        while i < chars.len() {
            if digit(i) {
                cur.push(chars[i]);
            } else if matches!(chars[i], '.' | ',') && digit(i + 1) && i > start {
                if chars[i] == '.' {
                    cur.push('.');
                }
            } else {
                break;
            }
            i += 1;
        }
        // A date: four digits, then -MM, maybe -DD, maybe a time.
        if !sign
            && i - start == 4
            && !cur.contains('.')
            && chars.get(i) == Some(&'-')
            && digits(i + 1, 2)
            && !digit(i + 3)
        {
            cur.extend(&chars[i..i + 3]);
            i += 3;
            if chars.get(i) == Some(&'-') && digits(i + 1, 2) && !digit(i + 3) {
                cur.extend(&chars[i..i + 3]);
                i += 3;
                if matches!(chars.get(i), Some('T' | ' '))
                    && digits(i + 1, 2)
                    && chars.get(i + 3) == Some(&':')
                    && digits(i + 4, 2)
                {
                    cur.push(' ');
                    cur.extend(&chars[i + 1..i + 6]);
                    i += 6;
                    if chars.get(i) == Some(&':') && digits(i + 1, 2) {
                        cur.extend(&chars[i..i + 3]);
                        i += 3;
                    }
                }
            }
        }
        out.push(cur);
    }
    out
}

fn is_date(figure: &str) -> bool {
    figure.len() > 4 && figure.as_bytes().get(4) == Some(&b'-')
}

fn filter_numbers(f: &Filter, out: &mut Vec<f64>) {
    let mut literal = |l: &Literal| {
        if let Literal::Number(n) = l {
            out.extend(n.as_f64());
        }
    };
    match f {
        Filter::And(items) | Filter::Or(items) => {
            for item in items {
                filter_numbers(item, out);
            }
        }
        Filter::Not(inner) => filter_numbers(inner, out),
        Filter::Condition(c) => match &c.value {
            Some(Operand::Scalar(l)) => literal(l),
            Some(Operand::List(ls)) => ls.iter().for_each(literal),
            None => {}
        },
    }
}

/// The figures of `answer` that its result does not hold. A number must be a cell of `result`
/// (rounded as written, sign included), its row count, or a number of the query itself (its
/// limit, a filter's number, a percentile); a date must begin a date of the result's cells or
/// of the query's time range, whose years may also be written. From the question only years
/// and lengths of time ("30 days") may be repeated: "was it over 1,000,000?" does not make
/// 1,000,000 a figure of the answer. An answer whose figures all come from its result returns
/// an empty list.
pub fn unsupported_figures(
    answer: &str,
    question: &str,
    spec: &QuerySpec,
    result: &QueryResult,
) -> Vec<String> {
    let mut values: Vec<f64> = Vec::new();
    let mut dates: Vec<String> = Vec::new();
    let mut spelled: Vec<String> = Vec::new();
    // A text's dates are dates (and their years may be written); its other numbers as spelled.
    let text_figures = |text: &str, spelled: &mut Vec<String>, dates: &mut Vec<String>| {
        for f in figures_in(text) {
            if is_date(&f) {
                spelled.push(f[..4].to_owned());
                dates.push(f);
            } else {
                spelled.push(f);
            }
        }
    };
    for row in &result.rows {
        for v in row.as_array().into_iter().flatten() {
            match v {
                Value::Number(n) => values.extend(n.as_f64()),
                Value::String(s) => text_figures(s, &mut spelled, &mut dates),
                _ => {}
            }
        }
    }
    if let Some(t) = &spec.time_range {
        for bound in [&t.from, &t.to].into_iter().flatten() {
            text_figures(bound, &mut spelled, &mut dates);
        }
    }
    values.push(result.row_count as f64);
    if result.row_count > LISTED_ROWS {
        values.push(LISTED_ROWS as f64);
    }
    values.extend(spec.limit.map(|l| l as f64));
    if let Some(f) = &spec.filter {
        filter_numbers(f, &mut values);
    }
    for a in &spec.aggregates {
        values.extend(a.p.into_iter().flat_map(|p| [p, p * 100.0]));
    }
    let question_words = crate::words::words(question);
    for (i, w) in question_words.iter().enumerate() {
        let year = w.len() == 4 && w.parse::<i32>().is_ok_and(|y| (1970..=2200).contains(&y));
        let span = question_words.get(i + 1).is_some_and(|u| {
            let u = crate::words::stem(u);
            ["hour", "day", "week", "month", "quarter", "year"].contains(&u.as_str())
        });
        if w.chars().all(|c| c.is_ascii_digit()) && (year || span) {
            spelled.push(w.clone());
        }
    }
    figures_in(answer)
        .into_iter()
        .filter(|figure| {
            if is_date(figure) {
                return !dates.iter().any(|d| d.starts_with(figure.as_str()));
            }
            if spelled.iter().any(|s| s == figure) {
                return false;
            }
            let Ok(x) = figure.parse::<f64>() else {
                return true;
            };
            let decimals = figure.split('.').nth(1).map_or(0, str::len) as i32;
            let scale = 10f64.powi(decimals);
            !values
                .iter()
                .any(|v| ((v * scale).round() - x * scale).abs() < 0.5)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::query::OutputColumn;
    use serde_json::json;

    fn result(columns: &[&str], rows: Vec<Value>) -> QueryResult {
        QueryResult {
            columns: columns
                .iter()
                .map(|c| OutputColumn {
                    name: (*c).to_owned(),
                    ty: "number",
                })
                .collect(),
            row_count: rows.len(),
            rows,
            truncated: false,
        }
    }

    #[test]
    fn described_figures_are_all_in_the_result() {
        let spec: QuerySpec = serde_json::from_value(json!({
            "dataset": "orders",
            "filter": {"column": "region", "op": "eq", "value": "EU"},
            "group_by": ["product"],
            "aggregates": [{"fn": "sum", "column": "amount"}],
            "time_range": {"from": "2026-10-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let r = result(
            &["product", "sum_amount"],
            vec![json!(["gadget", 1234.5600000001]), json!(["widget", 17])],
        );
        let text = describe(&spec, &r);
        assert_eq!(
            text,
            "The total amount by product (in orders where region is EU from 2026-10-01 up to \
             (not including) 2026-11-01): gadget: 1234.56; widget: 17."
        );
        assert!(unsupported_figures(&text, "q", &spec, &r).is_empty());
        let invented = "Gadget brought 1234.57 and widget 18, about 1,234.56 in all.";
        assert_eq!(
            unsupported_figures(invented, "q", &spec, &r),
            ["1234.57", "18"]
        );
        // A sign is part of the figure.
        assert_eq!(
            unsupported_figures("Gadget lost -17.", "q", &spec, &r),
            ["-17"]
        );
        // The question's own numbers are not figures, except years and lengths of time; the
        // scope's dates and years are, its month numbers alone are not.
        let q = "Was EU revenue over 5000 in the last 30 days of 2026?";
        assert_eq!(
            unsupported_figures("Yes, 5000: 30 days of 2026.", q, &spec, &r),
            ["5000"]
        );
        assert_eq!(
            unsupported_figures(
                "From 2026-10-01 to 2026-11 (2026), gadget 17.",
                "q",
                &spec,
                &r
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            unsupported_figures("In month 10 of 2026 gadget sold 17.", "q", &spec, &r),
            ["10"]
        );
        assert_eq!(
            unsupported_figures("On 2026-12-01 gadget sold 17.", "q", &spec, &r),
            ["2026-12-01"]
        );
    }

    proptest::proptest! {
        /// Whatever the result (signs, fractions, dates as keys, many rows), the template
        /// writes no figure the check would drop; and a figure off by one is dropped.
        #[test]
        fn the_template_passes_its_own_check(
            cells in proptest::collection::vec((0u32..40, -1e7f64..1e7), 1..15),
            monthly in proptest::bool::ANY,
            limit in proptest::option::of(1u64..50),
        ) {
            let mut spec: QuerySpec = serde_json::from_value(json!({
                "dataset": "orders",
                "filter": {"column": "qty", "op": "eq", "value": 3},
                "group_by": [if monthly {
                    json!({"column": "at", "bucket": "month", "as": "month"})
                } else {
                    json!("product")
                }],
                "aggregates": [{"fn": "sum", "column": "amount"}],
                "time_range": {"from": "2025-01-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}
            }))
            .unwrap_or_else(|e| panic!("{e}"));
            spec.limit = limit;
            let rows: Vec<Value> = cells
                .iter()
                .map(|(k, v)| {
                    let key = if monthly {
                        format!("2025-{:02}-01T00:00:00Z", k % 12 + 1)
                    } else {
                        format!("p{k}")
                    };
                    json!([key, v])
                })
                .collect();
            let r = result(&["key", "sum_amount"], rows);
            let text = describe(&spec, &r);
            proptest::prop_assert!(
                unsupported_figures(&text, "q", &spec, &r).is_empty(),
                "{}", text
            );
            let (_, first) = &cells[0];
            let off = format_number(first + 1.0);
            if !cells.iter().any(|(_, v)| format_number(*v) == off) {
                let claim = format!("The total was {off}.");
                proptest::prop_assert!(
                    !unsupported_figures(&claim, "q", &spec, &r).is_empty(),
                    "{}", claim
                );
            }
        }
    }

    #[test]
    fn rankings_name_their_extreme_and_not_their_limit() {
        let spec: QuerySpec = serde_json::from_value(json!({
            "dataset": "orders", "group_by": ["product"],
            "aggregates": [{"fn": "sum", "column": "qty", "as": "value"}],
            "order_by": [{"by": "value", "dir": "desc"}], "limit": 1
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut r = result(&["product", "value"], vec![json!(["gadget", 300])]);
        r.truncated = true;
        assert_eq!(
            describe(&spec, &r),
            "gadget has the highest total qty (in orders): 300."
        );
        let mut spec = spec;
        spec.order_by[0].dir = Direction::Asc;
        spec.limit = Some(2);
        let r = result(
            &["product", "value"],
            vec![json!(["gizmo", 3]), json!(["widget", 4])],
        );
        assert_eq!(
            describe(&spec, &r),
            "The product with the lowest total qty (in orders): gizmo: 3; widget: 4."
        );
    }

    #[test]
    fn numbers_are_read_as_written() {
        assert_eq!(
            figures_in("1,234.5 and 7. Then 2026-10-01, 2026-10 and 2026-10-01T14:00:00Z."),
            [
                "1234.5",
                "7",
                "2026-10-01",
                "2026-10",
                "2026-10-01 14:00:00"
            ]
        );
        assert_eq!(
            figures_in("fell -3 (−4.5), Q3-2026, 10-20"),
            ["-3", "-4.5", "3", "2026", "10", "20"]
        );
        assert_eq!(format_number(12.0), "12");
        assert_eq!(format_number(12.345), "12.35");
        assert_eq!(format_number(0.1 + 0.2), "0.3");
    }

    #[test]
    fn the_tool_schema_is_the_query_language() {
        let schema = query_language_schema();
        let props = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{schema}"));
        let mut names: Vec<&str> = props.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "aggregates",
                "dataset",
                "filter",
                "group_by",
                "limit",
                "order_by",
                "select",
                "time_range"
            ]
        );
        assert_eq!(schema["required"], json!(["dataset"]));
        assert_eq!(schema["additionalProperties"], json!(false));
        let text = schema.to_string();
        for op in [
            "\"eq\"",
            "\"between\"",
            "\"is_null\"",
            "\"count_distinct\"",
            "\"percentile\"",
            "\"month\"",
        ] {
            assert!(text.contains(op), "{op} missing from {text}");
        }
    }
}

//! A query as the client sends it, parsed by serde into types: the query's shape is checked here,
//! once; whether it fits the dataset (columns, their types) is the compiler's job.
//!
//! A filter is a tree of [`Filter`] nodes: `{"and": [...]}`, `{"or": [...]}`, `{"not": {...}}`, or a
//! [`Condition`] `{"column", "op", "value"?}`. A malformed one is refused by the parser with the
//! path of the offending member (`/filter/and/2/op`), before any dataset is read.

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// A query.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// The dataset, by name or id.
    pub dataset: String,
    /// Which records count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Columns, or time buckets of timestamp columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<GroupKey>,
    /// Aggregates over each group (default, when grouping: `count`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregates: Vec<AggregateSpec>,
    /// Columns to return when neither grouping nor aggregating (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select: Vec<String>,
    /// Orderings, by output name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order_by: Vec<OrderSpec>,
    /// Rows to return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// `from` inclusive, `to` exclusive, on a timestamp column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_range: Option<TimeRangeSpec>,
}

/// A filter node.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// All of these (at least one).
    And(Vec<Filter>),
    /// Any of these (at least one).
    Or(Vec<Filter>),
    /// Not this.
    Not(Box<Filter>),
    /// A condition on one column.
    #[serde(untagged)]
    Condition(Condition),
}

/// A condition on one column. Whether `value` fits the operator and the column's type is decided
/// against the dataset's schema, by the compiler.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Condition {
    /// The column.
    pub column: String,
    /// The operator.
    pub op: Op,
    /// The operand: a value, `[values]` for `in`, `[low, high]` for `between`, a boolean (default
    /// true) for `is_null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Operand>,
}

/// Condition operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Less than.
    Lt,
    /// At most.
    Lte,
    /// Greater than.
    Gt,
    /// At least.
    Gte,
    /// One of a list.
    In,
    /// Between two values, both included.
    Between,
    /// A string column containing a substring (literally: `%` and `_` are plain characters).
    Contains,
    /// Null (or, with `false`, not null).
    IsNull,
}

impl Op {
    /// The name clients write.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::Between => "between",
            Op::Contains => "contains",
            Op::IsNull => "is_null",
        }
    }
}

/// A condition's operand.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "a string, number or boolean, or an array of them"
)]
pub enum Operand {
    /// One value.
    Scalar(Literal),
    /// Several.
    List(Vec<Literal>),
}

/// A JSON scalar.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged, expecting = "a string, number or boolean")]
pub enum Literal {
    /// A boolean.
    Bool(bool),
    /// A number, as written (an integer column takes only integers).
    Number(serde_json::Number),
    /// A string.
    Text(String),
}

/// A `group_by` entry.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "a column name, or a time bucket {\"column\", \"bucket\", \"as\"?}"
)]
pub enum GroupKey {
    /// A column's values.
    Column(String),
    /// A timestamp column cut into buckets.
    Bucket(BucketSpec),
}

/// A time bucket of a timestamp column.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketSpec {
    /// The timestamp column.
    pub column: String,
    /// The bucket width.
    pub bucket: Bucket,
    /// Output name (default `<column>_<bucket>`).
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// An aggregate.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    /// Which function.
    #[serde(rename = "fn")]
    pub func: AggFn,
    /// Its column (`count` may omit it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// For `percentile`: 0..=1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    /// Output name.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// Aggregate functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
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
    /// The name clients write.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Minute => "minute",
            Bucket::Hour => "hour",
            Bucket::Day => "day",
            Bucket::Week => "week",
            Bucket::Month => "month",
        }
    }
}

/// An ordering.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderSpec {
    /// An output name.
    pub by: String,
    /// `asc` (default) or `desc`; nulls always last.
    #[serde(default)]
    pub dir: Direction,
}

/// Sort direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Ascending.
    #[default]
    Asc,
    /// Descending.
    Desc,
}

/// A time range.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeRangeSpec {
    /// Inclusive start (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Exclusive end (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The timestamp column (default: the dataset's time column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
}

/// The filter grammar as JSON Schema: what [`Filter`]'s own parser accepts (a condition, or one of
/// `and`/`or`/`not` alone in its object).
impl JsonSchema for Filter {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Filter".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let condition = generator.subschema_for::<Condition>();
        let filter = generator.subschema_for::<Filter>();
        let list = json_schema!({"type": "array", "items": filter, "minItems": 1});
        let alone = |key: &str, value: Schema| {
            json_schema!({
                "type": "object",
                "properties": { key: value },
                "required": [key],
                "additionalProperties": false
            })
        };
        json_schema!({
            "description": "A condition on one column, or and/or/not of filters (alone in their object).",
            "oneOf": [condition, alone("and", list.clone()), alone("or", list), alone("not", filter)]
        })
    }
}

const CONDITION_FIELDS: &[&str] = &["column", "op", "value"];
const ALONE: &str = "and, or and not stand alone: {\"and\": [...]}, not beside other members";

/// An object is a combinator when its one member is `and`, `or` or `not`, and a condition
/// otherwise. Errors are raised while the offending member is being read, so the path a caller
/// sees ends at that member.
impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FilterVisitor)
    }
}

struct FilterVisitor;

impl<'de> Visitor<'de> for FilterVisitor {
    type Value = Filter;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a filter: a condition {\"column\", \"op\", \"value\"}, or {\"and\": [...]}, \
             {\"or\": [...]} or {\"not\": {...}}",
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Filter, A::Error> {
        let mut column: Option<String> = None;
        let mut op: Option<Op> = None;
        let mut value: Option<Option<Operand>> = None;
        let mut first = true;
        while let Some(key) = map.next_key::<String>()? {
            let combinator = matches!(key.as_str(), "and" | "or" | "not");
            if combinator && !first {
                match map.next_value_seed(Refuse(ALONE))? {};
            }
            first = false;
            let node = match key.as_str() {
                "and" => Filter::And(map.next_value::<NonEmpty>()?.0),
                "or" => Filter::Or(map.next_value::<NonEmpty>()?.0),
                "not" => Filter::Not(Box::new(map.next_value()?)),
                "column" if column.is_none() => {
                    column = Some(map.next_value()?);
                    continue;
                }
                "op" if op.is_none() => {
                    op = Some(map.next_value()?);
                    continue;
                }
                "value" if value.is_none() => {
                    value = Some(map.next_value()?);
                    continue;
                }
                "column" | "op" | "value" => {
                    match map.next_value_seed(Refuse("a condition names each member once"))? {};
                }
                _ => match map.next_value_seed(UnknownMember(&key))? {},
            };
            if map.next_key::<String>()?.is_some() {
                match map.next_value_seed(Refuse(ALONE))? {};
            }
            return Ok(node);
        }
        Ok(Filter::Condition(Condition {
            column: column.ok_or_else(|| de::Error::missing_field("column"))?,
            op: op.ok_or_else(|| de::Error::missing_field("op"))?,
            value: value.flatten(),
        }))
    }
}

/// The operands of `and` and `or`: at least one filter.
struct NonEmpty(Vec<Filter>);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<Filter>::deserialize(deserializer)?;
        if items.is_empty() {
            return Err(de::Error::invalid_length(
                0,
                &"a non-empty array of filters",
            ));
        }
        Ok(Self(items))
    }
}

/// Refuses the member about to be read (so the error's path names it), with a reason.
struct Refuse(&'static str);

impl<'de> DeserializeSeed<'de> for Refuse {
    type Value = std::convert::Infallible;

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<Self::Value, D::Error> {
        Err(de::Error::custom(self.0))
    }
}

/// Refuses a member a condition does not have.
struct UnknownMember<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for UnknownMember<'_> {
    type Value = std::convert::Infallible;

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<Self::Value, D::Error> {
        let name: String = self.0.chars().take(64).collect();
        Err(de::Error::unknown_field(&name, CONDITION_FIELDS))
    }
}

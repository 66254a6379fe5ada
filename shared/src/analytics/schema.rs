//! A dataset's declared schema: typed columns, which are text for retrieval, and a time column.

use serde::{Deserialize, Serialize};

use super::{FieldError, is_identifier};

/// Most columns a dataset may declare.
pub const MAX_COLUMNS: usize = 100;

/// A column's type. Values are checked against it at ingest, and queries compile to typed SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// A 64-bit signed integer.
    Integer,
    /// A finite double: measurements, where the last bits of a sum do not matter.
    Number,
    /// An exact decimal with the column's declared `scale` (digits after the point): money.
    /// Sums are exact, averages exact to the scale.
    Decimal,
    /// true or false.
    Boolean,
    /// An RFC 3339 instant (stored in UTC).
    Timestamp,
}

impl ColumnType {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Integer => "integer",
            ColumnType::Number => "number",
            ColumnType::Decimal => "decimal",
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamp => "timestamp",
        }
    }

    /// Integer, number or decimal.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            ColumnType::Integer | ColumnType::Number | ColumnType::Decimal
        )
    }
}

/// Typed slot columns per type in `app.records` (migration 0004).
/// Decimal slots (`d1..d8`, numeric) came later, in migration 0016.
const SLOTS: [(ColumnType, &str, usize); 6] = [
    (ColumnType::String, "s", 16),
    (ColumnType::Number, "n", 16),
    (ColumnType::Decimal, "d", 8),
    (ColumnType::Integer, "i", 8),
    (ColumnType::Boolean, "b", 8),
    (ColumnType::Timestamp, "t", 4),
];

/// The typed `app.records` column that holds `name`'s values, if it has one: the time column is
/// `ts`; otherwise the k-th column of a type (in schema order) gets that type's k-th slot while
/// slots last. Columns without a slot are read from `data`.
pub fn slot(columns: &[ColumnDef], time_column: Option<&str>, name: &str) -> Option<String> {
    if time_column == Some(name) {
        return Some("ts".into());
    }
    let col = columns.iter().find(|c| c.name == name)?;
    let (_, prefix, capacity) = SLOTS.iter().find(|(ty, ..)| *ty == col.ty)?;
    let k = columns
        .iter()
        .take_while(|c| c.name != name)
        .filter(|c| c.ty == col.ty && time_column != Some(c.name.as_str()))
        .count();
    (k < *capacity).then(|| format!("{prefix}{}", k + 1))
}

/// The typed SQL expression for a column's value inside a JSONB `source` (e.g. `r.data`). Column
/// names are checked identifiers, so quoting them as literals is safe.
pub(crate) fn json_expr(source: &str, c: &ColumnDef) -> String {
    debug_assert!(super::is_identifier(&c.name));
    let v = format!("({source}->>'{}')", c.name);
    match c.ty {
        ColumnType::String => v,
        ColumnType::Integer => format!("({v}::int8)"),
        ColumnType::Number => format!("({v}::float8)"),
        ColumnType::Decimal => format!("({v}::numeric)"),
        ColumnType::Boolean => format!("({v}::boolean)"),
        ColumnType::Timestamp => format!("({v}::timestamptz)"),
    }
}

/// One declared column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDef {
    /// Lowercase letters, digits and underscores, starting with a letter; at most 63 characters.
    pub name: String,
    /// The type every value must have.
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Whether every record must have a non-null value.
    #[serde(default)]
    pub required: bool,
    /// For a decimal column (and only there): digits after the point, 0 to [`MAX_SCALE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
}

/// The most digits after the point a decimal column may declare.
pub const MAX_SCALE: u32 = 9;

/// What a client sends to create a dataset.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// The dataset's name, unique within the tenant.
    pub name: String,
    /// Its columns.
    pub columns: Vec<ColumnDef>,
    /// String columns whose text is indexed for retrieval (questions in plain language).
    #[serde(default)]
    pub text_columns: Vec<String>,
    /// A timestamp column that time ranges and time buckets use by default.
    #[serde(default)]
    pub time_column: Option<String>,
    /// Aggregates kept per bucket of the time column and per value of low-cardinality columns,
    /// which queries that filter and group only by those read instead of the records (see
    /// [`super::rollup`]). Absent: one hourly rollup without dimensions; `[]`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollups: Option<Vec<super::rollup::RollupSpec>>,
}

impl DatasetSpec {
    /// Every problem with the spec (empty when it is valid).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !is_identifier(&self.name) {
            errors.push(FieldError::new(
                "/name",
                "invalid_name",
                "A dataset name is 1-63 lowercase letters, digits or underscores, starting with a letter.",
            ));
        }
        if self.columns.is_empty() {
            errors.push(FieldError::new(
                "/columns",
                "no_columns",
                "Declare at least one column.",
            ));
        }
        if self.columns.len() > MAX_COLUMNS {
            errors.push(FieldError::new(
                "/columns",
                "too_many_columns",
                format!("A dataset has at most {MAX_COLUMNS} columns."),
            ));
        }
        for (i, c) in self.columns.iter().enumerate() {
            if !is_identifier(&c.name) {
                errors.push(FieldError::new(
                    format!("/columns/{i}/name"),
                    "invalid_name",
                    "A column name is 1-63 lowercase letters, digits or underscores, starting with a letter.",
                ));
            } else if self.columns[..i].iter().any(|p| p.name == c.name) {
                errors.push(FieldError::new(
                    format!("/columns/{i}/name"),
                    "duplicate_column",
                    format!("Column {} is declared twice.", c.name),
                ));
            }
            match (c.ty, c.scale) {
                (ColumnType::Decimal, Some(s)) if s <= MAX_SCALE => {}
                (ColumnType::Decimal, Some(_)) => errors.push(FieldError::new(
                    format!("/columns/{i}/scale"),
                    "invalid_scale",
                    format!("A decimal's scale is 0 to {MAX_SCALE} digits after the point."),
                )),
                (ColumnType::Decimal, None) => errors.push(FieldError::new(
                    format!("/columns/{i}/scale"),
                    "missing_scale",
                    "A decimal column declares its scale: digits after the point (2 for cents).",
                )),
                (_, Some(_)) => errors.push(FieldError::new(
                    format!("/columns/{i}/scale"),
                    "invalid_scale",
                    "Only decimal columns have a scale.",
                )),
                (_, None) => {}
            }
        }
        for (i, t) in self.text_columns.iter().enumerate() {
            match self.column(t) {
                Some(c) if c.ty == ColumnType::String => {}
                Some(_) => errors.push(FieldError::new(
                    format!("/text_columns/{i}"),
                    "not_a_string_column",
                    "Text columns must be string columns.",
                )),
                None => errors.push(FieldError::new(
                    format!("/text_columns/{i}"),
                    "unknown_column",
                    "Text columns must be declared columns.",
                )),
            }
        }
        errors.extend(super::rollup::validate(&self.rollups(), |name| {
            self.column(name).map(|c| c.ty)
        }));
        if let Some(t) = &self.time_column {
            match self.column(t) {
                Some(c) if c.ty == ColumnType::Timestamp => {}
                Some(_) => errors.push(FieldError::new(
                    "/time_column",
                    "not_a_timestamp_column",
                    "The time column must be a timestamp column.",
                )),
                None => errors.push(FieldError::new(
                    "/time_column",
                    "unknown_column",
                    "The time column must be a declared column.",
                )),
            }
        }
        errors
    }

    /// A declared column by name.
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Its rollups: as declared, or the default (one hourly, without dimensions).
    pub fn rollups(&self) -> Vec<super::rollup::RollupSpec> {
        self.rollups
            .clone()
            .unwrap_or_else(super::rollup::default_rollups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> DatasetSpec {
        serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"))
    }

    fn reasons(s: &DatasetSpec) -> Vec<(String, &'static str)> {
        s.validate()
            .into_iter()
            .map(|e| (e.path, e.reason))
            .collect()
    }

    #[test]
    fn a_good_spec_is_valid() {
        let s = spec(serde_json::json!({
            "name": "orders",
            "columns": [
                {"name": "region", "type": "string", "required": true},
                {"name": "amount", "type": "number"},
                {"name": "note", "type": "string"},
                {"name": "ordered_at", "type": "timestamp"}
            ],
            "text_columns": ["note"],
            "time_column": "ordered_at"
        }));
        assert_eq!(s.validate(), vec![]);
    }

    #[test]
    fn hostile_and_inconsistent_specs_are_refused_with_paths() {
        let s = spec(serde_json::json!({
            "name": "Orders; DROP TABLE app.records --",
            "columns": [
                {"name": "a\"b", "type": "string"},
                {"name": "amount", "type": "number"},
                {"name": "amount", "type": "integer"},
                {"name": "x".repeat(64), "type": "string"}
            ],
            "text_columns": ["amount", "nope"],
            "time_column": "amount"
        }));
        assert_eq!(
            reasons(&s),
            vec![
                ("/name".into(), "invalid_name"),
                ("/columns/0/name".into(), "invalid_name"),
                ("/columns/2/name".into(), "duplicate_column"),
                ("/columns/3/name".into(), "invalid_name"),
                ("/text_columns/0".into(), "not_a_string_column"),
                ("/text_columns/1".into(), "unknown_column"),
                ("/time_column".into(), "not_a_timestamp_column"),
            ]
        );
    }

    #[test]
    fn decimals_declare_a_scale_and_nothing_else_does() {
        let s = spec(serde_json::json!({
            "name": "money",
            "columns": [
                {"name": "price", "type": "decimal", "scale": 2},
                {"name": "units", "type": "decimal", "scale": 0},
                {"name": "fine", "type": "decimal", "scale": MAX_SCALE},
                {"name": "coarse", "type": "decimal", "scale": MAX_SCALE + 1},
                {"name": "bare", "type": "decimal"},
                {"name": "qty", "type": "integer", "scale": 2}
            ]
        }));
        assert_eq!(
            reasons(&s),
            vec![
                ("/columns/3/scale".into(), "invalid_scale"),
                ("/columns/4/scale".into(), "missing_scale"),
                ("/columns/5/scale".into(), "invalid_scale"),
            ]
        );
        // A column without a scale is stored (and shown) exactly as before decimals existed.
        let plain = serde_json::to_value(&s.columns[5..]).unwrap_or_default();
        assert_eq!(plain[0]["scale"], 2);
        let none = ColumnDef {
            name: "n".into(),
            ty: ColumnType::Number,
            required: false,
            scale: None,
        };
        assert_eq!(
            serde_json::to_value(&none).unwrap_or_default(),
            serde_json::json!({"name": "n", "type": "number", "required": false})
        );
    }

    #[test]
    fn slots_follow_schema_order_per_type() {
        let col = |name: &str, ty| ColumnDef {
            name: name.into(),
            ty,
            required: false,
            scale: (ty == ColumnType::Decimal).then_some(2),
        };
        let mut cols = vec![
            col("a", ColumnType::String),
            col("at", ColumnType::Timestamp),
            col("x", ColumnType::Number),
            col("b", ColumnType::String),
            col("seen", ColumnType::Timestamp),
        ];
        cols.extend((0..20).map(|i| col(&format!("n{i}"), ColumnType::Number)));
        cols.extend((0..9).map(|i| col(&format!("m{i}"), ColumnType::Decimal)));
        let slot = |n: &str| slot(&cols, Some("at"), n);
        assert_eq!(slot("a").as_deref(), Some("s1"));
        assert_eq!(slot("b").as_deref(), Some("s2"));
        assert_eq!(slot("at").as_deref(), Some("ts"));
        assert_eq!(slot("seen").as_deref(), Some("t1"));
        assert_eq!(slot("x").as_deref(), Some("n1"));
        assert_eq!(slot("n14").as_deref(), Some("n16"));
        assert_eq!(
            slot("n15"),
            None,
            "past the slots, a column lives in data only"
        );
        assert_eq!(slot("m0").as_deref(), Some("d1"));
        assert_eq!(slot("m7").as_deref(), Some("d8"));
        assert_eq!(slot("m8"), None);
        assert_eq!(slot("missing"), None);
    }

    #[test]
    fn unknown_fields_and_types_do_not_parse() {
        let bad = [
            serde_json::json!({"name": "a", "columns": [], "owner": "x"}),
            serde_json::json!({"name": "a", "columns": [{"name": "c", "type": "blob"}]}),
            serde_json::json!({"name": "a", "columns": [{"name": "c", "type": "string", "sql": "x"}]}),
        ];
        for b in bad {
            assert!(serde_json::from_value::<DatasetSpec>(b).is_err());
        }
    }
}

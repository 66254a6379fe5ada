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
    /// A finite double.
    Number,
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
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamp => "timestamp",
        }
    }

    /// Integer or number.
    pub fn is_numeric(self) -> bool {
        matches!(self, ColumnType::Integer | ColumnType::Number)
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
}

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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> DatasetSpec {
        serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"))
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
        let reasons: Vec<(String, &str)> = s
            .validate()
            .into_iter()
            .map(|e| (e.path, e.reason))
            .collect();
        assert_eq!(
            reasons,
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

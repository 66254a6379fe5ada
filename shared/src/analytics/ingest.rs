//! Batch ingest: every record validated against the dataset's schema, then written in one
//! statement. A batch with any invalid record writes nothing. The client's key makes retries
//! idempotent: the same key with the same content changes nothing, new content bumps the version.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use super::datasets::Dataset;
use super::rollup::Layout;
use super::schema::{ColumnDef, ColumnType};
use crate::db::{DbError, Param, TenantTx};
use crate::rag::chunks::ChangedRecord;

/// The longest record key.
pub const MAX_KEY_LEN: usize = 256;
/// The longest string value, in bytes.
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// At most this many errors are listed; the count says how many there were.
pub const MAX_LISTED_ERRORS: usize = 100;

/// What is wrong with one record.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordError {
    /// Its position in the batch (0-based; for NDJSON, the line's position among non-empty lines).
    pub index: usize,
    /// Its key, if it had a readable one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The offending column, if the problem is a value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// A stable reason code.
    pub reason: &'static str,
    /// A sentence for people.
    pub message: String,
}

/// A batch that passed validation, ready to write.
#[derive(Debug, Default)]
pub struct ValidBatch {
    keys: Vec<String>,
    data: Vec<Value>,
    times: Vec<Option<DateTime<Utc>>>,
}

impl ValidBatch {
    /// How many records.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The batch as consecutive slices of at most `n` records (moved, not copied).
    pub fn into_slices(mut self, n: usize) -> Vec<ValidBatch> {
        let n = n.max(1);
        let mut slices = Vec::with_capacity(self.len().div_ceil(n));
        while self.len() > n {
            let rest = ValidBatch {
                keys: self.keys.split_off(n),
                data: self.data.split_off(n),
                times: self.times.split_off(n),
            };
            slices.push(std::mem::replace(&mut self, rest));
        }
        slices.push(self);
        slices
    }
}

/// What a write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IngestOutcome {
    /// Records received.
    pub received: usize,
    /// New keys.
    pub inserted: usize,
    /// Existing keys whose content changed (version bumped).
    pub updated: usize,
    /// Existing keys with identical content (nothing written).
    pub unchanged: usize,
}

impl std::ops::AddAssign for IngestOutcome {
    fn add_assign(&mut self, other: Self) {
        self.received += other.received;
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
    }
}

/// Splits an NDJSON body into values; a line that is not JSON is an error for that line.
pub fn parse_ndjson(body: &[u8]) -> Result<Vec<Value>, Vec<RecordError>> {
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for line in body.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => values.push(v),
            Err(e) => {
                // The record's position in the batch: bad lines hold a place (Null) in `values`.
                errors.push(RecordError {
                    index: values.len(),
                    key: None,
                    column: None,
                    reason: "invalid_json",
                    message: format!("This line is not JSON: {e}"),
                });
                values.push(Value::Null);
            }
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}

/// Validates every record (`{"key": "...", "data": {...}}`) against the dataset's schema.
/// Either every record is valid, or the errors (all of them, up to the listing limit).
pub fn validate(
    dataset: &Dataset,
    items: Vec<Value>,
) -> Result<ValidBatch, (usize, Vec<RecordError>)> {
    let mut batch = ValidBatch::default();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    // Columns some rollup groups by: their values are index keys, so their length is bounded.
    let dimensions: std::collections::HashSet<&str> = dataset
        .rollups
        .iter()
        .flat_map(|r| r.dimensions.iter().map(String::as_str))
        .collect();
    for (index, item) in items.into_iter().enumerate() {
        match validate_one(dataset, &dimensions, index, item) {
            Ok((key, data, time)) => {
                if !seen.insert(key.clone()) {
                    errors.push(RecordError {
                        index,
                        key: Some(key),
                        column: None,
                        reason: "duplicate_key",
                        message: "This key appears earlier in the same batch.".into(),
                    });
                    continue;
                }
                batch.keys.push(key);
                batch.data.push(data);
                batch.times.push(time);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(batch)
    } else {
        let total = errors.len();
        errors.truncate(MAX_LISTED_ERRORS);
        Err((total, errors))
    }
}

type Validated = (String, Value, Option<DateTime<Utc>>);

fn validate_one(
    dataset: &Dataset,
    dimensions: &std::collections::HashSet<&str>,
    index: usize,
    item: Value,
) -> Result<Validated, Vec<RecordError>> {
    let err = |key: Option<&str>, column: Option<&str>, reason: &'static str, message: String| {
        RecordError {
            index,
            key: key.map(str::to_owned),
            column: column.map(str::to_owned),
            reason,
            message,
        }
    };
    let Value::Object(mut record) = item else {
        return Err(vec![err(
            None,
            None,
            "not_an_object",
            "A record is an object with `key` and `data`.".into(),
        )]);
    };
    let key = match record.remove("key") {
        Some(Value::String(k)) if valid_key(&k) => k,
        Some(Value::String(_)) => {
            return Err(vec![err(
                None,
                None,
                "invalid_key",
                format!("A key is 1-{MAX_KEY_LEN} characters without control characters."),
            )]);
        }
        _ => {
            return Err(vec![err(
                None,
                None,
                "invalid_key",
                "Every record needs a string `key`.".into(),
            )]);
        }
    };
    let data = match record.remove("data") {
        Some(Value::Object(d)) => d,
        _ => {
            return Err(vec![err(
                Some(&key),
                None,
                "invalid_data",
                "Every record needs an object `data`.".into(),
            )]);
        }
    };
    if let Some(extra) = record.keys().next() {
        return Err(vec![err(
            Some(&key),
            None,
            "unknown_field",
            format!(
                "Unknown field `{}`: a record has only `key` and `data`.",
                truncate(extra)
            ),
        )]);
    }

    let mut errors = Vec::new();
    let mut clean = Map::with_capacity(data.len());
    let mut time = None;
    for (name, value) in data {
        let Some(column) = dataset.column(&name) else {
            errors.push(err(
                Some(&key),
                Some(&truncate(&name)),
                "unknown_column",
                "This column is not in the dataset's schema.".into(),
            ));
            continue;
        };
        if value.is_null() {
            continue; // absent and null mean the same; `required` is checked below
        }
        match check_value(column, value) {
            Ok(Value::String(v))
                if v.len() > super::rollup::MAX_DIMENSION_BYTES && dimensions.contains(&*name) =>
            {
                errors.push(err(
                    Some(&key),
                    Some(&name),
                    "dimension_too_long",
                    format!(
                        "This column is a rollup dimension: its values are at most {} bytes.",
                        super::rollup::MAX_DIMENSION_BYTES
                    ),
                ));
            }
            Ok(v) => {
                if dataset.time_column.as_deref() == Some(name.as_str()) {
                    time = v
                        .as_str()
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                        .map(|t| micros(t.with_timezone(&Utc)));
                }
                clean.insert(name, v);
            }
            Err((reason, message)) => errors.push(err(Some(&key), Some(&name), reason, message)),
        }
    }
    for c in dataset.columns.iter().filter(|c| c.required) {
        if !clean.contains_key(&c.name)
            && !errors.iter().any(|e| e.column.as_deref() == Some(&c.name))
        {
            errors.push(err(
                Some(&key),
                Some(&c.name),
                "required",
                "This column is required.".into(),
            ));
        }
    }
    if errors.is_empty() {
        Ok((key, Value::Object(clean), time))
    } else {
        Err(errors)
    }
}

/// Checks a non-null value against its column type; timestamps come back normalized to UTC.
fn check_value(column: &ColumnDef, value: Value) -> Result<Value, (&'static str, String)> {
    let ty = column.ty;
    let mismatch = || {
        (
            "type_mismatch",
            format!("Expected a {} value.", ty.as_str()),
        )
    };
    match (ty, value) {
        (ColumnType::String, Value::String(s)) if s.len() > MAX_STRING_BYTES => Err((
            "too_long",
            format!("Strings are at most {MAX_STRING_BYTES} bytes."),
        )),
        (ColumnType::String, Value::String(s)) if s.contains('\0') => Err((
            "invalid_string",
            "Strings cannot contain NUL characters.".into(),
        )),
        (ColumnType::String, v @ Value::String(_)) => Ok(v),
        (ColumnType::Integer, Value::Number(n)) if n.is_i64() => Ok(Value::Number(n)),
        (ColumnType::Number, Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {
            Ok(Value::Number(n))
        }
        (ColumnType::Decimal, v) => super::decimal::check(&v, column.scale.unwrap_or(0)),
        (ColumnType::Boolean, v @ Value::Bool(_)) => Ok(v),
        (ColumnType::Timestamp, Value::String(s)) => match DateTime::parse_from_rfc3339(&s) {
            Ok(t) => Ok(Value::String(
                t.with_timezone(&Utc)
                    .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            )),
            Err(_) => Err((
                "invalid_timestamp",
                "Expected an RFC 3339 timestamp, e.g. 2026-11-26T13:00:00Z.".into(),
            )),
        },
        _ => Err(mismatch()),
    }
}

/// A timestamp at Postgres's resolution, rounded as Postgres rounds text it parses (the driver
/// would truncate), so a slot holds what `(data->>'c')::timestamptz` would.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound as _;
    t.round_subsecs(6)
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_KEY_LEN && !k.chars().any(char::is_control)
}

/// Echoing a caller's 10 MB field name back is not helpful.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A slotted column's values across a batch, typed as its slot is.
enum SlotValues {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Decimal(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
    Time(Vec<Option<DateTime<Utc>>>),
}

impl SlotValues {
    /// The column's values in `data` (validated, so each is of the column's type or absent).
    fn collect(c: &ColumnDef, data: &[Value]) -> Self {
        let values = data.iter().map(|d| d.get(&c.name));
        match c.ty {
            ColumnType::String => Self::Text(
                values
                    .map(|v| v.and_then(Value::as_str).map(str::to_owned))
                    .collect(),
            ),
            ColumnType::Integer => Self::Int(values.map(|v| v.and_then(Value::as_i64)).collect()),
            ColumnType::Number => Self::Float(values.map(|v| v.and_then(Value::as_f64)).collect()),
            ColumnType::Decimal => Self::Decimal(
                values
                    .map(|v| v.and_then(super::decimal::literal))
                    .collect(),
            ),
            ColumnType::Boolean => Self::Bool(values.map(|v| v.and_then(Value::as_bool)).collect()),
            ColumnType::Timestamp => Self::Time(
                values
                    .map(|v| {
                        v.and_then(Value::as_str)
                            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                            .map(|t| micros(t.with_timezone(&Utc)))
                    })
                    .collect(),
            ),
        }
    }

    /// The array as a parameter, and the type that reads it (decimals travel as text).
    fn param(&self) -> (&(dyn ToSql + Sync), Type, &'static str) {
        match self {
            Self::Text(v) => (v, Type::TEXT_ARRAY, "text[]"),
            Self::Int(v) => (v, Type::INT8_ARRAY, "int8[]"),
            Self::Float(v) => (v, Type::FLOAT8_ARRAY, "float8[]"),
            Self::Decimal(v) => (v, Type::TEXT_ARRAY, "numeric[]"),
            Self::Bool(v) => (v, Type::BOOL_ARRAY, "bool[]"),
            Self::Time(v) => (v, Type::TIMESTAMPTZ_ARRAY, "timestamptz[]"),
        }
    }
}

/// Writes a validated batch in one statement: `data` as written, plus each slotted column's
/// typed copy (see [`super::schema::slot`]), computed here and sent as typed arrays so Postgres
/// does not extract and cast JSON per row.
pub async fn write(
    tx: &mut TenantTx,
    dataset: &Dataset,
    batch: &ValidBatch,
) -> Result<IngestOutcome, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let slots: Vec<(String, SlotValues)> = dataset
        .columns
        .iter()
        .filter_map(|c| {
            let slot = dataset.slot(&c.name).filter(|s| s != "ts")?;
            Some((slot, SlotValues::collect(c, &batch.data)))
        })
        .collect();
    let mut params: Vec<Param<'_>> = vec![
        (&tenant, Type::UUID),
        (&dataset.id, Type::UUID),
        (&batch.keys, Type::TEXT_ARRAY),
        (&batch.data, Type::JSONB_ARRAY),
        (&batch.times, Type::TIMESTAMPTZ_ARRAY),
    ];
    let (mut cols, mut arrays, mut sets) = (String::new(), String::new(), String::new());
    for (slot, values) in &slots {
        let (value, ty, cast) = values.param();
        params.push((value, ty));
        cols.push_str(&format!(", {slot}"));
        arrays.push_str(&format!(", ${}::{cast}", params.len()));
        sets.push_str(&format!(", {slot} = EXCLUDED.{slot}"));
    }
    // Unchanged rows are not updated at all (no version bump, no dead tuple), so a retried batch
    // costs reads only. RETURNING reports only rows that were inserted or updated, with their old
    // and new images where the dataset keeps rollups (its deltas, in the same statement).
    let layout = Layout::of(dataset);
    let images = layout
        .as_ref()
        .map(|l| {
            format!(
                ", {}, {}",
                l.returning("old", "o_"),
                l.returning("new", "n_")
            )
        })
        .unwrap_or_default();
    let lock = if layout.is_some() {
        format!(" WHERE {}", Layout::lock_condition())
    } else {
        String::new()
    };
    let upsert = format!(
        "INSERT INTO app.records AS r (tenant_id, dataset_id, key, data, ts{cols}) \
         SELECT $1, $2, u.* \
         FROM unnest($3::text[], $4::jsonb[], $5::timestamptz[]{arrays}) AS u{lock} \
         ON CONFLICT (tenant_id, dataset_id, key) DO UPDATE \
           SET data = EXCLUDED.data, ts = EXCLUDED.ts{sets}, version = r.version + 1, updated_at = now() \
           WHERE r.data IS DISTINCT FROM EXCLUDED.data \
         RETURNING new.key AS key, new.version AS version, old.key IS NULL AS inserted{images}"
    );
    let sql = match &layout {
        Some(l) => format!(
            "WITH w AS ({upsert}), {} SELECT key, version, inserted FROM w",
            l.apply_deltas(true, Some("NOT inserted"))
        ),
        None => upsert,
    };
    let rows = tx.query(&sql, &params).await?;
    let inserted = rows.iter().filter(|r| r.get::<_, bool>(2)).count();
    let updated = rows.len() - inserted;

    // Chunks follow the records that changed, in the same transaction.
    if !dataset.text_columns.is_empty() && !rows.is_empty() {
        let by_key: std::collections::HashMap<&str, &Value> = batch
            .keys
            .iter()
            .map(String::as_str)
            .zip(batch.data.iter())
            .collect();
        let keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let changed: Vec<ChangedRecord<'_>> = keys
            .iter()
            .zip(&rows)
            .filter_map(|(key, row)| {
                by_key.get(key.as_str()).map(|data| ChangedRecord {
                    key,
                    version: row.get(1),
                    data,
                    new: row.get(2),
                })
            })
            .collect();
        crate::rag::chunks::replace(tx, dataset, &changed).await?;
    }
    Ok(IngestOutcome {
        received: batch.len(),
        inserted,
        updated,
        unchanged: batch.len() - rows.len(),
    })
}

/// A record as stored.
#[derive(Clone, Debug, Serialize)]
pub struct StoredRecord {
    /// The client's key.
    pub key: String,
    /// Bumped on every content change; citations name it.
    pub version: i32,
    /// The values.
    pub data: Value,
    /// First written.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// One record by key.
pub async fn get(
    tx: &mut TenantTx,
    dataset_id: Uuid,
    key: &str,
) -> Result<Option<StoredRecord>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let row = tx
        .query_opt(
            "SELECT key, version, data, created_at, updated_at FROM app.records \
             WHERE tenant_id = $1 AND dataset_id = $2 AND key = $3",
            &[
                (&tenant, Type::UUID),
                (&dataset_id, Type::UUID),
                (&key, Type::TEXT),
            ],
        )
        .await?;
    Ok(row.as_ref().map(stored_record))
}

/// A row of `SELECT key, version, data, created_at, updated_at FROM app.records`.
fn stored_record(r: &tokio_postgres::Row) -> StoredRecord {
    StoredRecord {
        key: r.get(0),
        version: r.get(1),
        data: r.get(2),
        created_at: r.get(3),
        updated_at: r.get(4),
    }
}

/// A page of a dataset's records in key order: those after `after` (exclusive), at most
/// `limit`. One range scan of the records' primary key.
pub async fn list(
    tx: &mut TenantTx,
    dataset_id: Uuid,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<StoredRecord>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let rows = tx
        .query(
            "SELECT key, version, data, created_at, updated_at FROM app.records \
             WHERE tenant_id = $1 AND dataset_id = $2 AND ($3::text IS NULL OR key > $3) \
             ORDER BY key LIMIT $4",
            &[
                (&tenant, Type::UUID),
                (&dataset_id, Type::UUID),
                (&after, Type::TEXT),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    Ok(rows.iter().map(stored_record).collect())
}

/// A version of a record: the current one (`superseded_at` null) or one an update replaced.
#[derive(Clone, Debug, Serialize)]
pub struct RecordVersion {
    /// Its number (the record's `version` while it was current).
    pub version: i32,
    /// Its values.
    pub data: Value,
    /// When it was written.
    pub written_at: DateTime<Utc>,
    /// When an update replaced it; null for the current version.
    pub superseded_at: Option<DateTime<Utc>>,
}

/// The record's replaced versions below `before` (all when `None`), newest first, at most
/// `limit`, as the records' update trigger kept them (migration 0026). The current version is
/// [`get`]'s.
pub async fn replaced_versions(
    tx: &mut TenantTx,
    dataset_id: Uuid,
    key: &str,
    before: Option<i32>,
    limit: i64,
) -> Result<Vec<RecordVersion>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let rows = tx
        .query(
            "SELECT version, data, written_at, superseded_at FROM app.record_versions \
             WHERE tenant_id = $1 AND dataset_id = $2 AND key = $3 \
               AND ($4::int IS NULL OR version < $4) \
             ORDER BY version DESC LIMIT $5",
            &[
                (&tenant, Type::UUID),
                (&dataset_id, Type::UUID),
                (&key, Type::TEXT),
                (&before, Type::INT4),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| RecordVersion {
            version: r.get(0),
            data: r.get(1),
            written_at: r.get(2),
            superseded_at: r.get(3),
        })
        .collect())
}

/// How many records the dataset holds (an index-only count of its primary key range).
pub async fn count(tx: &mut TenantTx, dataset_id: Uuid) -> Result<i64, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let row = tx
        .query_one(
            "SELECT count(*) FROM app.records WHERE tenant_id = $1 AND dataset_id = $2",
            &[(&tenant, Type::UUID), (&dataset_id, Type::UUID)],
        )
        .await?;
    Ok(row.get(0))
}

/// Deletes one record (and its contribution to the dataset's rollups); false if there was none.
pub async fn delete(tx: &mut TenantTx, dataset: &Dataset, key: &str) -> Result<bool, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let delete = "DELETE FROM app.records WHERE tenant_id = $1 AND dataset_id = $2 AND key = $3";
    let sql = match Layout::of(dataset) {
        Some(l) => format!(
            "WITH w AS ({delete} AND {} RETURNING {}), {} SELECT count(*) FROM w",
            Layout::lock_condition(),
            l.returning("old", "o_"),
            l.apply_deltas(false, Some("true"))
        ),
        None => format!("WITH w AS ({delete} RETURNING 1) SELECT count(*) FROM w"),
    };
    let row = tx
        .query_one(
            &sql,
            &[
                (&tenant, Type::UUID),
                (&dataset.id, Type::UUID),
                (&key, Type::TEXT),
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dataset() -> Dataset {
        Dataset {
            id: Uuid::nil(),
            name: "orders".into(),
            columns: vec![
                ColumnDef {
                    name: "region".into(),
                    ty: ColumnType::String,
                    required: true,
                    scale: None,
                },
                ColumnDef {
                    name: "qty".into(),
                    ty: ColumnType::Integer,
                    required: false,
                    scale: None,
                },
                ColumnDef {
                    name: "amount".into(),
                    ty: ColumnType::Number,
                    required: false,
                    scale: None,
                },
                ColumnDef {
                    name: "paid".into(),
                    ty: ColumnType::Boolean,
                    required: false,
                    scale: None,
                },
                ColumnDef {
                    name: "at".into(),
                    ty: ColumnType::Timestamp,
                    required: false,
                    scale: None,
                },
            ],
            text_columns: vec![],
            time_column: Some("at".into()),
            rollups: vec![],
            rollups_ready: true,
            created_at: Utc::now(),
            row_version: String::new(),
        }
    }

    #[test]
    fn valid_records_are_normalized() {
        let batch = validate(&dataset(), vec![json!({
            "key": "o-1",
            "data": {"region": "EU", "qty": 3, "amount": 9.5, "paid": true, "at": "2026-11-26T14:00:00+01:00"}
        })])
        .unwrap_or_else(|(_, e)| panic!("{e:?}"));
        assert_eq!(batch.data[0]["at"], "2026-11-26T13:00:00Z");
        assert_eq!(
            batch.times[0].map(|t| t.to_rfc3339()),
            Some("2026-11-26T13:00:00+00:00".into())
        );
    }

    #[test]
    fn every_bad_record_is_listed_with_index_key_column_and_reason() {
        let items = vec![
            json!({"key": "ok", "data": {"region": "EU"}}),
            json!({"key": "a", "data": {"region": 5}}),
            json!({"key": "b", "data": {"qty": 1.5}}),
            json!({"key": "c", "data": {"region": "EU", "at": "yesterday", "drop": "x"}}),
            json!({"key": "", "data": {}}),
            json!({"key": "ok", "data": {"region": "EU"}}),
            json!([1, 2]),
            json!({"key": "d", "data": {"region": "EU"}, "extra": 1}),
        ];
        let (total, errors) = validate(&dataset(), items).err().unwrap_or_default();
        let got: Vec<(usize, Option<&str>, &str)> = errors
            .iter()
            .map(|e| (e.index, e.column.as_deref(), e.reason))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Some("region"), "type_mismatch"),
                (2, Some("qty"), "type_mismatch"),
                (2, Some("region"), "required"),
                (3, Some("at"), "invalid_timestamp"),
                (3, Some("drop"), "unknown_column"),
                (4, None, "invalid_key"),
                (5, None, "duplicate_key"),
                (6, None, "not_an_object"),
                (7, None, "unknown_field"),
            ]
        );
        assert_eq!(total, 9);
        // A string key that breaks the rules is told the rules, not that it is missing.
        let bad_key = errors
            .iter()
            .find(|e| e.index == 4)
            .map(|e| e.message.as_str());
        assert!(
            bad_key.is_some_and(|m| m.contains("without control characters")),
            "{bad_key:?}"
        );
    }

    #[test]
    fn strings_are_bounded_at_their_limit_and_refuse_nul() {
        let record = |region: String| json!({"key": "k", "data": {"region": region}});
        let at_limit = "é".repeat(MAX_STRING_BYTES / 2);
        assert!(validate(&dataset(), vec![record(at_limit)]).is_ok());
        for (value, reason) in [
            (format!("{}a", "é".repeat(MAX_STRING_BYTES / 2)), "too_long"),
            ("E\0U".to_owned(), "invalid_string"),
        ] {
            let (_, errors) = validate(&dataset(), vec![record(value)])
                .err()
                .unwrap_or_default();
            let got: Vec<&str> = errors.iter().map(|e| e.reason).collect();
            assert_eq!(got, vec![reason]);
        }
    }

    #[test]
    fn ndjson_lines_are_parsed_and_bad_lines_named() {
        assert_eq!(
            parse_ndjson(b"{\"a\":1}\r\n\n{\"b\":2}\n")
                .map(|v| v.len())
                .ok(),
            Some(2)
        );
        let errors = parse_ndjson(b"{\"a\":1}\nnot json\n")
            .err()
            .unwrap_or_default();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].index, 1);
        // Each bad line is named by its own position, blank lines not counted.
        let errors = parse_ndjson(b"not json\n{\"a\":1}\n\nalso bad\n{\"b\":2}\nstill bad")
            .err()
            .unwrap_or_default();
        let at: Vec<usize> = errors.iter().map(|e| e.index).collect();
        assert_eq!(at, vec![0, 2, 4]);
    }
}

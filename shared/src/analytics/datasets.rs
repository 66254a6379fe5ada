//! Datasets as rows of `app.datasets`, read and written only through a [`TenantTx`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use tokio_postgres::types::{Json, Type};
use uuid::Uuid;

use super::is_identifier;
use super::rollup::RollupSpec;
use super::schema::{ColumnDef, DatasetSpec};
use crate::db::{DbError, TenantTx};

/// A dataset as stored.
#[derive(Clone, Debug, Serialize)]
pub struct Dataset {
    /// Its id.
    pub id: Uuid,
    /// Its name, unique within the tenant.
    pub name: String,
    /// Declared columns.
    pub columns: Vec<ColumnDef>,
    /// Columns indexed for retrieval.
    pub text_columns: Vec<String>,
    /// The default time column.
    pub time_column: Option<String>,
    /// Its rollups (none for a dataset created before rollups existed).
    pub rollups: Vec<RollupSpec>,
    /// Whether queries may read them (false while `rollup::enable` counts them).
    #[serde(skip)]
    pub rollups_ready: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Which version of its row this was read from (`xmin`): every change of the dataset's
    /// definition is a new one (`POST /v1/query`, `api::query`, checks it with
    /// `app.expect_dataset` ([`EXPECT_DATASET`]) before running a query compiled against a
    /// remembered definition).
    #[serde(skip)]
    pub row_version: String,
}

impl Dataset {
    /// A declared column by name.
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The typed `app.records` column holding a column's values, if it has one.
    pub fn slot(&self, name: &str) -> Option<String> {
        super::schema::slot(&self.columns, self.time_column.as_deref(), name)
    }

    /// The typed SQL expression for a column of `r` (an `app.records` row): its slot, or its
    /// value extracted from `r.data`.
    pub fn column_expr(&self, c: &ColumnDef) -> String {
        self.column_expr_in(c, "r")
    }

    /// The same for an `app.records` row named `row`.
    pub fn column_expr_in(&self, c: &ColumnDef, row: &str) -> String {
        match self.slot(&c.name) {
            Some(slot) => format!("{row}.{slot}"),
            None => super::schema::json_expr(&format!("{row}.data"), c),
        }
    }
}

/// How a path or query names a dataset: by id or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetRef {
    /// By id.
    Id(Uuid),
    /// By name.
    Name(String),
}

impl DatasetRef {
    /// Parses a path segment or a query's `dataset`; None for something that can name no dataset
    /// (which callers answer exactly as they answer an unknown dataset).
    pub fn parse(s: &str) -> Option<Self> {
        if let (36, Ok(id)) = (s.len(), Uuid::try_parse(s)) {
            return Some(Self::Id(id));
        }
        is_identifier(s).then(|| Self::Name(s.to_owned()))
    }
}

/// Dataset definitions this process read recently, by tenant and by the name or id a request
/// gave, so that a query can be compiled before its transaction starts and sent in one flight
/// with [`EXPECT_DATASET`], which aborts it if the definition has changed since (the caller then
/// reads it again). Correctness rests on that check, not on the TTL; the TTL and the capacity
/// (past which it starts over) only bound what is kept.
pub struct Remembered {
    entries: crate::cache::TtlCache<(crate::TenantId, String), std::sync::Arc<Dataset>>,
}

impl std::fmt::Debug for Remembered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remembered").finish_non_exhaustive()
    }
}

impl Default for Remembered {
    fn default() -> Self {
        Self {
            entries: crate::cache::TtlCache::new(std::time::Duration::from_secs(300), 4_096),
        }
    }
}

impl Remembered {
    /// The definition last read for `tenant` under `dataset` (as the request named it).
    pub fn get(&self, tenant: crate::TenantId, dataset: &str) -> Option<std::sync::Arc<Dataset>> {
        self.entries.get(&(tenant, dataset.to_owned()))
    }

    /// Take before reading a definition to [`remember`](Self::remember).
    pub fn read_at(&self) -> crate::cache::Generation {
        self.entries.generation()
    }

    /// Remembers the definition read since `read_at` for `tenant` under `dataset`, unless
    /// something was forgotten meanwhile (a slower read must not put back an older version).
    pub fn remember(
        &self,
        read_at: crate::cache::Generation,
        tenant: crate::TenantId,
        dataset: &str,
        ds: Dataset,
    ) {
        self.entries.insert_read_at(
            read_at,
            (tenant, dataset.to_owned()),
            std::sync::Arc::new(ds),
        );
    }

    /// Forgets what was remembered for `tenant` under `dataset` (it has changed).
    pub fn forget(&self, tenant: crate::TenantId, dataset: &str) {
        self.entries.forget_key(&(tenant, dataset.to_owned()));
    }
}

/// Fails the transaction with [`DATASET_CHANGED`] unless the dataset `$1` is still at row version
/// `$2` ([`Dataset::row_version`]); migration 0027.
pub const EXPECT_DATASET: &str = "SELECT app.expect_dataset($1, $2)";

/// The SQLSTATE of [`EXPECT_DATASET`]'s refusal.
pub const DATASET_CHANGED: &str = "TY001";

/// Whether `e` is [`EXPECT_DATASET`]'s refusal.
pub fn changed(e: &DbError) -> bool {
    e.sqlstate().is_some_and(|s| s.code() == DATASET_CHANGED)
}

const COLUMNS: &str = "dataset_id, name, columns, text_columns, time_column, created_at, rollups, \
     rollups_ready, xmin::text";

fn from_row(row: &Row) -> Result<Dataset, DbError> {
    let Json(columns): Json<Vec<ColumnDef>> = row.try_get(2)?;
    Ok(Dataset {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        columns,
        text_columns: row.try_get(3)?,
        time_column: row.try_get(4)?,
        created_at: row.try_get(5)?,
        rollups: row.try_get::<_, Json<Vec<RollupSpec>>>(6)?.0,
        rollups_ready: row.try_get(7)?,
        row_version: row.try_get(8)?,
    })
}

/// Creates a dataset; `Ok(None)` if the tenant already has one with that name.
pub async fn create(tx: &mut TenantTx, spec: &DatasetSpec) -> Result<Option<Dataset>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let columns = Json(&spec.columns);
    let rollups = Json(spec.rollups());
    let rows = tx
        .query(
            &format!(
                "INSERT INTO app.datasets (tenant_id, name, columns, text_columns, time_column, rollups) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, name) DO NOTHING \
                 RETURNING {COLUMNS}"
            ),
            &[
                (&tenant, Type::UUID),
                (&spec.name, Type::TEXT),
                (&columns, Type::JSONB),
                (&spec.text_columns, Type::TEXT_ARRAY),
                (&spec.time_column, Type::TEXT),
                (&rollups, Type::JSONB),
            ],
        )
        .await?;
    rows.first().map(from_row).transpose()
}

/// Every dataset of the tenant, by name.
pub async fn list(tx: &mut TenantTx) -> Result<Vec<Dataset>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let rows = tx
        .query(
            &format!("SELECT {COLUMNS} FROM app.datasets WHERE tenant_id = $1 ORDER BY name"),
            &[(&tenant, Type::UUID)],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// One dataset by id or name.
pub async fn find(tx: &mut TenantTx, dataset: &DatasetRef) -> Result<Option<Dataset>, DbError> {
    find_locking(tx, dataset, "").await
}

/// One dataset, for a transaction that writes its records: its row is share-locked until the
/// transaction ends, so a change to its rollups (`rollup::enable`) waits for every writer that
/// read the old definition, and a writer that reads while the change is pending waits and reads
/// the new one.
pub async fn find_for_write(
    tx: &mut TenantTx,
    dataset: &DatasetRef,
) -> Result<Option<Dataset>, DbError> {
    find_locking(tx, dataset, " FOR SHARE").await
}

async fn find_locking(
    tx: &mut TenantTx,
    dataset: &DatasetRef,
    lock: &str,
) -> Result<Option<Dataset>, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let row = match dataset {
        DatasetRef::Id(id) => {
            tx.query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM app.datasets WHERE tenant_id = $1 AND dataset_id = $2{lock}"
                ),
                &[(&tenant, Type::UUID), (id, Type::UUID)],
            )
            .await?
        }
        DatasetRef::Name(name) => {
            tx.query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM app.datasets WHERE tenant_id = $1 AND name = $2{lock}"
                ),
                &[(&tenant, Type::UUID), (name, Type::TEXT)],
            )
            .await?
        }
    };
    row.as_ref().map(from_row).transpose()
}

/// Deletes a dataset and its records; false if there was none.
pub async fn delete(tx: &mut TenantTx, dataset: &DatasetRef) -> Result<bool, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    let n = match dataset {
        DatasetRef::Id(id) => {
            tx.execute(
                "DELETE FROM app.datasets WHERE tenant_id = $1 AND dataset_id = $2",
                &[(&tenant, Type::UUID), (id, Type::UUID)],
            )
            .await?
        }
        DatasetRef::Name(name) => {
            tx.execute(
                "DELETE FROM app.datasets WHERE tenant_id = $1 AND name = $2",
                &[(&tenant, Type::UUID), (name, Type::TEXT)],
            )
            .await?
        }
    };
    Ok(n == 1)
}

//! Rollups (`app.rollups`, `migrations/0017_rollups.sql`): a dataset declares up to
//! [`MAX_ROLLUPS`], each a grain (hour or day) of its time column and up to [`MAX_DIMENSIONS`]
//! low-cardinality columns. Each keeps, per bucket and dimension values, the record count and each
//! measure's count of values and exact sum. The measures are the dataset's integer and decimal
//! columns (the first [`MAX_MEASURES`]).
//!
//! They are kept by the statements that change records, from each changed row's old and new image
//! (`RETURNING old.…, new.…`): a new record adds its contribution, a deleted one subtracts it, an
//! update does both, and a group's row changes by the sum of its deltas in the same statement, so
//! the rollups commit with the records or not at all, and concurrent writers add their deltas to
//! the latest row (`ON CONFLICT … DO UPDATE`). Sums are `numeric`: deltas cancel exactly.
//!
//! Which queries read them, and how, is [`crate::analytics::query::compile`]'s business.

use serde::{Deserialize, Serialize};
use tokio_postgres::types::Type;

use super::FieldError;
use super::datasets::Dataset;
use super::schema::{ColumnDef, ColumnType};
use crate::db::{DbError, TenantTx};

/// Most rollups a dataset may declare.
pub const MAX_ROLLUPS: usize = 4;
/// Most dimensions a rollup may have.
pub const MAX_DIMENSIONS: usize = 4;
/// Most measures a rollup holds (integer and decimal columns, in schema order).
pub const MAX_MEASURES: usize = 16;
/// The longest dimension value, in bytes: rollup groups are keys of a B-tree index, whose entries
/// Postgres caps near 2.7 kB. A record with a longer value in a dimension column is refused.
pub const MAX_DIMENSION_BYTES: usize = 512;
/// The first key of the advisory lock every rollup writer of a dataset takes (`'roll'`).
const LOCK_CLASS: i32 = 0x726f_6c6c;
/// The origin of every bucket (a Monday at midnight, so days and weeks nest too).
pub const ORIGIN: &str = "timestamptz '2000-01-03 00:00:00+00'";

/// A rollup's bucket width.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grain {
    /// Hours: answers hour, day, week and month buckets.
    #[default]
    Hour,
    /// Days (UTC): answers day, week and month buckets, with 24 times fewer rows.
    Day,
}

impl Grain {
    /// Its width in seconds.
    pub fn secs(self) -> i64 {
        match self {
            Grain::Hour => 3600,
            Grain::Day => 86_400,
        }
    }

    fn interval(self) -> &'static str {
        match self {
            Grain::Hour => "1 hour",
            Grain::Day => "1 day",
        }
    }
}

/// One declared rollup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupSpec {
    /// String, boolean or integer columns it groups by.
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// Its bucket width.
    #[serde(default)]
    pub bucket: Grain,
}

/// What a dataset gets when it declares nothing: one rollup per hour, without dimensions.
pub fn default_rollups() -> Vec<RollupSpec> {
    vec![RollupSpec {
        dimensions: Vec::new(),
        bucket: Grain::Hour,
    }]
}

/// Every problem with declared rollups, against the dataset's columns.
pub(super) fn validate(
    rollups: &[RollupSpec],
    column: impl Fn(&str) -> Option<ColumnType>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if rollups.len() > MAX_ROLLUPS {
        errors.push(FieldError::new(
            "/rollups",
            "too_many_rollups",
            format!("A dataset has at most {MAX_ROLLUPS} rollups."),
        ));
    }
    for (r, spec) in rollups.iter().enumerate() {
        if spec.dimensions.len() > MAX_DIMENSIONS {
            errors.push(FieldError::new(
                format!("/rollups/{r}/dimensions"),
                "too_many_dimensions",
                format!("A rollup has at most {MAX_DIMENSIONS} dimensions."),
            ));
        }
        for (i, d) in spec.dimensions.iter().enumerate() {
            let path = format!("/rollups/{r}/dimensions/{i}");
            match column(d) {
                _ if spec.dimensions[..i].contains(d) => errors.push(FieldError::new(
                    path,
                    "duplicate_dimension",
                    "This dimension is listed twice.",
                )),
                Some(ColumnType::String | ColumnType::Boolean | ColumnType::Integer) => {}
                Some(_) => errors.push(FieldError::new(
                    path,
                    "invalid_dimension",
                    "Dimensions are string, boolean or integer columns.",
                )),
                None => errors.push(FieldError::new(
                    path,
                    "unknown_column",
                    "Dimensions must be declared columns.",
                )),
            }
        }
    }
    errors
}

/// One rollup of a dataset, as its rows lie in `app.rollups`.
#[derive(Debug)]
pub struct Cube<'d> {
    /// Its `rollup` number (1-based, in declared order).
    pub no: i16,
    /// Dimension k (1-based) is `g{k}`.
    pub dims: Vec<&'d ColumnDef>,
    /// Its bucket width.
    pub grain: Grain,
}

impl<'d> Cube<'d> {
    /// The rollup column number (`g{k}`) holding a dimension's values as text, and its column.
    pub fn dim(&self, name: &str) -> Option<(usize, &'d ColumnDef)> {
        self.dims
            .iter()
            .position(|c| c.name == name)
            .map(|k| (k + 1, self.dims[k]))
    }

    /// A rollup row's dimension as its column's type (`r` is the rollup row).
    pub fn dim_expr(&self, k: usize, c: &ColumnDef) -> String {
        match c.ty {
            ColumnType::Boolean => format!("(r.g{k})::boolean"),
            ColumnType::Integer => format!("(r.g{k})::int8"),
            _ => format!("r.g{k}"),
        }
    }
}

/// Where a dataset's columns live in its rollup rows.
#[derive(Debug)]
pub struct Layout<'d> {
    ds: &'d Dataset,
    /// Its rollups.
    pub cubes: Vec<Cube<'d>>,
    /// Measure k (1-based) is `c{k}` (count of values) and `s{k}` (their sum).
    pub measures: Vec<&'d ColumnDef>,
}

impl<'d> Layout<'d> {
    /// The layout, if the dataset has rollups.
    pub fn of(ds: &'d Dataset) -> Option<Self> {
        if ds.rollups.is_empty() {
            return None;
        }
        let cubes = ds
            .rollups
            .iter()
            .zip(1..)
            .map(|(spec, no)| Cube {
                no,
                dims: spec
                    .dimensions
                    .iter()
                    .filter_map(|d| ds.column(d))
                    .collect(),
                grain: spec.bucket,
            })
            .collect();
        let measures = ds
            .columns
            .iter()
            .filter(|c| matches!(c.ty, ColumnType::Integer | ColumnType::Decimal))
            .take(MAX_MEASURES)
            .collect();
        Some(Self {
            ds,
            cubes,
            measures,
        })
    }

    /// The measure number (`c{k}`, `s{k}`) of a column.
    pub fn measure(&self, name: &str) -> Option<(usize, &'d ColumnDef)> {
        self.measures
            .iter()
            .position(|c| c.name == name)
            .map(|k| (k + 1, self.measures[k]))
    }

    /// A condition (for a statement's `WHERE`) that takes the dataset's rollup lock before the
    /// statement writes any row: an uncorrelated subquery, evaluated once, before the first row
    /// passes the filter. (`rebuild` takes it in a statement of its own: a statement's snapshot
    /// is taken before the lock is.) The key is a hash of the dataset's id, so two datasets can
    /// share a lock now and then: they wait for each other, nothing worse.
    /// Writers of one dataset's rollups take turns for the rest of their transactions, so two of
    /// them never hold rollup rows the other wants (an import's slices lock rows statement by
    /// statement, which would otherwise deadlock against another writer). `$2` is the dataset.
    pub fn lock_condition() -> String {
        format!(
            "(SELECT 1 FROM (SELECT pg_advisory_xact_lock({LOCK_CLASS}, hashtext($2::text))) l) = 1"
        )
    }

    /// Positions (in the schema) of the columns some rollup groups by.
    fn dim_columns(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = self
            .cubes
            .iter()
            .flat_map(|c| &c.dims)
            .filter_map(|d| self.ds.columns.iter().position(|c| c.name == d.name))
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx
    }

    fn position(&self, c: &ColumnDef) -> usize {
        self.ds
            .columns
            .iter()
            .position(|x| x.name == c.name)
            .unwrap_or_default()
    }

    /// `RETURNING` (or select) items naming a row image's time `{prefix}ts`, dimension values
    /// `{prefix}v{i}` (by schema position) and measures `{prefix}m{k}`, over the `app.records`
    /// row `row` (`old`, `new`), for [`Self::apply_deltas`].
    pub fn returning(&self, row: &str, prefix: &str) -> String {
        let mut items = vec![format!("{row}.ts AS {prefix}ts")];
        for i in self.dim_columns() {
            let c = &self.ds.columns[i];
            items.push(format!(
                "({})::text AS {prefix}v{i}",
                self.ds.column_expr_in(c, row)
            ));
        }
        for (k, c) in self.measures.iter().enumerate() {
            items.push(format!(
                "({})::numeric AS {prefix}m{}",
                self.ds.column_expr_in(c, row),
                k + 1
            ));
        }
        items.join(", ")
    }

    /// CTEs (to follow a CTE `w` whose rows carry [`Self::returning`] images) that add each new
    /// image (`n_`, if `new`) and subtract each old one (`o_`, where `old_where` holds) into every
    /// rollup of tenant `$1`, dataset `$2`. A group whose deltas cancel is not written.
    pub fn apply_deltas(&self, new: bool, old_where: Option<&str>) -> String {
        let m = self.measures.len();
        let has_time = self.ds.time_column.is_some();
        let part = |cube: &Cube<'_>, prefix: &str, sign: &str| {
            let bucket = if has_time {
                format!(
                    "date_bin('{}', {prefix}ts, {ORIGIN})",
                    cube.grain.interval()
                )
            } else {
                "NULL::timestamptz".to_owned()
            };
            let mut cols = vec![
                format!("{}::int2 AS rollup", cube.no),
                format!("{bucket} AS b"),
            ];
            for k in 0..MAX_DIMENSIONS {
                cols.push(match cube.dims.get(k) {
                    Some(c) => format!("{prefix}v{} AS g{}", self.position(c), k + 1),
                    None => format!("NULL::text AS g{}", k + 1),
                });
            }
            cols.push(format!("{sign}1 AS n"));
            for k in 1..=m {
                cols.push(format!(
                    "{sign}(({prefix}m{k}) IS NOT NULL)::int AS c{k}, {sign}coalesce({prefix}m{k}, 0) AS s{k}"
                ));
            }
            cols.join(", ")
        };
        let mut parts = Vec::new();
        for cube in &self.cubes {
            if new {
                parts.push(format!("SELECT {} FROM w", part(cube, "n_", "")));
            }
            if let Some(cond) = old_where {
                parts.push(format!(
                    "SELECT {} FROM w WHERE {cond}",
                    part(cube, "o_", "-")
                ));
            }
        }
        let keys = "rollup, b, g1, g2, g3, g4";
        let sums: Vec<String> = std::iter::once("sum(n) AS n".to_owned())
            .chain((1..=m).map(|k| format!("sum(c{k}) AS c{k}, sum(s{k}) AS s{k}")))
            .collect();
        let nonzero: Vec<String> = std::iter::once("n <> 0".to_owned())
            .chain((1..=m).map(|k| format!("c{k} <> 0 OR s{k} <> 0")))
            .collect();
        let cols: Vec<String> = std::iter::once("n".to_owned())
            .chain((1..=m).map(|k| format!("c{k}, s{k}")))
            .collect();
        let sets: Vec<String> = std::iter::once("n = x.n + EXCLUDED.n".to_owned())
            .chain((1..=m).map(|k| {
                format!(
                    "c{k} = coalesce(x.c{k}, 0) + EXCLUDED.c{k}, s{k} = coalesce(x.s{k}, 0) + EXCLUDED.s{k}"
                )
            }))
            .collect();
        // Groups in key order, so concurrent writers lock rollup rows in the same order.
        format!(
            "d AS ({parts}), \
             g AS (SELECT {keys}, {sums} FROM d GROUP BY {keys}), \
             u AS (INSERT INTO app.rollups AS x (tenant_id, dataset_id, rollup, bucket, g1, g2, g3, g4, {cols}) \
               SELECT $1, $2, {keys}, {cols} FROM g WHERE {nonzero} ORDER BY {keys} \
               ON CONFLICT (tenant_id, dataset_id, rollup, bucket, g1, g2, g3, g4) DO UPDATE SET {sets})",
            parts = parts.join(" UNION ALL "),
            sums = sums.join(", "),
            nonzero = nonzero.join(" OR "),
            cols = cols.join(", "),
            sets = sets.join(", "),
        )
    }
}

/// Recomputes a dataset's rollups from its records, under the dataset's rollup lock: for records
/// written around the statements that keep rollups (a bulk seed with SQL), and the last step of
/// [`enable`]. Returns the rollup rows written.
pub async fn rebuild(tx: &mut TenantTx, ds: &Dataset) -> Result<u64, DbError> {
    let tenant = tx.tenant_id().as_uuid();
    // The dataset's rollup lock first, in a statement of its own: no writer's deltas may commit
    // between the delete and the recount (a lock taken inside the delete would be taken only if
    // it found a row to delete, and inside the recount only after its snapshot).
    tx.query_one(
        &format!("SELECT {}", Layout::lock_condition()),
        &[(&tenant, Type::UUID), (&ds.id, Type::UUID)],
    )
    .await?;
    tx.execute(
        "DELETE FROM app.rollups WHERE tenant_id = $1 AND dataset_id = $2",
        &[(&tenant, Type::UUID), (&ds.id, Type::UUID)],
    )
    .await?;
    let Some(layout) = Layout::of(ds) else {
        return Ok(0);
    };
    let sql = format!(
        "WITH w AS (SELECT {} FROM app.records rec WHERE rec.tenant_id = $1 AND rec.dataset_id = $2), {} \
         SELECT count(*) FROM g",
        layout.returning("rec", "n_"),
        layout.apply_deltas(true, None),
    );
    let row = tx
        .query_one(&sql, &[(&tenant, Type::UUID), (&ds.id, Type::UUID)])
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// What [`enable`] can fail on.
#[derive(Debug, thiserror::Error)]
pub enum EnableError {
    /// No dataset by that name or id.
    #[error("no such dataset")]
    NotFound,
    /// The rollups do not fit the dataset's columns.
    #[error("invalid rollups: {0:?}")]
    Invalid(Vec<FieldError>),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Gives an existing dataset rollups (or new ones) while it keeps taking writes, and returns the
/// rollup rows computed. In two transactions:
/// 1. the dataset's rollups are set and marked not ready. The update waits for every writer that
///    read the old definition (writers share-lock the dataset's row: `datasets::find_for_write`),
///    and writers that come meanwhile wait for it and read the new one, so once it commits every
///    writer keeps the new rollups; queries keep reading records while they are not ready;
/// 2. marked ready (an update of the dataset's row, which again waits for the writers in flight
///    and holds new ones back), then recounted from the records under the dataset's rollup lock,
///    replacing whatever deltas came before; queries read them once this commits.
///
/// Writers of the dataset wait for the recount, which reads all its records.
pub async fn enable(
    db: &crate::db::Db,
    ctx: &crate::db::TenantContext,
    dataset: &super::datasets::DatasetRef,
    rollups: Vec<RollupSpec>,
) -> Result<u64, EnableError> {
    use crate::db::Access;
    let mut tx = db.begin(ctx, Access::ReadWrite).await?;
    let ds = super::datasets::find(&mut tx, dataset)
        .await?
        .ok_or(EnableError::NotFound)?;
    let errors = validate(&rollups, |name| ds.column(name).map(|c| c.ty));
    if !errors.is_empty() {
        return Err(EnableError::Invalid(errors));
    }
    let tenant = tx.tenant_id().as_uuid();
    let spec = tokio_postgres::types::Json(&rollups);
    tx.execute(
        "UPDATE app.datasets SET rollups = $3, rollups_ready = false \
         WHERE tenant_id = $1 AND dataset_id = $2",
        &[
            (&tenant, Type::UUID),
            (&ds.id, Type::UUID),
            (&spec, Type::JSONB),
        ],
    )
    .await?;
    tx.commit().await?;
    // Ready first, then the lock: a writer takes the dataset's row (share) before the rollup
    // lock, so taking them in the other order here would deadlock with it. Queries see "ready"
    // only when this transaction commits, after the recount.
    let mut tx = db.begin(ctx, Access::ReadWrite).await?;
    tx.execute(
        "UPDATE app.datasets SET rollups_ready = true WHERE tenant_id = $1 AND dataset_id = $2",
        &[(&tenant, Type::UUID), (&ds.id, Type::UUID)],
    )
    .await?;
    let ds = super::datasets::find(&mut tx, dataset)
        .await?
        .ok_or(EnableError::NotFound)?;
    let rows = rebuild(&mut tx, &ds).await?;
    tx.commit().await?;
    Ok(rows)
}

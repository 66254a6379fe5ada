//! Queries answered from a rollup (`crate::analytics::rollup`) when that gives exactly the raw
//! path's result: every filter column one of its dimensions, groups by its dimensions and by
//! buckets of the time column at least as wide as its grain, and aggregates that partial sums
//! combine exactly (`count`, and `sum`/`avg` of integer and decimal columns). Anything else runs on
//! the records.
//!
//! A time range need not fall on bucket boundaries: whole buckets come from the rollup, and the
//! partial ones at either edge from the records, each side producing the same partials (count,
//! and each measure's count and sum per group), summed over both:
//!
//! ```text
//! SELECT outputs FROM (
//!     SELECT keys, sum(n) n, sum(c1) c1, sum(s1) s1 FROM app.rollups r WHERE … GROUP BY keys
//!   UNION ALL
//!     SELECT keys, count(*) n, count(m1) c1, sum(m1) s1 FROM app.records r WHERE <edges> GROUP BY keys
//! ) p GROUP BY keys HAVING sum(n) > 0 ORDER BY … LIMIT …
//! ```
//!
//! Sums are `numeric` on both sides, so they add exactly; an average is the sum over the count,
//! computed as Postgres computes `avg`. Equality with the raw path is tested over generated
//! queries (`tests/integration/rollups.rs`).

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::types::Type;

use super::compile::{Compiler, WIDE_ZERO, aggregates, bucket_expr};
use super::spec::{AggFn, AggregateSpec, Bucket, Direction, Filter, GroupKey, QuerySpec};
use super::{CompiledQuery, OutputColumn};
use crate::analytics::datasets::Dataset;
use crate::analytics::rollup::{Cube, Grain, Layout};
use crate::analytics::schema::ColumnType;

/// The partials both sides produce beyond the group keys.
#[derive(Default)]
struct Partials {
    /// Measures whose count and sum are needed (`c{k}`, `s{k}`).
    measures: Vec<usize>,
    /// Dimensions whose non-null count is needed (`cd{k}`).
    dim_counts: Vec<usize>,
}

/// The query from the dataset's rollups, if one answers it exactly (the one with the fewest
/// dimensions that does); `raw` is the same query compiled for the records (its outputs and limit
/// are the ones to keep).
pub(super) fn compile(
    spec: &QuerySpec,
    ds: &Dataset,
    layout: &Layout<'_>,
    tenant: uuid::Uuid,
    raw: &CompiledQuery,
) -> Option<CompiledQuery> {
    if spec.group_by.is_empty() && spec.aggregates.is_empty() {
        return None;
    }
    let mut cubes: Vec<&Cube<'_>> = layout.cubes.iter().collect();
    cubes.sort_by_key(|c| c.dims.len());
    cubes
        .into_iter()
        .find_map(|cube| from_cube(spec, ds, layout, cube, tenant, raw))
}

fn from_cube(
    spec: &QuerySpec,
    ds: &Dataset,
    layout: &Layout<'_>,
    cube: &Cube<'_>,
    tenant: uuid::Uuid,
    raw: &CompiledQuery,
) -> Option<CompiledQuery> {
    if let Some(f) = &spec.filter
        && !only_dimensions(f, cube)
    {
        return None;
    }
    let time = ds.time_column.as_deref();
    let range = match &spec.time_range {
        None => (None, None),
        Some(r) => {
            if r.column.as_deref().is_some_and(|c| Some(c) != time) || time.is_none() {
                return None;
            }
            let parse = |s: &Option<String>| match s {
                None => Some(None),
                Some(s) => DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|t| Some(t.with_timezone(&Utc))),
            };
            (parse(&r.from)?, parse(&r.to)?)
        }
    };

    // Group keys: (rollup expression, records expression).
    let mut keys = Vec::new();
    for g in &spec.group_by {
        match g {
            GroupKey::Column(name) => {
                let (k, c) = cube.dim(name)?;
                keys.push((cube.dim_expr(k, c), ds.column_expr(c)));
            }
            GroupKey::Bucket(b) => {
                let fits = match cube.grain {
                    Grain::Hour => b.bucket != Bucket::Minute,
                    Grain::Day => !matches!(b.bucket, Bucket::Minute | Bucket::Hour),
                };
                if Some(b.column.as_str()) != time || !fits {
                    return None;
                }
                let c = ds.column(&b.column)?;
                keys.push((
                    bucket_expr(b.bucket, "r.bucket"),
                    bucket_expr(b.bucket, &ds.column_expr(c)),
                ));
            }
        }
    }

    // Aggregates over the partials `p`.
    let mut partials = Partials::default();
    let mut outputs: Vec<String> = (1..=keys.len()).map(|i| format!("p.k{i}")).collect();
    for a in aggregates(spec).iter() {
        outputs.push(aggregate(a, layout, cube, &mut partials)?);
    }

    let mut c = Compiler::new(ds);
    let t = c.param(tenant, Type::UUID);
    let d = c.param(ds.id, Type::UUID);

    // Whole buckets from the rollup; the partial ones at the edges from the records.
    let (from, to) = range;
    let grain = cube.grain.secs();
    let (from_up, to_down) = (
        from.map(|t| ceil_to(t, grain)),
        to.map(|t| floor_to(t, grain)),
    );
    if let (Some(a), Some(b)) = (from_up, to_down)
        && a >= b
    {
        return None; // not one whole bucket: the records are the faster path anyway
    }
    let mut rollup_where = vec![
        format!("r.tenant_id = {t}"),
        format!("r.dataset_id = {d}"),
        format!("r.rollup = {}", cube.no),
    ];
    c.rollup = Some(cube);
    if let Some(f) = &spec.filter {
        rollup_where.push(c.filter(f, "/filter", 0)?);
    }
    c.rollup = None;
    if let Some(a) = from_up {
        rollup_where.push(format!("r.bucket >= {}", c.param(a, Type::TIMESTAMPTZ)));
    }
    if let Some(b) = to_down {
        rollup_where.push(format!("r.bucket < {}", c.param(b, Type::TIMESTAMPTZ)));
    }
    let mut edges = Vec::new();
    for (lo, hi) in [(from, from_up), (to_down, to)] {
        if let (Some(lo), Some(hi)) = (lo, hi)
            && lo < hi
        {
            let (lo, hi) = (
                c.param(lo, Type::TIMESTAMPTZ),
                c.param(hi, Type::TIMESTAMPTZ),
            );
            edges.push(format!("(r.ts >= {lo} AND r.ts < {hi})"));
        }
    }

    let rollup_keys: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, (r, _))| format!("{r} AS k{}", i + 1))
        .collect();
    let mut rollup_sums = vec!["sum(r.n) AS n".to_owned()];
    rollup_sums.extend(
        partials
            .measures
            .iter()
            .map(|k| format!("sum(r.c{k}) AS c{k}, sum(r.s{k}) AS s{k}")),
    );
    rollup_sums.extend(
        partials
            .dim_counts
            .iter()
            .map(|k| format!("sum(r.n) FILTER (WHERE r.g{k} IS NOT NULL) AS cd{k}")),
    );
    let group = |exprs: Vec<&String>| {
        if exprs.is_empty() {
            String::new()
        } else {
            let list: Vec<&str> = exprs.iter().map(|s| s.as_str()).collect();
            format!(" GROUP BY {}", list.join(", "))
        }
    };
    let mut sql = format!(
        "SELECT {} FROM app.rollups r WHERE {}{}",
        rollup_keys
            .iter()
            .chain(&rollup_sums)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        rollup_where.join(" AND "),
        group(keys.iter().map(|(r, _)| r).collect()),
    );
    if !edges.is_empty() {
        let mut raw_where = vec![format!("r.tenant_id = {t}"), format!("r.dataset_id = {d}")];
        if let Some(f) = &spec.filter {
            c.reset_conditions();
            raw_where.push(c.filter(f, "/filter", 0)?);
        }
        raw_where.push(format!("({})", edges.join(" OR ")));
        let mut cols: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, (_, r))| format!("{r} AS k{}", i + 1))
            .collect();
        cols.push("count(*) AS n".into());
        for k in &partials.measures {
            let m = ds.column_expr(layout.measures[k - 1]);
            cols.push(format!("count({m}) AS c{k}, sum({m}) AS s{k}"));
        }
        for k in &partials.dim_counts {
            cols.push(format!(
                "count({}) AS cd{k}",
                ds.column_expr(cube.dims[k - 1])
            ));
        }
        sql.push_str(&format!(
            " UNION ALL SELECT {} FROM app.records r WHERE {}{}",
            cols.join(", "),
            raw_where.join(" AND "),
            group(keys.iter().map(|(_, r)| r).collect()),
        ));
    }

    let key_refs: Vec<String> = (1..=keys.len()).map(|i| format!("p.k{i}")).collect();
    let mut outer = format!(
        "SELECT jsonb_build_array({}) FROM ({sql}) p",
        outputs.join(", ")
    );
    if !key_refs.is_empty() {
        // A group whose records are all gone keeps a rollup row with n = 0: it is no group.
        outer.push_str(&format!(
            " GROUP BY {} HAVING sum(p.n) > 0",
            key_refs.join(", ")
        ));
    }
    let mut order = Vec::new();
    for o in &spec.order_by {
        let i = raw.columns.iter().position(|col| col.name == o.by)?;
        let dir = if o.dir == Direction::Desc {
            "DESC"
        } else {
            "ASC"
        };
        order.push(format!("{} {dir} NULLS LAST", outputs[i]));
    }
    order.extend(key_refs.iter().map(|k| format!("{k} ASC NULLS LAST")));
    if !key_refs.is_empty() {
        outer.push_str(&format!(" ORDER BY {}", order.join(", ")));
    }
    let fetch = c.param(raw.limit as i64 + 1, Type::INT8);
    outer.push_str(&format!(" LIMIT {fetch}"));
    if !c.errors.is_empty() {
        return None;
    }
    Some(CompiledQuery {
        sql: outer,
        params: c.params,
        columns: raw.columns.iter().map(OutputColumn::clone).collect(),
        limit: raw.limit,
    })
}

/// The SQL of one aggregate over the partials, noting the partials it needs; None if the
/// rollups cannot give it exactly.
fn aggregate(
    a: &AggregateSpec,
    layout: &Layout<'_>,
    cube: &Cube<'_>,
    partials: &mut Partials,
) -> Option<String> {
    let mut measure = |k: usize| {
        if !partials.measures.contains(&k) {
            partials.measures.push(k);
        }
    };
    match (a.func, a.column.as_deref()) {
        (AggFn::Count, None) => Some("coalesce(sum(p.n), 0)::int8".into()),
        (AggFn::Count, Some(name)) => {
            if let Some((k, _)) = layout.measure(name) {
                measure(k);
                Some(format!("coalesce(sum(p.c{k}), 0)::int8"))
            } else {
                let (k, _) = cube.dim(name)?;
                if !partials.dim_counts.contains(&k) {
                    partials.dim_counts.push(k);
                }
                Some(format!("coalesce(sum(p.cd{k}), 0)::int8"))
            }
        }
        (AggFn::Sum, Some(name)) => {
            let (k, c) = layout.measure(name)?;
            measure(k);
            let sum = format!("CASE WHEN sum(p.c{k}) > 0 THEN sum(p.s{k}) END");
            Some(if c.ty == ColumnType::Decimal {
                format!("trim_scale({sum})")
            } else {
                sum
            })
        }
        (AggFn::Avg, Some(name)) => {
            let (k, c) = layout.measure(name)?;
            measure(k);
            Some(match (c.ty, c.scale) {
                (ColumnType::Decimal, Some(scale)) => format!(
                    "CASE WHEN sum(p.c{k}) > 0 THEN round((sum(p.s{k}) + {WIDE_ZERO}) / sum(p.c{k}), {scale}) END"
                ),
                _ => format!(
                    "CASE WHEN sum(p.c{k}) > 0 THEN (sum(p.s{k}) / sum(p.c{k}))::float8 END"
                ),
            })
        }
        _ => None,
    }
}

/// Whether every column the filter names is a dimension of the rollup.
fn only_dimensions(f: &Filter, cube: &Cube<'_>) -> bool {
    match f {
        Filter::And(items) | Filter::Or(items) => items.iter().all(|i| only_dimensions(i, cube)),
        Filter::Not(inner) => only_dimensions(inner, cube),
        Filter::Condition(c) => cube.dim(&c.column).is_some(),
    }
}

/// The start of the `secs`-wide bucket holding `t` (buckets start at whole multiples of `secs`
/// from the epoch, as from the rollups' origin: a Monday midnight).
fn floor_to(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp().div_euclid(secs) * secs, 0).unwrap_or(t)
}

/// The first bucket start at or after `t`.
fn ceil_to(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    let floor = floor_to(t, secs);
    if floor == t {
        t
    } else {
        floor + Duration::seconds(secs)
    }
}

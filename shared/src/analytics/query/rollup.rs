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
//! A coarser rollup (days) has its partial buckets at the edges filled by a finer one (hours) where
//! a finer one answers the query too: whole days from the first, the whole hours around them from
//! the second, and only the partial hours at either end from the records (a third branch of the
//! same shape). Of the rollups that answer a query, the one with the fewest dimensions is read,
//! and of those the coarsest.
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
/// dimensions that does, then the coarsest, its edges filled by the finer rollup with the fewest
/// dimensions that answers it too); `raw` is the same query compiled for the records (its
/// outputs and limit are the ones to keep).
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
    cubes.sort_by_key(|c| (c.dims.len(), std::cmp::Reverse(c.grain.secs())));
    cubes.iter().find_map(|cube| {
        let finer = cubes
            .iter()
            .filter(|f| f.grain.secs() < cube.grain.secs())
            .copied();
        from_cube(spec, ds, layout, (cube, finer), tenant, raw)
    })
}

/// The group keys as a rollup's rows give them and as the records do, if the rollup can give them:
/// each column a dimension, each bucket the time column's and at least as wide as the grain.
fn group_keys(spec: &QuerySpec, ds: &Dataset, cube: &Cube<'_>) -> Option<Vec<(String, String)>> {
    let time = ds.time_column.as_deref();
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
    Some(keys)
}

/// One rollup's branch of the union: the rollup, its group keys as its rows give them, and, for
/// each dimension count the query needs, (the number the partials call it by, the rollup's own
/// number for that column): a finer rollup may hold the same column under another number.
struct Branch<'c, 'd> {
    cube: &'c Cube<'d>,
    keys: Vec<String>,
    dim_counts: Vec<(usize, usize)>,
}

fn from_cube<'c, 'd: 'c>(
    spec: &QuerySpec,
    ds: &Dataset,
    layout: &Layout<'_>,
    (cube, finer): (&Cube<'_>, impl Iterator<Item = &'c Cube<'d>>),
    tenant: uuid::Uuid,
    raw: &CompiledQuery,
) -> Option<CompiledQuery> {
    let answers = |cube: &Cube<'_>| {
        spec.filter
            .as_ref()
            .is_none_or(|f| only_dimensions(f, cube))
    };
    if !answers(cube) {
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
    let keys = group_keys(spec, ds, cube)?;

    // Aggregates over the partials `p`.
    let mut partials = Partials::default();
    let mut outputs: Vec<String> = (1..=keys.len()).map(|i| format!("p.k{i}")).collect();
    for a in aggregates(spec).iter() {
        outputs.push(aggregate(a, layout, cube, &mut partials)?);
    }

    // A finer rollup for the edges, if one answers the query too (every counted dimension its own).
    let finer = finer.filter(|f| answers(f)).find_map(|f| {
        let keys = group_keys(spec, ds, f)?
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        let dim_counts = partials
            .dim_counts
            .iter()
            .map(|&k| Some((k, f.dim(&cube.dims[k - 1].name)?.0)))
            .collect::<Option<_>>()?;
        Some(Branch {
            cube: f,
            keys,
            dim_counts,
        })
    });

    let mut c = Compiler::new(ds);
    let t = c.param(tenant, Type::UUID);
    let d = c.param(ds.id, Type::UUID);

    // Whole buckets from the rollup; the whole finer buckets around them from the finer rollup,
    // if there is one; the partial ones at the edges from the records.
    let (from, to) = range;
    let grain = cube.grain.secs();
    let (from_up, to_down) = (
        from.map(|t| ceil_to(t, grain)),
        to.map(|t| floor_to(t, grain)),
    );
    if let (Some(a), Some(b)) = (from_up, to_down)
        && a >= b
    {
        return None; // not one whole bucket: a finer rollup or the records answer it
    }
    let fine = finer.as_ref().map_or(grain, |f| f.cube.grain.secs());
    let (from_fine, to_fine) = (
        from.map(|t| ceil_to(t, fine)),
        to.map(|t| floor_to(t, fine)),
    );
    let mut bounds = Vec::new();
    if let Some(a) = from_up {
        bounds.push(format!("r.bucket >= {}", c.param(a, Type::TIMESTAMPTZ)));
    }
    if let Some(b) = to_down {
        bounds.push(format!("r.bucket < {}", c.param(b, Type::TIMESTAMPTZ)));
    }
    let own = Branch {
        cube,
        keys: keys.iter().map(|(r, _)| r.clone()).collect(),
        dim_counts: partials.dim_counts.iter().map(|&k| (k, k)).collect(),
    };
    let mut sql = rollup_branch(&mut c, spec, [&t, &d], &own, &partials, bounds)?;
    if let Some(f) = &finer {
        let spans = time_spans(
            &mut c,
            "r.bucket",
            [(from_fine, from_up), (to_down, to_fine)],
        );
        if !spans.is_empty() {
            let bounds = vec![format!("({})", spans.join(" OR "))];
            let branch = rollup_branch(&mut c, spec, [&t, &d], f, &partials, bounds)?;
            sql.push_str(&format!(" UNION ALL {branch}"));
        }
    }
    let edges = time_spans(&mut c, "r.ts", [(from, from_fine), (to_fine, to)]);
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
            group_by(keys.iter().map(|(_, r)| r)),
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

/// One rollup's branch of the union: its rows for the tenant's dataset within `bounds` (on
/// `r.bucket`) that pass the filter, summed into the partials by the group keys.
fn rollup_branch<'d>(
    c: &mut Compiler<'d>,
    spec: &QuerySpec,
    [t, d]: [&str; 2],
    of: &Branch<'d, 'd>,
    partials: &Partials,
    bounds: Vec<String>,
) -> Option<String> {
    let mut wheres = vec![
        format!("r.tenant_id = {t}"),
        format!("r.dataset_id = {d}"),
        format!("r.rollup = {}", of.cube.no),
    ];
    if let Some(f) = &spec.filter {
        c.reset_conditions();
        c.rollup = Some(of.cube);
        let filter = c.filter(f, "/filter", 0);
        c.rollup = None;
        wheres.push(filter?);
    }
    wheres.extend(bounds);
    let mut cols: Vec<String> = of
        .keys
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{r} AS k{}", i + 1))
        .collect();
    cols.push("sum(r.n) AS n".to_owned());
    cols.extend(
        partials
            .measures
            .iter()
            .map(|k| format!("sum(r.c{k}) AS c{k}, sum(r.s{k}) AS s{k}")),
    );
    cols.extend(
        of.dim_counts
            .iter()
            .map(|(k, own)| format!("sum(r.n) FILTER (WHERE r.g{own} IS NOT NULL) AS cd{k}")),
    );
    Some(format!(
        "SELECT {} FROM app.rollups r WHERE {}{}",
        cols.join(", "),
        wheres.join(" AND "),
        group_by(of.keys.iter()),
    ))
}

/// A span of time, `[lo, hi)`, either side possibly open.
type Span = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// `(column >= lo AND column < hi)` for each of the spans that is bounded on both sides and not
/// empty.
fn time_spans(c: &mut Compiler<'_>, column: &str, spans: [Span; 2]) -> Vec<String> {
    let mut out = Vec::new();
    for span in spans {
        if let (Some(lo), Some(hi)) = span
            && lo < hi
        {
            let (lo, hi) = (
                c.param(lo, Type::TIMESTAMPTZ),
                c.param(hi, Type::TIMESTAMPTZ),
            );
            out.push(format!("({column} >= {lo} AND {column} < {hi})"));
        }
    }
    out
}

/// ` GROUP BY` the expressions, or nothing if there are none.
fn group_by<'a>(exprs: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = exprs.map(String::as_str).collect();
    if list.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", list.join(", "))
    }
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

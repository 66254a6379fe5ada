//! Rollups answer exactly what the records answer: generated queries compiled both ways
//! (`query::compile`, which reads rollups where it can, and `query::compile_raw`) give the same
//! rows, after inserts, updates that move records between groups, deletes and concurrent writers.

use serde_json::{Value, json};
use tenantry::TenantId;
use tenantry::analytics::datasets::{self, DatasetRef};
use tenantry::analytics::query::{self, QueryLimits, QuerySpec};
use tenantry::db::{Access, TenantContext};
use tenantry_tests::TestApp;

const SALES: &str = r#"{"name": "sales", "columns": [
    {"name": "region", "type": "string", "required": true},
    {"name": "channel", "type": "string"},
    {"name": "paid", "type": "boolean"},
    {"name": "units", "type": "integer"},
    {"name": "price", "type": "decimal", "scale": 2},
    {"name": "rate", "type": "decimal", "scale": 6},
    {"name": "weight", "type": "number"},
    {"name": "note", "type": "string"},
    {"name": "at", "type": "timestamp"}],
  "time_column": "at", "rollups": [
    {"dimensions": ["channel", "paid", "units", "region"]},
    {"dimensions": ["region"], "bucket": "day"},
    {"dimensions": []},
    {"dimensions": [], "bucket": "day"}]}"#;

/// A small deterministic generator (xorshift), so a failure names its seed and replays.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn record(g: &mut Gen, key: usize) -> Value {
    let mut data = json!({"region": g.pick(&["EU", "US", "APAC"])});
    if g.chance(80) {
        data["channel"] = json!(g.pick(&["web", "shop", "phone", "partner"]));
    }
    if g.chance(90) {
        data["paid"] = json!(g.chance(50));
    }
    if g.chance(85) {
        data["units"] = json!(g.below(7) as i64 - 1);
    }
    if g.chance(85) {
        let cents = g.below(100_000) as i64 - 5_000;
        data["price"] = json!(format!(
            "{}{}.{:02}",
            if cents < 0 { "-" } else { "" },
            cents.abs() / 100,
            cents.abs() % 100
        ));
    }
    if g.chance(90) {
        // Up to 14 significant digits at scale 6: averages whose rounding depends on precision.
        let micros = g.below(100_000_000_000_000) as i64 - 3_000_000_000_000;
        let sign = if micros < 0 { "-" } else { "" };
        let m = micros.unsigned_abs();
        data["rate"] = json!(format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000));
    }
    data["weight"] = json!(g.below(1000) as f64 / 7.0);
    data["note"] = json!(format!("note {key}"));
    if g.chance(95) {
        // Ten days of November, any minute.
        data["at"] = json!(format!(
            "2026-11-{:02}T{:02}:{:02}:{:02}Z",
            10 + g.below(10),
            g.below(24),
            g.below(60),
            g.below(60)
        ));
    }
    json!({"key": format!("k{key}"), "data": data})
}

fn filter(g: &mut Gen, depth: u32) -> Value {
    if depth < 2 && g.chance(30) {
        let n = 1 + g.below(3) as usize;
        let items: Vec<Value> = (0..n).map(|_| filter(g, depth + 1)).collect();
        return match g.below(3) {
            0 => json!({"and": items}),
            1 => json!({"or": items}),
            _ => json!({"not": items[0]}),
        };
    }
    match g.below(8) {
        0 => {
            json!({"column": "region", "op": "eq", "value": g.pick(&["EU", "US", "APAC", "MARS"])})
        }
        1 => json!({"column": "region", "op": "in", "value": ["EU", g.pick(&["US", "APAC"])]}),
        2 => json!({"column": "channel", "op": "is_null", "value": g.chance(50)}),
        3 => json!({"column": "channel", "op": "contains", "value": g.pick(&["e", "sh", "art"])}),
        4 => json!({"column": "paid", "op": "eq", "value": g.chance(50)}),
        5 => json!({"column": "units", "op": g.pick(&["gt", "lte", "ne"]), "value": g.below(6)}),
        6 => json!({"column": "channel", "op": "ne", "value": "web"}),
        _ => json!({"column": "units", "op": "between", "value": [0, 3]}),
    }
}

/// A query the rollups can answer (if `answerable`), else one of the kinds they cannot.
fn generated_query(g: &mut Gen, answerable: bool) -> Value {
    let mut q = json!({"dataset": "sales"});
    let mut group: Vec<Value> = Vec::new();
    for dim in ["region", "channel", "paid", "units"] {
        if g.chance(30) {
            group.push(json!(dim));
        }
    }
    if g.chance(40) {
        let bucket = g.pick(&["hour", "day", "week", "month"]);
        group.push(json!({"column": "at", "bucket": bucket, "as": "t"}));
    }
    let choices = [
        json!({"fn": "count"}),
        json!({"fn": "count", "column": "units"}),
        json!({"fn": "count", "column": "channel"}),
        json!({"fn": "sum", "column": "units"}),
        json!({"fn": "sum", "column": "price"}),
        json!({"fn": "avg", "column": "units"}),
        json!({"fn": "avg", "column": "price"}),
        json!({"fn": "avg", "column": "rate"}),
        json!({"fn": "sum", "column": "rate"}),
        json!({"fn": "count", "column": "region"}),
    ];
    let mut aggs: Vec<Value> = Vec::new();
    for (i, a) in choices.iter().enumerate() {
        if g.chance(35) {
            let mut a = a.clone();
            a["as"] = json!(format!("a{i}"));
            aggs.push(a);
        }
    }
    if aggs.is_empty() && group.is_empty() {
        aggs.push(json!({"fn": "count", "as": "a0"}));
    }
    if !answerable {
        match g.below(4) {
            0 => aggs.push(json!({"fn": "min", "column": "units", "as": "x"})),
            1 => aggs.push(json!({"fn": "sum", "column": "weight", "as": "x"})),
            2 => group.push(json!({"column": "at", "bucket": "minute", "as": "m"})),
            _ => q["filter"] = json!({"column": "note", "op": "eq", "value": "note 3"}),
        }
    }
    if !group.is_empty() {
        q["group_by"] = Value::Array(group);
    }
    if !aggs.is_empty() {
        q["aggregates"] = Value::Array(aggs.clone());
    }
    if answerable && g.chance(60) {
        q["filter"] = filter(g, 0);
    }
    if g.chance(60) {
        let mut range = json!({});
        let instant = |g: &mut Gen, day: u64| {
            // Sometimes on the hour, sometimes not.
            let (minute, second) = if g.chance(40) {
                (0, 0)
            } else {
                (g.below(60), g.below(60))
            };
            format!(
                "2026-11-{day:02}T{:02}:{minute:02}:{second:02}Z",
                g.below(24)
            )
        };
        // At least two days apart, so every rollup has a whole bucket inside (ranges under a
        // whole day are the next test's).
        let first = 9 + g.below(10);
        let last = first + 2 + g.below(21 - first - 1);
        let (from, to) = (instant(g, first), instant(g, last));
        if g.chance(80) {
            range["from"] = json!(from);
        }
        if g.chance(80) {
            range["to"] = json!(to);
        }
        q["time_range"] = range;
    }
    if let (true, Some(a)) = (g.chance(50), aggs.first()) {
        q["order_by"] = json!([{"by": a["as"], "dir": g.pick(&["asc", "desc"])}]);
        q["limit"] = json!(1 + g.below(5));
    }
    q
}

async fn tenant_ctx(app: &TestApp, slug: &str) -> (TenantContext, String) {
    let (id, token): (TenantId, String) = app.tenant_with_token(slug).await;
    (
        TenantContext {
            tenant_id: id,
            actor_id: "system:test".into(),
        },
        token,
    )
}

/// Runs every query both ways and compares; returns how many read the rollups, and how many of
/// those read two of them (whole days from one, the hours at the edges from another).
async fn compare(
    app: &TestApp,
    ctx: &TenantContext,
    queries: &[Value],
    answerable: bool,
) -> (usize, usize) {
    let mut tx = app.app.db.begin(ctx, Access::ReadOnly).await.unwrap();
    let ds = datasets::find(&mut tx, &DatasetRef::Name("sales".into()))
        .await
        .unwrap()
        .unwrap();
    let (mut from_rollups, mut two_grains) = (0, 0);
    for q in queries {
        let spec: QuerySpec = serde_json::from_value(q.clone()).unwrap();
        let limits = QueryLimits::default();
        let tenant = ctx.tenant_id.as_uuid();
        let fast =
            query::compile(&spec, &ds, tenant, limits).unwrap_or_else(|e| panic!("{q}: {e:?}"));
        let raw = query::compile_raw(&spec, &ds, tenant, limits).unwrap();
        let uses = fast.sql.contains("app.rollups");
        assert_eq!(uses, answerable, "{q}\n{}", fast.sql);
        from_rollups += usize::from(uses);
        two_grains += usize::from(fast.sql.matches("FROM app.rollups").count() == 2);
        let (a, b) = (
            query::run(&mut tx, &fast)
                .await
                .unwrap_or_else(|e| panic!("{q}\n{}\n{e}", fast.sql)),
            query::run(&mut tx, &raw).await.unwrap(),
        );
        assert_eq!(a.rows, b.rows, "{q}\n{}", fast.sql);
        assert_eq!((a.columns, a.truncated), (b.columns, b.truncated), "{q}");
    }
    tx.commit().await.unwrap();
    (from_rollups, two_grains)
}

/// Recomputes the `sales` dataset's rollups from its records.
async fn rebuild(app: &TestApp, ctx: &TenantContext) {
    let mut tx = app.app.db.begin(ctx, Access::ReadWrite).await.unwrap();
    let ds = datasets::find(&mut tx, &DatasetRef::Name("sales".into()))
        .await
        .unwrap()
        .unwrap();
    tenantry::analytics::rollup::rebuild(&mut tx, &ds)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn ingest(app: &TestApp, token: &str, records: &[Value]) {
    for chunk in records.chunks(200) {
        let r = app
            .call(
                "POST",
                "/v1/datasets/sales/records",
                token,
                Some(&Value::Array(chunk.to_vec()).to_string()),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.json);
    }
}

#[tokio::test]
async fn generated_queries_read_the_rollups_and_agree_with_the_records_exactly() {
    let app = TestApp::new().await;
    let (ctx, token) = tenant_ctx(&app, "alpha").await;
    app.create_dataset(&token, SALES).await;
    let mut g = Gen(0x5eed_2026_1206);

    // Inserts, then updates that move records between groups, hours and values, then deletes.
    let records: Vec<Value> = (0..800).map(|k| record(&mut g, k)).collect();
    ingest(&app, &token, &records).await;
    let updates: Vec<Value> = (0..800).step_by(3).map(|k| record(&mut g, k)).collect();
    ingest(&app, &token, &updates).await;
    for k in (0..800).step_by(7) {
        let r = app
            .call(
                "DELETE",
                &format!("/v1/datasets/sales/records/k{k}"),
                &token,
                None,
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.json);
    }

    let answerable: Vec<Value> = (0..400).map(|_| generated_query(&mut g, true)).collect();
    let (from_rollups, two_grains) = compare(&app, &ctx, &answerable, true).await;
    assert_eq!(from_rollups, 400);
    assert!(two_grains >= 20, "{two_grains} of 400 read days and hours");
    let not: Vec<Value> = (0..40).map(|_| generated_query(&mut g, false)).collect();
    assert_eq!(compare(&app, &ctx, &not, false).await.0, 0);

    // The API answers from them too, with the same rows.
    let q = json!({"dataset": "sales", "group_by": ["region"],
        "aggregates": [{"fn": "sum", "column": "price"}, {"fn": "count"}]});
    let r = app
        .call("POST", "/v1/query", &token, Some(&q.to_string()))
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let mut tx = app.app.db.begin(&ctx, Access::ReadOnly).await.unwrap();
    let ds = datasets::find(&mut tx, &DatasetRef::Name("sales".into()))
        .await
        .unwrap()
        .unwrap();
    let spec: QuerySpec = serde_json::from_value(q).unwrap();
    let raw =
        query::compile_raw(&spec, &ds, ctx.tenant_id.as_uuid(), QueryLimits::default()).unwrap();
    let expected = query::run(&mut tx, &raw).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(r.json["rows"], Value::Array(expected.rows));
}

/// A daily rollup with no hourly one to fill its edges takes the whole days and leaves the
/// partial days to the records; a range without a whole day reads an hourly rollup, or the
/// records when there is none. Every answer the same as the records'.
#[tokio::test]
async fn a_daily_rollup_alone_or_a_range_under_a_day_agrees_with_the_records() {
    let app = TestApp::new().await;
    let mut g = Gen(0x5eed_2026_1207);
    let records: Vec<Value> = (0..400).map(|k| record(&mut g, k)).collect();
    // The instant `hours` (fractional) after 2026-11-10T00:00Z, to the second.
    let at = |hours: f64| {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-10T00:00:00Z").unwrap()
            + chrono::Duration::seconds((hours * 3600.0) as i64);
        t.to_utc().to_rfc3339()
    };
    let queries = |g: &mut Gen, days: bool| -> Vec<Value> {
        (0..60)
            .map(|_| {
                let from = g.below(9 * 24 * 60) as f64 / 60.0;
                let span = if days {
                    24.0 + g.below(5 * 24 * 60) as f64 / 60.0
                } else {
                    // At least one whole hour inside, never a whole day.
                    2.0 + g.below(21 * 60) as f64 / 60.0
                };
                let mut group = vec![json!({"column": "at", "bucket": "day", "as": "t"})];
                if g.chance(50) {
                    group.push(json!("region"));
                }
                let mut q = json!({"dataset": "sales", "group_by": group,
                    "aggregates": [{"fn": "count", "as": "n"},
                        {"fn": "sum", "column": "price", "as": "p"},
                        {"fn": "count", "column": "region", "as": "r"}],
                    "time_range": {"from": at(from), "to": at(from + span)}});
                if g.chance(40) {
                    q["filter"] = json!({"column": "region", "op": "eq", "value": "EU"});
                }
                q
            })
            .collect()
    };

    // Daily by region only: whole days from it, the rest from the records.
    let (ctx, token) = tenant_ctx(&app, "daily").await;
    let mut spec: Value = serde_json::from_str(SALES).unwrap();
    spec["rollups"] = json!([{"dimensions": ["region"], "bucket": "day"}]);
    app.create_dataset(&token, &spec.to_string()).await;
    ingest(&app, &token, &records).await;
    // A range over 24 hours need not hold a whole day: count those that do.
    let whole_day = |q: &Value| {
        let t = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(q["time_range"][k].as_str().unwrap())
                .unwrap()
                .timestamp()
        };
        t("from").div_euclid(86_400) + 1 < t("to").div_euclid(86_400)
            || t("from").rem_euclid(86_400) == 0 && t("from") + 86_400 <= t("to")
    };
    let long = queries(&mut g, true);
    let (with_day, without): (Vec<Value>, Vec<Value>) = long.into_iter().partition(whole_day);
    assert!(with_day.len() >= 30, "{} of 60", with_day.len());
    assert_eq!(
        compare(&app, &ctx, &with_day, true).await,
        (with_day.len(), 0)
    );
    assert_eq!(compare(&app, &ctx, &without, false).await.0, 0);
    assert_eq!(
        compare(&app, &ctx, &queries(&mut g, false), false).await.0,
        0
    );

    // With an hourly rollup beside it, a range under a day reads the hours.
    let (ctx, token) = tenant_ctx(&app, "hourly").await;
    spec["rollups"] = json!([{"dimensions": ["region"], "bucket": "day"},
        {"dimensions": ["region", "paid"]}]);
    app.create_dataset(&token, &spec.to_string()).await;
    ingest(&app, &token, &records).await;
    assert_eq!(
        compare(&app, &ctx, &queries(&mut g, false), true).await,
        (60, 0)
    );
}

#[tokio::test]
async fn concurrent_writers_to_the_same_groups_leave_exact_rollups_and_a_rebuild_agrees() {
    let app =
        std::sync::Arc::new(TestApp::with_vars(&[("MAX_BODY_BYTES", (4 << 20).to_string())]).await);
    let (ctx, token) = tenant_ctx(&app, "alpha").await;
    app.create_dataset(&token, SALES).await;
    // Four writers at once, over the same keys: every group row is contended. Two ingest
    // batches; two import 6,000 records (two statements in one transaction, holding the first's
    // rollup rows while writing the second: without the dataset's rollup lock, a deadlock).
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (app, token) = (app.clone(), token.clone());
        writers.push(tokio::spawn(async move {
            let mut g = Gen(0x1234_5678 + w);
            for _ in 0..3 {
                if w % 2 == 0 {
                    let batch: Vec<Value> = (0..100).map(|k| record(&mut g, k)).collect();
                    ingest(&app, &token, &batch).await;
                } else {
                    let lines: String = (0..6000)
                        .map(|k| format!("{}\n", record(&mut g, k)))
                        .collect();
                    let r = app.import(&token, "sales", &lines).await;
                    assert_eq!(r.status, 200, "{}", r.json);
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut g = Gen(99);
    let queries: Vec<Value> = (0..60).map(|_| generated_query(&mut g, true)).collect();
    compare(&app, &ctx, &queries, true).await;

    // What the deltas built is what a rebuild from the records computes (empty groups aside).
    let admin = app.db.admin().await;
    let snapshot = |admin: tokio_postgres::Client| async move {
        let rows = admin
            .query(
                "SELECT to_jsonb(r) - 'tenant_id' - 'dataset_id' - 'id' FROM app.rollups r WHERE n <> 0 \
                 ORDER BY rollup, bucket, g1, g2, g3, g4",
                &[],
            )
            .await
            .unwrap();
        // Numbers as values: 0 and 0.00 are the same sum.
        let rows = rows.iter().map(|r| match r.get::<_, Value>(0) {
            Value::Object(row) => row
                .into_iter()
                .map(|(k, v)| (k, v.as_f64().map_or(v, |f| json!(f))))
                .collect::<serde_json::Map<_, _>>(),
            other => panic!("{other}"),
        });
        (admin, rows.collect::<Vec<_>>())
    };
    let (admin, maintained) = snapshot(admin).await;
    assert!(!maintained.is_empty());
    rebuild(&app, &ctx).await;
    let (admin, rebuilt) = snapshot(admin).await;
    assert_eq!(maintained.len(), rebuilt.len());
    if let Some((a, b)) = maintained.iter().zip(&rebuilt).find(|(a, b)| a != b) {
        panic!("maintained {a:?}\nrebuilt    {b:?}");
    }

    // They go with their dataset.
    let r = app.call("DELETE", "/v1/datasets/sales", &token, None).await;
    assert_eq!(r.status, 204, "{}", r.json);
    let left: i64 = admin
        .query_one("SELECT count(*) FROM app.rollups", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn rollups_are_declared_within_bounds_over_groupable_columns() {
    let spec: tenantry::analytics::DatasetSpec = serde_json::from_value(json!({
        "name": "x", "columns": [{"name": "a", "type": "string"}, {"name": "b", "type": "number"},
            {"name": "c", "type": "timestamp"}, {"name": "d", "type": "decimal", "scale": 2},
            {"name": "e", "type": "boolean"}],
        "rollups": [
            {"dimensions": ["a", "b", "c", "d", "a", "zz"]},
            {"dimensions": ["a", "e"], "bucket": "day"}, {}, {}, {}
        ]
    }))
    .unwrap();
    let reasons: Vec<(String, &str)> = spec
        .validate()
        .into_iter()
        .map(|e| (e.path, e.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("/rollups".into(), "too_many_rollups"),
            ("/rollups/0/dimensions".into(), "too_many_dimensions"),
            ("/rollups/0/dimensions/1".into(), "invalid_dimension"),
            ("/rollups/0/dimensions/2".into(), "invalid_dimension"),
            ("/rollups/0/dimensions/3".into(), "invalid_dimension"),
            ("/rollups/0/dimensions/4".into(), "duplicate_dimension"),
            ("/rollups/0/dimensions/5".into(), "unknown_column"),
        ]
    );
    // Unknown members and grains are refused by the parser.
    for bad in [json!([{"dims": ["a"]}]), json!([{"bucket": "minute"}])] {
        let doc =
            json!({"name": "x", "columns": [{"name": "a", "type": "string"}], "rollups": bad});
        assert!(serde_json::from_value::<tenantry::analytics::DatasetSpec>(doc).is_err());
    }
}

#[tokio::test]
async fn a_dimension_value_too_long_for_the_rollup_key_is_refused_and_others_are_not() {
    let app = TestApp::new().await;
    let (_, token) = tenant_ctx(&app, "alpha").await;
    app.create_dataset(&token, SALES).await;
    let long = "x".repeat(tenantry::analytics::rollup::MAX_DIMENSION_BYTES + 1);
    let at_limit = "y".repeat(tenantry::analytics::rollup::MAX_DIMENSION_BYTES);
    let body = json!([
        {"key": "a", "data": {"region": at_limit, "note": long}},
        {"key": "b", "data": {"region": long}}
    ]);
    let r = app
        .call(
            "POST",
            "/v1/datasets/sales/records",
            &token,
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.json);
    assert_eq!(r.json["errors"][0]["index"], 1, "{}", r.json);
    assert_eq!(r.json["errors"][0]["column"], "region", "{}", r.json);
    assert_eq!(
        r.json["errors"][0]["reason"], "dimension_too_long",
        "{}",
        r.json
    );
    assert_eq!(r.json["error_count"], 1, "{}", r.json);
    // Without the long one, the record at the limit (and the long note, no dimension) is stored.
    let body = json!([body[0]]);
    let r = app
        .call(
            "POST",
            "/v1/datasets/sales/records",
            &token,
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
}

#[tokio::test]
async fn rollups_are_enabled_on_a_dataset_that_keeps_taking_writes_and_answer_exactly() {
    let app = std::sync::Arc::new(TestApp::new().await);
    let (ctx, token) = tenant_ctx(&app, "alpha").await;
    // A dataset without rollups, as every dataset from before them is.
    let spec = SALES.replace(
        r#""time_column": "at", "rollups": ["#,
        r#""time_column": "at", "old": ["#,
    );
    let spec: Value = serde_json::from_str(&spec).unwrap();
    let mut spec = spec.as_object().unwrap().clone();
    spec.remove("old");
    spec.insert("rollups".into(), json!([]));
    app.create_dataset(&token, &Value::Object(spec).to_string())
        .await;
    let mut g = Gen(7);
    let first: Vec<Value> = (0..300).map(|k| record(&mut g, k)).collect();
    ingest(&app, &token, &first).await;
    let mut probe = Gen(8);
    let q = generated_query(&mut probe, true);
    let mut tx = app.app.db.begin(&ctx, Access::ReadOnly).await.unwrap();
    let ds = datasets::find(&mut tx, &DatasetRef::Name("sales".into()))
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    let spec_q: QuerySpec = serde_json::from_value(q).unwrap();
    let before = query::compile(
        &spec_q,
        &ds,
        ctx.tenant_id.as_uuid(),
        QueryLimits::default(),
    )
    .unwrap();
    assert!(
        !before.sql.contains("app.rollups"),
        "no rollups yet: {}",
        before.sql
    );

    // A writer that read the old definition (no rollups) and wrote, still open: enabling waits
    // for it, so its records are in the recount.
    let mut straddling = app.app.db.begin(&ctx, Access::ReadWrite).await.unwrap();
    let old = datasets::find_for_write(&mut straddling, &DatasetRef::Name("sales".into()))
        .await
        .unwrap()
        .unwrap();
    assert!(old.rollups.is_empty());
    let batch: Vec<Value> = (1000..1050).map(|k| record(&mut g, k)).collect();
    let batch = tenantry::analytics::ingest::validate(&old, batch).unwrap();
    tenantry::analytics::ingest::write(&mut straddling, &old, &batch)
        .await
        .unwrap();
    // And a writer through the API keeps going throughout.
    let writer = {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move {
            let mut g = Gen(9);
            for round in 0..12 {
                let batch: Vec<Value> = (0..60).map(|k| record(&mut g, k * 5 + round)).collect();
                ingest(&app, &token, &batch).await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    let rollups: Vec<tenantry::analytics::rollup::RollupSpec> = serde_json::from_value(json!([
        {"dimensions": ["region", "channel", "paid", "units"]},
        {"dimensions": ["region"], "bucket": "day"},
        {"dimensions": []}
    ]))
    .unwrap();
    let enabling = {
        let (app, ctx) = (app.clone(), ctx.clone());
        tokio::spawn(async move {
            tenantry::analytics::rollup::enable(
                &app.app.db,
                &ctx,
                &DatasetRef::Name("sales".into()),
                rollups,
            )
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        !enabling.is_finished(),
        "enabling waits for the writer that read the old definition"
    );
    straddling.commit().await.unwrap();
    let rows = enabling.await.unwrap().unwrap();
    assert!(rows > 0);
    writer.await.unwrap();

    // Rollups that are not ready are not read.
    let mut tx = app.app.db.begin(&ctx, Access::ReadOnly).await.unwrap();
    let mut ds = datasets::find(&mut tx, &DatasetRef::Name("sales".into()))
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    assert!(ds.rollups_ready);
    ds.rollups_ready = false;
    let pending = query::compile(
        &spec_q,
        &ds,
        ctx.tenant_id.as_uuid(),
        QueryLimits::default(),
    )
    .unwrap();
    assert!(!pending.sql.contains("app.rollups"), "{}", pending.sql);

    // Everything written before, during and after reads the same from the rollups.
    let more: Vec<Value> = (300..400).map(|k| record(&mut g, k)).collect();
    ingest(&app, &token, &more).await;
    let queries: Vec<Value> = (0..120)
        .map(|_| generated_query(&mut probe, true))
        .collect();
    assert_eq!(compare(&app, &ctx, &queries, true).await.0, 120);

    // Rollups that do not fit the dataset are refused, and change nothing.
    let bad: Vec<tenantry::analytics::rollup::RollupSpec> =
        serde_json::from_value(json!([{"dimensions": ["weight"]}])).unwrap();
    let err = tenantry::analytics::rollup::enable(
        &app.app.db,
        &ctx,
        &DatasetRef::Name("sales".into()),
        bad,
    )
    .await;
    assert!(
        matches!(
            err,
            Err(tenantry::analytics::rollup::EnableError::Invalid(_))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_rebuild_waits_for_a_writer_holding_new_groups_and_counts_them_once() {
    let app = std::sync::Arc::new(TestApp::new().await);
    let (ctx, token) = tenant_ctx(&app, "alpha").await;
    app.create_dataset(&token, SALES).await;
    let mut g = Gen(11);
    let first: Vec<Value> = (0..100).map(|k| record(&mut g, k)).collect();
    ingest(&app, &token, &first).await;
    // A writer creates groups no rollup row has yet, and stays open.
    let mut writer = app.app.db.begin(&ctx, Access::ReadWrite).await.unwrap();
    let ds = datasets::find_for_write(&mut writer, &DatasetRef::Name("sales".into()))
        .await
        .unwrap()
        .unwrap();
    let fresh: Vec<Value> = (0..20)
        .map(|k| {
            json!({"key": format!("new{k}"), "data": {"region": format!("R{k}"), "units": 1,
            "at": "2026-12-01T00:30:00Z"}})
        })
        .collect();
    let batch = tenantry::analytics::ingest::validate(&ds, fresh).unwrap();
    tenantry::analytics::ingest::write(&mut writer, &ds, &batch)
        .await
        .unwrap();
    let rebuilding = {
        let (app, ctx) = (app.clone(), ctx.clone());
        tokio::spawn(async move { rebuild(&app, &ctx).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !rebuilding.is_finished(),
        "the rebuild waits for the writer's rollup lock"
    );
    writer.commit().await.unwrap();
    rebuilding.await.unwrap();
    // Each new region counted once: 20 groups of one record, at their hour and their day.
    let admin = app.db.admin().await;
    let counts: Vec<(i16, i64)> = admin
        .query(
            "SELECT rollup, sum(n)::int8 FROM app.rollups \
             WHERE 'R' IN (left(g1, 1), left(g4, 1)) GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(counts, [(1, 20), (2, 20)]);
    let mut probe = Gen(12);
    let queries: Vec<Value> = (0..60).map(|_| generated_query(&mut probe, true)).collect();
    compare(&app, &ctx, &queries, true).await;
}

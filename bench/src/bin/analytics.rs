//! Analytics load: many tenants with realistic datasets, concurrent requests from all of them
//! through the real handler path (JWT verification, TenantTx, query compiler, edge), and
//! the floor: the same SQL sent straight to Postgres on one connection. Ingest is measured the
//! same way (`ingest_500` against `ingest_500_floor`, the batch's bare INSERT, on one connection
//! and on as many as the ingests have workers), again with the embedding elsewhere
//! (`ingest_500_embedding_elsewhere`), and the embedding backlog the ingests leave is timed on
//! its own (`embed_backlog_after_ingest`). Bulk loads
//! through `POST .../imports` are measured against a binary `COPY` of the same rows
//! (`bulk_import`, `bulk_import_floor`, records/s), and with the embedding elsewhere too
//! (`bulk_import_embedding_elsewhere`).
//!
//! Environment: BENCH_TENANTS (200), BENCH_ROWS (20000 per tenant), BENCH_CONCURRENCY (4),
//! BENCH_REQUESTS (2000 per scenario), BENCH_INGEST_REQUESTS (200), BENCH_BULK_RECORDS (150000),
//! BENCH_BULK_BATCH (15000).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry::analytics::DatasetSpec;
use tenantry::analytics::datasets::{self, DatasetRef};
use tenantry::analytics::query::{self, QueryLimits, QuerySpec};
use tenantry::db::{Access, Db, TenantContext};
use tenantry::tenants::{NewTenant, provision};
use tenantry::{App, TenantId};
use tenantry_bench::{Error, Samples, bench_database, bench_tokens, env, tenant_app};
use tenantry_tests::gateway_event;
use tokio_postgres::NoTls;
use tokio_postgres::types::Type;

fn spec() -> DatasetSpec {
    serde_json::from_value(json!({
        "name": "events",
        "columns": [
            {"name": "region", "type": "string", "required": true},
            {"name": "product", "type": "string"},
            {"name": "amount", "type": "decimal", "scale": 2},
            {"name": "qty", "type": "integer"},
            {"name": "paid", "type": "boolean"},
            {"name": "note", "type": "string"},
            {"name": "at", "type": "timestamp"}
        ],
        "text_columns": ["note"],
        "time_column": "at",
        "rollups": [
            {"dimensions": [], "bucket": "hour"},
            {"dimensions": [], "bucket": "day"},
            {"dimensions": ["region", "paid"], "bucket": "day"},
            {"dimensions": ["product"], "bucket": "day"}
        ]
    }))
    .unwrap()
}

/// The three read scenarios, as a client would send them.
fn read_queries() -> Vec<(&'static str, Value)> {
    let now = chrono::Utc::now();
    vec![
        (
            "filtered_count",
            json!({"dataset": "events", "filter": {"and": [
                {"column": "region", "op": "eq", "value": "eu-west"},
                {"column": "paid", "op": "eq", "value": true}
            ]}, "aggregates": [{"fn": "count"}]}),
        ),
        (
            "group_by_day_30d",
            json!({"dataset": "events",
                "group_by": [{"column": "at", "bucket": "day"}],
                "aggregates": [{"fn": "sum", "column": "amount", "as": "revenue"}, {"fn": "count"}],
                "time_range": {"from": (now - chrono::Duration::days(30)).to_rfc3339(), "to": now.to_rfc3339()}}),
        ),
        (
            "top10_by_sum",
            json!({"dataset": "events", "group_by": ["product"],
                "aggregates": [{"fn": "sum", "column": "amount", "as": "revenue"}],
                "order_by": [{"by": "revenue", "dir": "desc"}], "limit": 10}),
        ),
    ]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let tenants = env("BENCH_TENANTS", 200);
    let rows = env("BENCH_ROWS", 20_000);
    let concurrency = env("BENCH_CONCURRENCY", 4);
    let requests = env("BENCH_REQUESTS", 2000);
    let ingest_requests = env("BENCH_INGEST_REQUESTS", 200);

    let db = bench_database(
        // v2: amount is a decimal and the dataset has rollups (2026-12-06); v3: and one per day
        // without dimensions (2026-12-07).
        &format!("bench_analytics_v3_{tenants}_{rows}"),
        Some("bench_seeded"),
    )
    .await?;
    let (admin_db, app_url, seeded) = (db.admin_url, db.app_url, db.reused);

    let (app, _jwks) = tenant_app(&app_url, concurrency.max(2)).await?;

    let ids: Vec<TenantId> = (0..tenants)
        .map(|i| {
            TenantId::from(uuid::Uuid::from_u128(
                0x0190_0000_0000_7000_8000_0000_0000_0000 + i as u128,
            ))
        })
        .collect();
    if !seeded {
        let started = Instant::now();
        seed(&app.db, &admin_db, &ids, rows).await?;
        let (d, conn) = tokio_postgres::connect(&admin_db, NoTls).await?;
        tokio::spawn(conn);
        // One statement each: VACUUM cannot run inside the implicit transaction of a batch.
        d.batch_execute("VACUUM ANALYZE").await?;
        d.batch_execute("CREATE TABLE public.bench_seeded ()")
            .await?;
        eprintln!(
            "seeded {tenants} tenants x {rows} rows in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    // Earlier runs' ingests are removed (and their chunks, claimed or not), so every run reads
    // the seeded rows alone and embeds only its own chunks.
    let (admin, conn) = tokio_postgres::connect(&admin_db, NoTls).await?;
    tokio::spawn(conn);
    admin
        .batch_execute(
            "DELETE FROM app.chunks WHERE record_key LIKE 'bench-%' OR record_key LIKE 'floor-%'; \
             DELETE FROM app.records WHERE key LIKE 'bench-%' OR key LIKE 'floor-%'; \
             UPDATE app.chunks SET embed_lease = NULL, embed_lease_until = NULL \
               WHERE embedding IS NULL AND embed_lease IS NOT NULL",
        )
        .await?;
    let started = Instant::now();
    rebuild_rollups(&app.db, &ids).await?;
    eprintln!(
        "rollups rebuilt for {tenants} tenants in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    admin.batch_execute("VACUUM ANALYZE app.records").await?;
    admin.batch_execute("VACUUM ANALYZE app.chunks").await?;
    admin.batch_execute("VACUUM ANALYZE app.rollups").await?;
    let tokens: Arc<Vec<String>> = Arc::new(bench_tokens(tenants)?);

    let mut floors = Vec::new();
    for (name, q) in read_queries() {
        let body = Arc::new(q.to_string());
        let mut samples = drive(&app, &tokens, concurrency, requests, move |_| {
            ("POST", "/v1/query".to_owned(), (*body).clone())
        })
        .await;
        samples.report(
            name,
            json!({"tenants": tenants, "rows_per_tenant": rows, "concurrency": concurrency}),
        );
        floors.push((name, q));
    }

    // Chunks a previous run left unembedded (it stopped before its worker caught up) are embedded
    // now, so the backlog measured below is this run's alone.
    for tenant in app.db.tenants_with_pending_chunks(Duration::ZERO).await? {
        tenantry::rag::queue::drain(&app.db, app.embedder.as_ref(), tenant).await?;
    }

    // 500-record upserts into each tenant's dataset: new keys (this run's own), so every request
    // inserts, and each record's note is a chunk for the background worker to embed.
    let run = chrono::Utc::now().timestamp_millis();
    let ingest_fields =
        json!({"tenants": tenants, "rows_per_tenant": rows, "concurrency": concurrency});
    let mut ingest = drive(&app, &tokens, concurrency, ingest_requests, move |n| {
        ("POST", INGEST_PATH.to_owned(), ingest_body("bench", run, n))
    })
    .await;
    ingest.report("ingest_500", ingest_fields.clone());
    // What the ingests left to embed, and how fast the in-process worker (one, coalescing) embeds
    // it once they stopped: embedding throughput on its own.
    let left = pending_chunks(&admin).await?;
    let started = Instant::now();
    while pending_chunks(&admin).await? > 0 {
        if started.elapsed() > Duration::from_secs(3600) {
            return Err("the embedding backlog never drained".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    println!(
        "{}",
        json!({"scenario": "embed_backlog_after_ingest", "embedder": app.embedder.model(),
            "chunks_pending": left, "drain_s": (secs * 1000.0).round() / 1000.0,
            "chunks_per_s": (left as f64 / secs).round()})
    );

    // The same ingests with the embedding elsewhere (as in AWS, where a function of its own
    // embeds): the chunks are written and left pending, nothing embeds them on these cores. The
    // difference to `ingest_500` is what embedding on the same two cores costs the ingests.
    // A new process, warmed first as `app` is by the reads (each tenant's organization, plan
    // and dataset known; untimed), so only the embedding differs.
    let elsewhere = Arc::new(
        App::builder(app.config.clone())
            .embed_queue(Arc::new(Elsewhere))
            .build()?,
    );
    let count = json!({"dataset": "events", "aggregates": [{"fn": "count"}]}).to_string();
    warm_each_tenant(&elsewhere, &tokens, &count).await?;
    let mut quiet = drive(
        &elsewhere,
        &tokens,
        concurrency,
        ingest_requests,
        move |n| {
            (
                "POST",
                INGEST_PATH.to_owned(),
                ingest_body("bench-q", run, n),
            )
        },
    )
    .await;
    quiet.report("ingest_500_embedding_elsewhere", ingest_fields);

    // The floor: the compiled SQL, straight to Postgres on one connection, tenant set once per
    // tenant for the session; no auth, no transaction, no HTTP shape.
    let (raw, conn) = tokio_postgres::connect(&app_url, NoTls).await?;
    tokio::spawn(conn);
    let mut dataset_ids = Vec::new();
    for (name, q) in floors {
        let spec: QuerySpec = serde_json::from_value(q)?;
        let mut compiled = Vec::new();
        for id in &ids {
            let ctx = TenantContext {
                tenant_id: *id,
                actor_id: "system:bench".into(),
            };
            let mut tx = app.db.begin(&ctx, Access::ReadOnly).await?;
            let ds = datasets::find(&mut tx, &DatasetRef::Name("events".into()))
                .await?
                .ok_or("no dataset")?;
            tx.commit().await?;
            if dataset_ids.len() < ids.len() {
                dataset_ids.push(ds.id);
            }
            // The raw path: what the records answer, without rollups.
            compiled.push(
                query::compile_raw(&spec, &ds, id.as_uuid(), QueryLimits::default())
                    .map_err(|e| format!("{e:?}"))?,
            );
        }
        let mut samples = Samples::default();
        for i in 0..requests {
            let t = i % ids.len();
            raw.query_typed(
                "SELECT set_config('app.tenant_id', $1, false)",
                &[(&ids[t].to_string(), Type::TEXT)],
            )
            .await?;
            let started = Instant::now();
            match raw
                .query_typed(&compiled[t].sql, &compiled[t].params.as_params())
                .await
            {
                Ok(_) => samples.record(started.elapsed()),
                Err(_) => samples.errors += 1,
            }
        }
        samples.report(
            &format!("{name}_floor"),
            json!({"tenants": tenants, "rows_per_tenant": rows, "concurrency": 1}),
        );
    }

    // The ingest floor: the same 500-record batches as one bare INSERT of typed arrays (the slots
    // filled client-side): no validation, no chunks, audit entry or usage event, no transaction
    // of its own. On one connection (the floor the issue names), and on as many connections as
    // the ingests had workers (the same batches competing for the same cores).
    let tenant_ids: Arc<Vec<(uuid::Uuid, uuid::Uuid)>> = Arc::new(
        ids.iter()
            .map(|t| t.as_uuid())
            .zip(dataset_ids.iter().copied())
            .collect(),
    );
    for (workers, name) in [
        (1, "ingest_500_floor"),
        (concurrency, "ingest_500_floor_concurrent"),
    ] {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (client, conn) = tokio_postgres::connect(&app_url, NoTls).await?;
            tokio::spawn(conn);
            let (next, tenant_ids) = (Arc::clone(&next), Arc::clone(&tenant_ids));
            let prefix = format!("floor-{name}-{run}");
            tasks.push(tokio::spawn(async move {
                let mut samples = Samples::default();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= ingest_requests {
                        return samples;
                    }
                    let (tenant, dataset) = tenant_ids[n % tenant_ids.len()];
                    match bare_insert(&client, tenant, dataset, &prefix, n).await {
                        Ok(took) => samples.record(took),
                        Err(e) => {
                            eprintln!("ingest floor: {e}");
                            samples.errors += 1;
                        }
                    }
                }
            }));
        }
        let mut samples = Samples::default();
        for t in tasks {
            samples.merge(t.await?);
        }
        samples.report(
            name,
            json!({"tenants": tenants, "rows_per_tenant": rows, "concurrency": workers}),
        );
    }

    // Each load into a tenant of its own (the same size), so neither loads onto the other's rows
    // or chunks.
    let loads = [
        Load {
            scenario: "bulk_import_embedding_elsewhere",
            prefix: "bench-bulk-q",
            app: &elsewhere,
            token: &tokens[1],
        },
        Load {
            scenario: "bulk_import",
            prefix: "bench-bulk",
            app: &app,
            token: &tokens[0],
        },
    ];
    bulk_import(&loads, &admin, ids[0], dataset_ids[0], run).await
}

/// One query per tenant through `app`'s edge, untimed: its organization → tenant lookup, plan and
/// dataset definition are then known, as in a process that has served the tenant before.
async fn warm_each_tenant(app: &Arc<App>, tokens: &[String], body: &str) -> Result<(), Error> {
    let routes = tenantry::http::router(Arc::clone(app), &tenantry::api::all_routes());
    for token in tokens {
        let auth = format!("Bearer {token}");
        let req = gateway_event(
            "POST",
            "/v1/query",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some(body),
        );
        let resp = tenantry::http::call(&routes, req).await;
        if !resp.status().is_success() {
            return Err(format!("warming: {}", resp.status()).into());
        }
    }
    Ok(())
}

const INGEST_PATH: &str = "/v1/datasets/events/records";

/// The `n`th 500-record ingest's body: new keys under `prefix` and this run, each record's note a
/// chunk to embed.
fn ingest_body(prefix: &str, run: i64, n: usize) -> String {
    let at = chrono::Utc::now().to_rfc3339();
    let batch: Vec<Value> = (0..500)
        .map(|i| {
            json!({"key": format!("{prefix}-{run}-{n}-{i}"), "data": {
            "region": "eu-west", "product": format!("sku-{}", i % 50), "amount": i as f64 * 0.75,
            "qty": i % 9, "paid": i % 2 == 0, "note": "bench ingest", "at": at}})
        })
        .collect();
    Value::Array(batch).to_string()
}

/// An embedding queue that leaves the chunks pending: the embedding happens elsewhere (in AWS,
/// the embedding function on its own machines), not on the cores the ingests use.
#[derive(Debug)]
struct Elsewhere;

impl tenantry::rag::queue::EmbedQueue for Elsewhere {
    fn kind(&self) -> &'static str {
        "elsewhere"
    }

    fn enqueue(&self, _: TenantId) -> tenantry::rag::queue::EnqueueFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

/// The `n`th ingest's batch as one bare INSERT of typed arrays on `client` (the tenant set for
/// the session first, untimed); how long the INSERT took.
async fn bare_insert(
    client: &tokio_postgres::Client,
    tenant: uuid::Uuid,
    dataset: uuid::Uuid,
    prefix: &str,
    n: usize,
) -> Result<Duration, tokio_postgres::Error> {
    client
        .query_typed(
            "SELECT set_config('app.tenant_id', $1, false)",
            &[(&tenant.to_string(), Type::TEXT)],
        )
        .await?;
    let at = chrono::Utc::now();
    let keys: Vec<String> = (0..500).map(|i| format!("{prefix}-{n}-{i}")).collect();
    let products: Vec<String> = (0..500).map(|i| format!("sku-{}", i % 50)).collect();
    let amounts: Vec<f64> = (0..500).map(|i| f64::from(i) * 0.75).collect();
    let qtys: Vec<i64> = (0..500).map(|i| i64::from(i % 9)).collect();
    let paid: Vec<bool> = (0..500).map(|i| i % 2 == 0).collect();
    let data: Vec<Value> = (0..500)
        .map(|i| {
            json!({"region": "eu-west", "product": products[i], "amount": amounts[i],
            "qty": qtys[i], "paid": paid[i], "note": "bench ingest", "at": at.to_rfc3339()})
        })
        .collect();
    let times = vec![at; 500];
    let regions = vec!["eu-west"; 500];
    let notes = vec!["bench ingest"; 500];
    let started = Instant::now();
    client
        .query_typed(
            "INSERT INTO app.records (tenant_id, dataset_id, key, data, ts, s1, s2, d1, i1, b1, s3) \
             SELECT $1, $2, u.* FROM unnest($3::text[], $4::jsonb[], $5::timestamptz[], \
               $6::text[], $7::text[], $8::float8[]::numeric[], $9::int8[], $10::bool[], $11::text[]) AS u",
            &[
                (&tenant, Type::UUID),
                (&dataset, Type::UUID),
                (&keys, Type::TEXT_ARRAY),
                (&data, Type::JSONB_ARRAY),
                (&times, Type::TIMESTAMPTZ_ARRAY),
                (&regions, Type::TEXT_ARRAY),
                (&products, Type::TEXT_ARRAY),
                (&amounts, Type::FLOAT8_ARRAY),
                (&qtys, Type::INT8_ARRAY),
                (&paid, Type::BOOL_ARRAY),
                (&notes, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(started.elapsed())
}

/// One bulk load: its scenario name, key prefix, process and tenant.
struct Load<'a> {
    scenario: &'a str,
    prefix: &'a str,
    app: &'a Arc<App>,
    token: &'a str,
}

/// Each load bulk-loads `BENCH_BULK_RECORDS` (150,000) records for its tenant through
/// `POST .../imports` in NDJSON bodies of `BENCH_BULK_BATCH` (15,000, under the 4 MB body limit),
/// one after another; then the floor: the same rows by binary `COPY` straight into `app.records`
/// (for `tenant`) on one superuser connection (COPY is refused under RLS; no validation, upsert,
/// chunks or rollups, and the decimal slot left empty), as records/s each.
async fn bulk_import(
    loads: &[Load<'_>],
    raw: &tokio_postgres::Client,
    tenant: TenantId,
    dataset: uuid::Uuid,
    run: i64,
) -> Result<(), Error> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;

    let total = env("BENCH_BULK_RECORDS", 150_000);
    let batch = env("BENCH_BULK_BATCH", 15_000);
    let at = chrono::Utc::now();
    let record = |prefix: &str, i: usize| {
        let region = ["eu-west", "us-east", "ap-south"][i % 3];
        json!({"key": format!("{prefix}-{run}-{i}"), "data": {
            "region": region, "product": format!("sku-{}", i % 50),
            "amount": (i % 10_000) as f64 * 0.25, "qty": i % 9, "paid": i.is_multiple_of(2),
            "note": format!("bulk load row {i}"), "at": (at - chrono::Duration::seconds(i as i64)).to_rfc3339()}})
    };
    // First through the process that embeds elsewhere (no worker on these cores), then through
    // the one whose worker embeds each body's chunks as the next body loads.
    for Load {
        scenario,
        prefix,
        app,
        token,
    } in loads
    {
        let auth = format!("Bearer {token}");
        let routes = tenantry::http::router(Arc::clone(app), &tenantry::api::all_routes());
        let mut samples = Samples::default();
        let started = Instant::now();
        let mut written = 0;
        for first in (0..total).step_by(batch) {
            let body: String = (first..(first + batch).min(total))
                .map(|i| format!("{}\n", record(prefix, i)))
                .collect();
            let req = gateway_event(
                "POST",
                "/v1/datasets/events/imports",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/x-ndjson"),
                ],
                Some(&body),
            );
            let t = Instant::now();
            let resp = tenantry::http::call(&routes, req).await;
            if resp.status().is_success() {
                samples.record(t.elapsed());
                written += (first + batch).min(total) - first;
            } else {
                eprintln!(
                    "bulk import: {} {}",
                    resp.status(),
                    String::from_utf8_lossy(resp.body())
                );
                samples.errors += 1;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        samples.report(
            scenario,
            json!({"records": written, "records_per_request": batch, "concurrency": 1,
                "records_per_s": (written as f64 / secs).round(),
                "embed_queue": app.embed_queue.kind(), "embedder": app.embedder.model()}),
        );
    }

    // The worker is still embedding the last load's chunks: it finishes first (untimed), so the
    // floor runs on quiet cores.
    if let Some(last) = loads.last() {
        tenantry::rag::queue::drain(&last.app.db, last.app.embedder.as_ref(), tenant).await?;
    }

    // The floor: binary COPY of the same rows, typed slots filled client-side.
    let types = [
        Type::UUID,
        Type::UUID,
        Type::TEXT,
        Type::JSONB,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::BOOL,
        Type::TEXT,
    ];
    let started = Instant::now();
    raw.batch_execute("BEGIN").await?;
    let sink = raw
        .copy_in(
            "COPY app.records (tenant_id, dataset_id, key, data, ts, s1, s2, i1, b1, s3) \
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures_util::pin_mut!(writer);
    let tenant = tenant.as_uuid();
    for i in 0..total {
        let r = record("floor-bulk", i);
        let d = &r["data"];
        let ts = at - chrono::Duration::seconds(i as i64);
        let (key, region, product, note) = (
            r["key"].as_str().unwrap_or_default(),
            d["region"].as_str().unwrap_or_default(),
            d["product"].as_str().unwrap_or_default(),
            d["note"].as_str().unwrap_or_default(),
        );
        let (qty, paid) = (
            d["qty"].as_i64().unwrap_or_default(),
            d["paid"].as_bool().unwrap_or_default(),
        );
        writer
            .as_mut()
            .write(&[
                &tenant, &dataset, &key, d, &ts, &region, &product, &qty, &paid, &note,
            ])
            .await?;
    }
    writer.finish().await?;
    raw.batch_execute("COMMIT").await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"scenario": "bulk_import_floor", "records": total, "concurrency": 1,
            "records_per_s": (total as f64 / secs).round()})
    );
    Ok(())
}

async fn pending_chunks(admin: &tokio_postgres::Client) -> Result<i64, Error> {
    Ok(admin
        .query_one(
            "SELECT count(*) FROM app.chunks WHERE embedding IS NULL",
            &[],
        )
        .await?
        .get(0))
}

/// Runs `total` requests with `concurrency` workers, each request for a random tenant.
async fn drive<F>(
    app: &Arc<App>,
    tokens: &Arc<Vec<String>>,
    concurrency: usize,
    total: usize,
    make: F,
) -> Samples
where
    F: Fn(usize) -> (&'static str, String, String) + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let routes = Arc::new(tenantry::http::router(
        Arc::clone(app),
        &tenantry::api::all_routes(),
    ));
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (tokens, make, next, routes) =
            (tokens.clone(), make.clone(), next.clone(), routes.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (w as u64 + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return samples;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let token = &tokens[(rng % tokens.len() as u64) as usize];
                let (method, path, body) = make(i);
                let auth = format!("Bearer {token}");
                let req = gateway_event(
                    method,
                    &path,
                    &[
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                    ],
                    Some(&body),
                );
                let started = Instant::now();
                let resp = tenantry::http::call(&routes, req).await;
                if resp.status().is_success() {
                    samples.record(started.elapsed());
                } else {
                    samples.errors += 1;
                }
            }
        }));
    }
    let mut all = Samples::default();
    for w in workers {
        let s = w.await.unwrap();
        all.merge(s);
    }
    all
}

/// Tenants, their dataset, and `rows` records each, written with set-based SQL per tenant (the
/// ingest path itself is measured by `ingest_500`).
async fn seed(db: &Db, admin_db: &str, ids: &[TenantId], rows: usize) -> Result<(), Error> {
    let (admin, conn) = tokio_postgres::connect(admin_db, NoTls).await?;
    tokio::spawn(conn);
    for (i, id) in ids.iter().enumerate() {
        provision(
            db,
            &NewTenant {
                tenant_id: *id,
                name: format!("Bench {i}"),
                slug: format!("bench-{i}"),
                auth0_org_id: Some(format!("org_bench_{i}")),
                plan: "team".into(),
            },
            "system:bench",
        )
        .await?;
        let ctx = TenantContext {
            tenant_id: *id,
            actor_id: "system:bench".into(),
        };
        let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
        let ds = match datasets::create(&mut tx, &spec()).await? {
            Some(ds) => ds,
            None => datasets::find(&mut tx, &DatasetRef::Name("events".into()))
                .await?
                .ok_or("no dataset")?,
        };
        tx.commit().await?;
        admin
            .execute(
                "INSERT INTO app.records (tenant_id, dataset_id, key, data, ts, s1, s2, d1, i1, b1, s3)
                 SELECT $1, $2, 'r-' || g,
                   jsonb_build_object('region', region, 'product', product, 'amount', amount, 'qty', qty,
                                      'paid', paid, 'note', note,
                                      'at', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')),
                   t, region, product, amount, qty, paid, note
                 FROM generate_series(1, $3::int) g,
                   LATERAL (SELECT
                     (ARRAY['eu-west','us-east','ap-south','sa-east','af-south'])[1 + g % 5] AS region,
                     'sku-' || (g * 7919 % 50) AS product,
                     round(((g * 2654435761::bigint) % 100000) / 100.0, 2) AS amount,
                     (g % 9)::int8 AS qty,
                     g % 3 <> 0 AS paid,
                     'order ' || g || ' shipped to ' || (ARRAY['Lisbon','Austin','Pune','Lima','Accra'])[1 + g % 5] AS note,
                     now() - (g % 60) * interval '1 day' - (g % 1440) * interval '1 minute' AS t) x
                 ON CONFLICT DO NOTHING",
                &[&id.as_uuid(), &ds.id, &(rows as i32)],
            )
            .await?;
    }
    Ok(())
}

/// Recomputes every tenant's rollups from its records: the seed and the cleanup above write
/// around the ingest path, which keeps them otherwise.
async fn rebuild_rollups(db: &Db, ids: &[TenantId]) -> Result<(), Error> {
    for id in ids {
        let ctx = TenantContext {
            tenant_id: *id,
            actor_id: "system:bench".into(),
        };
        let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
        let ds = datasets::find(&mut tx, &DatasetRef::Name("events".into()))
            .await?
            .ok_or("no dataset")?;
        tenantry::analytics::rollup::rebuild(&mut tx, &ds).await?;
        tx.commit().await?;
    }
    Ok(())
}

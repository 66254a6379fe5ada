//! The capacity curve: an open-loop load (requests arrive at a fixed rate, whether or not earlier
//! ones have finished) across 200 tenants with a realistic mix, in steps of rising rate, through
//! the same dispatch path a Lambda function runs (`tenantry::http::router`, in process). Each
//! step prints p50/p95/p99 and its error rate; latency counts from when a request was due, so
//! the queueing of an overloaded step is in the figures (no coordinated omission). The last line
//! names the highest rate whose p95 stayed under 50 ms with no errors: the capacity of this
//! machine.
//!
//! Reads the analytics benchmark's database (200 tenants × 20,000 rows): run
//! `scripts/bench analytics` once first.
//!
//! Environment: BENCH_RATES (requests/s per step, "25,50,100,150,200,250"), BENCH_STEP_SECS (15),
//! BENCH_POOL (database connections, 8).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry_bench::{Error, Samples, bench_database, bench_tokens, env, tenant_app};
use tenantry_tests::gateway_event;
use tokio::sync::Mutex;

const TENANTS: usize = 200;
const ROWS: usize = 20_000;

/// The mix, out of 20 requests: 12 queries (three kinds), 2 asks, 1 ingest, 5 usage reads.
fn request(i: usize, now: chrono::DateTime<chrono::Utc>) -> (&'static str, String, String) {
    let query = |q: Value| ("POST", "/v1/query".to_owned(), q.to_string());
    match i % 20 {
        0..=3 => query(json!({"dataset": "events", "filter": {"and": [
            {"column": "region", "op": "eq", "value": "eu-west"},
            {"column": "paid", "op": "eq", "value": true}]},
            "aggregates": [{"fn": "count", "as": "n"}]})),
        4..=7 => query(
            json!({"dataset": "events", "group_by": [{"column": "at", "bucket": "day"}],
            "aggregates": [{"fn": "sum", "column": "amount", "as": "revenue"}],
            "time_range": {"from": (now - chrono::Duration::days(30)).to_rfc3339(), "to": now.to_rfc3339()}}),
        ),
        8..=11 => query(json!({"dataset": "events", "group_by": ["product"],
            "aggregates": [{"fn": "sum", "column": "amount", "as": "revenue"}],
            "order_by": [{"by": "revenue", "dir": "desc"}], "limit": 10})),
        12 => (
            "POST",
            "/v1/ask".to_owned(),
            json!({"question": "What is the total amount by region?"}).to_string(),
        ),
        13 => (
            "POST",
            "/v1/ask".to_owned(),
            json!({"question": "Which orders were shipped to Lisbon?"}).to_string(),
        ),
        14 => {
            let batch: Vec<Value> = (0..50)
                .map(|k| json!({"key": format!("capacity-{}-{i}-{k}", now.timestamp_millis()), "data": {
                    "region": "eu-west", "product": format!("sku-{}", k % 50), "amount": f64::from(k) * 0.75,
                    "qty": k % 9, "paid": k % 2 == 0, "note": "capacity ingest", "at": now.to_rfc3339()}}))
                .collect();
            (
                "POST",
                "/v1/datasets/events/records".to_owned(),
                Value::Array(batch).to_string(),
            )
        }
        _ => ("GET", "/v1/usage".to_owned(), String::new()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let rates: Vec<usize> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "25,50,100,150,200,250".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let step = Duration::from_secs(env("BENCH_STEP_SECS", 15) as u64);
    let pool = env("BENCH_POOL", 8);

    let db = bench_database(
        &format!("bench_analytics_v3_{TENANTS}_{ROWS}"),
        Some("bench_seeded"),
    )
    .await?;
    if !db.reused {
        return Err(
            "the analytics benchmark's database is not seeded: run `scripts/bench analytics` first"
                .into(),
        );
    }
    let (admin, conn) = tokio_postgres::connect(&db.admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // This benchmark's ingests from an earlier run are removed, so every run reads the same rows.
    admin
        .batch_execute(
            "DELETE FROM app.chunks WHERE record_key LIKE 'capacity-%'; \
             DELETE FROM app.records WHERE key LIKE 'capacity-%'",
        )
        .await?;

    let (app, _jwks) = tenant_app(&db.app_url, pool).await?;
    let routes = Arc::new(tenantry::http::router(
        Arc::clone(&app),
        &tenantry::api::all_routes(),
    ));
    let tokens: Arc<Vec<String>> = Arc::new(bench_tokens(TENANTS)?);

    let mut capacity = None;
    for rate in rates {
        let total = (rate as f64 * step.as_secs_f64()).round() as usize;
        let samples = Arc::new(Mutex::new(Samples::default()));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
            let (routes, tokens, samples) = (routes.clone(), tokens.clone(), samples.clone());
            tasks.push(tokio::spawn(async move {
                let token = &tokens[(i * 7919) % tokens.len()];
                let (method, path, body) = request(i, chrono::Utc::now());
                let auth = format!("Bearer {token}");
                let mut headers = vec![("authorization", auth.as_str())];
                if !body.is_empty() {
                    headers.push(("content-type", "application/json"));
                }
                let req = gateway_event(
                    method,
                    &path,
                    &headers,
                    (!body.is_empty()).then_some(body.as_str()),
                );
                let resp = tenantry::http::call(&routes, req).await;
                let mut s = samples.lock().await;
                if resp.status().is_success() {
                    s.record(due.elapsed());
                } else {
                    s.errors += 1;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mut s = samples.lock().await;
        let done = s.len() as u64 + s.errors;
        let error_rate = s.errors as f64 / done.max(1) as f64;
        let line = s.report(
            "capacity_step",
            json!({"rate": rate, "step_s": step.as_secs(), "achieved_rps": (done as f64 / elapsed).round(),
                   "error_rate": error_rate, "tenants": TENANTS, "pool": pool,
                   "mix": "12 queries, 2 asks, 1 ingest of 50, 5 usage reads per 20"}),
        );
        let p95 = line["p95_ms"].as_f64().unwrap_or(f64::MAX);
        if p95 < 50.0 && s.errors == 0 {
            capacity = Some(rate);
        } else {
            // Past capacity; higher rates only queue more.
            break;
        }
    }
    println!(
        "{}",
        json!({"scenario": "capacity", "highest_rate_with_p95_under_50ms": capacity, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)})
    );
    Ok(())
}

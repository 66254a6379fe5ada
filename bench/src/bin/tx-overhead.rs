//! What TenantTx costs over a bare statement on the same connection: round trips and latency of
//! a one-row read, through a counting proxy.
//!
//! Scenarios (each a one-row read of the tenant's dataset, on one connection):
//! - `bare_statement`: the tenant set once for the session, then the SELECT alone (the floor);
//! - `tenant_tx`: TenantTx as handlers use it: BEGIN READ ONLY + tenant + SELECT pipelined, COMMIT;
//! - `naive_tx`: the same work without pipelining: BEGIN, set_config, SELECT, COMMIT one by one.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use serde_json::json;
use tenantry::TenantId;
use tenantry::config::DbConfig;
use tenantry::db::{Access, Db, TenantContext};
use tenantry::tenants::{NewTenant, provision};
use tenantry_bench::{APP_PASSWORD, Error, Samples, bench_database};
use tenantry_tests::CountingProxy;
use tokio_postgres::NoTls;
use tokio_postgres::types::Type;

const DB: &str = "bench_tx_overhead";
const SQL: &str = "SELECT name FROM app.datasets WHERE tenant_id = $1";

// One request at a time per execution environment, so one thread: it also keeps TenantTx's
// pipeline (BEGIN + tenant + first statement) in a single write, see BENCHMARKS.md.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let bench = bench_database(DB, None).await?;
    let pg_port = bench.port;

    let proxy = CountingProxy::start(pg_port).await?;
    let app_url = format!(
        "postgres://tenantry_app:{APP_PASSWORD}@127.0.0.1:{}/{DB}",
        proxy.port
    );
    let db = Db::connect(&DbConfig::new(app_url.clone(), 1))?;
    let tenant = TenantId::new();
    provision(
        &db,
        &NewTenant {
            tenant_id: tenant,
            name: "Bench".into(),
            slug: "bench".into(),
            auth0_org_id: None,
            plan: "team".into(),
        },
        "system:bench",
    )
    .await?;
    let ctx = TenantContext {
        tenant_id: tenant,
        actor_id: "system:bench".into(),
    };
    let mut tx = db.begin(&ctx, Access::ReadWrite).await?;
    let tid = tenant.as_uuid();
    tx.execute(
        "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'events')",
        &[(&tid, Type::UUID)],
    )
    .await?;
    tx.commit().await?;

    // The floor: a session with the tenant set once, then the bare statement.
    let (raw, conn) = tokio_postgres::connect(&app_url, NoTls).await?;
    tokio::spawn(conn);
    raw.query_typed(
        "SELECT set_config('app.tenant_id', $1, false)",
        &[(&tenant.to_string(), Type::TEXT)],
    )
    .await?;
    let mut bare = Samples::default();
    let bare_flights = measure(&proxy, iterations, &mut bare, || async {
        let rows = raw.query_typed(SQL, &[(&tid, Type::UUID)]).await?;
        check(rows.len())
    })
    .await;
    raw.query_typed("SELECT set_config('app.tenant_id', '', false)", &[])
        .await?;

    let mut tenant_tx = Samples::default();
    let tx_flights = measure(&proxy, iterations, &mut tenant_tx, || async {
        let mut tx = db.begin(&ctx, Access::ReadOnly).await?;
        let rows = tx.query(SQL, &[(&tid, Type::UUID)]).await?;
        tx.commit().await?;
        check(rows.len())
    })
    .await;

    let mut naive = Samples::default();
    let tenant_str = tenant.to_string();
    let naive_flights = measure(&proxy, iterations, &mut naive, || async {
        raw.batch_execute("BEGIN READ ONLY").await?;
        raw.query_typed(
            "SELECT set_config('app.tenant_id', $1, true)",
            &[(&tenant_str, Type::TEXT)],
        )
        .await?;
        let rows = raw.query_typed(SQL, &[(&tid, Type::UUID)]).await?;
        raw.batch_execute("COMMIT").await?;
        check(rows.len())
    })
    .await;

    let p50_floor = bare.quantile_ms(0.5);
    for (name, samples, flights) in [
        ("bare_statement", &mut bare, bare_flights),
        ("tenant_tx", &mut tenant_tx, tx_flights),
        ("naive_tx", &mut naive, naive_flights),
    ] {
        let ratio = if p50_floor > 0.0 {
            samples.quantile_ms(0.5) / p50_floor
        } else {
            0.0
        };
        samples.report(
            name,
            json!({ "round_trips": flights, "p50_vs_bare": (ratio * 100.0).round() / 100.0 }),
        );
    }
    Ok(())
}

fn check(rows: usize) -> Result<(), Error> {
    if rows == 1 {
        Ok(())
    } else {
        Err(format!("expected one row, got {rows}").into())
    }
}

/// Runs `op` (after a warm-up) and returns round trips per request, from the proxy's count.
async fn measure<F, Fut>(
    proxy: &CountingProxy,
    iterations: usize,
    samples: &mut Samples,
    op: F,
) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    for _ in 0..iterations / 10 {
        let _ = op().await;
    }
    let before = proxy.flights();
    for _ in 0..iterations {
        let started = Instant::now();
        match op().await {
            Ok(()) => samples.record(started.elapsed()),
            Err(_) => samples.errors += 1,
        }
    }
    let flights = proxy.flights() - before;
    ((flights as f64 / iterations as f64) * 100.0).round() / 100.0
}

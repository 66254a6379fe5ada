//! Reconciliation at scale: BENCH_TENANTS (2,000) tenants × 5 meters × BENCH_DAYS (30) days of
//! usage, in the ledger, delivered, and held by Stripe (the local Stripe test server, over HTTP,
//! through the async-stripe adapter), reconciled by `billing::reconcile::run` exactly as the
//! scheduled `billing-reconcile` function runs it (one process, tenant after tenant). Two runs:
//! the first also meets each tenant's Stripe state for the first time, the second is the steady
//! state. Prints tenants/s and Stripe calls per tenant for each.
//!
//! Environment: BENCH_TENANTS (2000), BENCH_DAYS (30).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use chrono::{Duration, Utc};
use futures_util::future::join_all;
use serde_json::json;
use tenantry::TenantId;
use tenantry::billing::reconcile::{Mode, ReconcileInput, run};
use tenantry::usage::METERS;
use tenantry_bench::{Error, bench_database, billed_tenant, env, stripe_app};
use tenantry_tests::StripeStub;

/// A deterministic quantity for (tenant, meter, day).
fn quantity(t: usize, m: usize, d: i64) -> i64 {
    ((t * 7 + m * 3) as i64 + d) % 50 + 1
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let tenants = env("BENCH_TENANTS", 2000);
    let days = env("BENCH_DAYS", 30) as i64;
    let db = bench_database("bench_reconcile", None).await?;
    let stub = StripeStub::start().await;
    let (app, sink) = stripe_app(&db.app_url, &stub, 8).await?;

    // Tenants, each with its customer.
    let started = Instant::now();
    let mut ids: Vec<(TenantId, String)> = Vec::with_capacity(tenants);
    for chunk in (0..tenants).collect::<Vec<_>>().chunks(16) {
        let made = join_all(chunk.iter().map(|t| {
            let (app, stub) = (&app, &stub);
            async move {
                let customer = format!("cus_rec{t}");
                let id = billed_tenant(app, stub, &format!("reconcile-{t}"), &customer).await?;
                Ok::<_, Error>((id, customer))
            }
        }))
        .await;
        for m in made {
            ids.push(m?);
        }
    }

    // Usage for every tenant, meter and day (one hour window a day), delivered a day ago, and
    // the same events at Stripe: everything in step, as after a normal day.
    let (admin, conn) = tokio_postgres::connect(&db.admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let today = Utc::now().date_naive();
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|(t, _)| t.as_uuid()).collect();
    let meters: Vec<&str> = METERS.iter().map(|d| d.name).collect();
    let mut rows = 0u64;
    for (ti, (_, customer)) in ids.iter().enumerate() {
        for (mi, def) in METERS.iter().enumerate() {
            // From yesterday back: today's 01:00 window may still be open, or in the future.
            for d in 1..=days {
                let at = (today - Duration::days(d))
                    .and_hms_opt(1, 0, 0)
                    .unwrap()
                    .and_utc();
                stub.inject(
                    customer,
                    def.event_name,
                    quantity(ti, mi, d),
                    at.timestamp(),
                );
            }
        }
    }
    // One statement per table: day d's window for (tenant index i, meter index j).
    let seeded = admin
        .execute(
            "WITH g AS ( \
               SELECT t.tenant, t.i, m.meter, m.j, d \
               FROM unnest($1::uuid[]) WITH ORDINALITY AS t(tenant, i), \
                    unnest($2::text[]) WITH ORDINALITY AS m(meter, j), \
                    generate_series(1, $3) AS d) \
             INSERT INTO app.usage_events (tenant_id, event_id, meter, quantity, occurred_at, window_start, source) \
             SELECT tenant, gen_random_uuid(), meter, ((i - 1) * 7 + (j - 1) * 3 + d) % 50 + 1, \
                    (($4::date - d) + interval '1 hour') AT TIME ZONE 'UTC', \
                    (($4::date - d) + interval '1 hour') AT TIME ZONE 'UTC', 'bench' \
             FROM g",
            &[&uuids, &meters, &(days as i32), &today],
        )
        .await?;
    rows += seeded;
    admin
        .execute(
            "INSERT INTO app.usage_deliveries \
               (tenant_id, meter, window_start, seq, value, kind, event_time, status, attempts, \
                settled_at, first_sent_at) \
             SELECT tenant_id, meter, window_start, 0, sum(quantity), 'window', window_start, \
                    'delivered', 1, now() - interval '1 day', now() - interval '1 day' \
             FROM app.usage_events GROUP BY tenant_id, meter, window_start",
            &[],
        )
        .await?;
    admin.batch_execute("ANALYZE").await?;
    let seed_s = started.elapsed().as_secs_f64();

    let cfg = app.config.billing.meter.clone();
    let plans = app.config.billing.plans.clone();
    let input = ReconcileInput::all(Mode::Reconcile);
    for label in ["first", "steady"] {
        let calls_before = stub.meter_event_calls()
            + stub.summary_requests().len() as u64
            + stub.customer_calls()
            + stub.period_reads().0
            + stub.period_reads().1;
        let t0 = Instant::now();
        let out = run(&app.db, sink.as_ref(), &cfg, &plans, &input).await?;
        let secs = t0.elapsed().as_secs_f64();
        let calls = stub.meter_event_calls()
            + stub.summary_requests().len() as u64
            + stub.customer_calls()
            + stub.period_reads().0
            + stub.period_reads().1
            - calls_before;
        println!(
            "{}",
            json!({
                "scenario": "reconcile",
                "run": label,
                "tenants": tenants,
                "meters": METERS.len(),
                "days_seeded": days,
                "ledger_rows": rows,
                "seed_s": (seed_s * 10.0).round() / 10.0,
                "run_s": (secs * 100.0).round() / 100.0,
                "tenants_per_s": (tenants as f64 / secs).round(),
                "stripe_calls": calls,
                "stripe_calls_per_tenant": (calls as f64 / tenants as f64 * 100.0).round() / 100.0,
                "days_checked": out.days_checked,
                "in_sync": out.in_sync,
                "repaired": out.repaired,
                "in_flight": out.in_flight,
                "tenant_errors": out.tenant_errors,
                "hours_for_10000_tenants": (10_000.0 / (tenants as f64 / secs) / 3600.0 * 100.0).round() / 100.0,
            })
        );
    }
    Ok(())
}

//! Reconciliation at scale: BENCH_TENANTS (2,000) tenants × 5 meters × BENCH_DAYS (30) days of
//! usage, in the ledger, delivered, and held by Stripe (the local Stripe test server, over HTTP,
//! through the async-stripe adapter). Four runs, each a JSON line with tenants/s and Stripe calls
//! per tenant:
//! - `first`: one process, tenant after tenant (`billing::reconcile::run` without a queue); it
//!   also plans every seeded window once (the seed notes them all, as a backlog would);
//! - `steady`: the same again, nothing changed;
//! - `one_at_a_time`: the floor with Stripe's round trip modelled (every answer of the test
//!   server waits BENCH_STRIPE_LATENCY_MS, 150), over the first BENCH_FLOOR_TENANTS (50);
//! - `fan_out`: the schedule's event through `handle_event`, every tenant queued on SQS (moto)
//!   BENCH_BATCH (25) to a message, then BENCH_WORKERS (2) consumers, as Lambda's poller, each
//!   taking a message at a time and reconciling BENCH_AT_ONCE (4) tenants at once — with the same
//!   latency; its ratio to `one_at_a_time` is printed.
//!
//! Environment: BENCH_TENANTS (2000), BENCH_DAYS (30), and the above.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use aws_lambda_events::event::sqs::SqsEvent;
use chrono::{Duration, Utc};
use futures_util::future::join_all;
use serde_json::json;
use tenantry::TenantId;
use tenantry::billing::reconcile::{
    Mode, ReconcileInput, RunOutcome, SqsReconcileQueue, handle_event, run,
};
use tenantry::usage::METERS;
use tenantry_bench::{Error, bench_database, billed_tenant, env, stripe_app};
use tenantry_tests::{Moto, StripeStub};

/// A deterministic quantity for (tenant, meter, day).
fn quantity(t: usize, m: usize, d: i64) -> i64 {
    ((t * 7 + m * 3) as i64 + d) % 50 + 1
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let tenants = env("BENCH_TENANTS", 2000);
    let days = env("BENCH_DAYS", 30) as i64;
    let db = bench_database("bench_reconcile", None).await?;
    let latency = env("BENCH_STRIPE_LATENCY_MS", 150) as u64;
    let floor = env("BENCH_FLOOR_TENANTS", 50);
    let (batch, workers, at_once) = (
        env("BENCH_BATCH", 25),
        env("BENCH_WORKERS", 2),
        env("BENCH_AT_ONCE", 4),
    );
    let stub = StripeStub::start().await;
    let (app, sink) = stripe_app(&db.app_url, &stub, 8).await?;
    let moto = Moto::start();
    let (sqs, queue_url) = moto.queue("bench-reconcile").await;
    let queue = SqsReconcileQueue::new(sqs.clone(), &queue_url);

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

    let plans = app.config.billing.plans.clone();
    let stripe_calls = || {
        stub.meter_event_calls()
            + stub.summary_requests().len() as u64
            + stub.customer_calls()
            + stub.period_reads().0
            + stub.period_reads().1
    };
    let mut floor_tps = None;
    for (label, latency_ms) in [
        ("first", 0),
        ("steady", 0),
        ("one_at_a_time", latency),
        ("fan_out", latency),
    ] {
        stub.set_latency(std::time::Duration::from_millis(latency_ms));
        let mut cfg = app.config.billing.meter.clone();
        let calls_before = stripe_calls();
        let t0 = Instant::now();
        let (visited, out) = match label {
            // As one process visiting every tenant, one at a time (the run without a queue).
            "first" | "steady" => {
                cfg.reconcile_concurrency = 1;
                let input = ReconcileInput::all(Mode::Reconcile);
                let out = run(&app.db, sink.as_ref(), &cfg, &plans, &input).await?;
                (tenants, out)
            }
            // The floor with Stripe's round trip: the first BENCH_FLOOR_TENANTS, one at a time.
            "one_at_a_time" => {
                cfg.reconcile_concurrency = 1;
                let only: Vec<TenantId> = ids.iter().take(floor).map(|(t, _)| *t).collect();
                let input = ReconcileInput {
                    mode: Mode::Reconcile,
                    tenants: Some(only),
                    run_id: None,
                    attempt: None,
                };
                let out = run(&app.db, sink.as_ref(), &cfg, &plans, &input).await?;
                (floor.min(tenants), out)
            }
            // The schedule's fan-out: every tenant queued on SQS (moto), BENCH_BATCH to a
            // message; BENCH_WORKERS functions take a message at a time, each reconciling
            // BENCH_AT_ONCE tenants at once (the template's defaults: 25, 2, 4).
            _ => {
                cfg.reconcile_batch = batch;
                cfg.reconcile_concurrency = at_once;
                let out = handle_event(
                    &app.db,
                    sink.as_ref(),
                    &cfg,
                    &plans,
                    Some(&queue),
                    json!({"mode": "reconcile"}),
                )
                .await?;
                let messages = tenantry_tests::sqs_receive_all(&sqs, &queue_url)
                    .await
                    .records;
                assert_eq!(Some(messages.len() as u64), out["batches_queued"].as_u64());
                let messages = std::sync::Mutex::new(messages);
                let failures = std::sync::atomic::AtomicUsize::new(0);
                join_all((0..workers).map(|_| async {
                    loop {
                        let Some(m) = messages.lock().unwrap().pop() else {
                            return;
                        };
                        let mut event = SqsEvent::default();
                        event.records.push(m);
                        let event = serde_json::to_value(&event).unwrap();
                        let r = handle_event(&app.db, sink.as_ref(), &cfg, &plans, None, event)
                            .await
                            .unwrap();
                        let failed = r["batchItemFailures"].as_array().map_or(0, Vec::len);
                        failures.fetch_add(failed, std::sync::atomic::Ordering::Relaxed);
                    }
                }))
                .await;
                assert_eq!(failures.into_inner(), 0, "every batch reconciled");
                // The batches' own outcomes are in their summaries: count them.
                let row = admin
                    .query_one(
                        "SELECT coalesce(sum(checked), 0)::int8, \
                                coalesce(sum((actions ->> 'in_sync')::int8), 0)::int8, \
                                coalesce(sum((actions ->> 'repaired')::int8), 0)::int8, \
                                coalesce(sum((actions ->> 'in_flight')::int8), 0)::int8, \
                                count(*) \
                         FROM app.billing_reconciliation_days WHERE last_run_id = $1",
                        &[&uuid::Uuid::parse_str(out["run_id"].as_str().unwrap())?],
                    )
                    .await?;
                let n = |i: usize| row.get::<_, i64>(i) as usize;
                let out = RunOutcome {
                    days_checked: n(0),
                    in_sync: n(1),
                    repaired: n(2),
                    in_flight: n(3),
                    // A tenant without this run's summary did not finish it.
                    tenant_errors: tenants - n(4),
                    ..RunOutcome::default()
                };
                (tenants, out)
            }
        };
        let secs = t0.elapsed().as_secs_f64();
        let calls = stripe_calls() - calls_before;
        let tps = visited as f64 / secs;
        if label == "one_at_a_time" {
            floor_tps = Some(tps);
        }
        let records: i64 = admin
            .query_one("SELECT count(*) FROM app.billing_reconciliations", &[])
            .await?
            .get(0);
        println!(
            "{}",
            json!({
                "scenario": "reconcile",
                "run": label,
                "stripe_latency_ms": latency_ms,
                "tenants": visited,
                "meters": METERS.len(),
                "days_seeded": days,
                "ledger_rows": rows,
                "seed_s": (seed_s * 10.0).round() / 10.0,
                "run_s": (secs * 100.0).round() / 100.0,
                "tenants_per_s": (tps * 10.0).round() / 10.0,
                "ratio_to_one_at_a_time": floor_tps.filter(|_| label == "fan_out")
                    .map(|f| (tps / f * 10.0).round() / 10.0),
                "stripe_calls": calls,
                "stripe_calls_per_tenant": (calls as f64 / visited as f64 * 100.0).round() / 100.0,
                "stripe_calls_per_s": (calls as f64 / secs).round(),
                "days_checked": out.days_checked,
                "in_sync": out.in_sync,
                "repaired": out.repaired,
                "in_flight": out.in_flight,
                "tenant_errors": out.tenant_errors,
                "reconciliation_records_total": records,
                // Only meaningful with Stripe's round trip modelled.
                "minutes_for_10000_tenants": (latency_ms > 0)
                    .then(|| (10_000.0 / tps / 60.0 * 10.0).round() / 10.0),
            })
        );
    }
    Ok(())
}

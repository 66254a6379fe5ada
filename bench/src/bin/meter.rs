//! Meter throughput: usage events from the queue into the ledger (the `usage-meter` handler, as
//! Lambda calls it with SQS batches), then out to Stripe (the local Stripe test server, over HTTP,
//! through the async-stripe adapter) when the windows close, with Stripe calls per window.
//!
//! Environment: BENCH_TENANTS (200), BENCH_EVENTS (200000), BENCH_BATCH (500 messages per
//! invocation, one event per message as the HTTP functions send them), BENCH_CONCURRENCY (2
//! function instances).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use serde_json::json;
use tenantry::billing::meter::{FlushMemo, MeterConfig, UsageMessage, flush_tenants, handle_sqs};
use tenantry::usage::{Meter, UsageEvent};
use tenantry_bench::{Error, Samples, bench_database, billed_tenant, env, stripe_app};
use tenantry_tests::StripeStub;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let tenants = env("BENCH_TENANTS", 200);
    let total = env("BENCH_EVENTS", 200_000);
    let batch = env("BENCH_BATCH", 500);
    let concurrency = env("BENCH_CONCURRENCY", 2);
    let db = bench_database("bench_meter", None).await?;
    let stub = StripeStub::start().await;
    // Each instance: its tenants' ledger transactions 8 at a time.
    let (app, sink) = stripe_app(&db.app_url, &stub, 8).await?;

    let mut ids = Vec::new();
    for t in 0..tenants {
        ids.push(
            billed_tenant(&app, &stub, &format!("meter-{t}"), &format!("cus_meter{t}")).await?,
        );
    }

    // The batches, as SQS delivers them: one event per message (one request each), tenants and
    // meters mixed, all in the current (open) window.
    let meters = [Meter::Queries, Meter::Questions, Meter::IngestedRecords];
    let now = chrono::Utc::now();
    let batches: Vec<SqsEvent> = (0..total)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|chunk| {
            let mut e = SqsEvent::default();
            for &i in chunk {
                let ev = UsageEvent {
                    event_id: uuid::Uuid::now_v7(),
                    tenant_id: ids[(i * 7919) % ids.len()],
                    meter: meters[i % meters.len()],
                    quantity: 1,
                    occurred_at: now,
                    source: "api:bench".into(),
                };
                let mut m = SqsMessage::default();
                m.message_id = Some(format!("m-{i}"));
                m.body = Some(serde_json::to_string(&UsageMessage { events: vec![ev] }).unwrap());
                e.records.push(m);
            }
            e
        })
        .collect();
    let batches = Arc::new(batches);

    // 1. Queue → ledger: `concurrency` function instances, each with its own flush memo.
    let cfg = app.config.billing.meter.clone();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (app, batches, next, cfg) = (app.clone(), batches.clone(), next.clone(), cfg.clone());
        workers.push(tokio::spawn(async move {
            let memo = FlushMemo::default();
            let mut samples = Samples::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = batches.get(i) else {
                    return samples;
                };
                let t = Instant::now();
                let r = handle_sqs(&app.db, app.billing.as_ref(), &cfg, &memo, b.clone()).await;
                if r.batch_item_failures.is_empty() {
                    samples.record(t.elapsed());
                } else {
                    samples.errors += 1;
                }
            }
        }));
    }
    let mut samples = Samples::default();
    for w in workers {
        samples.merge(w.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (admin, conn) = tokio_postgres::connect(&db.admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let recorded: i64 = admin
        .query_one("SELECT count(*) FROM app.usage_events", &[])
        .await?
        .get(0);
    samples.report(
        "meter_queue_to_ledger",
        json!({
            "tenants": tenants, "events": total, "recorded": recorded,
            "batch_messages": batch, "instances": concurrency,
            "events_per_sec": (total as f64 / elapsed).round(),
            "stripe_calls": stub.meter_event_calls(),
            "note": "p50/p95/p99 are per SQS batch (one invocation)",
        }),
    );

    // 2. The windows close: one flush sends them to Stripe.
    let closing = MeterConfig {
        // Treat the current window as closed now.
        grace_secs: -cfg.window_secs,
        concurrency: 16,
        ..cfg
    };
    let calls_before = stub.meter_event_calls();
    let t = Instant::now();
    let out = flush_tenants(&app.db, sink.as_ref(), &closing, &ids).await;
    let flush_secs = t.elapsed().as_secs_f64();
    let windows: i64 = admin
        .query_one(
            "SELECT count(DISTINCT (tenant_id, meter, window_start)) FROM app.usage_events",
            &[],
        )
        .await?
        .get(0);
    let calls = stub.meter_event_calls() - calls_before;
    let mut exact = true;
    for (i, id) in ids.iter().enumerate() {
        for m in meters {
            let l: i64 = admin
                .query_one(
                    "SELECT coalesce(sum(quantity), 0)::int8 FROM app.usage_events WHERE tenant_id = $1 AND meter = $2",
                    &[&id.as_uuid(), &m.name()],
                )
                .await?
                .get(0);
            exact &= l == stub.total(&format!("cus_meter{i}"), m.def().event_name);
        }
    }
    println!(
        "{}",
        json!({
            "scenario": "meter_flush_to_stripe", "tenants": tenants, "meters": meters.len(),
            "windows": windows, "stripe_calls": calls, "delivered": out.delivered,
            "calls_per_window": calls as f64 / windows.max(1) as f64,
            "flush_secs": (flush_secs * 1000.0).round() / 1000.0,
            "events_per_sec": (total as f64 / flush_secs).round(),
            "ledger_equals_stripe": exact,
        })
    );
    Ok(())
}

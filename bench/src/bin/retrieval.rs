//! Retrieval at 200-tenant load: hybrid search (exact per-tenant vectors + full text, RRF) in the
//! tenant's transaction, `/v1/ask` through the dispatcher, and the HNSW index path with its
//! recall@k against the exact scan.
//!
//! Environment: BENCH_TENANTS (200), BENCH_CHUNKS (2000 per tenant), BENCH_DIMS (256),
//! BENCH_CONCURRENCY (2), BENCH_REQUESTS (1000), BENCH_K (10).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tenantry::config::Config;
use tenantry::db::{Access, TenantContext};
use tenantry::rag::embed::{LocalEmbedder, to_pgvector};
use tenantry::rag::search::{embed_question, search};
use tenantry::tenants::{NewTenant, provision};
use tenantry::{App, TenantId};
use tenantry_bench::{Error, Samples, bench_database};
use tenantry_tests::{AUDIENCE, ISSUER, JwksServer, dev_jwk, gateway_event, issuer};
use tokio_postgres::NoTls;
use tokio_postgres::types::Type;

const WORDS: &[&str] = &[
    "invoice",
    "refund",
    "shipment",
    "customs",
    "delay",
    "warehouse",
    "pallet",
    "courier",
    "damage",
    "return",
    "payment",
    "card",
    "bank",
    "transfer",
    "discount",
    "coupon",
    "order",
    "cancel",
    "address",
    "label",
    "lisbon",
    "berlin",
    "austin",
    "osaka",
    "lima",
    "accra",
    "pune",
    "sydney",
    "toronto",
    "bogota",
    "widget",
    "gadget",
    "gizmo",
    "sprocket",
    "turbine",
    "valve",
    "pump",
    "sensor",
    "cable",
    "battery",
    "late",
    "broken",
    "missing",
    "wrong",
    "duplicate",
    "urgent",
    "priority",
    "express",
    "standard",
    "bulk",
];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A deterministic pseudo-random sentence of `n` words.
fn sentence(seed: u64, n: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            WORDS[(x % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let tenants = env("BENCH_TENANTS", 200);
    let chunks = env("BENCH_CHUNKS", 2000);
    let dims = env("BENCH_DIMS", 256);
    let concurrency = env("BENCH_CONCURRENCY", 2);
    let requests = env("BENCH_REQUESTS", 1000);
    let k = env("BENCH_K", 10);
    let db = bench_database(
        &format!("bench_retrieval_{tenants}_{chunks}_{dims}"),
        Some("bench_seeded"),
    )
    .await?;

    let jwks = JwksServer::start(json!({ "keys": [dev_jwk("dev")] })).await;
    let vars = [
        ("APP_DATABASE_URL", db.app_url.clone()),
        ("AUTH0_ISSUER", ISSUER.to_owned()),
        ("AUTH0_AUDIENCE", AUDIENCE.to_owned()),
        ("AUTH0_JWKS_URL", jwks.url.clone()),
        ("DB_POOL_MAX", concurrency.max(2).to_string()),
        ("EMBED_DIMS", dims.to_string()),
    ];
    let config =
        Config::from_lookup(|key| vars.iter().find(|(n, _)| *n == key).map(|(_, v)| v.clone()))?;
    let app = Arc::new(App::new(config)?);
    let embedder = LocalEmbedder::new(dims);

    let ids: Vec<TenantId> = (0..tenants)
        .map(|i| {
            TenantId::from(uuid::Uuid::from_u128(
                0x0190_0000_0000_7000_8000_0000_0001_0000 + i as u128,
            ))
        })
        .collect();
    if !db.reused {
        let started = Instant::now();
        let (admin, conn) = tokio_postgres::connect(&db.admin_url, NoTls).await?;
        tokio::spawn(conn);
        for (t, id) in ids.iter().enumerate() {
            provision(
                &app.db,
                &NewTenant {
                    tenant_id: *id,
                    name: format!("Retrieval {t}"),
                    slug: format!("retrieval-{t}"),
                    auth0_org_id: Some(format!("org_retrieval_{t}")),
                    plan: "team".into(),
                },
                "system:bench",
            )
            .await?;
            let ds: uuid::Uuid = admin
                .query_one(
                    "INSERT INTO app.datasets (tenant_id, name, columns, text_columns) \
                     VALUES ($1, 'docs', '[{\"name\": \"body\", \"type\": \"string\"}]', '{body}') RETURNING dataset_id",
                    &[&id.as_uuid()],
                )
                .await?
                .get(0);
            let texts: Vec<String> = (0..chunks)
                .map(|c| sentence((t * 1_000_003 + c) as u64, 24))
                .collect();
            let keys: Vec<String> = (0..chunks).map(|c| format!("doc-{c}")).collect();
            let vectors: Vec<String> = texts
                .iter()
                .map(|s| to_pgvector(&embedder.vector(s)))
                .collect();
            admin
                .execute(
                    "WITH r AS (INSERT INTO app.records (tenant_id, dataset_id, key, data) \
                       SELECT $1, $2, k, jsonb_build_object('body', b) FROM unnest($3::text[], $4::text[]) AS u(k, b) RETURNING 1) \
                     INSERT INTO app.chunks (tenant_id, dataset_id, record_key, chunk_no, record_version, column_name, content, embedding, embedding_model) \
                     SELECT $1, $2, k, 0, 1, 'body', b, e::vector, 'local-hashed-ngrams-v1' \
                     FROM unnest($3::text[], $4::text[], $5::text[]) AS u(k, b, e)",
                    &[&id.as_uuid(), &ds, &keys, &texts, &vectors],
                )
                .await?;
        }
        admin.batch_execute("VACUUM ANALYZE").await?;
        admin
            .batch_execute("CREATE TABLE public.bench_seeded ()")
            .await?;
        eprintln!(
            "seeded {tenants} tenants x {chunks} chunks in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    let questions: Arc<Vec<String>> =
        Arc::new((0..512).map(|i| sentence(7_777_777 + i, 6)).collect());
    let base = json!({"tenants": tenants, "chunks_per_tenant": chunks, "dims": dims, "k": k, "concurrency": concurrency});

    // 1. Hybrid search in the tenant's transaction (what /v1/ask does before answering).
    let short = Arc::new(AtomicUsize::new(0));
    let mut s = drive(concurrency, requests, {
        let (app, ids, questions, short) = (
            app.clone(),
            Arc::new(ids.clone()),
            questions.clone(),
            short.clone(),
        );
        move |i| {
            let (app, ids, questions, short) =
                (app.clone(), ids.clone(), questions.clone(), short.clone());
            async move {
                let tenant = ids[(i * 7919) % ids.len()];
                let ctx = TenantContext {
                    tenant_id: tenant,
                    actor_id: "system:bench".into(),
                };
                let question = &questions[i % questions.len()];
                let vector = embed_question(app.embedder.as_ref(), question)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut tx = app
                    .db
                    .begin(&ctx, Access::ReadOnly)
                    .await
                    .map_err(|e| e.to_string())?;
                let hits = search(&mut tx, question, &vector, k, None)
                    .await
                    .map_err(|e| e.to_string())?;
                tx.commit().await.map_err(|e| e.to_string())?;
                if hits.len() < k {
                    short.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        }
    })
    .await;
    let mut line = base.clone();
    line["queries_with_fewer_than_k"] = json!(short.load(Ordering::Relaxed));
    s.report("search_hybrid_exact", line);

    // 2. /v1/ask through the dispatcher: JWT, TenantTx, search, local answerer, policing.
    let iss = issuer();
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..tenants)
            .map(|t| {
                iss.token(
                    "auth0|bench",
                    &format!("org_retrieval_{t}"),
                    &[],
                    Duration::from_secs(3600),
                )
                .unwrap()
            })
            .collect(),
    );
    let routes = Arc::new(tenantry::api::all_routes());
    let mut s = drive(concurrency, requests, {
        let (app, tokens, questions, routes) = (
            app.clone(),
            tokens.clone(),
            questions.clone(),
            routes.clone(),
        );
        move |i| {
            let (app, tokens, questions, routes) = (
                app.clone(),
                tokens.clone(),
                questions.clone(),
                routes.clone(),
            );
            async move {
                let auth = format!("Bearer {}", tokens[(i * 7919) % tokens.len()]);
                let body = json!({"question": questions[i % questions.len()], "k": k}).to_string();
                let req = gateway_event(
                    "POST",
                    "/v1/ask",
                    &[
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                    ],
                    Some(&body),
                );
                let resp = tenantry::http::dispatch(&app, &routes, req).await;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("status {}", resp.status()))
                }
            }
        }
    })
    .await;
    s.report("ask_local_answerer", base.clone());

    // 3. The HNSW path (iterative scan) vs the exact scan: recall@k and latency.
    let (raw, conn) = tokio_postgres::connect(&db.app_url, NoTls).await?;
    tokio::spawn(conn);
    let mut hnsw = Samples::default();
    let (mut found, mut wanted) = (0usize, 0usize);
    let exact_sql = format!(
        "SELECT record_key FROM app.chunks WHERE tenant_id = $1 AND vector_dims(embedding) = {dims} \
         ORDER BY embedding <=> $2::vector, record_key LIMIT $3"
    );
    let hnsw_sql = format!(
        "SELECT record_key FROM (SELECT record_key, embedding::vector({dims}) <=> $2::vector({dims}) AS d \
           FROM app.chunks WHERE tenant_id = $1 AND vector_dims(embedding) = {dims} \
           ORDER BY embedding::vector({dims}) <=> $2::vector({dims}) LIMIT $3) x ORDER BY d"
    );
    let samples = requests.min(300);
    for i in 0..samples {
        let tenant = ids[(i * 7919) % ids.len()];
        let q = to_pgvector(&embedder.vector(&questions[i % questions.len()]));
        let kk = k as i64;
        raw.batch_execute(&format!(
            "BEGIN READ ONLY; SELECT set_config('app.tenant_id', '{tenant}', true); \
             SET LOCAL hnsw.ef_search = 200; SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL hnsw.max_scan_tuples = 100000"
        ))
        .await?;
        let exact: Vec<String> = raw
            .query_typed(
                &exact_sql,
                &[
                    (&tenant.as_uuid(), Type::UUID),
                    (&q, Type::TEXT),
                    (&kk, Type::INT8),
                ],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let started = Instant::now();
        let approx: Vec<String> = raw
            .query_typed(
                &hnsw_sql,
                &[
                    (&tenant.as_uuid(), Type::UUID),
                    (&q, Type::TEXT),
                    (&kk, Type::INT8),
                ],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        hnsw.record(started.elapsed());
        raw.batch_execute("COMMIT").await?;
        wanted += exact.len();
        found += exact.iter().filter(|e| approx.contains(e)).count();
    }
    let mut line = base;
    line["recall_at_k"] = json!(((found as f64 / wanted.max(1) as f64) * 1000.0).round() / 1000.0);
    line["concurrency"] = json!(1);
    hnsw.report("hnsw_iterative_scan", line);
    Ok(())
}

/// Runs `total` operations with `concurrency` workers.
async fn drive<F, Fut>(concurrency: usize, total: usize, op: F) -> Samples
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return samples;
                }
                let started = Instant::now();
                match op(i).await {
                    Ok(()) => samples.record(started.elapsed()),
                    Err(_) => samples.errors += 1,
                }
            }
        }));
    }
    let mut all = Samples::default();
    for w in workers {
        all.merge(w.await.unwrap());
    }
    all
}

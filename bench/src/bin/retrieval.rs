//! Retrieval at 200-tenant load: hybrid search (vectors + full text, RRF) in the tenant's
//! transaction on the exact and the HNSW path, the HNSW path's recall@k against the exact one, and
//! `/v1/ask` through the edge.
//!
//! Environment: BENCH_TENANTS (200), BENCH_CHUNKS (2000 per tenant), BENCH_DIMS (256),
//! BENCH_CONCURRENCY (2), BENCH_REQUESTS (1000), BENCH_K (10).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tenantry::config::Config;
use tenantry::rag::embed::LocalEmbedder;
use tenantry::rag::search::{Retrieved, embed_question};
use tenantry::{App, TenantId};
use tenantry_bench::{
    Error, bench_database, docs_tenant, drive, drop_vector_indexes, env, insert_docs, mark_seeded,
    run_search, sentence, sort_priced_out,
};
use tenantry_tests::{AUDIENCE, ISSUER, JwksServer, dev_jwk, gateway_event, issuer};
use tokio_postgres::NoTls;

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
    let app = Arc::new(App::builder(config).build()?);
    let embedder = LocalEmbedder::new(dims);
    // The same app on connections where sorting is priced out, so the planner takes the HNSW
    // index even where it (rightly) prefers an exact scan: measures the index path itself.
    let forced_vars: Vec<(&str, String)> = vars
        .iter()
        .map(|(n, v)| match *n {
            "APP_DATABASE_URL" => (*n, sort_priced_out(v)),
            _ => (*n, v.clone()),
        })
        .collect();
    let forced = Arc::new(
        App::builder(Config::from_lookup(|key| {
            forced_vars
                .iter()
                .find(|(n, _)| *n == key)
                .map(|(_, v)| v.clone())
        })?)
        .build()?,
    );

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
        let indexes = drop_vector_indexes(&admin).await?;
        for (t, id) in ids.iter().enumerate() {
            let ds = docs_tenant(&app, &admin, *id, ("Retrieval", "retrieval"), t).await?;
            insert_docs(&admin, &embedder, *id, ds, t, 0..chunks).await?;
        }
        mark_seeded(&admin, &indexes, started).await?;
    }
    let questions: Arc<Vec<String>> =
        Arc::new((0..512).map(|i| sentence(7_777_777 + i, 6)).collect());
    let base = json!({"tenants": tenants, "chunks_per_tenant": chunks, "dims": dims, "k": k, "concurrency": concurrency});

    // 1. Hybrid search in the tenant's transaction (what /v1/ask does before answering), on
    // each vector path: exact (threshold above every tenant) and approximate (threshold 0).
    let ef_search = app.config.rag.hnsw_ef_search;
    for (scenario, app, threshold) in [
        ("search_hybrid_exact", &app, i64::MAX),
        ("search_hybrid_planner", &app, 0),
        ("search_hybrid_hnsw_forced", &forced, 0),
    ] {
        let short = Arc::new(AtomicUsize::new(0));
        let fell_back = Arc::new(AtomicUsize::new(0));
        let mut s = drive(concurrency, requests, {
            let (app, ids, questions, short, fell_back) = (
                app.clone(),
                Arc::new(ids.clone()),
                questions.clone(),
                short.clone(),
                fell_back.clone(),
            );
            move |i| {
                let (app, ids, questions, short, fell_back) = (
                    app.clone(),
                    ids.clone(),
                    questions.clone(),
                    short.clone(),
                    fell_back.clone(),
                );
                async move {
                    let tenant = ids[(i * 7919) % ids.len()];
                    let question = &questions[i % questions.len()];
                    let vector = embed_question(app.embedder.as_ref(), question)
                        .await
                        .map_err(|e| e.to_string())?;
                    let got = run_search(&app, tenant, question, &vector, k, threshold, ef_search)
                        .await?;
                    if got.hits.len() < k {
                        short.fetch_add(1, Ordering::Relaxed);
                    }
                    if got.exact && threshold == 0 {
                        fell_back.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }
            }
        })
        .await;
        let mut line = base.clone();
        line["queries_with_fewer_than_k"] = json!(short.load(Ordering::Relaxed));
        line["exact_fallbacks"] = json!(fell_back.load(Ordering::Relaxed));
        line["ef_search"] = json!(ef_search);
        s.report(scenario, line);
    }

    // Recall of the approximate path's answer against the exact path's, per query (the same
    // hybrid search, fused, k results each).
    let (mut found, mut wanted) = (0usize, 0usize);
    for i in 0..requests.min(300) {
        let tenant = ids[(i * 7919) % ids.len()];
        let question = &questions[i % questions.len()];
        let vector = embed_question(app.embedder.as_ref(), question).await?;
        let keys = |r: Retrieved| {
            r.hits
                .into_iter()
                .map(|h| (h.record_key, h.chunk_no))
                .collect::<Vec<_>>()
        };
        let exact =
            keys(run_search(&app, tenant, question, &vector, k, i64::MAX, ef_search).await?);
        let approx = keys(run_search(&forced, tenant, question, &vector, k, 0, ef_search).await?);
        wanted += exact.len();
        found += exact.iter().filter(|e| approx.contains(e)).count();
    }
    let mut line = base.clone();
    line["recall_at_k"] = json!(((found as f64 / wanted.max(1) as f64) * 1000.0).round() / 1000.0);
    line["ef_search"] = json!(ef_search);
    println!(
        "{}",
        json!({"scenario": "hybrid_hnsw_forced_recall", "detail": line})
    );

    // 2. /v1/ask through the edge: JWT, TenantTx, search, local answerer, policing.
    let iss = issuer();
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..tenants)
            .map(|t| {
                iss.token(
                    "auth0|bench",
                    &format!("org_retrieval_{t}"),
                    &["admin"],
                    Duration::from_secs(3600),
                )
                .unwrap()
            })
            .collect(),
    );
    let routes = Arc::new(tenantry::http::router(
        Arc::clone(&app),
        &tenantry::api::all_routes(),
    ));
    let mut s = drive(concurrency, requests, {
        let (tokens, questions, routes) = (tokens.clone(), questions.clone(), routes.clone());
        move |i| {
            let (tokens, questions, routes) = (tokens.clone(), questions.clone(), routes.clone());
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
                let resp = tenantry::http::call(&routes, req).await;
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

    Ok(())
}

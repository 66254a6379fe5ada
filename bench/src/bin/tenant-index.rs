//! A large tenant among many: its searches on the shared HNSW index, then on an index of its own
//! (`tenantry::rag::tenant_index`, built by `maintain` as the indexer role), each against the
//! exact scan of its chunks; recall@k of both.
//!
//! Environment: BENCH_TOTAL_CHUNKS (1,000,000), BENCH_BIG_CHUNKS (50,000: the large tenant's),
//! BENCH_TENANTS (191: the large one and the rest sharing what is left equally), BENCH_DIMS
//! (256), BENCH_CONCURRENCY (2), BENCH_REQUESTS (1000), BENCH_K (10), BENCH_EF_SEARCH (100).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tenantry::TenantId;
use tenantry::rag::embed::{LocalEmbedder, to_pgvector};
use tenantry::rag::search::{Retrieved, SearchRequest, embed_question, explain};
use tenantry::rag::tenant_index::{Kind, TenantIndexConfig, index_name, maintain};
use tenantry_bench::{
    Error, bench_database, docs_tenant, drive, drop_vector_indexes, env, insert_docs, mark_seeded,
    read_tx, run_search, sentence, tenant_app,
};
use tokio_postgres::NoTls;

/// Rows per insert statement while seeding.
const SEED_BATCH: usize = 10_000;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let total = env("BENCH_TOTAL_CHUNKS", 1_000_000);
    let big = env("BENCH_BIG_CHUNKS", 50_000);
    let tenants = env("BENCH_TENANTS", 191).max(2);
    let dims = env("BENCH_DIMS", 256);
    let concurrency = env("BENCH_CONCURRENCY", 2);
    let requests = env("BENCH_REQUESTS", 1000);
    let k = env("BENCH_K", 10);
    let ef_search = env("BENCH_EF_SEARCH", 100) as u32;
    let small = total.saturating_sub(big) / (tenants - 1);
    let db = bench_database(
        &format!("bench_tenant_index_{total}_{big}_{dims}"),
        Some("bench_seeded"),
    )
    .await?;
    let (app, _jwks) = tenant_app(&db.app_url, concurrency.max(2)).await?;
    let embedder = LocalEmbedder::new(dims);
    let ids: Vec<TenantId> = (0..tenants)
        .map(|i| {
            TenantId::from(uuid::Uuid::from_u128(
                0x0190_0000_0000_7000_8000_0000_0002_0000 + i as u128,
            ))
        })
        .collect();
    let big_tenant = ids[0];
    let (admin, conn) = tokio_postgres::connect(&db.admin_url, NoTls).await?;
    tokio::spawn(conn);

    if !db.reused {
        let started = Instant::now();
        let indexes = drop_vector_indexes(&admin).await?;
        for (t, id) in ids.iter().enumerate() {
            let ds = docs_tenant(&app, &admin, *id, ("Index", "index"), t).await?;
            let n = if t == 0 { big } else { small };
            for from in (0..n).step_by(SEED_BATCH) {
                insert_docs(
                    &admin,
                    &embedder,
                    *id,
                    ds,
                    t,
                    from..(from + SEED_BATCH).min(n),
                )
                .await?;
            }
        }
        mark_seeded(&admin, &indexes, started).await?;
    }
    // Every run builds the large tenant's indexes afresh, so the builds are measured.
    let own = [Kind::Vectors(dims), Kind::Text].map(|kind| index_name(big_tenant.as_uuid(), kind));
    for name in &own {
        admin
            .batch_execute(&format!("DROP INDEX IF EXISTS app.{name}"))
            .await?;
    }

    let questions: Arc<Vec<String>> =
        Arc::new((0..512).map(|i| sentence(7_777_777 + i, 6)).collect());
    // The search's own hnsw.ef_search on a tenant's own index (RAG_TENANT_INDEX_EF_SEARCH).
    let own_ef = app.config.rag.tenant_index.ef_search;
    let base = json!({
        "total_chunks": total, "big_tenant_chunks": big, "tenants": tenants,
        "other_tenant_chunks": small, "dims": dims, "k": k, "concurrency": concurrency,
        "ef_search": ef_search, "own_index_ef_search": own_ef,
    });
    let threshold = app.config.rag.exact_max_chunks;

    // The large tenant's searches, as production runs them (over RAG_EXACT_MAX_CHUNKS: the
    // approximate path, the planner's choice of indexes), and on the exact path; and the vector
    // candidates alone (the part a vector index serves: k × 4 nearest, as the search fetches).
    let measure = |scenario: &'static str, what: What| {
        let (app, questions, base) = (app.clone(), questions.clone(), base.clone());
        async move {
            let mut s = drive(concurrency, requests, {
                let (app, questions) = (app.clone(), questions.clone());
                move |i| {
                    let (app, questions) = (app.clone(), questions.clone());
                    async move {
                        let question = &questions[i % questions.len()];
                        let vector = embed_question(app.embedder.as_ref(), question)
                            .await
                            .map_err(|e| e.to_string())?;
                        let found = match what {
                            What::Search(exact_max) => {
                                run_search(
                                    &app, big_tenant, question, &vector, k, exact_max, ef_search,
                                )
                                .await?
                                .hits
                                .len()
                                    * 4
                            }
                            What::Vectors { exact, ef } => {
                                nearest(&app, big_tenant, &vector, k * 4, exact, ef)
                                    .await
                                    .map_err(|e| e.to_string())?
                                    .len()
                            }
                        };
                        match found == k * 4 {
                            true => Ok(()),
                            false => Err(format!("{found} found")),
                        }
                    }
                }
            })
            .await;
            s.report(scenario, base);
        }
    };
    let plan = |label: &'static str| {
        let app = app.clone();
        let question = questions[0].clone();
        async move {
            let vector = embed_question(app.embedder.as_ref(), &question).await?;
            let mut tx = read_tx(&app, big_tenant, ef_search).await?;
            let req = request(&question, &vector, k, threshold, own_ef);
            let text = explain(&mut tx, &req, false).await?;
            tx.commit().await?;
            // Every index the plan reads ("Index Scan using X on …", "Bitmap Index Scan on X").
            let indexes: Vec<&str> = text
                .lines()
                .filter_map(|l| {
                    l.split(" Scan using ")
                        .nth(1)
                        .or_else(|| l.split("Bitmap Index Scan on ").nth(1))
                })
                .filter_map(|rest| rest.split_whitespace().next())
                .collect();
            println!(
                "{}",
                json!({"scenario": "plan", "detail": {"when": label, "indexes": indexes}})
            );
            Ok::<_, Error>(())
        }
    };

    measure("search_exact", What::Search(i64::MAX)).await;
    measure(
        "vectors_exact",
        What::Vectors {
            exact: true,
            ef: ef_search,
        },
    )
    .await;
    plan("shared indexes only").await?;
    measure("search_shared_indexes", What::Search(threshold)).await;
    measure(
        "vectors_shared_index",
        What::Vectors {
            exact: false,
            ef: ef_search,
        },
    )
    .await;
    let shared_recall = recall(&app, big_tenant, &questions, k, threshold, ef_search).await?;

    // The per-tenant index, as the vector-indexes function builds it.
    let (indexer, conn) = tokio_postgres::connect(&db.indexer_url, NoTls).await?;
    tokio::spawn(conn);
    let cfg = TenantIndexConfig {
        build_memory_mib: 2048,
        ..app.config.rag.tenant_index.clone()
    };
    let report = maintain(&indexer, dims, &cfg).await?;
    let mut sizes = Vec::new();
    for name in &own {
        let bytes: i64 = admin
            .query_one(
                "SELECT coalesce(pg_relation_size(to_regclass('app.' || $1)), 0)",
                &[name],
            )
            .await?
            .get(0);
        sizes.push(json!({"index": name, "mb": bytes / (1 << 20)}));
    }
    println!(
        "{}",
        json!({"scenario": "tenant_index_build", "detail": {
            "min_chunks": cfg.min_chunks, "tenants_counted": report.tenants,
            "built": report.built, "kept": report.kept, "sizes": sizes,
        }})
    );
    admin.batch_execute("ANALYZE app.chunks").await?;
    plan("own indexes").await?;
    measure("search_own_indexes", What::Search(threshold)).await;
    measure(
        "vectors_own_index",
        What::Vectors {
            exact: false,
            ef: own_ef,
        },
    )
    .await;
    let own_recall = recall(&app, big_tenant, &questions, k, threshold, own_ef).await?;
    for (scenario, (vector, fused)) in [
        ("recall_shared_index", shared_recall),
        ("recall_own_index", own_recall),
    ] {
        let mut line = base.clone();
        line["vector_recall_at_k"] = json!(vector);
        line["fused_recall_at_k"] = json!(fused);
        println!("{}", json!({"scenario": scenario, "detail": line}));
    }
    Ok(())
}

/// What a scenario measures.
#[derive(Clone, Copy)]
enum What {
    /// The whole hybrid search, with this `exact_max_chunks`.
    Search(i64),
    /// The vector candidates alone, with this `hnsw.ef_search`.
    Vectors { exact: bool, ef: u32 },
}

fn request<'a>(
    question: &'a str,
    vector: &'a [f32],
    k: usize,
    exact_max_chunks: i64,
    own_ef: u32,
) -> SearchRequest<'a> {
    SearchRequest {
        question,
        vector,
        k,
        datasets: None,
        filter: None,
        exact_max_chunks,
        own_index_ef_search: Some(own_ef),
        min_relevance: 0.0,
    }
}

/// Recall@k of the approximate path against the exact one over 300 questions: of the vector
/// candidates alone with `approx_ef` (an approximate neighbour counts when it is no farther than
/// the exact k-th, so ties are not misses), and of the fused hybrid answer (by chunk), as the
/// search runs it.
async fn recall(
    app: &tenantry::App,
    tenant: TenantId,
    questions: &[String],
    k: usize,
    threshold: i64,
    approx_ef: u32,
) -> Result<(f64, f64), Error> {
    let ef_search = app.config.rag.hnsw_ef_search;
    let (mut vector_found, mut fused_found, mut fused_wanted) = (0usize, 0usize, 0usize);
    let n = 300.min(questions.len());
    for question in &questions[..n] {
        let vector = embed_question(app.embedder.as_ref(), question).await?;
        let exact = nearest(app, tenant, &vector, k, true, ef_search).await?;
        let approx = nearest(app, tenant, &vector, k, false, approx_ef).await?;
        let kth = exact.last().copied().unwrap_or(f64::INFINITY);
        vector_found += approx.iter().filter(|d| **d <= kth + 1e-9).count().min(k);
        let keys = |r: Retrieved| {
            r.hits
                .into_iter()
                .map(|h| (h.record_key, h.chunk_no))
                .collect::<Vec<_>>()
        };
        let exact = keys(run_search(app, tenant, question, &vector, k, i64::MAX, ef_search).await?);
        let approx =
            keys(run_search(app, tenant, question, &vector, k, threshold, ef_search).await?);
        fused_wanted += exact.len();
        fused_found += exact.iter().filter(|e| approx.contains(e)).count();
    }
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    Ok((
        round(vector_found as f64 / (n * k) as f64),
        round(fused_found as f64 / fused_wanted.max(1) as f64),
    ))
}

/// The distances of the tenant's `k` nearest chunks: by the index expression (the planner's
/// choice of index, as the search's approximate path) or by the plain column (no index: exact).
async fn nearest(
    app: &tenantry::App,
    tenant: TenantId,
    vector: &[f32],
    k: usize,
    exact: bool,
    ef_search: u32,
) -> Result<Vec<f64>, Error> {
    let mut tx = read_tx(app, tenant, ef_search).await?;
    let dims = vector.len();
    let expr = match exact {
        true => format!("embedding <=> $1::text::vector({dims})"),
        false => format!("embedding::vector({dims}) <=> $1::text::vector({dims})"),
    };
    let rows = tx
        .query(
            &format!(
                "SELECT {expr} AS d FROM app.chunks \
                 WHERE tenant_id = '{}'::uuid AND vector_dims(embedding) = {dims} \
                 ORDER BY {expr} LIMIT {k}",
                tenant.as_uuid()
            ),
            &[(&to_pgvector(vector), tokio_postgres::types::Type::TEXT)],
        )
        .await?;
    tx.commit().await?;
    Ok(rows.iter().map(|r| r.get::<_, f64>(0)).collect())
}

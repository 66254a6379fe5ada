//! all-MiniLM-L6-v2 in-process on real text: embedding throughput against the hashed embedder,
//! and the HNSW path's recall@k against the exact scan, for MiniLM's vectors and the hashed
//! embedder's of the same texts.
//!
//! The text is real English prose that a machine that built this benchmark has: the doc
//! comments of the crates `Cargo.lock` pins, read from cargo's registry sources (paragraphs of
//! 8 to 80 words, code blocks left out), shuffled with a fixed seed. Which of the pinned crates
//! are unpacked there depends on the platform (and on cargo's cleaning), so the corpus's size is
//! printed and is part of the seeded database's name. Chunks and questions are disjoint: a
//! question is a paragraph no tenant holds.
//!
//! Environment: BENCH_TENANTS (4 per embedder), BENCH_CHUNKS (6000 per tenant), BENCH_QUERIES
//! (200), BENCH_K (10), BENCH_CONCURRENCY (2), BENCH_EMBED_SAMPLE (2000), EMBED_MODEL_DIR (set by
//! `scripts/bench minilm`).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::json;
use tenantry::config::Config;
use tenantry::rag::embed::{Embedder, LocalEmbedder, to_pgvector};
use tenantry::rag::minilm::MiniLmEmbedder;
use tenantry::rag::search::Retrieved;
use tenantry::tenants::{NewTenant, provision};
use tenantry::{App, TenantId};
use tenantry_bench::{
    Error, bench_database, drive, drop_vector_indexes, env, mark_seeded, read_tx, run_search,
    sort_priced_out,
};
use tokio_postgres::NoTls;
use tokio_postgres::types::Type;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let tenants = env("BENCH_TENANTS", 4);
    let chunks = env("BENCH_CHUNKS", 6000);
    let queries = env("BENCH_QUERIES", 200);
    let k = env("BENCH_K", 10);
    let concurrency = env("BENCH_CONCURRENCY", 2);
    let sample = env("BENCH_EMBED_SAMPLE", 2000);
    let model_dir = PathBuf::from(
        std::env::var("EMBED_MODEL_DIR")
            .map_err(|_| "EMBED_MODEL_DIR: run scripts/bench minilm")?,
    );
    let minilm = MiniLmEmbedder::load(&model_dir)?;
    let hashed = LocalEmbedder::new(256);

    let corpus = corpus()?;
    let wanted = tenants * chunks + queries;
    if corpus.len() < wanted {
        return Err(format!("{} paragraphs of text, {wanted} wanted", corpus.len()).into());
    }
    let (texts, questions) = corpus[..wanted].split_at(tenants * chunks);
    let words = texts
        .iter()
        .map(|t| t.split_whitespace().count())
        .sum::<usize>() as f64
        / texts.len() as f64;
    let base = json!({
        "tenants_per_embedder": tenants, "chunks_per_tenant": chunks, "k": k,
        "concurrency": concurrency, "corpus_paragraphs": corpus.len(),
        "mean_words_per_chunk": (words * 10.0).round() / 10.0,
    });

    // 1. Embedding throughput: the same texts, in the embed worker's batches of 64.
    let sample_texts = &texts[..sample.min(texts.len())];
    let (minilm_s, hashed_s) = (
        embed_seconds(&minilm, sample_texts).await?,
        embed_seconds(&hashed, sample_texts).await?,
    );
    let mut line = base.clone();
    line["texts"] = json!(sample_texts.len());
    line["minilm_chunks_per_s"] = json!((sample_texts.len() as f64 / minilm_s).round());
    line["minilm_ms_per_chunk"] = json!(round3(minilm_s * 1000.0 / sample_texts.len() as f64));
    line["hashed_ms_per_chunk"] = json!(round3(hashed_s * 1000.0 / sample_texts.len() as f64));
    line["minilm_over_hashed"] = json!((minilm_s / hashed_s).round());
    println!(
        "{}",
        json!({"scenario": "embed_throughput", "detail": line})
    );

    // 2. A database with `tenants` tenants embedded by each model (same texts, own slices).
    let db = bench_database(
        &format!("bench_minilm_{tenants}_{chunks}_{}", corpus.len()),
        Some("bench_seeded"),
    )
    .await?;
    let vars = [
        ("APP_DATABASE_URL", db.app_url.clone()),
        ("AUTH0_ISSUER", "https://tenantry.bench/".to_owned()),
        ("AUTH0_AUDIENCE", "https://api.tenantry.bench".to_owned()),
        ("DB_POOL_MAX", concurrency.max(2).to_string()),
    ];
    let app = |forced: bool| -> Result<Arc<App>, Error> {
        let config = Config::from_lookup(|key| {
            vars.iter()
                .find(|(n, _)| *n == key)
                .map(|(_, v)| match key {
                    "APP_DATABASE_URL" if forced => sort_priced_out(v),
                    _ => v.clone(),
                })
        })?;
        Ok(Arc::new(App::builder(config).build()?))
    };
    let (exact_app, forced_app) = (app(false)?, app(true)?);
    let models: [(&str, &dyn Embedder); 2] = [("minilm", &minilm), ("hashed", &hashed)];
    let ids = |group: usize| -> Vec<TenantId> {
        (0..tenants)
            .map(|t| {
                TenantId::from(uuid::Uuid::from_u128(
                    0x0190_0000_0000_7000_8000_0000_0002_0000 + (group * tenants + t) as u128,
                ))
            })
            .collect()
    };
    if !db.reused {
        let started = Instant::now();
        let (admin, conn) = tokio_postgres::connect(&db.admin_url, NoTls).await?;
        tokio::spawn(conn);
        let indexes = drop_vector_indexes(&admin).await?;
        for (group, (name, embedder)) in models.iter().enumerate() {
            for (t, id) in ids(group).into_iter().enumerate() {
                provision(
                    &exact_app.db,
                    &NewTenant {
                        tenant_id: id,
                        name: format!("MiniLM bench {name} {t}"),
                        slug: format!("minilm-{name}-{t}"),
                        auth0_org_id: None,
                        plan: "team".into(),
                    },
                    "system:bench",
                )
                .await?;
                let slice = &texts[t * chunks..(t + 1) * chunks];
                let mut vectors = Vec::with_capacity(slice.len());
                for batch in slice.chunks(64) {
                    vectors.extend(embedder.embed(batch).await?.iter().map(|v| to_pgvector(v)));
                }
                let keys: Vec<String> = (0..chunks).map(|c| format!("doc-{c}")).collect();
                admin
                    .execute(
                        "WITH d AS (INSERT INTO app.datasets (tenant_id, name, columns, text_columns) \
                           VALUES ($1, 'docs', '[{\"name\": \"body\", \"type\": \"string\"}]', '{body}') \
                           RETURNING dataset_id), \
                         r AS (INSERT INTO app.records (tenant_id, dataset_id, key, data) \
                           SELECT $1, d.dataset_id, k, jsonb_build_object('body', b) \
                           FROM d, unnest($2::text[], $3::text[]) AS u(k, b) RETURNING 1) \
                         INSERT INTO app.chunks (tenant_id, dataset_id, record_key, chunk_no, \
                           record_version, column_name, content, embedding, embedding_model) \
                         SELECT $1, d.dataset_id, k, 0, 1, 'body', b, e::vector, $5 \
                         FROM d, unnest($2::text[], $3::text[], $4::text[]) AS u(k, b, e)",
                        &[&id.as_uuid(), &keys, &slice, &vectors, &embedder.model()],
                    )
                    .await?;
            }
        }
        mark_seeded(&admin, &indexes, started).await?;
    }

    // 3. Per embedder: search latency on both paths, and the HNSW path's recall@k against the
    // exact scan, for the vector candidates alone and for the fused answer /v1/ask uses.
    let ef_search = exact_app.config.rag.hnsw_ef_search;
    for (group, (name, embedder)) in models.iter().enumerate() {
        let ids = Arc::new(ids(group));
        let mut vectors = Vec::with_capacity(questions.len());
        for batch in questions.chunks(64) {
            vectors.extend(embedder.embed(batch).await?);
        }
        let questions = Arc::new(questions.to_vec());
        let vectors = Arc::new(vectors);
        for (scenario, app, threshold) in [
            ("search_exact", &exact_app, i64::MAX),
            ("search_hnsw_forced", &forced_app, 0),
        ] {
            // Searches on the approximate path that came back short and ran the exact scan.
            let fell_back = Arc::new(AtomicUsize::new(0));
            let mut s = drive(concurrency, questions.len() * 2, {
                let (app, ids, questions, vectors, fell_back) = (
                    app.clone(),
                    ids.clone(),
                    questions.clone(),
                    vectors.clone(),
                    fell_back.clone(),
                );
                move |i| {
                    let (app, ids, questions, vectors, fell_back) = (
                        app.clone(),
                        ids.clone(),
                        questions.clone(),
                        vectors.clone(),
                        fell_back.clone(),
                    );
                    async move {
                        let q = i % questions.len();
                        let tenant = ids[i % ids.len()];
                        run_search(
                            &app,
                            tenant,
                            &questions[q],
                            &vectors[q],
                            k,
                            threshold,
                            ef_search,
                        )
                        .await
                        .map(|got| {
                            if got.exact && threshold == 0 {
                                fell_back.fetch_add(1, Ordering::Relaxed);
                            }
                        })
                    }
                }
            })
            .await;
            let mut line = base.clone();
            line["embedder"] = json!(embedder.model());
            line["ef_search"] = json!(ef_search);
            line["exact_fallbacks"] = json!(fell_back.load(Ordering::Relaxed));
            s.report(&format!("{scenario}_{name}"), line);
        }
        let (mut vector_found, mut fused_found, mut fused_wanted) = (0usize, 0usize, 0usize);
        let mut fell_back = 0usize;
        for (q, question) in questions.iter().enumerate() {
            let tenant = ids[q % ids.len()];
            let exact = nearest(&exact_app, tenant, &vectors[q], k, true, ef_search).await?;
            let approx = nearest(&forced_app, tenant, &vectors[q], k, false, ef_search).await?;
            vector_found += exact.iter().filter(|e| approx.contains(e)).count();
            let keys = |r: Retrieved| -> Vec<String> {
                r.hits.into_iter().map(|h| h.record_key).collect()
            };
            let exact = keys(
                run_search(
                    &exact_app,
                    tenant,
                    question,
                    &vectors[q],
                    k,
                    i64::MAX,
                    ef_search,
                )
                .await?,
            );
            let approx =
                run_search(&forced_app, tenant, question, &vectors[q], k, 0, ef_search).await?;
            fell_back += usize::from(approx.exact);
            let approx = keys(approx);
            fused_wanted += exact.len();
            fused_found += exact.iter().filter(|e| approx.contains(e)).count();
        }
        let mut line = base.clone();
        line["embedder"] = json!(embedder.model());
        line["ef_search"] = json!(ef_search);
        line["queries"] = json!(questions.len());
        line["vector_recall_at_k"] =
            json!(round3(vector_found as f64 / (questions.len() * k) as f64));
        line["fused_recall_at_k"] = json!(round3(fused_found as f64 / fused_wanted.max(1) as f64));
        line["fused_exact_fallbacks"] = json!(fell_back);
        println!(
            "{}",
            json!({"scenario": format!("hnsw_recall_{name}"), "detail": line})
        );
    }
    Ok(())
}

/// Seconds to embed `texts` in batches of 64, as the embed worker does.
async fn embed_seconds(embedder: &dyn Embedder, texts: &[String]) -> Result<f64, Error> {
    let started = Instant::now();
    for batch in texts.chunks(64) {
        embedder.embed(batch).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The tenant's `k` nearest chunks by vector alone: an exact scan, or the HNSW index (on the
/// forced app, whose connections price sorting out).
async fn nearest(
    app: &App,
    tenant: TenantId,
    vector: &[f32],
    k: usize,
    exact: bool,
    ef_search: u32,
) -> Result<Vec<String>, Error> {
    let dims = vector.len();
    let distance = if exact {
        format!("embedding <=> $2::vector({dims})")
    } else {
        format!("embedding::vector({dims}) <=> $2::vector({dims})")
    };
    let mut tx = read_tx(app, tenant, ef_search).await?;
    let limit = k as i64;
    let rows = tx
        .query(
            &format!(
                "SELECT record_key FROM app.chunks WHERE tenant_id = $1 \
                 AND vector_dims(embedding) = {dims} ORDER BY {distance} LIMIT $3"
            ),
            &[
                (&tenant.as_uuid(), Type::UUID),
                (&to_pgvector(vector), Type::TEXT),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    tx.commit().await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Paragraphs of the pinned crates' doc comments, deduplicated and shuffled with a fixed seed.
fn corpus() -> Result<Vec<String>, Error> {
    let lock = std::fs::read_to_string("Cargo.lock")?;
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let registries: Vec<PathBuf> = std::fs::read_dir(home.join("registry/src"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let mut paragraphs = BTreeSet::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = \"") {
            name = Some(n.trim_end_matches('"').to_owned());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = \""), &name) {
            let dir = format!("{n}-{}", v.trim_end_matches('"'));
            for registry in &registries {
                doc_paragraphs(&registry.join(&dir).join("src"), &mut paragraphs);
            }
            name = None;
        }
    }
    let mut out: Vec<String> = paragraphs.into_iter().collect();
    // Fisher-Yates with xorshift64: the same order for the same paragraphs.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..out.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.swap(i, (x % (i as u64 + 1)) as usize);
    }
    Ok(out)
}

/// Adds the doc-comment paragraphs of every `.rs` file under `dir` (sorted walk).
fn doc_paragraphs(dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            doc_paragraphs(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let Ok(source) = std::fs::read_to_string(&path) else {
            continue;
        };
        let (mut current, mut fence) = (Vec::new(), false);
        let mut flush = |current: &mut Vec<&str>| {
            let p = current.join(" ");
            let words = p.split_whitespace().count();
            let letters = p.chars().filter(|c| c.is_alphabetic()).count();
            if (8..=80).contains(&words) && letters * 10 > p.chars().count() * 7 {
                out.insert(p);
            }
            current.clear();
        };
        for line in source.lines() {
            let line = line.trim();
            let Some(text) = line
                .strip_prefix("///")
                .or_else(|| line.strip_prefix("//!"))
                .map(str::trim)
            else {
                flush(&mut current);
                continue;
            };
            if text.starts_with("```") {
                fence = !fence;
                flush(&mut current);
            } else if fence || text.is_empty() || text.starts_with(['#', '|', '-', '*', '[']) {
                flush(&mut current);
            } else {
                current.push(text);
            }
        }
        flush(&mut current);
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

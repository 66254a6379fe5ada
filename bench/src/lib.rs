//! Shared pieces of the benchmark binaries: latency statistics and JSON lines, benchmark
//! databases, a concurrent driver and the tenant-scoped search `/v1/ask` runs.
#![allow(clippy::print_stdout)] // benchmarks report on stdout

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry::db::{Access, TenantContext, TenantTx, TxSettings};
use tenantry::rag::search::{Retrieved, SearchRequest, search};
use tenantry::{App, TenantId};

/// Boxed error for benchmark plumbing.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A numeric setting from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Latencies of one scenario.
#[derive(Debug, Default)]
pub struct Samples {
    micros: Vec<u64>,
    /// Requests that failed.
    pub errors: u64,
}

impl Samples {
    /// Records one request's duration.
    pub fn record(&mut self, d: Duration) {
        self.micros.push(d.as_micros() as u64);
    }

    /// The `q` quantile (0..=1) in milliseconds (nearest rank).
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        self.micros.sort_unstable();
        let rank = ((q * self.micros.len() as f64).ceil() as usize).clamp(1, self.micros.len());
        self.micros[rank - 1] as f64 / 1000.0
    }

    /// Requests recorded.
    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The standard JSON line, with extra fields merged in.
    pub fn report(&mut self, scenario: &str, extra: Value) -> Value {
        let mut line = json!({
            "scenario": scenario,
            "p50_ms": round3(self.quantile_ms(0.50)),
            "p95_ms": round3(self.quantile_ms(0.95)),
            "p99_ms": round3(self.quantile_ms(0.99)),
            "requests": self.len() as u64 + self.errors,
            "errors": self.errors,
        });
        if let (Value::Object(line), Value::Object(extra)) = (&mut line, extra) {
            line.extend(extra);
        }
        println!("{line}");
        line
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The app role's password on the benchmark databases (as on every dev cluster).
pub const APP_PASSWORD: &str = "tenantry_app_dev";
/// The indexer role's password on the benchmark databases.
pub const INDEXER_PASSWORD: &str = "tenantry_indexer_dev";

/// URLs of a benchmark database.
#[derive(Debug)]
pub struct BenchDb {
    /// Superuser URL.
    pub admin_url: String,
    /// App-role URL.
    pub app_url: String,
    /// Indexer-role URL (per-tenant vector indexes).
    pub indexer_url: String,
    /// Postgres's port.
    pub port: u16,
    /// Whether it already existed with `marker` in it (so seeding can be skipped).
    pub reused: bool,
}

/// A migrated database named `name`. With `marker`, an existing database that has a table of
/// that name (left by a completed seed) is reused; otherwise it is dropped and created afresh.
/// A versioned name (`bench_x_v3_…`) drops the earlier versions of its seed (`bench_x_v2_…`).
pub async fn bench_database(name: &str, marker: Option<&str>) -> Result<BenchDb, Error> {
    use tokio_postgres::NoTls;
    let admin: tokio_postgres::Config = admin_url()?.parse()?;
    let port = admin.get_ports().first().copied().unwrap_or(5432);
    let user = admin.get_user().unwrap_or("postgres").to_owned();
    let password = String::from_utf8(admin.get_password().unwrap_or_default().to_vec())?;
    let admin_url = format!("postgres://{user}:{password}@127.0.0.1:{port}/{name}");
    let app_url = format!("postgres://tenantry_app:{APP_PASSWORD}@127.0.0.1:{port}/{name}");
    let indexer_url =
        format!("postgres://tenantry_indexer:{INDEXER_PASSWORD}@127.0.0.1:{port}/{name}");

    let (c, conn) = admin.connect(NoTls).await?;
    tokio::spawn(conn);
    let exists = !c
        .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_empty();
    // An earlier version of the same seed (`…_v2_…` where this is `…_v3_…`) is never read again:
    // it goes, rather than hold its gigabytes until someone notices.
    if let Some((family, rest)) = name.split_once("_v")
        && let Some((version, _)) = rest.split_once('_')
        && let Ok(version) = version.parse::<u32>()
    {
        let older = c
            .query(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1) AND datname <> $2",
                &[&format!("{family}_v"), &name],
            )
            .await?;
        for row in older {
            let old: String = row.get(0);
            let other = old[family.len() + 2..].split('_').next();
            if other
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|other| other < version)
            {
                eprintln!("dropping {old}: an earlier version of this seed");
                c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{old}\" WITH (FORCE)"))
                    .await?;
            }
        }
    }
    let mut reused = false;
    if let (true, Some(marker)) = (exists, marker) {
        let (d, conn) = tokio_postgres::connect(&admin_url, NoTls).await?;
        tokio::spawn(conn);
        reused = !d
            .query("SELECT 1 FROM pg_tables WHERE tablename = $1", &[&marker])
            .await?
            .is_empty();
    }
    if !reused {
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        c.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    }
    tenantry::db::migrate::run(
        &admin_url,
        &tenantry::db::migrate::embedded()?,
        &tenantry::db::migrate::RolePasswords {
            app: Some(APP_PASSWORD.into()),
            support: None,
            impersonator: None,
            indexer: Some(INDEXER_PASSWORD.into()),
        },
    )
    .await?;
    Ok(BenchDb {
        admin_url,
        app_url,
        indexer_url,
        port,
        reused,
    })
}

/// The admin URL: `DATABASE_URL` (set by `scripts/bench` from `scripts/pg`).
pub fn admin_url() -> Result<String, Error> {
    std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set (run through scripts/bench)".into())
}

impl Samples {
    /// Adds another set of samples to this one.
    pub fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
    }
}

/// `url` with sorting priced out of every statement (`enable_sort=off`): the planner then takes
/// the HNSW index even where it (rightly) prefers an exact scan, so the index path itself is
/// what is measured.
pub fn sort_priced_out(url: &str) -> String {
    format!("{url}?options=-c%20enable_sort%3Doff")
}

/// A read-only transaction of `tenant` with the HNSW settings `/v1/ask` sets.
pub async fn read_tx(
    app: &App,
    tenant: TenantId,
    ef_search: u32,
) -> Result<TenantTx, tenantry::db::DbError> {
    let ctx = TenantContext {
        tenant_id: tenant,
        actor_id: "system:bench".into(),
    };
    let settings = TxSettings {
        hnsw_ef_search: Some(ef_search),
        ..TxSettings::default()
    };
    app.db.begin_with(&ctx, Access::ReadOnly, settings).await
}

/// Drops the HNSW indexes before a bulk seed and returns their definitions, for [`mark_seeded`]
/// to build them again once the rows are in: one index build instead of one graph insertion per
/// row (which made seeding 400,000 chunks take 27 minutes).
pub async fn drop_vector_indexes(admin: &tokio_postgres::Client) -> Result<Vec<String>, Error> {
    let rows = admin
        .query(
            "SELECT indexname, indexdef FROM pg_indexes \
             WHERE schemaname = 'app' AND indexdef LIKE '%USING hnsw%' ORDER BY indexname",
            &[],
        )
        .await?;
    let mut defs = Vec::new();
    for r in rows {
        // The name comes from the catalog, not from input.
        admin
            .batch_execute(&format!("DROP INDEX app.{}", r.get::<_, String>(0)))
            .await?;
        defs.push(r.get(1));
    }
    Ok(defs)
}

/// Marks a seeded benchmark database complete (so [`bench_database`] reuses it): the indexes
/// [`drop_vector_indexes`] dropped built again, the tables analyzed, and the marker table
/// `bench_seeded` created.
pub async fn mark_seeded(
    admin: &tokio_postgres::Client,
    indexes: &[String],
    started: Instant,
) -> Result<(), Error> {
    let loaded = started.elapsed().as_secs_f64();
    admin
        .batch_execute("SET maintenance_work_mem = '2GB'")
        .await?;
    for def in indexes {
        admin.batch_execute(def).await?;
    }
    // Separate calls: several statements in one are one transaction, which VACUUM refuses.
    admin.batch_execute("VACUUM ANALYZE").await?;
    admin
        .batch_execute("CREATE TABLE public.bench_seeded ()")
        .await?;
    eprintln!(
        "seeded in {:.1}s (rows {loaded:.1}s, {} HNSW indexes {:.1}s)",
        started.elapsed().as_secs_f64(),
        indexes.len(),
        started.elapsed().as_secs_f64() - loaded
    );
    Ok(())
}

/// Provisions tenant `t` of a synthetic-documents benchmark (`{name} {t}`, slug `{slug}-{t}`,
/// organization `org_{slug}_{t}`) with one `docs` dataset of a text column; returns the dataset.
pub async fn docs_tenant(
    app: &App,
    admin: &tokio_postgres::Client,
    id: TenantId,
    (name, slug): (&str, &str),
    t: usize,
) -> Result<uuid::Uuid, Error> {
    use tenantry::tenants::{NewTenant, provision};
    provision(
        &app.db,
        &NewTenant {
            tenant_id: id,
            name: format!("{name} {t}"),
            slug: format!("{slug}-{t}"),
            auth0_org_id: Some(format!("org_{slug}_{t}")),
            plan: "team".into(),
        },
        "system:bench",
    )
    .await?;
    Ok(admin
        .query_one(
            "INSERT INTO app.datasets (tenant_id, name, columns, text_columns) \
             VALUES ($1, 'docs', '[{\"name\": \"body\", \"type\": \"string\"}]', '{body}') \
             RETURNING dataset_id",
            &[&id.as_uuid()],
        )
        .await?
        .get(0))
}

/// Inserts documents `range` of tenant `t` into dataset `ds` in one statement: record
/// `doc-{c}` with [`sentence`]`(t * 1_000_003 + c, 24)` as its body, and its one chunk,
/// embedded by `embedder`.
pub async fn insert_docs(
    admin: &tokio_postgres::Client,
    embedder: &tenantry::rag::embed::LocalEmbedder,
    id: TenantId,
    ds: uuid::Uuid,
    t: usize,
    range: std::ops::Range<usize>,
) -> Result<(), Error> {
    let texts: Vec<String> = range
        .clone()
        .map(|c| sentence((t * 1_000_003 + c) as u64, 24))
        .collect();
    let keys: Vec<String> = range.map(|c| format!("doc-{c}")).collect();
    let vectors: Vec<String> = texts
        .iter()
        .map(|s| tenantry::rag::embed::to_pgvector(&embedder.vector(s)))
        .collect();
    admin
        .execute(
            "WITH r AS (INSERT INTO app.records (tenant_id, dataset_id, key, data) \
               SELECT $1, $2, k, jsonb_build_object('body', b) \
               FROM unnest($3::text[], $4::text[]) AS u(k, b) RETURNING 1) \
             INSERT INTO app.chunks (tenant_id, dataset_id, record_key, chunk_no, \
               record_version, column_name, content, embedding, embedding_model) \
             SELECT $1, $2, k, 0, 1, 'body', b, e::vector, 'local-hashed-ngrams-v1' \
             FROM unnest($3::text[], $4::text[], $5::text[]) AS u(k, b, e)",
            &[&id.as_uuid(), &ds, &keys, &texts, &vectors],
        )
        .await?;
    Ok(())
}

/// One search in the tenant's transaction, as `/v1/ask` runs it.
pub async fn run_search(
    app: &App,
    tenant: TenantId,
    question: &str,
    vector: &[f32],
    k: usize,
    exact_max_chunks: i64,
    ef_search: u32,
) -> Result<Retrieved, String> {
    let mut tx = read_tx(app, tenant, ef_search)
        .await
        .map_err(|e| e.to_string())?;
    let request = SearchRequest {
        question,
        vector,
        k,
        datasets: None,
        filter: None,
        exact_max_chunks,
        own_index_ef_search: Some(app.config.rag.tenant_index.ef_search),
        min_relevance: 0.0,
    };
    let got = search(&mut tx, &request).await.map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(got)
}

/// Runs `total` operations with `concurrency` workers.
pub async fn drive<F, Fut>(concurrency: usize, total: usize, op: F) -> Samples
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
        match w.await {
            Ok(samples) => all.merge(samples),
            Err(_) => all.errors += 1,
        }
    }
    all
}

/// An app over `app_url` with local adapters and `pool` connections, verifying tokens against a
/// JWKS server serving the dev key (returned too: it must outlive the app's requests).
pub async fn tenant_app(
    app_url: &str,
    pool: usize,
) -> Result<(Arc<App>, tenantry_tests::JwksServer), Error> {
    use tenantry_tests::{AUDIENCE, ISSUER, JwksServer, dev_jwk};
    let jwks = JwksServer::start(json!({ "keys": [dev_jwk("dev")] })).await;
    let vars = [
        ("APP_DATABASE_URL", app_url.to_owned()),
        ("AUTH0_ISSUER", ISSUER.to_owned()),
        ("AUTH0_AUDIENCE", AUDIENCE.to_owned()),
        ("AUTH0_JWKS_URL", jwks.url.clone()),
        ("DB_POOL_MAX", pool.to_string()),
    ];
    let config = tenantry::config::Config::from_lookup(|k| {
        vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })?;
    Ok((Arc::new(App::builder(config).build()?), jwks))
}

/// An admin's token for each of the benchmark tenants `0..n` (organization `org_bench_{i}`).
pub fn bench_tokens(n: usize) -> Result<Vec<String>, Error> {
    let iss = tenantry_tests::issuer();
    (0..n)
        .map(|i| {
            iss.token(
                "auth0|bench",
                &format!("org_bench_{i}"),
                &["admin"],
                Duration::from_secs(3600),
            )
            .map_err(Error::from)
        })
        .collect()
}

/// The synthetic corpus's vocabulary (support-ticket words, cities, products).
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

/// A deterministic pseudo-random sentence of `n` words.
pub fn sentence(seed: u64, n: usize) -> String {
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

/// An app billing through the Stripe adapter against `stub` (the local Stripe test server), on
/// `app_url` with a pool of `pool`; and its billing port.
pub async fn stripe_app(
    app_url: &str,
    stub: &tenantry_tests::StripeStub,
    pool: usize,
) -> Result<(Arc<App>, Arc<dyn tenantry::billing::BillingSink>), Error> {
    let mut vars: Vec<(&str, String)> = vec![
        ("APP_DATABASE_URL", app_url.to_owned()),
        ("AUTH0_ISSUER", "https://bench.invalid/".to_owned()),
        ("AUTH0_AUDIENCE", "bench".to_owned()),
        ("DB_POOL_MAX", pool.to_string()),
    ];
    vars.extend(stub.vars());
    let config = tenantry::config::Config::from_lookup(|key| {
        vars.iter().find(|(n, _)| *n == key).map(|(_, v)| v.clone())
    })?;
    let sink: Arc<dyn tenantry::billing::BillingSink> = Arc::new(
        tenantry_stripe::StripeBilling::from_config(&config.billing)?
            .ok_or("the Stripe test server's variables configure no Stripe key")?,
    );
    let app = Arc::new(
        App::builder(config)
            .billing(Some(Arc::clone(&sink)))
            .build()?,
    );
    Ok((app, sink))
}

/// A `team` tenant named after `slug`, linked to a new customer `customer` on `stub`.
pub async fn billed_tenant(
    app: &App,
    stub: &tenantry_tests::StripeStub,
    slug: &str,
    customer: &str,
) -> Result<TenantId, Error> {
    let id = TenantId::new();
    tenantry::tenants::provision(
        &app.db,
        &tenantry::tenants::NewTenant {
            tenant_id: id,
            name: format!("Bench {slug}"),
            slug: slug.to_owned(),
            auth0_org_id: Some(format!("org_{}", slug.replace('-', "_"))),
            plan: "team".into(),
        },
        "system:bench",
    )
    .await?;
    let customer = stub.customer(customer);
    let ctx = TenantContext {
        tenant_id: id,
        actor_id: "system:bench".into(),
    };
    let mut tx = app.db.begin(&ctx, Access::ReadWrite).await?;
    tenantry::billing::customers::link(&mut tx, &customer).await?;
    tx.commit().await?;
    Ok(id)
}

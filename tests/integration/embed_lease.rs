//! Embedding is never done inside an open transaction: chunks are claimed under a lease in one
//! short transaction, embedded with none open, and written back where the lease still holds.
//! The app here queues embedding to SQS (moto), so nothing embeds behind the test's back.

use std::sync::{Arc, Mutex};

use serde_json::json;
use tenantry::TenantId;
use tenantry::db::Access;
use tenantry::rag::chunks::{claim_pending, store_vectors};
use tenantry::rag::embed::{EmbedError, EmbedFuture, Embedder, LocalEmbedder};
use tenantry::rag::queue::{EMBED_LEASE, drain};
use tenantry_tests::{Moto, TestApp, as_tenant};

const NOTES: &str = r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}], "text_columns": ["body"]}"#;

/// An embedder that, while it "works", looks at the database: how many sessions of this test's
/// database sit in an open transaction, and optionally runs a statement (a concurrent change).
struct Probe {
    admin: tokio_postgres::Client,
    inner: LocalEmbedder,
    open_transactions: Mutex<Vec<i64>>,
    texts: Mutex<Vec<String>>,
    during: Mutex<Option<String>>,
    fail: bool,
    /// Returns one vector fewer than it was given texts.
    short: bool,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probe")
    }
}

impl Probe {
    async fn new(app: &TestApp) -> Arc<Self> {
        Arc::new(Self {
            admin: app.db.admin().await,
            inner: LocalEmbedder::new(256),
            open_transactions: Mutex::new(Vec::new()),
            texts: Mutex::new(Vec::new()),
            during: Mutex::new(None),
            fail: false,
            short: false,
        })
    }
}

impl Embedder for Probe {
    fn model(&self) -> &str {
        "probe"
    }
    fn dims(&self) -> usize {
        256
    }
    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move {
            let open: i64 = self
                .admin
                .query_one(
                    // Client connections only: an autovacuum worker analyzing this database has
                    // a transaction open too, and is nothing of ours.
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND pid <> pg_backend_pid() AND xact_start IS NOT NULL \
                     AND backend_type = 'client backend'",
                    &[],
                )
                .await
                .map_err(|e| EmbedError::Fatal(e.to_string()))?
                .get(0);
            self.open_transactions.lock().unwrap().push(open);
            self.texts.lock().unwrap().extend(texts.iter().cloned());
            let during = self.during.lock().unwrap().take();
            if let Some(sql) = during {
                self.admin.batch_execute(&sql).await.unwrap();
            }
            // Let a concurrent worker reach its own claim while this one "works".
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if self.fail {
                return Err(EmbedError::Retryable("throttled".into()));
            }
            let n = texts.len() - usize::from(self.short);
            Ok(texts[..n].iter().map(|t| self.inner.vector(t)).collect())
        })
    }
}

async fn pending_app(n: usize) -> (Moto, TestApp, TenantId) {
    let moto = Moto::start();
    let (_, url) = moto.queue("tenantry-embed").await;
    let app = TestApp::with_sqs(&moto, &url).await;
    let tenant = tenant_with_notes(&app, "alpha", n, |i| {
        format!("Note number {i} about parcel {i}.")
    })
    .await;
    (moto, app, tenant)
}

/// A tenant `slug` with a `notes` dataset of `n` records, note `i` saying `body(i)`.
async fn tenant_with_notes(
    app: &TestApp,
    slug: &str,
    n: usize,
    body: impl Fn(usize) -> String,
) -> TenantId {
    let (tenant, token) = app.tenant_with_token(slug).await;
    assert_eq!(
        app.call("POST", "/v1/datasets", &token, Some(NOTES))
            .await
            .status,
        201
    );
    let records: Vec<_> = (0..n)
        .map(|i| json!({"key": format!("n{i:03}"), "data": {"body": body(i)}}))
        .collect();
    let r = app
        .call(
            "POST",
            "/v1/datasets/notes/records",
            &token,
            Some(&serde_json::Value::from(records).to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    tenant
}

async fn state(app: &TestApp) -> (i64, i64, i64) {
    let row = app
        .db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FILTER (WHERE embedding IS NULL), \
                    count(*) FILTER (WHERE embed_lease IS NOT NULL), count(*) FROM app.chunks",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test]
async fn no_transaction_is_open_while_the_embedder_works() {
    let (_moto, app, tenant) = pending_app(150).await;
    let probe = Probe::new(&app).await;
    let n = drain(&app.app.db, probe.as_ref(), tenant).await.unwrap();
    assert_eq!(n, 150);
    let seen = probe.open_transactions.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "three batches of at most 64: {seen:?}");
    assert!(
        seen.iter().all(|n| *n == 0),
        "a transaction was open during embedding: {seen:?}"
    );
    assert_eq!(
        state(&app).await,
        (0, 0, 150),
        "all embedded, no lease left"
    );
}

#[tokio::test]
async fn concurrent_workers_never_embed_a_chunk_twice() {
    let (_moto, app, tenant) = pending_app(300).await;
    let (p1, p2) = (Probe::new(&app).await, Probe::new(&app).await);
    let (a, b) = tokio::join!(
        drain(&app.app.db, p1.as_ref(), tenant),
        drain(&app.app.db, p2.as_ref(), tenant)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a + b, 300);
    let mut all = p1.texts.lock().unwrap().clone();
    all.extend(p2.texts.lock().unwrap().iter().cloned());
    assert!(!p1.texts.lock().unwrap().is_empty() && !p2.texts.lock().unwrap().is_empty());
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (total, all.len()),
        (300, 300),
        "every chunk embedded exactly once"
    );
    assert_eq!(state(&app).await, (0, 0, 300));
}

#[tokio::test]
async fn a_chunk_changed_during_embedding_is_not_given_the_stale_vector() {
    let (_moto, app, tenant) = pending_app(1).await;
    let probe = Probe::new(&app).await;
    // While the first text is embedded, the chunk is replaced (a new version: new text, no
    // lease), as re-ingest does.
    *probe.during.lock().unwrap() = Some(
        "UPDATE app.chunks SET content = 'The parcel was returned to Lisbon.', \
         record_version = record_version + 1, embed_lease = NULL, embed_lease_until = NULL"
            .into(),
    );
    let n = drain(&app.app.db, probe.as_ref(), tenant).await.unwrap();
    assert_eq!(
        n, 1,
        "the stale vector was not written; the new text was embedded"
    );
    assert_eq!(
        *probe.texts.lock().unwrap(),
        [
            "Note number 0 about parcel 0.",
            "The parcel was returned to Lisbon."
        ]
    );
    let v: String = app
        .db
        .admin()
        .await
        .query_one("SELECT embedding::text FROM app.chunks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        v,
        tenantry::rag::embed::to_pgvector(
            &LocalEmbedder::new(256).vector("The parcel was returned to Lisbon.")
        )
        .replace(' ', "")
    );
}

#[tokio::test]
async fn a_failed_embedding_gives_its_lease_up_and_a_lost_lease_writes_nothing() {
    let (_moto, app, tenant) = pending_app(3).await;
    let failing = Arc::new(Probe {
        fail: true,
        ..Arc::into_inner(Probe::new(&app).await).unwrap()
    });
    assert!(drain(&app.app.db, failing.as_ref(), tenant).await.is_err());
    assert_eq!(
        state(&app).await,
        (3, 0, 3),
        "nothing written, the lease released"
    );
    // An embedder that answers with too few vectors has failed too: nothing is written, and
    // the lease is not left to expire.
    let short = Arc::new(Probe {
        short: true,
        ..Arc::into_inner(Probe::new(&app).await).unwrap()
    });
    assert!(drain(&app.app.db, short.as_ref(), tenant).await.is_err());
    assert_eq!(state(&app).await, (3, 0, 3), "short batch: lease released");

    // A worker that claimed, then lost its lease (expired, claimed again and embedded by
    // another), writes nothing when it comes back.
    let lease = uuid::Uuid::new_v4();
    let mut tx = app
        .app
        .db
        .begin(&as_tenant(tenant), Access::ReadWrite)
        .await
        .unwrap();
    let claimed = claim_pending(&mut tx, lease, 10, EMBED_LEASE)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(claimed.len(), 3);
    // Held: another worker finds nothing to claim.
    let other = Probe::new(&app).await;
    assert_eq!(drain(&app.app.db, other.as_ref(), tenant).await.unwrap(), 0);
    app.db
        .admin()
        .await
        .batch_execute("UPDATE app.chunks SET embed_lease_until = now() - interval '1 second'")
        .await
        .unwrap();
    assert_eq!(drain(&app.app.db, other.as_ref(), tenant).await.unwrap(), 3);
    let vectors: Vec<Vec<f32>> = claimed.iter().map(|_| vec![0.5; 256]).collect();
    let mut tx = app
        .app
        .db
        .begin(&as_tenant(tenant), Access::ReadWrite)
        .await
        .unwrap();
    let written = store_vectors(&mut tx, lease, &claimed, &vectors, "stale")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(written, 0);
    let stale: i64 = app
        .db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM app.chunks WHERE embedding_model = 'stale'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stale, 0);
}

/// Counts what the worker does: calls, texts, and the most calls in flight at once.
#[derive(Debug, Default)]
struct Gauge {
    inner: Option<LocalEmbedder>,
    in_flight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    calls: std::sync::atomic::AtomicUsize,
    texts: Mutex<Vec<String>>,
    /// Whose each call was: the first letter of its first text ('N'ote number: alpha, 'B'ravo).
    order: Mutex<String>,
}

impl Embedder for Gauge {
    fn model(&self) -> &str {
        "gauge"
    }
    fn dims(&self) -> usize {
        256
    }
    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            self.calls.fetch_add(1, SeqCst);
            self.texts.lock().unwrap().extend(texts.iter().cloned());
            let first = texts.first().and_then(|t| t.chars().next()).unwrap_or('-');
            self.order.lock().unwrap().push(first);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.in_flight.fetch_sub(1, SeqCst);
            let inner = self.inner.as_ref().unwrap();
            Ok(texts.iter().map(|t| inner.vector(t)).collect())
        })
    }
}

/// A burst of enqueues in the background (what many ingests in a row do) is one worker: one
/// embedding in flight at a time, tenants taking turns, every chunk embedded exactly once.
#[tokio::test]
async fn background_embedding_is_one_worker_however_many_ingests_queue_it() {
    use std::sync::atomic::Ordering::SeqCst;
    use tenantry::rag::queue::{EmbedQueue, InProcessEmbedQueue};
    let (_moto, app, alpha) = pending_app(150).await;
    let bravo = tenant_with_notes(&app, "bravo", 70, |i| format!("Bravo note {i}.")).await;
    let token = |slug: &str| {
        tenantry_tests::issuer()
            .token(
                &format!("auth0|{slug}-user"),
                &format!("org_{slug}"),
                &["admin"],
                std::time::Duration::from_secs(600),
            )
            .unwrap()
    };
    // alpha: 600 chunks, ten batches of at most 64, more than one turn.
    let more: Vec<_> = (150..600)
        .map(|i| json!({"key": format!("n{i:03}"), "data": {"body": format!("Note number {i}.")}}))
        .collect();
    app.ingest(&token("alpha"), "notes", &serde_json::Value::from(more))
        .await;
    assert_eq!(state(&app).await, (670, 0, 670));

    let gauge = Arc::new(Gauge {
        inner: Some(LocalEmbedder::new(256)),
        ..Gauge::default()
    });
    let queue = InProcessEmbedQueue::new(
        app.app.db.clone(),
        gauge.clone(),
        tenantry::runtime::Work::Background,
    );
    for i in 0..20 {
        queue
            .enqueue(if i % 2 == 0 { alpha } else { bravo })
            .await
            .unwrap();
    }
    for _ in 0..600 {
        if state(&app).await.0 == 0 && gauge.in_flight.load(SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(state(&app).await, (0, 0, 670));
    assert_eq!(gauge.most.load(SeqCst), 1, "embeddings ran concurrently");
    // alpha's first turn (8 batches), bravo's (its 70 chunks: 2), then the rest of alpha's (2):
    // a tenant with much to embed does not keep the others waiting until it is done.
    assert_eq!(*gauge.order.lock().unwrap(), "NNNNNNNNBBNN");
    let mut texts = gauge.texts.lock().unwrap().clone();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 670, "a chunk was embedded twice");

    // Queued again once the worker has stopped, it starts again.
    app.ingest(
        &token("bravo"),
        "notes",
        &json!([{"key": "n999", "data": {"body": "A late note."}}]),
    )
    .await;
    queue.enqueue(bravo).await.unwrap();
    for _ in 0..600 {
        if state(&app).await.0 == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(state(&app).await, (0, 0, 671));
    assert_eq!(gauge.calls.load(SeqCst), 13);
}

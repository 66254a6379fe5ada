//! Per-tenant search indexes (`rag::tenant_index`): built for a large tenant only, as the
//! indexer role, concurrently; used by that tenant's searches and by nobody else's; dropped when
//! the tenant shrinks, closes or the embedding dimension changes, or the build failed; and the
//! indexer role can do nothing else.

use std::time::Duration;

use tenantry::TenantId;
use tenantry::db::{Access, TxSettings};
use tenantry::rag::embed::LocalEmbedder;
use tenantry::rag::search::{SearchRequest, explain, search};
use tenantry::rag::tenant_index::{
    Kind, MAINTENANCE_LOCK, Report, TenantIndexConfig, index_name, maintain,
};
use tenantry_tests::{DEV_INDEXER_PASSWORD, TestApp, as_tenant, connect, with_login};

const NOTES: &str = r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}],
  "text_columns": ["body"]}"#;

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
    "lisbon",
    "berlin",
    "osaka",
    "widget",
    "sensor",
    "battery",
    "late",
    "broken",
    "urgent",
];

/// A deterministic sentence of eight words for record `i`.
fn body(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..8)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            WORDS[(x % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A tenant with `n` embedded chunks (one record each, imported in one request).
async fn tenant_with_chunks(app: &TestApp, slug: &str, n: u64) -> TenantId {
    let (tenant, token) = app.tenant_with_token(slug).await;
    app.create_dataset(&token, NOTES).await;
    // In requests of 300 records, within the default body limit.
    for from in (0..n).step_by(300) {
        let ndjson: String = (from..(from + 300).min(n))
            .map(|i| {
                format!(
                    "{}\n",
                    serde_json::json!({"key": format!("{slug}-{i}"), "data": {"body": body(i)}})
                )
            })
            .collect();
        let r = app.import(&token, "notes", &ndjson).await;
        assert_eq!(r.status, 200, "{}", r.json);
    }
    assert_eq!(
        app.embed_all(tenant, &LocalEmbedder::new(256)).await,
        n as i64
    );
    tenant
}

fn config(min_chunks: i64, drop_below: i64) -> TenantIndexConfig {
    TenantIndexConfig {
        min_chunks,
        drop_below,
        build_memory_mib: 64,
        ef_search: 200,
        budget: Duration::from_secs(300),
        every: Duration::from_secs(300),
    }
}

async fn indexer(app: &TestApp) -> tokio_postgres::Client {
    connect(&with_login(
        &app.db.admin_url,
        "tenantry_indexer",
        DEV_INDEXER_PASSWORD,
        &app.db.name,
    ))
    .await
}

/// Our indexes as the catalog has them: (name, valid, predicate).
async fn catalog(app: &TestApp) -> Vec<(String, bool, String)> {
    app.db
        .admin()
        .await
        .query(
            "SELECT c.relname::text, i.indisvalid, pg_get_expr(i.indpred, i.indrelid) \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = 'app.chunks'::regclass AND c.relname LIKE 'chunks\\_tenant\\_%' \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn names(tenant: TenantId, dims: usize) -> Vec<String> {
    let mut v = vec![
        index_name(tenant.as_uuid(), Kind::Vectors(dims)),
        index_name(tenant.as_uuid(), Kind::Text),
    ];
    v.sort();
    v
}

fn built(r: &Report) -> Vec<String> {
    let mut v: Vec<String> = r.built.iter().map(|b| b.index.clone()).collect();
    v.sort();
    v
}

fn dropped(r: &Report) -> Vec<(String, &'static str)> {
    let mut v: Vec<(String, &'static str)> = r
        .dropped
        .iter()
        .map(|d| (d.index.clone(), d.reason))
        .collect();
    v.sort();
    v
}

/// `tenant`'s search on the approximate path and on the exact path (chunk keys), as the app
/// runs them, and the `hnsw.ef_search` the transaction ended with.
async fn searched(
    app: &TestApp,
    tenant: TenantId,
    question: &str,
) -> (Vec<String>, Vec<String>, String) {
    let vector = LocalEmbedder::new(256).vector(question);
    let mut tx = app
        .app
        .db
        .begin_with(&as_tenant(tenant), Access::ReadOnly, settings())
        .await
        .unwrap();
    let mut keys = Vec::new();
    for threshold in [0, i64::MAX] {
        let got = search(&mut tx, &request(question, &vector, threshold))
            .await
            .unwrap();
        assert_eq!(got.exact, threshold == i64::MAX);
        keys.push(got.hits.into_iter().map(|h| h.record_key).collect());
    }
    let ef: String = tx
        .query_one("SELECT current_setting('hnsw.ef_search')", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    let exact = keys.pop().unwrap();
    (keys.pop().unwrap(), exact, ef)
}

/// The plan of `tenant`'s search on the approximate path, on connections where sequential
/// scans are priced out (a test table is small enough for one to win; at scale the indexes do,
/// BENCHMARKS.md `tenant-index`): which indexes the planner may use for this tenant.
async fn plan(app: &TestApp, tenant: TenantId, question: &str) -> String {
    let db = app.db.pool_at(
        &format!("{}?options=-c%20enable_seqscan%3Doff", app.db.app_url),
        1,
    );
    plan_on(&db, tenant, question).await
}

/// The plan of `tenant`'s search on the approximate path, on `db`'s connections.
async fn plan_on(db: &tenantry::db::Db, tenant: TenantId, question: &str) -> String {
    let vector = LocalEmbedder::new(256).vector(question);
    let mut tx = db
        .begin_with(&as_tenant(tenant), Access::ReadOnly, settings())
        .await
        .unwrap();
    let plan = explain(&mut tx, &request(question, &vector, 0), false)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    plan
}

/// `hnsw.ef_search` on a tenant's own index in these tests (the transaction's is 100).
const OWN_EF_SEARCH: u32 = 250;

fn settings() -> TxSettings {
    TxSettings {
        hnsw_ef_search: Some(100),
        ..TxSettings::default()
    }
}

fn request<'a>(question: &'a str, vector: &'a [f32], exact_max_chunks: i64) -> SearchRequest<'a> {
    SearchRequest {
        question,
        vector,
        k: 10,
        datasets: None,
        filter: None,
        exact_max_chunks,
        own_index_ef_search: Some(OWN_EF_SEARCH),
        min_relevance: 0.0,
    }
}

#[tokio::test]
async fn a_large_tenant_gets_indexes_of_its_own_and_only_its_searches_use_them() {
    let app = TestApp::new().await;
    let large = tenant_with_chunks(&app, "large", 1500).await;
    let small = tenant_with_chunks(&app, "small", 300).await;
    let client = indexer(&app).await;

    let report = maintain(&client, 256, &config(1000, 500)).await.unwrap();
    assert!(report.ran);
    assert_eq!(report.tenants, 2);
    assert_eq!(built(&report), names(large, 256), "{report:?}");
    assert!(
        report.built.iter().all(|b| b.chunks == 1001),
        "counted up to min + 1"
    );
    let cat = catalog(&app).await;
    assert_eq!(cat.len(), 2, "{cat:?}");
    for (name, valid, predicate) in &cat {
        assert!(valid, "{name} is not valid");
        assert!(
            predicate.contains(&large.as_uuid().to_string()),
            "{name}: {predicate}"
        );
    }
    // Run again: nothing to do.
    let again = maintain(&client, 256, &config(1000, 500)).await.unwrap();
    assert!(
        again.built.is_empty() && again.dropped.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.kept, 2);

    app.db
        .admin()
        .await
        .batch_execute("ANALYZE app.chunks")
        .await
        .unwrap();
    let question = "urgent refund for the broken widget in lisbon";
    // Its vector candidates come from its own HNSW index, and its full-text candidates from
    // app.text_candidates (its own GIN index, which RLS would keep from the search itself).
    let explained = plan_on(&app.app.db, large, question).await;
    let own_vectors = index_name(large.as_uuid(), Kind::Vectors(256));
    assert!(
        explained.contains(&own_vectors),
        "the large tenant's plan: {explained}"
    );
    assert!(
        explained.contains("text_candidates"),
        "the large tenant's plan: {explained}"
    );
    // Inside the function, as the owner, the tenant's GIN index serves the match.
    let admin = app.db.admin().await;
    admin
        .batch_execute("SET ROLE tenantry_owner")
        .await
        .unwrap();
    let inner = admin
        .query(
            &format!(
                "EXPLAIN SELECT c.record_key FROM app.chunks c, \
                 websearch_to_tsquery('english', $1) q \
                 WHERE c.tenant_id = '{}'::uuid AND c.tsv @@ q",
                large.as_uuid()
            ),
            &[&question],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    let own_text = index_name(large.as_uuid(), Kind::Text);
    assert!(
        inner.contains(&own_text),
        "the owner's full-text plan: {inner}"
    );
    let (approximate, exact, ef) = searched(&app, large, question).await;
    assert_eq!(ef, OWN_EF_SEARCH.to_string(), "the own index's ef_search");
    assert_eq!(approximate.len(), 10);
    assert!(approximate.iter().all(|k| k.starts_with("large-")));
    let shared = approximate.iter().filter(|k| exact.contains(k)).count();
    assert!(
        shared >= 9,
        "own index found {shared} of the exact top 10: {approximate:?} vs {exact:?}"
    );

    // Its vector index invalid (a rebuild under way): the search leaves ef_search alone and does
    // not name the index.
    admin.batch_execute("RESET ROLE").await.unwrap();
    admin
        .execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass('app.' || $1)",
            &[&own_vectors],
        )
        .await
        .unwrap();
    let (_, _, ef) = searched(&app, large, question).await;
    assert_eq!(ef, "100", "ef_search set for an invalid index");
    let explained = plan_on(&app.app.db, large, question).await;
    assert!(
        !explained.contains(&own_vectors),
        "an invalid index planned: {explained}"
    );

    // The small tenant's search cannot use the large tenant's indexes (their predicate names
    // the other tenant), and finds only its own rows.
    let priced = plan(&app, small, question).await;
    assert!(
        !priced.contains("chunks_tenant_"),
        "the small tenant's plan: {priced}"
    );
    let (approximate, _, ef) = searched(&app, small, question).await;
    assert_eq!(
        ef, "100",
        "the small tenant kept the transaction's ef_search"
    );
    assert!(approximate.iter().all(|k| k.starts_with("small-")));
}

#[tokio::test]
async fn indexes_go_when_the_tenant_shrinks_closes_the_dimension_changes_or_a_build_failed() {
    let app = TestApp::new().await;
    let a = tenant_with_chunks(&app, "alpha", 60).await;
    let b = tenant_with_chunks(&app, "bravo", 60).await;
    let client = indexer(&app).await;
    let admin = app.db.admin().await;
    let cfg = config(50, 40);
    let mut both = [names(a, 256), names(b, 256)].concat();
    both.sort();
    assert_eq!(built(&maintain(&client, 256, &cfg).await.unwrap()), both);

    // A build that failed part-way leaves an invalid index: dropped and built again.
    let vectors_a = index_name(a.as_uuid(), Kind::Vectors(256));
    admin
        .execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass('app.' || $1)",
            &[&vectors_a],
        )
        .await
        .unwrap();
    let r = maintain(&client, 256, &cfg).await.unwrap();
    assert_eq!(dropped(&r), [(vectors_a.clone(), "invalid")]);
    assert_eq!(built(&r), std::slice::from_ref(&vectors_a));
    assert!(catalog(&app).await.iter().all(|(_, valid, _)| *valid));

    // A shrinks below drop_below (but not below min: no flapping between 40 and 50).
    admin
        .execute(
            "DELETE FROM app.records WHERE tenant_id = $1 AND key >= 'alpha-3'",
            &[&a.as_uuid()],
        )
        .await
        .unwrap();
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM app.chunks WHERE tenant_id = $1",
            &[&a.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(left < 40, "{left} chunks left");
    let r = maintain(&client, 256, &cfg).await.unwrap();
    let shrunk: Vec<_> = names(a, 256).into_iter().map(|n| (n, "shrunk")).collect();
    assert_eq!(dropped(&r), shrunk);
    assert!(r.built.is_empty());

    // B closes: it has left, whatever it still holds until it is purged.
    admin
        .execute(
            "UPDATE app.tenants SET status = 'closed', closed_at = now(), delete_after = now() + interval '30 days' WHERE tenant_id = $1",
            &[&b.as_uuid()],
        )
        .await
        .unwrap();
    let r = maintain(&client, 256, &cfg).await.unwrap();
    let closed: Vec<_> = names(b, 256)
        .into_iter()
        .map(|n| (n, "tenant_closed"))
        .collect();
    assert_eq!(dropped(&r), closed);
    assert!(catalog(&app).await.is_empty());

    // A third tenant, then the embedding dimension changes: its vector index goes, the one for
    // the new dimension is built, its full-text index stays.
    let c = tenant_with_chunks(&app, "charlie", 60).await;
    assert_eq!(
        built(&maintain(&client, 256, &cfg).await.unwrap()),
        names(c, 256)
    );
    let r = maintain(&client, 512, &cfg).await.unwrap();
    assert_eq!(
        dropped(&r),
        [(index_name(c.as_uuid(), Kind::Vectors(256)), "dims_changed")]
    );
    assert_eq!(built(&r), [index_name(c.as_uuid(), Kind::Vectors(512))]);
    assert_eq!(r.kept, 1);

    // Turned off: every per-tenant index goes.
    let r = maintain(&client, 512, &config(0, 0)).await.unwrap();
    assert_eq!(r.dropped.len(), 2);
    assert!(r.dropped.iter().all(|d| d.reason == "disabled"));
    assert!(catalog(&app).await.is_empty());
}

#[tokio::test]
async fn one_maintainer_at_a_time_and_other_indexes_are_never_touched() {
    let app = TestApp::new().await;
    let a = tenant_with_chunks(&app, "alpha", 20).await;
    let admin = app.db.admin().await;
    // An index someone else made, with a name close to ours.
    admin
        .batch_execute(
            "CREATE INDEX chunks_tenant_extra ON app.chunks (created_at); \
             CREATE INDEX chunks_tenant_0190_256 ON app.chunks (chunk_no)",
        )
        .await
        .unwrap();
    let holder = app.db.admin().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&MAINTENANCE_LOCK])
        .await
        .unwrap();
    let client = indexer(&app).await;
    let r = maintain(&client, 256, &config(10, 5)).await.unwrap();
    assert!(!r.ran && r.built.is_empty(), "{r:?}");
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&MAINTENANCE_LOCK])
        .await
        .unwrap();

    let r = maintain(&client, 256, &config(10, 5)).await.unwrap();
    assert_eq!(built(&r), names(a, 256));
    let r = maintain(&client, 256, &config(0, 0)).await.unwrap();
    assert_eq!(r.dropped.len(), 2, "{r:?}");
    let others: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname IN ('chunks_tenant_extra', 'chunks_tenant_0190_256')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        others, 2,
        "maintenance dropped an index that is not its own"
    );
}

/// The indexer role has no privilege of its own (only SET ROLE to the owner, which it does not
/// inherit), and the app role can become neither it nor the owner, nor build an index.
#[tokio::test]
async fn the_indexer_role_has_nothing_until_it_becomes_the_owner_and_the_app_role_cannot() {
    let app = TestApp::new().await;
    tenant_with_chunks(&app, "alpha", 5).await;
    let client = indexer(&app).await;
    for attack in [
        "SELECT content FROM app.chunks",
        "CREATE INDEX chunks_mine ON app.chunks (created_at)",
    ] {
        let err = client.batch_execute(attack).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{attack}: {err}"
        );
    }
    client
        .batch_execute("SET ROLE tenantry_owner")
        .await
        .unwrap();

    let app_role = connect(&app.db.app_url).await;
    for attack in [
        "SET ROLE tenantry_owner",
        "SET ROLE tenantry_indexer",
        "CREATE INDEX chunks_mine ON app.chunks (created_at)",
    ] {
        let err = app_role.batch_execute(attack).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{attack}: {err}"
        );
    }
}

/// The vector-indexes function as it runs in Lambda: its configuration holds the indexer's
/// credentials where the app role's would be (an app URL in the environment is not read), and
/// one run builds what is due.
#[tokio::test]
async fn the_function_runs_as_the_indexer_from_its_own_configuration() {
    let app = TestApp::new().await;
    let a = tenant_with_chunks(&app, "alpha", 30).await;
    let indexer_url = with_login(
        &app.db.admin_url,
        "tenantry_indexer",
        DEV_INDEXER_PASSWORD,
        &app.db.name,
    );
    let vars = [
        ("INDEXER_DATABASE_URL", indexer_url),
        (
            "APP_DATABASE_URL",
            "postgres://nobody:wrong@127.0.0.1:1/none".to_owned(),
        ),
        ("AUTH0_ISSUER", tenantry_tests::ISSUER.to_owned()),
        ("AUTH0_AUDIENCE", tenantry_tests::AUDIENCE.to_owned()),
        ("RAG_TENANT_INDEX_MIN_CHUNKS", "25".to_owned()),
    ];
    let config = tenantry::app::indexer_config(|name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap();
    assert_eq!(
        config.rag.tenant_index.drop_below, 12,
        "half the threshold by default"
    );
    let report = tenantry::app::maintain_vector_indexes(&config)
        .await
        .unwrap();
    assert_eq!(built(&report), names(a, 256));
}

/// app.text_candidates (the owner's full-text path for tenants with their own GIN index): the
/// same candidates, in the same order, as the search's own scan under RLS; the transaction's
/// tenant only, whatever the text; nothing without a tenant; not callable by the read-only
/// support role at all.
#[tokio::test]
async fn text_candidates_match_the_rls_scan_and_never_leave_the_tenant() {
    let app = TestApp::new().await;
    let a = tenant_with_chunks(&app, "alpha", 120).await;
    let b = tenant_with_chunks(&app, "bravo", 120).await;
    let client = indexer(&app).await;
    maintain(&client, 256, &config(100, 50)).await.unwrap();
    let app_role = connect(&app.db.app_url).await;
    let keys = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    };
    let in_tenant = |tenant: TenantId, sql: &'static str, q: String| {
        let app_role = &app_role;
        async move {
            app_role.batch_execute("BEGIN").await.unwrap();
            app_role
                .execute(
                    "SELECT set_config('app.tenant_id', $1, true)",
                    &[&tenant.as_uuid().to_string()],
                )
                .await
                .unwrap();
            let rows = app_role.query(sql, &[&q]).await;
            app_role.batch_execute("COMMIT").await.unwrap();
            rows
        }
    };
    const FUNCTION: &str =
        "SELECT record_key FROM app.text_candidates($1, NULL, 40) ORDER BY rank DESC, record_key";
    const SCAN: &str = "SELECT c.record_key FROM app.chunks c, websearch_to_tsquery('english', $1) q \
         WHERE c.tsv @@ q ORDER BY ts_rank_cd(c.tsv, q) DESC, c.record_key, c.chunk_no LIMIT 40";
    // The same candidates as the scan under RLS, for questions drawn from the corpus's words.
    let mut compared = 0;
    for i in 0..20u64 {
        let q = body(10_000 + i)
            .split(' ')
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let via_function = keys(in_tenant(a, FUNCTION, q.clone()).await.unwrap());
        let via_scan = keys(in_tenant(a, SCAN, q.clone()).await.unwrap());
        assert_eq!(via_function, via_scan, "{q}");
        compared += via_function.len();
    }
    assert!(
        compared > 100,
        "the questions matched too little to compare ({compared})"
    );

    // Generated text: the corpus's words (so most questions match) among operators, quotes
    // and other characters. Never an error, never another tenant's row.
    let tokens: Vec<&str> = WORDS
        .iter()
        .copied()
        .chain([
            "&", "|", "!", ":*", "(", ")", "<->", "\"", "'", "\\", "-", "OR", "AND", "NOT", "é",
            "中", "0", " ",
        ])
        .collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut matched = 0;
    for _ in 0..300 {
        let len = 1 + (x % 6) as usize;
        let q: String = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                tokens[(x % tokens.len() as u64) as usize]
            })
            .collect::<Vec<_>>()
            .join(if x.is_multiple_of(3) { "" } else { " " });
        let got = keys(
            in_tenant(b, FUNCTION, q.clone())
                .await
                .unwrap_or_else(|e| panic!("{q:?}: {e}")),
        );
        assert!(
            got.iter().all(|k| k.starts_with("bravo-")),
            "{q:?}: {got:?}"
        );
        matched += usize::from(!got.is_empty());
    }
    assert!(
        matched > 50,
        "only {matched} of 300 generated questions matched anything"
    );

    // A's words, asked in B: only B's chunks. With no tenant: nothing.
    let q = body(3);
    let got = keys(in_tenant(b, FUNCTION, q.clone()).await.unwrap());
    assert!(
        !got.is_empty() && got.iter().all(|k| k.starts_with("bravo-")),
        "{got:?}"
    );
    let none = app_role.query(FUNCTION, &[&q]).await.unwrap();
    assert!(none.is_empty(), "no tenant set, yet {} rows", none.len());

    // The read-only support role may not call it at all (its restrictive policies bind it, not
    // the owner), whatever settings it gives itself.
    let impersonator = connect(&with_login(
        &app.db.admin_url,
        "tenantry_impersonator",
        tenantry_tests::DEV_IMPERSONATOR_PASSWORD,
        &app.db.name,
    ))
    .await;
    for setting in ["", "00000000-0000-7000-8000-000000000000"] {
        impersonator.batch_execute("BEGIN").await.unwrap();
        impersonator
            .execute(
                "SELECT set_config('role', 'tenantry_impersonation', true), \
                        set_config('app.tenant_id', $1, true), \
                        set_config('app.impersonation_id', $2, true)",
                &[&a.as_uuid().to_string(), &setting],
            )
            .await
            .unwrap();
        let err = impersonator.query(FUNCTION, &[&q]).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{err}"
        );
        impersonator.batch_execute("ROLLBACK").await.unwrap();
    }
}

/// A run spends at most its budget on builds (what it did not reach is deferred), and one build
/// that fails does not stop the others.
#[tokio::test]
async fn a_run_keeps_to_its_budget_and_goes_on_past_a_failed_build() {
    let app = TestApp::new().await;
    let a = tenant_with_chunks(&app, "alpha", 30).await;
    let client = indexer(&app).await;
    let spent = TenantIndexConfig {
        budget: Duration::ZERO,
        ..config(20, 10)
    };
    let r = maintain(&client, 256, &spent).await.unwrap();
    assert!(r.built.is_empty() && r.deferred == 2, "{r:?}");

    // Something else already holds the vector index's name (built first): that build fails
    // (and is reported), the full-text index is built after it all the same.
    let vectors = index_name(a.as_uuid(), Kind::Vectors(256));
    app.db
        .admin()
        .await
        .batch_execute(&format!("CREATE TABLE app.{vectors} ()"))
        .await
        .unwrap();
    let r = maintain(&client, 256, &config(20, 10)).await.unwrap();
    assert_eq!(built(&r), [index_name(a.as_uuid(), Kind::Text)]);
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].index, vectors);
    assert_eq!(r.failed[0].action, "build");
    assert_eq!(r.failed[0].sqlstate.as_deref(), Some("42P07"));
}

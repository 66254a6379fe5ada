//! Retrieval groundwork: chunks follow records, embeddings fill in, and search stays inside the
//! tenant even when another tenant holds the perfect match.

use serde_json::{Value, json};
use tenantry::TenantId;
use tenantry::db::{Access, TxSettings};
use tenantry::rag::embed::LocalEmbedder;
use tenantry::rag::search::{Hit, SearchRequest, search};
use tenantry_tests::{TestApp, as_tenant};

const NOTES: &str = r#"{"name": "notes", "columns": [{"name": "topic", "type": "string"},
  {"name": "body", "type": "string"}], "text_columns": ["body"]}"#;

async fn ingest(app: &TestApp, token: &str, records: Value) {
    let r = app
        .call(
            "POST",
            "/v1/datasets/notes/records",
            token,
            Some(&records.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
}

/// Embeds the tenant's pending chunks with the local embedder the app uses.
async fn embed_all(app: &TestApp, tenant: TenantId) -> i64 {
    app.embed_all(tenant, &LocalEmbedder::new(256)).await
}

async fn ask(app: &TestApp, tenant: TenantId, question: &str, k: usize) -> Vec<Hit> {
    search_as(app, tenant, question, k, None, i64::MAX)
        .await
        .hits
}

/// One search in the tenant's transaction, as `/v1/ask` runs it (HNSW settings included).
async fn search_as(
    app: &TestApp,
    tenant: TenantId,
    question: &str,
    k: usize,
    datasets: Option<&[uuid::Uuid]>,
    exact_max_chunks: i64,
) -> tenantry::rag::search::Retrieved {
    let embedder = LocalEmbedder::new(256);
    let settings = TxSettings {
        hnsw_ef_search: Some(40),
        ..TxSettings::default()
    };
    let mut tx = app
        .app
        .db
        .begin_with(&as_tenant(tenant), Access::ReadOnly, settings)
        .await
        .unwrap();
    let vector = embedder.vector(question);
    let request = SearchRequest {
        question,
        vector: &vector,
        k,
        datasets,
        filter: None,
        exact_max_chunks,
        own_index_ef_search: None,
        min_relevance: 0.0,
    };
    let got = search(&mut tx, &request).await.unwrap();
    tx.commit().await.unwrap();
    got
}

#[tokio::test]
async fn search_never_crosses_tenants_and_follows_record_versions() {
    let app = TestApp::new().await;
    let (a, token_a) = app.tenant_with_token("alpha").await;
    let (b, token_b) = app.tenant_with_token("bravo").await;
    for token in [&token_a, &token_b] {
        assert_eq!(
            app.call("POST", "/v1/datasets", token, Some(NOTES))
                .await
                .status,
            201
        );
    }
    let question = "Why was the shipment to Lisbon delayed by customs?";
    let a_notes: Vec<Value> = (0..12)
        .map(|i| {
            json!({"key": format!("a-{i}"), "data": {"topic": "ops", "body": format!(
            "Note {i}: warehouse inventory counts for aisle {i} were reconciled on Monday.")}})
        })
        .collect();
    ingest(&app, &token_a, Value::Array(a_notes)).await;
    // B holds the perfect answer to A's question, word for word.
    ingest(
        &app,
        &token_b,
        json!([{"key": "secret", "data": {"topic": "ops", "body": question}}]),
    )
    .await;

    assert_eq!(embed_all(&app, a).await, 12);
    assert_eq!(embed_all(&app, b).await, 1);

    let hits = ask(&app, a, question, 5).await;
    assert_eq!(hits.len(), 5, "A has 12 chunks, so it gets k=5 of them");
    assert!(
        hits.iter().all(|h| h.record_key.starts_with("a-")),
        "{hits:?}"
    );
    let hits_b = ask(&app, b, question, 5).await;
    assert_eq!(hits_b.len(), 1);
    assert_eq!(hits_b[0].record_key, "secret");
    assert!(hits_b[0].vector_rank == Some(1) && hits_b[0].text_rank == Some(1));

    // A record rewritten: its old text is gone from retrieval at once, the new version is found.
    ingest(
        &app,
        &token_a,
        json!([{"key": "a-3", "data": {"topic": "ops",
        "body": "Customs held the Lisbon shipment for a missing invoice."}}]),
    )
    .await;
    let stale = ask(&app, a, "aisle 3 reconciled", 12).await;
    assert!(
        !stale
            .iter()
            .any(|h| h.record_key == "a-3" && h.content.contains("aisle")),
        "superseded text retrieved"
    );
    embed_all(&app, a).await;
    let admin = app.db.admin().await;
    let state: Vec<(String, i32, bool, String)> = admin
        .query("SELECT record_key, record_version, embedding IS NOT NULL, content FROM app.chunks WHERE tenant_id = $1 AND record_key = 'a-3'", &[&a.as_uuid()])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(state.len(), 1, "{state:?}");
    assert!(
        state[0].1 == 2 && state[0].2 && state[0].3.contains("Customs"),
        "{state:?}"
    );
    let fresh = ask(&app, a, question, 1).await;
    assert_eq!(
        (fresh[0].record_key.as_str(), fresh[0].record_version),
        ("a-3", 2),
        "{fresh:?}"
    );

    // A deleted record is never retrieved again.
    assert_eq!(
        app.call("DELETE", "/v1/datasets/notes/records/a-3", &token_a, None)
            .await
            .status,
        204
    );
    assert!(
        ask(&app, a, question, 12)
            .await
            .iter()
            .all(|h| h.record_key != "a-3")
    );
}

#[tokio::test]
async fn long_text_is_chunked_and_every_chunk_cites_its_record() {
    let app = TestApp::new().await;
    let (a, token) = app.tenant_with_token("alpha").await;
    assert_eq!(
        app.call("POST", "/v1/datasets", &token, Some(NOTES))
            .await
            .status,
        201
    );
    let body: String = (0..60)
        .map(|i| format!("Sentence number {i} talks about topic {}. ", i % 7))
        .collect();
    ingest(
        &app,
        &token,
        json!([{"key": "long", "data": {"body": body}}]),
    )
    .await;
    let n = embed_all(&app, a).await;
    assert!(n > 1, "a {}-character text became {n} chunk(s)", body.len());
    let hits = ask(&app, a, "sentence number 42", 3).await;
    assert!(
        hits.iter()
            .all(|h| h.record_key == "long" && h.record_version == 1 && h.column == "body")
    );
    assert!(hits[0].content.contains("number 42"), "{hits:?}");
}

#[tokio::test]
async fn the_approximate_path_stays_in_the_tenant_and_falls_back_to_exact_when_short() {
    let app = TestApp::new().await;
    let (a, token_a) = app.tenant_with_token("alpha").await;
    let (b, token_b) = app.tenant_with_token("bravo").await;
    app.create_dataset(&token_a, NOTES).await;
    app.create_dataset(&token_b, NOTES).await;
    let question = "Why was the shipment to Lisbon delayed by customs?";
    let a_notes: Vec<Value> = (0..40)
        .map(|i| {
            json!({"key": format!("a-{i}"), "data": {"body": format!(
            "Note {i}: the pallet for order {i} left the warehouse late.")}})
        })
        .collect();
    app.ingest(&token_a, "notes", &Value::Array(a_notes)).await;
    // B floods the shared index with A's question, word for word: the nearest neighbours of the
    // question in the whole index are all B's.
    let b_notes: Vec<Value> = (0..300)
        .map(|i| json!({"key": format!("b-{i}"), "data": {"body": format!("{question} ({i})")}}))
        .collect();
    app.ingest(&token_b, "notes", &Value::Array(b_notes)).await;
    assert_eq!(embed_all(&app, a).await, 40);
    assert_eq!(embed_all(&app, b).await, 300);
    let admin = app.db.admin().await;
    admin.batch_execute("ANALYZE app.chunks").await.unwrap();

    // 40 chunks >= 20 candidates: the index path serves A, and only A.
    let got = search_as(&app, a, question, 5, None, 0).await;
    assert_eq!(got.hits.len(), 5, "{got:?}");
    assert!(!got.exact, "the index found enough: no fallback");
    assert!(
        got.hits.iter().all(|h| h.record_key.starts_with("a-")),
        "{got:?}"
    );

    // A dataset with 3 chunks: fewer than the candidates wanted, so the exact scan answers
    // (and still finds all 3).
    app.create_dataset(&token_a, &NOTES.replace("\"notes\"", "\"small\""))
        .await;
    let small_notes = json!([{"key": "s-1", "data": {"body": "Customs held it."}},
                             {"key": "s-2", "data": {"body": "Lisbon was slow."}},
                             {"key": "s-3", "data": {"body": "Delayed shipment."}}]);
    app.ingest(&token_a, "small", &small_notes).await;
    embed_all(&app, a).await;
    let small: uuid::Uuid = admin
        .query_one(
            "SELECT dataset_id FROM app.datasets WHERE tenant_id = $1 AND name = 'small'",
            &[&a.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    let got = search_as(&app, a, question, 5, Some(&[small]), 0).await;
    assert!(got.exact, "a short approximate answer falls back to exact");
    let mut keys: Vec<&str> = got.hits.iter().map(|h| h.record_key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["s-1", "s-2", "s-3"]);
}

//! Retrieval groundwork: chunks follow records, embeddings fill in, and search stays inside the
//! tenant even when another tenant holds the perfect match.

use serde_json::{Value, json};
use tenantry::TenantId;
use tenantry::db::Access;
use tenantry::rag::chunks::embed_pending;
use tenantry::rag::embed::LocalEmbedder;
use tenantry::rag::search::{Hit, search};
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

/// Embeds the tenant's pending chunks (alongside the in-process queue ingest already started,
/// which may hold some of them: SKIP LOCKED) until none are pending; returns how many it has.
async fn embed_all(app: &TestApp, tenant: TenantId) -> i64 {
    let embedder = LocalEmbedder::new(256);
    let admin = app.db.admin().await;
    for _ in 0..200 {
        let mut tx = app
            .app
            .db
            .begin(&as_tenant(tenant), Access::ReadWrite)
            .await
            .unwrap();
        embed_pending(&mut tx, &embedder, 1000).await.unwrap();
        tx.commit().await.unwrap();
        let row = admin
            .query_one(
                "SELECT count(*) FILTER (WHERE embedding IS NULL), count(*) FROM app.chunks WHERE tenant_id = $1",
                &[&tenant.as_uuid()],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 0 {
            return row.get(1);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("chunks stayed pending");
}

async fn ask(app: &TestApp, tenant: TenantId, question: &str, k: usize) -> Vec<Hit> {
    let embedder = LocalEmbedder::new(256);
    let mut tx = app
        .app
        .db
        .begin(&as_tenant(tenant), Access::ReadOnly)
        .await
        .unwrap();
    let hits = search(&mut tx, question, &embedder.vector(question), k, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    hits
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

//! The embedding pipeline's AWS side: ingest → SQS (the real SDK, against moto) → the `embed`
//! function's handler, with partial batch failures, and retrieval still confined to the tenant.

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use serde_json::json;
use tenantry::db::Access;
use tenantry::rag::embed::LocalEmbedder;
use tenantry::rag::queue::{EmbedJob, handle_sqs};
use tenantry::rag::search::{SearchRequest, search};
use tenantry_tests::{Moto, TestApp, as_tenant};

const NOTES: &str = r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}], "text_columns": ["body"]}"#;

#[tokio::test]
async fn ingest_queues_work_and_the_embed_handler_does_it_per_tenant() {
    let moto = Moto::start();
    let (sqs, url) = moto.queue("tenantry-embed").await;
    let app = TestApp::with_sqs(&moto, &url).await;
    let (a, token_a) = app.tenant_with_token("alpha").await;
    let (b, token_b) = app.tenant_with_token("bravo").await;
    let question = "Why was the shipment to Lisbon held by customs?";
    for (token, body) in [
        (&token_a, "Warehouse aisle 7 was recounted on Monday."),
        (&token_b, question),
    ] {
        assert_eq!(
            app.call("POST", "/v1/datasets", token, Some(NOTES))
                .await
                .status,
            201
        );
        let records = json!([{"key": "n1", "data": {"body": body}}]).to_string();
        assert_eq!(
            app.call("POST", "/v1/datasets/notes/records", token, Some(&records))
                .await
                .status,
            200
        );
    }

    let mut event = tenantry_tests::sqs_receive_all(&sqs, &url).await;
    let jobs: Vec<EmbedJob> = event
        .records
        .iter()
        .map(|m| serde_json::from_str(m.body.as_deref().unwrap()).unwrap())
        .collect();
    let mut tenants: Vec<_> = jobs.iter().map(|j| j.tenant_id).collect();
    tenants.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(tenants, expected, "one job per ingest, naming its tenant");

    // A poison message rides along: it must be reported, not swallowed or fatal to the batch.
    let mut poison = SqsMessage::default();
    poison.message_id = Some("poison-1".into());
    poison.body = Some(r#"{"tenant_id": "'; DROP TABLE app.chunks; --"}"#.into());
    event.records.push(poison);
    let response = handle_sqs(&app.app.db, app.app.embedder.as_ref(), event).await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["poison-1"]);

    let admin = app.db.admin().await;
    let pending: i64 = admin
        .query_one(
            "SELECT count(*) FROM app.chunks WHERE embedding IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0);

    // Embedded through the queue, retrieval is still per tenant: B's perfect match stays B's.
    let embedder = LocalEmbedder::new(256);
    let mut tx = app
        .app
        .db
        .begin(&as_tenant(a), Access::ReadOnly)
        .await
        .unwrap();
    let vector = embedder.vector(question);
    let request = SearchRequest {
        question,
        vector: &vector,
        k: 5,
        datasets: None,
        filter: None,
        exact_max_chunks: i64::MAX,
        own_index_ef_search: None,
        min_relevance: 0.0,
    };
    let hits = search(&mut tx, &request).await.unwrap().hits;
    tx.commit().await.unwrap();
    assert_eq!(hits.len(), 1);
    assert!(hits[0].content.contains("aisle 7"), "{hits:?}");
}

#[tokio::test]
async fn the_sample_event_and_a_database_outage_report_exactly_the_failed_messages() {
    let app = TestApp::new().await;
    let event: SqsEvent =
        serde_json::from_str(include_str!("../../events/embed/sqs-batch.json")).unwrap();
    let response = handle_sqs(&app.app.db, app.app.embedder.as_ref(), event.clone()).await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        failed,
        ["2e1424d4-f796-459a-8184-9c92662be6da"],
        "only the malformed message"
    );

    // With the database down, every job fails and says so: SQS will redeliver them.
    let down = tenantry_tests::unreachable_db();
    let response = handle_sqs(&down, app.app.embedder.as_ref(), event).await;
    assert_eq!(response.batch_item_failures.len(), 2);
}

#[tokio::test]
async fn a_lost_embed_message_is_recovered_by_the_scheduled_sweep() {
    let moto = Moto::start();
    let (sqs, url) = moto.queue("tenantry-embed-sweep").await;
    let app = TestApp::with_sqs(&moto, &url).await;
    let (a, token_a) = app.tenant_with_token("alpha").await;
    let (b, token_b) = app.tenant_with_token("bravo").await;
    for token in [&token_a, &token_b] {
        app.create_dataset(token, NOTES).await;
        let note = json!([{"key": "n1", "data": {"body": "Customs held the Lisbon shipment."}}]);
        app.ingest(token, "notes", &note).await;
    }
    // The messages are lost (purged, as if they had expired or gone to the DLQ and been dropped).
    assert_eq!(
        tenantry_tests::sqs_receive_all(&sqs, &url)
            .await
            .records
            .len(),
        2
    );
    sqs.purge_queue().queue_url(&url).send().await.unwrap();
    // A's chunks have waited ten minutes; B's just arrived (an embed job may still be on its way).
    let admin = app.db.admin().await;
    admin
        .execute(
            "UPDATE app.chunks SET created_at = now() - interval '10 minutes' WHERE tenant_id = $1",
            &[&a.as_uuid()],
        )
        .await
        .unwrap();

    let sweep: tenantry::rag::queue::EmbedEvent =
        serde_json::from_str(include_str!("../../events/embed/sweep.json")).unwrap();
    let outcome = tenantry::app::handle_embed_event(&app.app, sweep)
        .await
        .unwrap();
    assert_eq!(outcome, json!({"tenants": 1, "queued": 1, "failed": 0}));
    let event = tenantry_tests::sqs_receive_all(&sqs, &url).await;
    assert_eq!(event.records.len(), 1);
    let job: EmbedJob = serde_json::from_str(event.records[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(job.tenant_id, a, "only the tenant with stale work");

    // The re-queued job, delivered to the function, embeds A's chunks; B's stay for their own job.
    let response = tenantry::app::handle_embed_event(
        &app.app,
        serde_json::from_value(serde_json::to_value(&event).unwrap()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response["batchItemFailures"], json!([]));
    let pending = |t: tenantry::TenantId| {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "SELECT count(*) FROM app.chunks WHERE tenant_id = $1 AND embedding IS NULL",
                    &[&t.as_uuid()],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(pending(a).await, 0);
    assert_eq!(pending(b).await, 1);
    // Nothing stale left: the next sweep finds nothing.
    let again = tenantry::app::handle_embed_event(
        &app.app,
        serde_json::from_value(json!({"sweep": {"older_than_secs": 300}})).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(again["tenants"], 0);
}

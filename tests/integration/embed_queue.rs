//! The embedding pipeline's AWS side: ingest → SQS (the real SDK, against moto) → the `embed`
//! function's handler, with partial batch failures, and retrieval still confined to the tenant.

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use serde_json::json;
use tenantry::db::Access;
use tenantry::rag::embed::LocalEmbedder;
use tenantry::rag::queue::{EmbedJob, handle_sqs};
use tenantry::rag::search::search;
use tenantry_tests::{Moto, TestApp, as_tenant};

const NOTES: &str = r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}], "text_columns": ["body"]}"#;

/// Everything on the queue, as the Lambda event source would deliver it.
async fn receive_all(client: &aws_sdk_sqs::Client, url: &str) -> SqsEvent {
    let out = client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    let mut event = SqsEvent::default();
    for m in out.messages() {
        let mut msg = SqsMessage::default();
        msg.message_id = m.message_id().map(str::to_owned);
        msg.body = m.body().map(str::to_owned);
        msg.event_source = Some("aws:sqs".into());
        event.records.push(msg);
    }
    event
}

#[tokio::test]
async fn ingest_queues_work_and_the_embed_handler_does_it_per_tenant() {
    let moto = Moto::start();
    let sdk = moto.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let url = sqs
        .create_queue()
        .queue_name("tenantry-embed")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
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

    let mut event = receive_all(&sqs, &url).await;
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
    let hits = search(&mut tx, question, &embedder.vector(question), 5, None)
        .await
        .unwrap();
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
    let mut cfg = tenantry::config::DbConfig::new(
        format!(
            "postgres://tenantry_app:x@127.0.0.1:{}/x",
            tenantry_tests::free_port()
        ),
        1,
    );
    cfg.connect_timeout = std::time::Duration::from_secs(1);
    let down = tenantry::db::Db::connect(&cfg).unwrap();
    let response = handle_sqs(&down, app.app.embedder.as_ref(), event).await;
    assert_eq!(response.batch_item_failures.len(), 2);
}

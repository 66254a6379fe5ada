//! Ingest is one transaction: records, their chunks and the usage they bill commit together or not
//! at all. Each fault below is injected (a trigger, created as the superuser) at a point after the
//! records are written: as the chunks are written, as the usage is recorded, and at COMMIT itself.
//! After each the tenant's records, chunks and ledger are exactly as before, and the same request
//! retried once the fault is gone succeeds and bills exactly once.

use serde_json::{Value, json};
use tenantry::TenantId;
use tenantry_tests::TestApp;

const NOTES: &str = r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}, {"name": "n", "type": "integer"}], "text_columns": ["body"]}"#;

/// What the tenant has, read as the superuser (bypassing RLS): every record with its version and
/// content, every chunk, and the ledger's ingested-records total.
async fn snapshot(admin: &tokio_postgres::Client, t: TenantId) -> (Vec<String>, Vec<String>, i64) {
    let id = t.as_uuid();
    let records = admin
        .query(
            "SELECT key || '@' || version || ':' || data::text FROM app.records WHERE tenant_id = $1 ORDER BY key",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let chunks = admin
        .query(
            "SELECT record_key || '@' || record_version || '#' || chunk_no || ':' || content \
             FROM app.chunks WHERE tenant_id = $1 ORDER BY 1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let billed: i64 = admin
        .query_one(
            "SELECT coalesce(sum(quantity), 0)::bigint FROM app.usage_events \
             WHERE tenant_id = $1 AND meter = 'ingested_records'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    (records, chunks, billed)
}

/// A fault at each point after the records are written; `DROP` undoes it.
const FAULTS: &[(&str, &str)] = &[
    (
        "while writing chunks",
        "CREATE TRIGGER fault BEFORE INSERT ON app.chunks FOR EACH STATEMENT EXECUTE FUNCTION public.injected_fault();
         -- DROP: DROP TRIGGER fault ON app.chunks",
    ),
    (
        "while recording usage",
        "CREATE TRIGGER fault BEFORE INSERT ON app.usage_events FOR EACH STATEMENT EXECUTE FUNCTION public.injected_fault();
         -- DROP: DROP TRIGGER fault ON app.usage_events",
    ),
    (
        "at commit",
        "CREATE CONSTRAINT TRIGGER fault AFTER INSERT OR UPDATE ON app.records DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION public.injected_fault();
         -- DROP: DROP TRIGGER fault ON app.records",
    ),
];

#[tokio::test]
async fn a_fault_after_the_records_are_written_leaves_nothing_behind() {
    let app = TestApp::new().await;
    let admin = app.db.admin().await;
    admin
        .batch_execute(
            "CREATE FUNCTION public.injected_fault() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'injected fault' USING ERRCODE = 'XX000'; END $$",
        )
        .await
        .unwrap();
    let (t, token) = app.tenant_with_token("alpha").await;
    app.create_dataset(&token, NOTES).await;
    // An existing record, so each faulty batch both updates and inserts.
    app.ingest(
        &token,
        "notes",
        &json!([{"key": "old", "data": {"body": "The first note.", "n": 1}}]),
    )
    .await;

    for (i, (name, fault)) in FAULTS.iter().enumerate() {
        let batch: Value = json!([
            {"key": "old", "data": {"body": format!("The first note, revised {i}."), "n": 2 + i}},
            {"key": format!("new-{i}"), "data": {"body": "A note that arrives with a fault.", "n": 10}},
        ]);
        let before = snapshot(&admin, t).await;
        let (create, drop) = fault.split_once("-- DROP:").unwrap();
        admin.batch_execute(create).await.unwrap();

        let path = "/v1/datasets/notes/records";
        let r = app
            .call("POST", path, &token, Some(&batch.to_string()))
            .await;
        assert!(
            r.status >= 500 && r.json["code"].is_string(),
            "{name}: {} {}",
            r.status,
            r.json
        );
        assert!(
            !r.json.to_string().contains("injected"),
            "{name}: a 5xx says something internal: {}",
            r.json
        );
        assert_eq!(snapshot(&admin, t).await, before, "{name}: a partial write");

        admin.batch_execute(drop).await.unwrap();
        let r = app
            .call("POST", path, &token, Some(&batch.to_string()))
            .await;
        assert_eq!(r.status, 200, "{name}: {}", r.json);
        assert_eq!(
            (&r.json["result"]["inserted"], &r.json["result"]["updated"]),
            (&json!(1), &json!(1)),
            "{name}"
        );
        let after = snapshot(&admin, t).await;
        assert_eq!(after.2, before.2 + 2, "{name}: billed other than once");
        assert!(
            after
                .1
                .iter()
                .any(|c| c.starts_with(&format!("new-{i}@1#"))),
            "{name}: no chunk for the new record: {:?}",
            after.1
        );
        // A retry of the retry changes nothing and bills nothing.
        let r = app
            .call("POST", path, &token, Some(&batch.to_string()))
            .await;
        assert_eq!(r.json["result"]["unchanged"], 2, "{name}: {}", r.json);
        assert_eq!(snapshot(&admin, t).await, after, "{name}");
    }
}

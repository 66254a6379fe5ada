//! Questions about figures through `POST /v1/ask`: planned as queries in the query language,
//! run under the tenant's RLS, answered with figures from the result (checked against it), the
//! executed query re-runnable through `POST /v1/query`, and refusals when the data cannot
//! answer. With Bedrock (the local test server answering with real-shaped `toolUse` blocks),
//! whatever the model plans is validated before it runs.

use chrono::{Datelike, Duration, TimeZone, Utc};
use serde_json::{Value, json};
use tenantry::analytics::planner::{format_number, query_language_schema};
use tenantry_tests::{BedrockStub, TestApp};

const SALES: &str = r#"{"name": "sales", "columns": [
  {"name": "region", "type": "string"}, {"name": "product", "type": "string"},
  {"name": "amount", "type": "number"}, {"name": "qty", "type": "integer"},
  {"name": "paid", "type": "boolean"}, {"name": "note", "type": "string"},
  {"name": "sold_at", "type": "timestamp"}],
  "text_columns": ["note"], "time_column": "sold_at"}"#;

struct Row {
    key: String,
    region: &'static str,
    product: &'static str,
    amount: f64,
    qty: i64,
    last_month: bool,
}

/// 60 sales: 40 in the previous calendar month, 20 long before; two of them gizmos.
fn rows() -> Vec<Row> {
    (0..60)
        .map(|i| Row {
            key: format!("s-{i:03}"),
            region: ["EU", "US", "APAC"][i % 3],
            product: if i == 7 || i == 30 {
                "gizmo"
            } else {
                ["widget", "gadget"][i % 2]
            },
            amount: ((i * 7919) % 50_000) as f64 / 100.0,
            qty: 1 + (i % 5) as i64,
            last_month: i < 40,
        })
        .collect()
}

fn previous_month() -> (chrono::DateTime<Utc>, chrono::DateTime<Utc>) {
    let now = Utc::now();
    let this = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap();
    let prev = this.checked_sub_months(chrono::Months::new(1)).unwrap();
    (prev, this)
}

async fn seed(app: &TestApp, token: &str) {
    assert_eq!(
        app.call("POST", "/v1/datasets", token, Some(SALES))
            .await
            .status,
        201
    );
    let (prev, _) = previous_month();
    let records: Vec<Value> = rows()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = if r.last_month {
                prev + Duration::hours(i as i64 * 7)
            } else {
                prev - Duration::days(400 + i as i64)
            };
            json!({"key": r.key, "data": {"region": r.region, "product": r.product,
                "amount": r.amount, "qty": r.qty, "paid": i % 4 != 0,
                "note": if r.product == "gizmo" {
                    "The gizmo was returned because its hinge arrived broken.".to_owned()
                } else {
                    format!("Sale {i} to a customer in {}.", r.region)
                },
                "sold_at": at.to_rfc3339()}})
        })
        .collect();
    let r = app
        .call(
            "POST",
            "/v1/datasets/sales/records",
            token,
            Some(&Value::from(records).to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
}

async fn ask(app: &TestApp, token: &str, question: &str) -> Value {
    let r = app
        .call(
            "POST",
            "/v1/ask",
            token,
            Some(&json!({ "question": question }).to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{question}: {}", r.json);
    r.json
}

async fn questions_metered(app: &TestApp, tenant: tenantry::TenantId) -> i64 {
    app.db
        .admin()
        .await
        .query_one(
            "SELECT coalesce(sum(quantity), 0)::int8 FROM app.usage_events \
             WHERE tenant_id = $1 AND meter = 'questions'",
            &[&tenant.as_uuid()],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn figures_come_from_a_planned_query_that_reruns_and_matches_the_data() {
    let app = TestApp::new().await;
    let (alpha, a) = app.tenant_with_token("alpha").await;
    let (_, b) = app.tenant_with_token("bravo").await;
    seed(&app, &a).await;
    // Bravo has a dataset of the same name, with a region Alpha does not have and huge sums.
    assert_eq!(
        app.call("POST", "/v1/datasets", &b, Some(SALES))
            .await
            .status,
        201
    );
    let (prev, _) = previous_month();
    let theirs = json!([{"key": "b1", "data": {"region": "MARS", "product": "widget", "amount": 1e9,
        "qty": 1000, "paid": true, "note": "x", "sold_at": (prev + Duration::hours(1)).to_rfc3339()}},
        {"key": "b2", "data": {"region": "EU", "product": "widget", "amount": 1e9,
        "qty": 1000, "paid": true, "note": "x", "sold_at": (prev + Duration::hours(1)).to_rfc3339()}}]);
    assert_eq!(
        app.call(
            "POST",
            "/v1/datasets/sales/records",
            &b,
            Some(&theirs.to_string())
        )
        .await
        .status,
        200
    );

    let r = ask(&app, &a, "What was the total amount by region last month?").await;
    assert_eq!(r["kind"], "figures", "{r}");
    assert_eq!(r["planner"], "local-planner-v1");
    assert_eq!(r["model"], "local-template-v1");
    let (from, to) = previous_month();
    let stamp = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let query = &r["queries"][0]["query"];
    assert_eq!(
        *query,
        json!({"dataset": "sales", "group_by": ["region"],
               "aggregates": [{"fn": "sum", "column": "amount"}],
               "time_range": {"from": stamp(from), "to": stamp(to)}})
    );
    // The figures are the data's, to the cent, and only Alpha's.
    let mut expected: Vec<(String, f64)> = Vec::new();
    for region in ["APAC", "EU", "US"] {
        let sum: f64 = rows()
            .iter()
            .filter(|x| x.last_month && x.region == region)
            .map(|x| x.amount)
            .sum();
        expected.push((region.to_owned(), sum));
    }
    let result = &r["queries"][0]["result"];
    assert_eq!(result["row_count"], 3, "{result}");
    for (row, (region, sum)) in result["rows"].as_array().unwrap().iter().zip(&expected) {
        assert_eq!(row[0], *region);
        assert!(
            (row[1].as_f64().unwrap() - sum).abs() < 0.005,
            "{row} vs {sum}"
        );
        let figure = format_number(*sum);
        assert!(
            r["answer"]
                .as_str()
                .unwrap()
                .contains(&format!("{region}: {figure}")),
            "{} lacks {region}: {figure}",
            r["answer"]
        );
    }
    // Re-runnable as is, with the same result.
    let rerun = app
        .call("POST", "/v1/query", &a, Some(&query.to_string()))
        .await;
    assert_eq!(rerun.status, 200, "{}", rerun.json);
    assert_eq!(rerun.json, *result);
    // Forty records stand behind these figures: too many to cite.
    assert_eq!(r["citations"], json!([]));

    // Figures resting on two records cite exactly those, at their versions.
    let r = ask(&app, &a, "What was the total amount for gizmo?").await;
    assert_eq!(r["kind"], "figures", "{r}");
    let keys: Vec<&str> = r["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["record_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["s-007", "s-030"], "{r}");
    for c in r["citations"].as_array().unwrap() {
        let rec = app
            .call(
                "GET",
                &format!(
                    "/v1/datasets/sales/records/{}",
                    c["record_key"].as_str().unwrap()
                ),
                &a,
                None,
            )
            .await;
        assert_eq!(
            rec.json["record"]["version"], c["record_version"],
            "{}",
            rec.json
        );
        assert!(
            c["snippet"].as_str().unwrap().contains("product: gizmo"),
            "{c}"
        );
    }
    let gizmo: f64 = rows()
        .iter()
        .filter(|x| x.product == "gizmo")
        .map(|x| x.amount)
        .sum();
    assert!(
        r["answer"]
            .as_str()
            .unwrap()
            .contains(&format_number(gizmo)),
        "{r}"
    );

    // Figures and the reasons the records give: both, each cited (once the in-process embedding
    // queued by ingest has caught up).
    let admin = app.db.admin().await;
    for _ in 0..200 {
        let pending: i64 = admin
            .query_one(
                "SELECT count(*) FROM app.chunks WHERE embedding IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let r = ask(
        &app,
        &a,
        "What was the total amount for gizmo, and why were gizmos returned?",
    )
    .await;
    assert_eq!(r["kind"], "both", "{r}");
    let answer = r["answer"].as_str().unwrap();
    assert!(
        answer.contains(&format_number(gizmo)) && answer.contains("hinge arrived broken"),
        "{r}"
    );
    let labels: Vec<(&str, &str)> = r["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["label"].as_str().unwrap(),
                c["record_key"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        labels.contains(&("R1", "s-007")) && labels.contains(&("R2", "s-030")),
        "{r}"
    );
    assert!(
        labels
            .iter()
            .any(|(l, k)| l.starts_with('S') && ["s-007", "s-030"].contains(k)),
        "{r}"
    );
    assert!(r["retrieval"].is_object(), "{r}");

    // Rankings and counts.
    let r = ask(&app, &a, "Which product sold the most units?").await;
    let mut units: std::collections::BTreeMap<&str, i64> = Default::default();
    for x in rows() {
        *units.entry(x.product).or_default() += x.qty;
    }
    let (best, n) = units.iter().max_by_key(|(_, n)| **n).unwrap();
    assert_eq!(r["queries"][0]["result"]["rows"], json!([[best, n]]), "{r}");
    let r = ask(&app, &a, "How many sales were unpaid?").await;
    assert_eq!(r["queries"][0]["result"]["rows"], json!([[15]]), "{r}");

    // What the data does not hold is refused with the reason, citing nothing; Bravo's region
    // is unknown to Alpha's planner (its profile is read under Alpha's RLS).
    for (question, why) in [
        ("What was the total profit last month?", "no column"),
        ("What did EMEA bring in last month?", "EMEA"),
        ("What did MARS bring in last month?", "MARS"),
        ("total amount over 100", "comparisons"),
    ] {
        let r = ask(&app, &a, question).await;
        assert_eq!(r["kind"], "none", "{question}: {r}");
        assert_eq!(r["answer"], "I can't answer that from your data.", "{r}");
        assert_eq!(r["citations"], json!([]));
        assert!(r.get("queries").is_none(), "{r}");
        assert!(
            r["reason"].as_str().unwrap().contains(why),
            "{question}: {r}"
        );
    }
    // Every question is metered once, whichever path answered it.
    assert_eq!(questions_metered(&app, alpha).await, 9);
}

#[tokio::test]
async fn what_a_model_plans_is_validated_before_it_runs_and_its_figures_checked() {
    let stub = BedrockStub::start().await;
    let app = TestApp::with_bedrock(&stub).await;
    let (_, a) = app.tenant_with_token("alpha").await;
    let (_, b) = app.tenant_with_token("bravo").await;
    seed(&app, &a).await;
    assert_eq!(
        app.call(
            "POST",
            "/v1/datasets",
            &b,
            Some(r#"{"name": "bravo_secrets", "columns": [{"name": "x", "type": "number"}]}"#)
        )
        .await
        .status,
        201
    );
    let total: f64 = rows().iter().map(|x| x.amount).sum();
    let sum_all = json!({"dataset": "sales", "aggregates": [{"fn": "sum", "column": "amount"}]});

    // A valid plan runs; a figure the result does not hold sends the template instead.
    stub.plan_with(vec![BedrockStub::tool_use(sum_all.clone())]);
    stub.reply_with("Your total is 999999.99, up 12% on last year.");
    let r = ask(&app, &a, "How much did we sell in all?").await;
    assert_eq!(r["kind"], "figures", "{r}");
    assert_eq!(r["planner"], "amazon.nova-pro-v1:0");
    assert_eq!(r["queries"][0]["query"], sum_all);
    assert_eq!(r["model"], "local-template-v1", "{r}");
    assert_eq!(r["dropped_figures"], 2, "999999.99 and 12: {r}");
    assert!(!r["answer"].as_str().unwrap().contains("999999"));
    assert!(
        r["answer"]
            .as_str()
            .unwrap()
            .contains(&format_number(total)),
        "{r}"
    );

    // The planner call: the tool's schema is the query language, the datasets are data.
    let (path, body) = stub
        .requests()
        .into_iter()
        .find(|(_, b)| b.get("toolConfig").is_some())
        .unwrap();
    assert_eq!(path, "/model/amazon.nova-pro-v1%3A0/converse");
    let spec = &body["toolConfig"]["tools"][0]["toolSpec"];
    assert_eq!(spec["name"], "run_query");
    assert_eq!(spec["inputSchema"]["json"], query_language_schema());
    let system = body["system"][0]["text"].as_str().unwrap();
    assert!(
        system.contains(r#""name":"region","type":"string","values":["#),
        "{system}"
    );
    assert!(
        !system.contains("bravo_secrets"),
        "another tenant's dataset in the prompt"
    );
    assert_eq!(
        body["messages"][0]["content"][0]["text"],
        "Question: How much did we sell in all?"
    );

    // Figures that are the result's are the model's answer.
    let figure = format_number(total);
    stub.reply_with(&format!(
        "You sold {figure} in all. See https://evil.example/x"
    ));
    let r = ask(&app, &a, "How much did we sell in all?").await;
    assert_eq!(r["model"], "amazon.nova-lite-v1:0", "{r}");
    assert_eq!(r["dropped_figures"], 0, "{r}");
    assert!(
        r["answer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("You sold {figure} in all"))
    );
    assert!(!r["answer"].as_str().unwrap().contains("evil"), "{r}");

    // Plans that do not fit are refused, not run: an unknown column, SQL in a column name, a
    // member the language does not have, another tenant's dataset, another tool.
    let admin = app.db.admin().await;
    let count = || async {
        admin
            .query_one("SELECT count(*) FROM app.records", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = count().await;
    for bad in [
        BedrockStub::tool_use(
            json!({"dataset": "sales", "aggregates": [{"fn": "sum", "column": "profit"}]}),
        ),
        BedrockStub::tool_use(
            json!({"dataset": "sales", "filter": {"column": "region'; DROP TABLE app.records; --", "op": "eq", "value": "EU"}}),
        ),
        BedrockStub::tool_use(json!({"dataset": "sales", "sql": "SELECT * FROM app.tenants"})),
        BedrockStub::tool_use(
            json!({"dataset": "bravo_secrets", "aggregates": [{"fn": "sum", "column": "x"}]}),
        ),
        BedrockStub::tool_use(json!({"dataset": "sales); DELETE FROM app.records; --"})),
        json!({"toolUse": {"toolUseId": "t9", "name": "run_sql", "input": {"sql": "DELETE FROM app.records"}}}),
    ] {
        stub.plan_with(vec![bad.clone()]);
        let r = ask(&app, &a, "total amount please").await;
        assert_eq!(r["kind"], "none", "{bad}: {r}");
        assert_eq!(r["rejected_plans"], 1, "{bad}: {r}");
        assert_eq!(r["answer"], "I can't answer that from your data.");
        assert!(r.get("queries").is_none(), "{r}");
    }
    assert_eq!(count().await, before);

    // What the request names is checked before any model is paid for.
    let calls = stub.requests().len();
    let many: Vec<String> = (0..21).map(|i| format!("d{i}")).collect();
    for (body, status, code) in [
        (
            json!({"question": "q?", "datasets": many}),
            400,
            "too_many_datasets",
        ),
        (
            json!({"question": "q?", "datasets": ["nope"]}),
            404,
            "dataset_not_found",
        ),
        (
            json!({"question": "q?", "datasets": ["bravo_secrets"]}),
            404,
            "dataset_not_found",
        ),
        (
            json!({"question": "q?", "datasets": ["sales"], "filters": {"column": "nope", "op": "eq", "value": 1}}),
            400,
            "invalid_filters",
        ),
        (json!({"question": "q?", "k": 0}), 400, "invalid_k"),
    ] {
        let r = app
            .call("POST", "/v1/ask", &a, Some(&body.to_string()))
            .await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (status, Some(code)),
            "{body}: {}",
            r.json
        );
    }
    assert_eq!(
        stub.requests().len(),
        calls,
        "a model was called for a refused request"
    );

    // No tool call: a question about content, answered by retrieval.
    stub.plan_with(vec![json!({"text": "This is about what customers said."})]);
    stub.reply_with("A customer in EU bought it [S1].");
    let r = ask(&app, &a, "What did the customer in EU buy?").await;
    assert!(r["retrieval"].is_object(), "{r}");
    assert!(r.get("queries").is_none(), "{r}");

    // CANNOT: figures the data does not hold are refused, not sent to retrieval, and the
    // model's words are not passed on.
    stub.plan_with(vec![
        json!({"text": "CANNOT (there is no profit column; revenue was 5)"}),
    ]);
    let calls = stub.requests().len();
    let r = ask(&app, &a, "What was our profit margin?").await;
    assert_eq!(r["kind"], "none", "{r}");
    assert_eq!(r["answer"], "I can't answer that from your data.");
    assert!(r.get("retrieval").is_none(), "{r}");
    assert!(!r["reason"].as_str().unwrap().contains('5'), "{r}");
    assert_eq!(
        stub.requests().len(),
        calls + 1,
        "only the planner was called"
    );

    // Figures whose reasons cannot be looked up (the embedder refuses the question) still
    // stand, with a notice.
    stub.plan_with(vec![BedrockStub::tool_use(sum_all.clone())]);
    stub.reply_with(&format!("You sold {figure} in all."));
    let r = ask(
        &app,
        &a,
        "How much did we sell, and why? force-validation-error",
    )
    .await;
    assert_eq!(r["kind"], "figures", "{r}");
    assert_eq!(r["answer"], format!("You sold {figure} in all."), "{r}");
    assert!(
        r["notice"].as_str().unwrap().contains("only the figures"),
        "{r}"
    );

    // A planner that fails does not take the question down: retrieval answers, and says so.
    stub.plan_with(vec![json!({"error": "ValidationException"})]);
    let r = ask(&app, &a, "What did the customer in EU buy?").await;
    assert!(r["retrieval"].is_object(), "{r}");
    assert!(
        r["notice"]
            .as_str()
            .unwrap()
            .contains("Planning queries is unavailable"),
        "{r}"
    );
}

/// A statement of /v1/ask's own that the server cancels (here the profile read, waiting on a
/// lock) is a 503 `database_busy`; only a planned query past its limit is the caller's 422.
#[tokio::test]
async fn a_cancelled_profile_read_is_503_not_the_callers_query_timeout() {
    let app = TestApp::new().await;
    let (_, a) = app.tenant_with_token("alpha").await;
    seed(&app, &a).await;
    let mut locker = app.db.admin().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE app.records IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let request = async {
        app.call(
            "POST",
            "/v1/ask",
            &a,
            Some(&json!({"question": "What was the total amount?"}).to_string()),
        )
        .await
    };
    let killer = async {
        let admin = app.db.admin().await;
        loop {
            admin
                .execute(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
                     WHERE usename = 'tenantry_app' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    let r = tokio::select! {
        r = request => r,
        () = killer => unreachable!(),
    };
    lock.rollback().await.unwrap();
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (503, Some("database_busy")),
        "{}",
        r.json
    );
}

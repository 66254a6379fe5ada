//! The analytics API through the edge (as Lambda runs it), against real Postgres: datasets,
//! ingest, queries with known answers, and every kind of bad input.

use chrono::{DateTime, Duration as Days, TimeZone, Utc};
use serde_json::{Value, json};
use tenantry_tests::{Reply, TestApp, gateway_event};

const ORDERS: &str = r#"{
  "name": "orders",
  "columns": [
    {"name": "region", "type": "string", "required": true},
    {"name": "product", "type": "string"},
    {"name": "qty", "type": "integer"},
    {"name": "amount", "type": "number"},
    {"name": "paid", "type": "boolean"},
    {"name": "note", "type": "string"},
    {"name": "ordered_at", "type": "timestamp"}
  ],
  "text_columns": ["note"],
  "time_column": "ordered_at"
}"#;

struct Order {
    key: String,
    region: &'static str,
    product: Option<String>,
    qty: i64,
    amount: f64,
    paid: bool,
    at: DateTime<Utc>,
}

fn orders(n: usize) -> Vec<Order> {
    let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    (0..n)
        .map(|i| Order {
            key: format!("o-{i:04}"),
            region: ["EU", "US", "APAC"][i % 3],
            product: (i % 10 != 0).then(|| format!("p{}", i % 5)),
            qty: (i % 7) as i64,
            amount: i as f64 * 1.5,
            paid: i % 2 == 0,
            at: start + Days::hours(6 * i as i64),
        })
        .collect()
}

fn to_json(o: &Order) -> Value {
    json!({"key": o.key, "data": {
        "region": o.region, "product": o.product, "qty": o.qty, "amount": o.amount,
        "paid": o.paid, "note": format!("order {} for {}", o.key, o.region), "ordered_at": o.at.to_rfc3339()
    }})
}

async fn setup(app: &TestApp, token: &str, n: usize) -> Vec<Order> {
    let r = app.call("POST", "/v1/datasets", token, Some(ORDERS)).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let data = orders(n);
    for chunk in data.chunks(200) {
        let body = Value::Array(chunk.iter().map(to_json).collect()).to_string();
        let r = app
            .call("POST", "/v1/datasets/orders/records", token, Some(&body))
            .await;
        assert_eq!(r.status, 200, "{}", r.json);
    }
    data
}

/// Posts a JSON array of records to a dataset.
async fn ingest(app: &TestApp, token: &str, dataset: &str, records: &[Value]) -> Reply {
    let body = Value::Array(records.to_vec()).to_string();
    app.call(
        "POST",
        &format!("/v1/datasets/{dataset}/records"),
        token,
        Some(&body),
    )
    .await
}

async fn query(app: &TestApp, token: &str, q: Value) -> Reply {
    app.call("POST", "/v1/query", token, Some(&q.to_string()))
        .await
}

async fn count(app: &TestApp, token: &str, filter: Value) -> i64 {
    let r = query(
        app,
        token,
        json!({"dataset": "orders", "filter": filter, "aggregates": [{"fn": "count"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    r.json["rows"][0][0].as_i64().unwrap()
}

#[tokio::test]
async fn datasets_can_be_created_listed_fetched_and_deleted() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    let r = app.call("POST", "/v1/datasets", &token, Some(ORDERS)).await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.headers["location"], "/v1/datasets/orders");
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json["time_column"], "ordered_at");
    assert_eq!(r.json["columns"].as_array().unwrap().len(), 7);

    let dup = app.call("POST", "/v1/datasets", &token, Some(ORDERS)).await;
    assert_eq!(
        (dup.status, dup.json["code"].as_str()),
        (409, Some("dataset_exists"))
    );

    let list = app.call("GET", "/v1/datasets", &token, None).await;
    assert_eq!(list.json["datasets"][0]["name"], "orders");
    let by_id = app
        .call("GET", &format!("/v1/datasets/{id}"), &token, None)
        .await;
    assert_eq!(by_id.json["name"], "orders");
    let by_name = app.call("GET", "/v1/datasets/orders", &token, None).await;
    assert_eq!(by_name.json["id"], id.as_str());

    let del = app
        .call("DELETE", "/v1/datasets/orders", &token, None)
        .await;
    assert_eq!(del.status, 204);
    let gone = app
        .call("GET", &format!("/v1/datasets/{id}"), &token, None)
        .await;
    assert_eq!(
        (gone.status, gone.json["code"].as_str()),
        (404, Some("dataset_not_found"))
    );
}

#[tokio::test]
async fn ingest_is_idempotent_by_key_and_versions_changes() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    let data = setup(&app, &token, 10).await;
    let batch: Vec<Value> = data.iter().take(3).map(to_json).collect();
    let body = Value::Array(batch.clone()).to_string();

    // A retry of the same batch changes nothing.
    let again = app
        .call("POST", "/v1/datasets/orders/records", &token, Some(&body))
        .await;
    assert_eq!(
        again.json["result"],
        json!({"received": 3, "inserted": 0, "updated": 0, "unchanged": 3})
    );

    // New content under an existing key bumps that record's version only.
    let mut changed = batch.clone();
    changed[1]["data"]["amount"] = json!(999.5);
    let r = app
        .call(
            "POST",
            "/v1/datasets/orders/records",
            &token,
            Some(&Value::Array(changed).to_string()),
        )
        .await;
    assert_eq!(
        r.json["result"],
        json!({"received": 3, "inserted": 0, "updated": 1, "unchanged": 2})
    );
    let rec = app
        .call("GET", "/v1/datasets/orders/records/o-0001", &token, None)
        .await;
    assert_eq!(rec.json["record"]["version"], 2);
    assert_eq!(rec.json["record"]["data"]["amount"], 999.5);
    let rec = app
        .call("GET", "/v1/datasets/orders/records/o-0000", &token, None)
        .await;
    assert_eq!(rec.json["record"]["version"], 1);
    // Timestamps are stored normalized to UTC.
    assert_eq!(
        rec.json["record"]["data"]["ordered_at"],
        "2026-11-01T00:00:00Z"
    );

    // NDJSON, with odd keys that must survive the path round trip.
    let ndjson = "{\"key\": \"a/b c?\", \"data\": {\"region\": \"EU\"}}\n\n{\"key\": \"ü-ключ\", \"data\": {\"region\": \"US\"}}\n";
    let req = gateway_event(
        "POST",
        "/v1/datasets/orders/records",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/x-ndjson"),
        ],
        Some(ndjson),
    );
    let r = app.send(req).await;
    assert_eq!(r.json["result"]["inserted"], 2, "{}", r.json);
    let rec = app
        .call(
            "GET",
            "/v1/datasets/orders/records/a%2Fb%20c%3F",
            &token,
            None,
        )
        .await;
    assert_eq!(rec.json["record"]["key"], "a/b c?");
    let rec = app
        .call(
            "GET",
            "/v1/datasets/orders/records/%C3%BC-%D0%BA%D0%BB%D1%8E%D1%87",
            &token,
            None,
        )
        .await;
    assert_eq!(rec.json["record"]["data"]["region"], "US");

    let del = app
        .call("DELETE", "/v1/datasets/orders/records/o-0002", &token, None)
        .await;
    assert_eq!(del.status, 204);
    let del = app
        .call("DELETE", "/v1/datasets/orders/records/o-0002", &token, None)
        .await;
    assert_eq!(
        (del.status, del.json["code"].as_str()),
        (404, Some("record_not_found"))
    );
}

#[tokio::test]
async fn an_invalid_batch_is_refused_whole_with_every_problem_listed() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    setup(&app, &token, 0).await;
    let body = json!([
        {"key": "good-1", "data": {"region": "EU", "amount": 1.0}},
        {"key": "bad-1", "data": {"region": "EU", "amount": "lots"}},
        {"key": "good-2", "data": {"region": "US"}},
        {"key": "bad-2", "data": {"amount": 2, "region'; DROP TABLE app.records; --": "x"}},
        {"key": "bad-3", "data": {"region": "EU", "ordered_at": "last tuesday"}}
    ])
    .to_string();
    let r = app
        .call("POST", "/v1/datasets/orders/records", &token, Some(&body))
        .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (400, Some("invalid_records"))
    );
    let errors: Vec<(u64, &str, &str, &str)> = r.json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["key"].as_str().unwrap(),
                e["column"].as_str().unwrap(),
                e["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, "bad-1", "amount", "type_mismatch"),
            (
                3,
                "bad-2",
                "region'; DROP TABLE app.records; --",
                "unknown_column"
            ),
            (3, "bad-2", "region", "required"),
            (4, "bad-3", "ordered_at", "invalid_timestamp"),
        ]
    );
    // Nothing was written, not even the good records.
    let rows = query(&app, &token, json!({"dataset": "orders"})).await;
    assert_eq!(rows.json["row_count"], 0);
}

#[tokio::test]
async fn queries_return_the_right_answers() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    let data = setup(&app, &token, 240).await;

    let expect = |f: &dyn Fn(&Order) -> bool| data.iter().filter(|o| f(o)).count() as i64;
    let cases: Vec<(Value, i64)> = vec![
        (
            json!({"and": [{"column": "region", "op": "eq", "value": "EU"}, {"column": "paid", "op": "eq", "value": true}]}),
            expect(&|o| o.region == "EU" && o.paid),
        ),
        (
            json!({"column": "region", "op": "ne", "value": "EU"}),
            expect(&|o| o.region != "EU"),
        ),
        (
            json!({"or": [{"column": "qty", "op": "lt", "value": 2}, {"column": "qty", "op": "gte", "value": 6}]}),
            expect(&|o| o.qty < 2 || o.qty >= 6),
        ),
        (
            json!({"column": "qty", "op": "lte", "value": 3}),
            expect(&|o| o.qty <= 3),
        ),
        (
            json!({"column": "amount", "op": "gt", "value": 100}),
            expect(&|o| o.amount > 100.0),
        ),
        (
            json!({"column": "product", "op": "in", "value": ["p1", "p3"]}),
            expect(&|o| matches!(o.product.as_deref(), Some("p1" | "p3"))),
        ),
        (
            json!({"column": "amount", "op": "between", "value": [10, 20.5]}),
            expect(&|o| (10.0..=20.5).contains(&o.amount)),
        ),
        (
            json!({"column": "note", "op": "contains", "value": "for AP"}),
            expect(&|o| o.region == "APAC"),
        ),
        (json!({"column": "note", "op": "contains", "value": "%"}), 0),
        (
            json!({"column": "product", "op": "is_null"}),
            expect(&|o| o.product.is_none()),
        ),
        (
            json!({"column": "product", "op": "is_null", "value": false}),
            expect(&|o| o.product.is_some()),
        ),
        (
            json!({"not": {"column": "region", "op": "in", "value": ["EU", "US"]}}),
            expect(&|o| o.region == "APAC"),
        ),
        (
            json!({"column": "ordered_at", "op": "gte", "value": "2026-11-20T00:00:00+02:00"}),
            expect(&|o| o.at >= Utc.with_ymd_and_hms(2026, 11, 19, 22, 0, 0).unwrap()),
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            count(&app, &token, filter.clone()).await,
            expected,
            "{filter}"
        );
    }

    // Sum per day over a time range.
    let from = Utc.with_ymd_and_hms(2026, 11, 3, 0, 0, 0).unwrap();
    let to = Utc.with_ymd_and_hms(2026, 11, 10, 0, 0, 0).unwrap();
    let r = query(
        &app,
        &token,
        json!({
            "dataset": "orders",
            "group_by": [{"column": "ordered_at", "bucket": "day", "as": "day"}],
            "aggregates": [{"fn": "sum", "column": "amount", "as": "total"}, {"fn": "count"}],
            "time_range": {"from": from.to_rfc3339(), "to": to.to_rfc3339()}
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        r.json["columns"],
        json!([{"name": "day", "type": "timestamp"}, {"name": "total", "type": "number"}, {"name": "count", "type": "integer"}])
    );
    let rows = r.json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7);
    for (i, row) in rows.iter().enumerate() {
        let day = from + Days::days(i as i64);
        let in_day: Vec<&Order> = data
            .iter()
            .filter(|o| o.at >= day && o.at < day + Days::days(1))
            .collect();
        assert_eq!(
            row[0],
            json!(day.format("%Y-%m-%dT%H:%M:%S+00:00").to_string())
        );
        assert_eq!(
            row[1].as_f64().unwrap(),
            in_day.iter().map(|o| o.amount).sum::<f64>()
        );
        assert_eq!(row[2], json!(in_day.len()));
    }

    // Top 3 products by total amount.
    let r = query(&app, &token, json!({
        "dataset": "orders", "group_by": ["product"],
        "aggregates": [{"fn": "sum", "column": "amount", "as": "total"}, {"fn": "max", "column": "qty"}],
        "order_by": [{"by": "total", "dir": "desc"}], "limit": 3
    })).await;
    let mut totals: std::collections::BTreeMap<Option<String>, f64> = Default::default();
    for o in &data {
        *totals.entry(o.product.clone()).or_default() += o.amount;
    }
    let mut ranked: Vec<(Option<String>, f64)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let got: Vec<(Value, f64)> = r.json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row[0].clone(), row[1].as_f64().unwrap()))
        .collect();
    let want: Vec<(Value, f64)> = ranked.iter().take(3).map(|(p, t)| (json!(p), *t)).collect();
    assert_eq!(got, want);
    assert_eq!(r.json["truncated"], true);

    // Median, distinct count, integer sum, min and max timestamps.
    let r = query(
        &app,
        &token,
        json!({"dataset": "orders", "aggregates": [
            {"fn": "percentile", "column": "amount", "p": 0.5},
            {"fn": "count_distinct", "column": "product"},
            {"fn": "sum", "column": "qty"},
            {"fn": "avg", "column": "qty"},
            {"fn": "min", "column": "ordered_at"},
            {"fn": "max", "column": "region"}
        ]}),
    )
    .await;
    let mut amounts: Vec<f64> = data.iter().map(|o| o.amount).collect();
    amounts.sort_by(f64::total_cmp);
    let mid = (amounts[119] + amounts[120]) / 2.0;
    let row = &r.json["rows"][0];
    assert_eq!(row[0].as_f64().unwrap(), mid);
    assert_eq!(row[1], 5);
    assert_eq!(row[2], json!(data.iter().map(|o| o.qty).sum::<i64>()));
    assert!(
        (row[3].as_f64().unwrap() - data.iter().map(|o| o.qty as f64).sum::<f64>() / 240.0).abs()
            < 1e-9
    );
    assert_eq!(row[4], "2026-11-01T00:00:00+00:00");
    assert_eq!(row[5], "US");
    assert_eq!(r.json["columns"][0]["name"], "p50_amount");

    // Rows, newest first, a selection of columns.
    let r = query(
        &app,
        &token,
        json!({"dataset": "orders", "select": ["region", "amount"],
        "order_by": [{"by": "ordered_at", "dir": "desc"}], "limit": 2}),
    )
    .await;
    assert_eq!(
        r.status, 400,
        "ordering by a column that is not an output is refused"
    );
    let r = query(
        &app,
        &token,
        json!({"dataset": "orders", "select": ["region", "amount"],
        "order_by": [{"by": "amount", "dir": "desc"}], "limit": 2}),
    )
    .await;
    let rows: Vec<(String, String, f64)> = r.json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let text = |i: usize| row[i].as_str().unwrap().to_owned();
            (text(0), text(2), row[3].as_f64().unwrap())
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("o-0239".into(), "APAC".into(), 358.5),
            ("o-0238".into(), "US".into(), 357.0)
        ]
    );
    assert_eq!(r.json["truncated"], true);
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    setup(&app, &token, 5).await;
    let ingest = "/v1/datasets/orders/records";
    let big = format!(
        "[{}]",
        vec![r#"{"key":"k","data":{"region":"EU"}}"#; 2000].join(",")
    );
    let too_many = Value::Array(
        (0..501)
            .map(|i| json!({"key": format!("k{i}"), "data": {"region": "EU"}}))
            .collect(),
    )
    .to_string();
    let hostile_dataset = json!({"name": "x\"; DROP TABLE app.records; --", "columns": [{"name": "a", "type": "string"}]}).to_string();
    let hostile_column =
        json!({"name": "evil", "columns": [{"name": "a') OR 1=1 --", "type": "string"}]})
            .to_string();
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        (
            "POST",
            "/v1/datasets",
            Some("{not json"),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/datasets",
            Some(r#"{"name": "x", "columns": "all"}"#),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/datasets",
            Some(r#"{"name": "x", "columns": [], "owner": "root"}"#),
            400,
            "invalid_json",
        ),
        // No body, so no Content-Type: not declared JSON. Declared JSON but empty: not JSON.
        ("POST", "/v1/datasets", None, 415, "unsupported_media_type"),
        ("POST", "/v1/datasets", Some(""), 400, "invalid_json"),
        (
            "POST",
            "/v1/datasets",
            Some(&hostile_dataset),
            400,
            "invalid_dataset",
        ),
        (
            "POST",
            "/v1/datasets",
            Some(&hostile_column),
            400,
            "invalid_dataset",
        ),
        ("POST", ingest, Some("[{"), 400, "invalid_json"),
        ("POST", ingest, Some(r#"{"key": "a"}"#), 400, "invalid_json"),
        ("POST", ingest, Some("[]"), 400, "no_records"),
        ("POST", ingest, Some(&big), 413, "payload_too_large"),
        ("POST", ingest, Some(&too_many), 413, "too_many_records"),
        (
            "POST",
            "/v1/datasets/nope/records",
            Some(r#"[{"key": "a", "data": {"region": "EU"}}]"#),
            404,
            "dataset_not_found",
        ),
        (
            "POST",
            "/v1/datasets/x%27%3B--/records",
            Some(r#"[{"key": "a", "data": {}}]"#),
            404,
            "dataset_not_found",
        ),
        (
            "GET",
            "/v1/datasets/orders/records/none",
            None,
            404,
            "record_not_found",
        ),
        (
            "POST",
            "/v1/query",
            Some(r#"{"dataset": "orders", "limit": "ten"}"#),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/query",
            Some(r#"{"dataset": "orders", "where": "1=1"}"#),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/query",
            Some(r#"{"dataset": "nope"}"#),
            404,
            "dataset_not_found",
        ),
        (
            "POST",
            "/v1/query",
            Some(
                r#"{"dataset": "orders", "filter": {"column": "region; --", "op": "eq", "value": 1}}"#,
            ),
            400,
            "invalid_query",
        ),
        (
            "POST",
            "/v1/query",
            Some(
                r#"{"dataset": "orders", "group_by": ["note"], "aggregates": [{"fn": "sum", "column": "note"}]}"#,
            ),
            400,
            "invalid_query",
        ),
        (
            "POST",
            "/v1/query",
            Some(r#"{"dataset": "orders", "limit": 1000000}"#),
            400,
            "invalid_query",
        ),
        (
            "POST",
            "/v1/query",
            Some(r#"{"dataset": "orders", "aggregates": [{"fn": "median", "column": "amount"}]}"#),
            400,
            "invalid_json",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let r = app.call(method, path, &token, body).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {}",
            r.json
        );
        assert_eq!(r.headers["content-type"], "application/problem+json");
    }
    let req = gateway_event(
        "POST",
        ingest,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "text/csv"),
        ],
        Some("key,region\na,EU"),
    );
    let r = app.send(req).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    // Still exactly the five seeded records, and no dataset but orders.
    let rows = query(&app, &token, json!({"dataset": "orders"})).await;
    assert_eq!(rows.json["row_count"], 5);
    let list = app.call("GET", "/v1/datasets", &token, None).await;
    assert_eq!(list.json["datasets"].as_array().unwrap().len(), 1);

    // Hostile values are data: stored and matched verbatim.
    let nasty = "'; DROP TABLE app.records; -- \u{0}\u{202e} \"%_\\";
    let body = json!([{"key": nasty.replace('\u{0}', ""), "data": {"region": nasty}}]).to_string();
    let r = app.call("POST", ingest, &token, Some(&body)).await;
    // NUL cannot be stored in Postgres text: a clear refusal, not a 500.
    assert_eq!(
        (r.status, r.json["errors"][0]["reason"].as_str()),
        (400, Some("invalid_string")),
        "{}",
        r.json
    );
    let q = json!({"dataset": "orders", "filter": {"column": "region", "op": "eq", "value": "a\u{0}b"}});
    assert_eq!(query(&app, &token, q).await.status, 400);
    let clean = nasty.replace('\u{0}', "");
    let body = json!([{"key": "hostile", "data": {"region": clean}}]).to_string();
    let r = app.call("POST", ingest, &token, Some(&body)).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        count(
            &app,
            &token,
            json!({"column": "region", "op": "eq", "value": clean})
        )
        .await,
        1
    );
}

#[tokio::test]
async fn another_tenants_dataset_looks_exactly_like_a_missing_one() {
    let app = TestApp::new().await;
    let (_, token_a) = app.tenant_with_token("alpha").await;
    let (_, token_b) = app.tenant_with_token("bravo").await;
    setup(&app, &token_b, 20).await;
    let b_id = app
        .call("GET", "/v1/datasets/orders", &token_b, None)
        .await
        .json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let missing = uuid::Uuid::now_v7().to_string();

    for id in [&b_id, &missing] {
        for (method, path, body) in [
            ("GET", format!("/v1/datasets/{id}"), None),
            ("DELETE", format!("/v1/datasets/{id}"), None),
            (
                "POST",
                format!("/v1/datasets/{id}/records"),
                Some(r#"[{"key": "x", "data": {"region": "EU"}}]"#.to_owned()),
            ),
            ("GET", format!("/v1/datasets/{id}/records/o-0001"), None),
            ("DELETE", format!("/v1/datasets/{id}/records/o-0001"), None),
            (
                "POST",
                "/v1/query".into(),
                Some(json!({"dataset": id}).to_string()),
            ),
        ] {
            let r = app.call(method, &path, &token_a, body.as_deref()).await;
            let mut doc = r.json.clone();
            doc["request_id"] = Value::Null;
            assert_eq!(r.status, 404, "{method} {path}");
            assert_eq!(
                doc,
                json!({"type": "https://tenantry.dev/problems/dataset_not_found", "title": "Not Found",
                "status": 404, "code": "dataset_not_found", "detail": "No such dataset.", "request_id": null})
            );
        }
    }
    // A can have its own "orders"; B's is untouched.
    setup(&app, &token_a, 3).await;
    let b = query(
        &app,
        &token_b,
        json!({"dataset": "orders", "aggregates": [{"fn": "count"}]}),
    )
    .await;
    assert_eq!(b.json["rows"][0][0], 20);
    let a = query(
        &app,
        &token_a,
        json!({"dataset": "orders", "aggregates": [{"fn": "count"}]}),
    )
    .await;
    assert_eq!(a.json["rows"][0][0], 3);
}

#[tokio::test]
async fn a_query_past_its_time_limit_gets_a_clear_error() {
    let mut app = TestApp::new().await;
    let (tenant, token) = app.tenant_with_token("alpha").await;
    setup(&app, &token, 1).await;
    // Enough rows that the query cannot finish in 1 ms (written directly: this is about the limit).
    let admin = app.db.admin().await;
    admin
        .execute(
            "INSERT INTO app.records (tenant_id, dataset_id, key, data, ts, s1, n1)
             SELECT $1, d.dataset_id, 'bulk-' || g, jsonb_build_object('region', 'EU', 'amount', g), now(), 'EU', g
             FROM app.datasets d, generate_series(1, 200000) g WHERE d.tenant_id = $1",
            &[&tenant.as_uuid()],
        )
        .await
        .unwrap();
    let mut config = app.app.config.clone();
    config.analytics.query_timeout = std::time::Duration::from_millis(1);
    app.app = std::sync::Arc::new(tenantry::App::builder(config).build().unwrap());
    // The definition remembered, so the check, the usage event and the query go in one flight:
    // the timeout cancels the query after the event's insert, in the same transaction.
    let ds = read_dataset(&app, tenant, "orders").await;
    remember(&app, tenant, "orders", ds);
    let r = query(&app, &token, json!({"dataset": "orders", "aggregates": [{"fn": "percentile", "column": "amount", "p": 0.9}]})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (422, Some("query_timeout")),
        "{}",
        r.json
    );
    // Its usage was to commit with its answer: a query that did not answer is not billed.
    // (Still remembered: the warm path ran, and its check passed.)
    assert!(app.app.datasets.get(tenant, "orders").is_some());
    let billed = || billed_queries(&admin, tenant);
    assert_eq!(billed().await, 0);
    let mut config = app.app.config.clone();
    config.analytics.query_timeout = std::time::Duration::from_secs(30);
    app.app = std::sync::Arc::new(tenantry::App::builder(config).build().unwrap());
    let r = query(
        &app,
        &token,
        json!({"dataset": "orders", "aggregates": [{"fn": "count", "as": "n"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(billed().await, 1);
}

#[tokio::test]
async fn columns_past_the_typed_slots_and_every_bucket_work() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    // 18 string columns: the last two have no slot and are read from the JSON.
    let mut columns: Vec<Value> = (1..=18)
        .map(|i| json!({"name": format!("c{i}"), "type": "string"}))
        .collect();
    columns.push(json!({"name": "at", "type": "timestamp"}));
    columns.push(json!({"name": "seen", "type": "timestamp"}));
    let spec = json!({"name": "wide", "columns": columns, "time_column": "at"}).to_string();
    assert_eq!(
        app.call("POST", "/v1/datasets", &token, Some(&spec))
            .await
            .status,
        201
    );
    let records: Vec<Value> = (0..40)
        .map(|i| {
            json!({"key": format!("k{i}"), "data": {
                "c1": format!("a{}", i % 2), "c18": format!("z{}", i % 4),
                "at": format!("2026-{:02}-{:02}T{:02}:30:00Z", 1 + i % 3, 1 + i % 28, i % 24),
                "seen": format!("2026-06-{:02}T00:00:00Z", 1 + i % 10)
            }})
        })
        .collect();
    let r = ingest(&app, &token, "wide", &records).await;
    assert_eq!(r.status, 200, "{}", r.json);

    let r = query(
        &app,
        &token,
        json!({"dataset": "wide", "filter": {"column": "c18", "op": "eq", "value": "z1"},
        "group_by": ["c18"], "aggregates": [{"fn": "count"}]}),
    )
    .await;
    assert_eq!(r.json["rows"], json!([["z1", 10]]), "{}", r.json);

    let buckets = |bucket: &str, column: &str| {
        json!({"dataset": "wide",
        "group_by": [{"column": column, "bucket": bucket, "as": "b"}], "aggregates": [{"fn": "count"}], "limit": 1})
    };
    for (bucket, column, first) in [
        ("month", "at", "2026-01-01T00:00:00+00:00"),
        ("week", "at", "2025-12-29T00:00:00+00:00"), // the Monday of the week holding Jan 1st
        ("day", "at", "2026-01-01T00:00:00+00:00"),
        ("hour", "at", "2026-01-01T00:00:00+00:00"),
        ("minute", "at", "2026-01-01T00:30:00+00:00"),
        ("day", "seen", "2026-06-01T00:00:00+00:00"),
    ] {
        let r = query(&app, &token, buckets(bucket, column)).await;
        assert_eq!(
            r.json["rows"][0][0], first,
            "{bucket} of {column}: {}",
            r.json
        );
    }
}

#[tokio::test]
async fn decimals_sum_and_average_exactly_where_numbers_do_not() {
    let app = TestApp::new().await;
    let (_, token) = app.tenant_with_token("alpha").await;
    // price has a slot (d1); m1..m8 take the rest, so `last` is read from the JSON: both paths.
    let mut columns = vec![
        json!({"name": "region", "type": "string"}),
        json!({"name": "price", "type": "decimal", "scale": 2}),
        json!({"name": "weight", "type": "number"}),
    ];
    columns
        .extend((1..=7).map(|i| json!({"name": format!("m{i}"), "type": "decimal", "scale": 0})));
    columns.push(json!({"name": "last", "type": "decimal", "scale": 2}));
    let spec = json!({"name": "ledger", "columns": columns}).to_string();
    let r = app.call("POST", "/v1/datasets", &token, Some(&spec)).await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["columns"][1]["scale"], 2, "{}", r.json);

    // 1,000 entries of 0.10 (as numbers and as strings, alternately) and 0.1 as a float.
    let records: Vec<Value> = (0..1000)
        .map(|i| {
            let price = if i % 2 == 0 {
                json!(0.1)
            } else {
                json!("0.10")
            };
            let region = ["EU", "US"][i % 2];
            json!({"key": format!("e{i}"), "data": {
                "region": region, "price": price, "weight": 0.1, "last": price
            }})
        })
        .collect();
    for chunk in records.chunks(250) {
        let r = ingest(&app, &token, "ledger", chunk).await;
        assert_eq!(r.status, 200, "{}", r.json);
    }

    let sums = json!({"dataset": "ledger", "aggregates": [
        {"fn": "sum", "column": "price"}, {"fn": "sum", "column": "last"},
        {"fn": "sum", "column": "weight"}]});
    let r = query(&app, &token, sums).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["rows"][0][0], json!(100), "{}", r.json);
    assert_eq!(r.json["rows"][0][1], json!(100), "{}", r.json);
    // The float column shows why decimals exist.
    assert_ne!(r.json["rows"][0][2].as_f64(), Some(100.0), "{}", r.json);
    let types: Vec<&str> = r.json["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, ["decimal", "decimal", "number"]);

    // Grouped sums, filters on exact values (a number and a string literal), and a record reads
    // back as the number it is.
    let r = query(
        &app,
        &token,
        json!({"dataset": "ledger", "group_by": ["region"],
        "filter": {"and": [{"column": "price", "op": "eq", "value": "0.1"},
                           {"column": "last", "op": "in", "value": [0.1, "7.77"]}]},
        "aggregates": [{"fn": "sum", "column": "price"}, {"fn": "count"}]}),
    )
    .await;
    assert_eq!(
        r.json["rows"],
        json!([["EU", 50, 500], ["US", 50, 500]]),
        "{}",
        r.json
    );
    let r = app
        .call("GET", "/v1/datasets/ledger/records/e1", &token, None)
        .await;
    assert_eq!(r.json["record"]["data"]["price"], json!(0.1), "{}", r.json);

    // The README's kind of figure: revenue that a float sum gets wrong in the last place.
    let amounts = ["1000.10", "300.11", "80.10"];
    let records: Vec<Value> = amounts
        .iter()
        .enumerate()
        .map(|(i, a)| json!({"key": format!("r{i}"), "data": {"region": "APAC", "price": a}}))
        .collect();
    let r = ingest(&app, &token, "ledger", &records).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let r = query(
        &app,
        &token,
        json!({"dataset": "ledger", "filter": {"column": "region", "op": "eq", "value": "APAC"},
        "aggregates": [{"fn": "sum", "column": "price"}, {"fn": "avg", "column": "price"},
                       {"fn": "min", "column": "price"}, {"fn": "max", "column": "price"}]}),
    )
    .await;
    // avg is 460.10333..., exact to the cent.
    assert_eq!(
        r.json["rows"],
        json!([[1380.31, 460.10, 80.1, 1000.1]]),
        "{}",
        r.json
    );
    assert_eq!(r.json["rows"][0][0].to_string(), "1380.31");

    // A value finer than the scale is refused, and the batch writes nothing.
    let r = app
        .call(
            "POST",
            "/v1/datasets/ledger/records",
            &token,
            Some(r#"[{"key": "z1", "data": {"price": "1.00"}}, {"key": "z2", "data": {"price": 0.005}}, {"key": "z3", "data": {"price": "1e2"}}]"#),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.json);
    let reasons: Vec<&str> = r.json["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["too_precise", "type_mismatch"], "{}", r.json);
    let r = app
        .call("GET", "/v1/datasets/ledger/records/z1", &token, None)
        .await;
    assert_eq!(r.status, 404, "{}", r.json);
}

/// An NDJSON import as a client sends it.
async fn import(app: &TestApp, token: &str, dataset: &str, lines: &[Value]) -> Reply {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    app.import(token, dataset, &body).await
}

#[tokio::test]
async fn a_bulk_import_follows_the_ingest_rules_across_slices_and_is_all_or_nothing() {
    let app = TestApp::with_vars(&[
        ("MAX_BODY_BYTES", (4 << 20).to_string()),
        ("MAX_IMPORT_RECORDS", "15000".into()),
    ])
    .await;
    let (tenant, token) = app.tenant_with_token("alpha").await;
    let spec = r#"{"name": "events", "columns": [{"name": "kind", "type": "string", "required": true},
        {"name": "cost", "type": "decimal", "scale": 2}, {"name": "note", "type": "string"},
        {"name": "at", "type": "timestamp"}], "text_columns": ["note"], "time_column": "at"}"#;
    app.create_dataset(&token, spec).await;
    // 12,000 records: three slices of the import's 5,000, more than the 500 an ingest takes here.
    let record = |i: usize, note: &str| {
        let kind = ["a", "b", "c"][i % 3];
        json!({"key": format!("e{i}"), "data": {"kind": kind,
        "cost": format!("{}.{:02}", i / 100, i % 100), "note": note,
        "at": format!("2026-11-{:02}T{:02}:00:00Z", 1 + i % 28, i % 24)}})
    };
    let lines: Vec<Value> = (0..12_000).map(|i| record(i, "first")).collect();
    let r = import(&app, &token, "events", &lines).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        r.json["result"],
        json!({"received": 12000, "inserted": 12000, "updated": 0, "unchanged": 0})
    );
    let r = app
        .call(
            "POST",
            "/v1/datasets/events/records",
            &token,
            Some(&Value::Array(lines[..501].to_vec()).to_string()),
        )
        .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (413, Some("too_many_records"))
    );

    // Slotted, typed, and exact: the same answers as from ingested records.
    let r = query(
        &app,
        &token,
        json!({"dataset": "events", "group_by": ["kind"],
        "aggregates": [{"fn": "count"}, {"fn": "sum", "column": "cost"}]}),
    )
    .await;
    let expected: Vec<Value> = (0..3)
        .map(|k| {
            let cents: usize = (0..12_000).filter(|i| i % 3 == k).sum();
            let kind = ["a", "b", "c"][k];
            // Whole sums come back as integers (trailing zeros trimmed).
            let sum = serde_json::Number::from_f64(cents as f64 / 100.0)
                .filter(|_| !cents.is_multiple_of(100))
                .map_or(json!(cents / 100), Value::Number);
            json!([kind, 4000, sum])
        })
        .collect();
    assert_eq!(r.json["rows"], Value::Array(expected), "{}", r.json);

    // A retry changes nothing; a changed record bumps its version and replaces its chunks.
    let r = import(&app, &token, "events", &lines).await;
    assert_eq!(r.json["result"]["unchanged"], 12000, "{}", r.json);
    let mut again = lines.clone();
    again[11_999] = record(11_999, "second");
    let r = import(&app, &token, "events", &again).await;
    assert_eq!(
        (
            r.json["result"]["updated"].as_u64(),
            r.json["result"]["unchanged"].as_u64()
        ),
        (Some(1), Some(11999))
    );
    let r = app
        .call("GET", "/v1/datasets/events/records/e11999", &token, None)
        .await;
    assert_eq!(r.json["record"]["version"], 2, "{}", r.json);
    let admin = app.db.admin().await;
    let chunks = admin
        .query(
            "SELECT record_key, record_version, content FROM app.chunks WHERE tenant_id = $1 \
             AND record_key IN ('e0', 'e11999') ORDER BY record_key",
            &[&tenant.as_uuid()],
        )
        .await
        .unwrap();
    let got: Vec<(String, i32, String)> = chunks
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        [
            ("e0".into(), 1, "first".into()),
            ("e11999".into(), 2, "second".into())
        ]
    );
    let total: i64 = admin
        .query_one(
            "SELECT count(*) FROM app.chunks WHERE tenant_id = $1",
            &[&tenant.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 12_000);

    // One bad record in the last slice: nothing is written, from any slice, and it is named.
    let mut bad: Vec<Value> = (0..12_000).map(|i| record(i, "third")).collect();
    bad[11_500] = json!({"key": "e11500", "data": {"kind": "a", "cost": "0.001"}});
    let r = import(&app, &token, "events", &bad).await;
    assert_eq!(r.status, 400, "{}", r.json);
    assert_eq!(r.json["errors"][0]["index"], 11_500, "{}", r.json);
    assert_eq!(r.json["errors"][0]["reason"], "too_precise", "{}", r.json);
    let r = app
        .call("GET", "/v1/datasets/events/records/e0", &token, None)
        .await;
    assert_eq!(r.json["record"]["data"]["note"], "first", "{}", r.json);

    // NDJSON only, and bounded.
    let r = app
        .call("POST", "/v1/datasets/events/imports", &token, Some("[]"))
        .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let r = import(&app, &token, "events", &vec![json!({}); 15_001]).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (413, Some("too_many_records"))
    );
    let r = import(&app, &token, "events", &[]).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (400, Some("no_records"))
    );
    // A file of garbage names the first 100 bad lines and counts them all.
    let r = app
        .import(&token, "events", &"not json\n".repeat(150))
        .await;
    assert_eq!(r.json["error_count"], 150, "{}", r.json);
    assert_eq!(r.json["errors"].as_array().map(Vec::len), Some(100));
    // No content type is refused with the import's own advice.
    let auth = format!("Bearer {token}");
    let r = app
        .send(gateway_event(
            "POST",
            "/v1/datasets/events/imports",
            &[("authorization", &auth)],
            Some("{}"),
        ))
        .await;
    assert_eq!(r.status, 415, "{}", r.json);
    assert!(
        r.json["detail"]
            .as_str()
            .is_some_and(|d| d.contains("x-ndjson")),
        "{}",
        r.json
    );
}

/// Queries are compiled against the dataset definition the process read last, and sent with a
/// check that it is still current: a definition that changed is read again, never trusted.
#[tokio::test]
async fn a_remembered_dataset_is_checked_by_every_query_and_read_again_when_it_changed() {
    let app = TestApp::new().await;
    let (alpha, token) = app.tenant_with_token("alpha").await;
    let (bravo, token_b) = app.tenant_with_token("bravo").await;
    setup(&app, &token, 5).await;
    setup(&app, &token_b, 7).await;
    let count = json!({"dataset": "orders", "aggregates": [{"fn": "count"}]});
    let admin = app.db.admin().await;
    let billed = || billed_queries(&admin, alpha);
    // Read, then remembered: the same answer both times, each billed once.
    for _ in 0..2 {
        let r = query(&app, &token, count.clone()).await;
        assert_eq!(
            (r.status, &r.json["rows"][0][0]),
            (200, &json!(5)),
            "{}",
            r.json
        );
    }
    let old = app.app.datasets.get(alpha, "orders").unwrap();
    assert_eq!(billed().await, 2);

    // Deleted: a 404, not an empty answer from the remembered id, and not billed.
    let r = app
        .call("DELETE", "/v1/datasets/orders", &token, None)
        .await;
    assert!(r.status < 300, "{}", r.json);
    let r = query(&app, &token, count.clone()).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (404, Some("dataset_not_found"))
    );
    assert_eq!(billed().await, 2);

    // Re-created under the same name with other columns: the new one answers, its new column
    // compiles and the old one no longer does.
    let spec = r#"{"name": "orders", "columns": [{"name": "region", "type": "string"}, {"name": "weight", "type": "integer"}]}"#;
    assert_eq!(
        app.call("POST", "/v1/datasets", &token, Some(spec))
            .await
            .status,
        201
    );
    let r = ingest(
        &app,
        &token,
        "orders",
        &[json!({"key": "w1", "data": {"region": "EU", "weight": 4}})],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let r = query(&app, &token, count.clone()).await;
    assert_eq!(r.json["rows"][0][0], 1, "{}", r.json);
    let new = app.app.datasets.get(alpha, "orders").unwrap();
    assert_ne!(new.id, old.id);
    // The old definition put back (a process that remembered it and saw neither the delete nor
    // the re-create): its stale copy is not used. The new column does not fit it, so the
    // dataset is read again; and a query it does fit is refused by the check, then read again.
    let sum = |c: &str| json!({"dataset": "orders", "aggregates": [{"fn": "sum", "column": c, "as": "s"}]});
    remember(&app, alpha, "orders", (*old).clone());
    let r = query(&app, &token, sum("weight")).await;
    assert_eq!(
        (r.status, &r.json["rows"][0][0]),
        (200, &json!(4)),
        "{}",
        r.json
    );
    remember(&app, alpha, "orders", (*old).clone());
    let r = query(&app, &token, count.clone()).await;
    assert_eq!(
        r.json["rows"][0][0], 1,
        "not the old dataset's 5: {}",
        r.json
    );
    assert_eq!(app.app.datasets.get(alpha, "orders").unwrap().id, new.id);
    let r = query(&app, &token, sum("amount")).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (400, Some("invalid_query")),
        "{}",
        r.json
    );

    // Changed elsewhere (another process enabling rollups updates the dataset's row): the check
    // notices the new row version, and the dataset is read again.
    admin
        .execute(
            "UPDATE app.datasets SET rollups_ready = rollups_ready WHERE tenant_id = $1",
            &[&alpha.as_uuid()],
        )
        .await
        .unwrap();
    let r = query(&app, &token, count.clone()).await;
    assert_eq!(r.json["rows"][0][0], 1, "{}", r.json);
    let reread = app.app.datasets.get(alpha, "orders").unwrap();
    assert_eq!(reread.id, new.id);
    assert_ne!(
        reread.row_version, new.row_version,
        "read again after the update"
    );
    // Billed once each, though a refused check's flight ran (and was rolled back) before the
    // reread: 2 before the delete, then the count, the sum of weight, the count under the old
    // definition and this count (the refused sum of amount is not billed).
    assert_eq!(billed().await, 6);

    // The attacker's move, as a bug would make it: alpha's entry pointing at bravo's dataset.
    // The database refuses the check under alpha's RLS, and alpha gets its own answer.
    let bravo_ds = read_dataset(&app, bravo, "orders").await;
    remember(&app, alpha, "orders", bravo_ds);
    let r = query(&app, &token, count.clone()).await;
    assert_eq!(
        r.json["rows"][0][0], 1,
        "alpha's own records, not bravo's 7: {}",
        r.json
    );
    let r = query(&app, &token_b, count).await;
    assert_eq!(r.json["rows"][0][0], 7, "{}", r.json);
}

/// How many queries the ledger holds for `tenant`.
async fn billed_queries(admin: &tokio_postgres::Client, tenant: tenantry::TenantId) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM app.usage_events WHERE tenant_id = $1 AND meter = 'queries'",
            &[&tenant.as_uuid()],
        )
        .await
        .unwrap()
        .get(0)
}

/// A dataset's definition as the tenant's transaction reads it.
async fn read_dataset(
    app: &TestApp,
    tenant: tenantry::TenantId,
    name: &str,
) -> tenantry::analytics::Dataset {
    let ctx = tenantry_tests::as_tenant(tenant);
    let mut tx = app
        .app
        .db
        .begin(&ctx, tenantry::db::Access::ReadOnly)
        .await
        .unwrap();
    let ds = tenantry::analytics::datasets::find(
        &mut tx,
        &tenantry::analytics::datasets::DatasetRef::Name(name.into()),
    )
    .await
    .unwrap()
    .unwrap();
    tx.commit().await.unwrap();
    ds
}

/// Makes the app remember `ds` as `tenant`'s dataset `name`, whatever it is.
fn remember(
    app: &TestApp,
    tenant: tenantry::TenantId,
    name: &str,
    ds: tenantry::analytics::Dataset,
) {
    let read_at = app.app.datasets.read_at();
    app.app.datasets.remember(read_at, tenant, name, ds);
}

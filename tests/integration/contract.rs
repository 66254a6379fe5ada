//! The routing table is the single source of truth: the SAM template, the function packages,
//! the sample events and the OpenAPI document must all agree with it, and the examples must work.

use std::collections::BTreeSet;

use serde_json::Value;
use tenantry::api::ROUTES;
use tenantry_tests::{TestApp, repo_file, repo_root};

fn table() -> BTreeSet<(String, String, String)> {
    ROUTES
        .iter()
        .map(|r| {
            (
                r.method.to_string(),
                r.path.to_owned(),
                r.function.to_owned(),
            )
        })
        .collect()
}

/// (method, path, function) for every HttpApi event of every function in the template.
fn template_routes() -> BTreeSet<(String, String, String)> {
    let text = String::from_utf8(repo_file("infra/template.yaml")).unwrap();
    let mut out = BTreeSet::new();
    let (mut binary, mut method): (Option<String>, Option<String>) = (None, None);
    for line in text.lines() {
        let t = line.trim();
        if t == "Type: AWS::Serverless::Function" {
            binary = None;
        } else if let Some(b) = t.strip_prefix("Binary: ") {
            binary = Some(b.to_owned());
        } else if let Some(m) = t.strip_prefix("Method: ") {
            method = Some(m.to_owned());
        } else if let Some(p) = t.strip_prefix("Path: ") {
            let f = binary
                .clone()
                .expect("an event before its function's Binary");
            out.insert((method.take().expect("Path without Method"), p.to_owned(), f));
        }
    }
    out
}

#[test]
fn the_sam_template_declares_exactly_the_routing_table() {
    assert_eq!(template_routes(), table());
}

#[test]
fn every_function_package_serves_routes_and_every_route_has_a_package() {
    let dirs: BTreeSet<String> = std::fs::read_dir(repo_root().join("functions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut functions: BTreeSet<String> = ROUTES.iter().map(|r| r.function.to_owned()).collect();
    // Functions that serve no route: queue consumers, scheduled jobs and the gateway's authorizer.
    functions.extend(
        [
            "embed",
            "usage-meter",
            "billing-reconcile",
            "vector-indexes",
            "authorizer",
        ]
        .map(str::to_owned),
    );
    assert_eq!(dirs, functions);
    // And the template builds every one of them.
    let template = String::from_utf8(repo_file("infra/template.yaml")).unwrap();
    for f in &dirs {
        assert!(
            template.contains(&format!("        Binary: {f}\n")),
            "infra/template.yaml does not build {f}"
        );
    }
}

#[test]
fn the_openapi_document_lists_exactly_the_routing_table() {
    let doc: Value = serde_json::from_slice(&repo_file("openapi.json")).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
        {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routes: BTreeSet<(String, String)> = table().into_iter().map(|(m, p, _)| (m, p)).collect();
    assert_eq!(documented, routes);
}

/// Every authenticated route is behind the Lambda authorizer (the API's default); only the
/// webhooks opt out, and no JWT authorizer (which refuses `X-Api-Key` callers) is left.
#[test]
fn the_gateway_authorizes_with_the_lambda_authorizer_and_only_webhooks_opt_out() {
    let template = String::from_utf8(repo_file("infra/template.yaml")).unwrap();
    assert!(template.contains("        DefaultAuthorizer: Tenantry\n"));
    assert!(template.contains("            FunctionArn: !GetAtt AuthorizerFunction.Arn\n"));
    assert!(template.contains("            AuthorizerPayloadFormatVersion: \"2.0\"\n"));
    assert!(template.contains("            EnableSimpleResponses: true\n"));
    assert!(!template.contains("JwtConfiguration"));
    let opted_out = template.matches("              Authorizer: NONE\n").count();
    let public = ROUTES
        .iter()
        .filter(|r| r.needs == tenantry::http::Needs::Sender)
        .count();
    assert_eq!(opted_out, public);
}

/// Every operation states the permission its route declares (`x-permission`; `none` for any
/// authenticated caller); webhooks, which authenticate their sender, state none, and a route
/// without a declaration cannot exist (`Route::needs` is not optional).
#[test]
fn the_openapi_document_states_each_routes_permission() {
    use tenantry::http::Needs;
    let doc: Value = serde_json::from_slice(&repo_file("openapi.json")).unwrap();
    for r in ROUTES {
        let op = &doc["paths"][r.path][r.method.as_str().to_lowercase()];
        let expected = match r.needs {
            Needs::Sender => None,
            Needs::Principal => Some("none"),
            Needs::Permission(p) => Some(p.name()),
            Needs::Staff(p) => Some(p.name()),
        };
        assert_eq!(
            op["x-permission"].as_str(),
            expected,
            "{} {}",
            r.method,
            r.path
        );
        if expected.is_some() {
            assert_eq!(
                op["responses"]["403"]["$ref"], "#/components/responses/Problem",
                "{} {}",
                r.method, r.path
            );
        }
    }
}

/// The sample events, in an order that makes each one meaningful (create before ingest, ...).
const EVENTS: &[(&str, &str, u16)] = &[
    ("me", include_str!("../../events/me/get.json"), 200),
    (
        "datasets",
        include_str!("../../events/datasets/create.json"),
        201,
    ),
    (
        "datasets",
        include_str!("../../events/datasets/list.json"),
        200,
    ),
    (
        "datasets",
        include_str!("../../events/datasets/get.json"),
        200,
    ),
    (
        "records",
        include_str!("../../events/records/ingest.json"),
        200,
    ),
    (
        "records",
        include_str!("../../events/records/ingest-ndjson.json"),
        200,
    ),
    (
        "records",
        include_str!("../../events/records/get.json"),
        200,
    ),
    (
        "query",
        include_str!("../../events/query/filtered-count.json"),
        200,
    ),
    (
        "query",
        include_str!("../../events/query/group-by-day.json"),
        200,
    ),
    (
        "query",
        include_str!("../../events/query/top-by-sum.json"),
        200,
    ),
    ("ask", include_str!("../../events/ask/ask.json"), 200),
    (
        "records",
        include_str!("../../events/records/delete.json"),
        204,
    ),
    (
        "datasets",
        include_str!("../../events/datasets/delete.json"),
        204,
    ),
    (
        "api-keys",
        include_str!("../../events/api-keys/create.json"),
        201,
    ),
    (
        "api-keys",
        include_str!("../../events/api-keys/list.json"),
        200,
    ),
    (
        "usage",
        include_str!("../../events/usage/get-usage.json"),
        200,
    ),
    // Signed / authenticated by the test below: a customer no tenant is billed as (received,
    // ignored) and a member joining the acme organization (applied).
    (
        "stripe-webhook",
        include_str!("../../events/stripe-webhook/subscription-updated.json"),
        200,
    ),
    (
        "auth0-webhook",
        include_str!("../../events/auth0-webhook/member-added.json"),
        200,
    ),
    // A new organization: its tenant is created (with the local billing adapter's customer).
    (
        "auth0-webhook",
        include_str!("../../events/auth0-webhook/organization-created.json"),
        200,
    ),
    ("audit", include_str!("../../events/audit/list.json"), 200),
    // Staff tokens: the list, and a suspension of a tenant id nobody has (the documented 404).
    (
        "admin",
        include_str!("../../events/admin/list-tenants.json"),
        200,
    ),
    (
        "admin",
        include_str!("../../events/admin/suspend-tenant.json"),
        404,
    ),
    ("audit", include_str!("../../events/audit/verify.json"), 200),
    // The sample names a key id no tenant has: the function answers, with the documented 404.
    (
        "api-keys",
        include_str!("../../events/api-keys/revoke.json"),
        404,
    ),
];

#[tokio::test]
async fn every_sample_event_is_served_by_its_function() {
    // HTTP events only; the embed, usage-meter, billing-reconcile and authorizer events are
    // exercised in embed_queue.rs, billing and authorizer.rs.
    let on_disk: usize = std::fs::read_dir(repo_root().join("events"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| {
            !["embed", "usage-meter", "billing-reconcile", "authorizer"]
                .iter()
                .any(|f| p.ends_with(f))
        })
        .map(|p| std::fs::read_dir(p).unwrap().count())
        .sum();
    assert_eq!(on_disk, EVENTS.len(), "an event file is not exercised here");

    let app = webhook_app().await;
    let (_, token) = app.tenant_with_token("acme").await;
    for (function, raw, status) in EVENTS {
        let event: Value = serde_json::from_str(raw).unwrap();
        let signature = tenantry::billing::webhooks::stripe_signature_header(
            event["body"].as_str().unwrap_or_default().as_bytes(),
            WEBHOOK_SECRET,
            chrono::Utc::now().timestamp(),
        );
        let raw = &raw
            .replace("REPLACE_WITH_A_STRIPE_SIGNATURE", &signature)
            .replace("REPLACE_WITH_THE_WEBHOOK_SECRET", AUTH0_SECRET);
        let route_key = event["routeKey"].as_str().unwrap();
        let route = ROUTES
            .iter()
            .find(|r| format!("{} {}", r.method, r.path) == route_key)
            .unwrap_or_else(|| panic!("{route_key} is not in the routing table"));
        assert_eq!(
            route.function, *function,
            "{route_key} is served by {}",
            route.function
        );
        let req =
            lambda_http::request::from_str(&raw.replace("REPLACE_WITH_A_TOKEN", &token).replace(
                "REPLACE_WITH_A_STAFF_TOKEN",
                &TestApp::staff_token("auth0|staff-contract", &["support_admin"]),
            ))
            .unwrap();
        // Through exactly the routes that function serves, as in Lambda.
        let router = tenantry::http::router(app.app.clone(), &tenantry::api::routes_for(function));
        let resp = tenantry::http::call(&router, req).await;
        assert_eq!(
            resp.status(),
            *status,
            "{route_key}: {}",
            String::from_utf8_lossy(resp.body().as_ref())
        );
    }
}

const WEBHOOK_SECRET: &str = "whsec_contract";
const AUTH0_SECRET: &str = "auth0-contract-secret";

/// An app with webhook secrets, so signed sample events and examples verify.
async fn webhook_app() -> TestApp {
    TestApp::with_vars(&[
        ("STRIPE_WEBHOOK_SECRETS", WEBHOOK_SECRET.to_owned()),
        ("AUTH0_WEBHOOK_SECRET", AUTH0_SECRET.to_owned()),
    ])
    .await
}

#[tokio::test]
async fn every_openapi_example_is_accepted_by_its_handler() {
    let doc: Value = serde_json::from_slice(&repo_file("openapi.json")).unwrap();
    let app = webhook_app().await;
    let (acme, token) = app.tenant_with_token("acme").await;
    let staff = TestApp::staff_token("auth0|staff-contract", &["support_admin"]);
    // Order matters: the dataset first, then records, then queries; a suspension before the
    // resumption.
    let order = [
        ("/v1/datasets", "post"),
        ("/v1/datasets/{dataset}/records", "post"),
        ("/v1/datasets/{dataset}/imports", "post"),
        ("/v1/query", "post"),
        ("/v1/api-keys", "post"),
        ("/v1/ask", "post"),
        ("/v1/webhooks/stripe", "post"),
        ("/v1/webhooks/auth0", "post"),
        ("/admin/v1/tenants/{tenant}/plan", "post"),
        ("/admin/v1/tenants/{tenant}/suspend", "post"),
        ("/admin/v1/tenants/{tenant}/resume", "post"),
        ("/admin/v1/impersonations", "post"),
        ("/v1/settings/support-access", "put"),
        ("/admin/v1/tenants", "post"),
        ("/admin/v1/tenants/{tenant}/reconcile", "post"),
        ("/admin/v1/tenants/{tenant}/deliveries/retry", "post"),
        // Last: a closed tenant takes nothing more.
        ("/admin/v1/tenants/{tenant}/close", "post"),
    ];
    let owner = tenantry_tests::issuer()
        .token(
            "auth0|acme-owner",
            "org_acme",
            &["owner"],
            std::time::Duration::from_secs(600),
        )
        .unwrap();
    let mut seen = 0;
    for (path, method) in order {
        let op = &doc["paths"][path][method];
        let example_path = path
            .replace("{dataset}", "orders")
            .replace("{tenant}", &acme.to_string());
        // JSON examples, or (for an NDJSON-only operation) NDJSON ones, whose value is the text.
        let content = &op["requestBody"]["content"];
        let ndjson = content.get("application/json").is_none();
        let media = if ndjson {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        for (name, example) in content[media]["examples"].as_object().unwrap() {
            // The examples' tenant is a placeholder for this test's.
            let body = match &example["value"] {
                Value::String(text) if ndjson => text.clone(),
                value => value.to_string(),
            }
            .replace("01900000-0000-7000-8000-000000000001", &acme.to_string());
            let r = match path {
                _ if ndjson => {
                    let bearer = format!("Bearer {token}");
                    let headers = [("content-type", media), ("authorization", bearer.as_str())];
                    app.send(tenantry_tests::gateway_event(
                        &method.to_uppercase(),
                        &example_path,
                        &headers,
                        Some(&body),
                    ))
                    .await
                }
                "/v1/webhooks/stripe" | "/v1/webhooks/auth0" => {
                    let signature = tenantry::billing::webhooks::stripe_signature_header(
                        body.as_bytes(),
                        WEBHOOK_SECRET,
                        chrono::Utc::now().timestamp(),
                    );
                    let bearer = format!("Bearer {AUTH0_SECRET}");
                    let headers = [
                        ("content-type", "application/json"),
                        ("stripe-signature", signature.as_str()),
                        ("authorization", bearer.as_str()),
                    ];
                    app.send(tenantry_tests::gateway_event(
                        "POST",
                        path,
                        &headers,
                        Some(&body),
                    ))
                    .await
                }
                p if p.starts_with("/admin/") => {
                    app.call(&method.to_uppercase(), &example_path, &staff, Some(&body))
                        .await
                }
                "/v1/settings/support-access" => {
                    app.call(&method.to_uppercase(), &example_path, &owner, Some(&body))
                        .await
                }
                _ => {
                    app.call(&method.to_uppercase(), &example_path, &token, Some(&body))
                        .await
                }
            };
            assert!(
                r.status < 300,
                "{method} {path} example {name}: {} {}",
                r.status,
                r.json
            );
            seen += 1;
        }
    }
    // Every operation with a JSON request body has at least one example, and all were sent.
    let mut documented = 0;
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let content = &op["requestBody"]["content"];
            let examples = content["application/json"]["examples"]
                .as_object()
                .or_else(|| content["application/x-ndjson"]["examples"].as_object());
            if let Some(ex) = examples {
                assert!(!ex.is_empty());
                documented += ex.len();
            } else {
                assert!(
                    op.get("requestBody").is_none(),
                    "a request body without JSON examples"
                );
            }
        }
    }
    assert_eq!(seen, documented);
}

//! Permissions on every route, as attacks: each role and each API-key scope tries every route of
//! the routing table. What it may not do is refused at the edge with 403
//! `insufficient_permission` naming the permission, and leaves the data as it was; what it may do
//! succeeds. The expected matrix is written out here, independently of the product's tables, and
//! a route added to `ROUTES` without a row here fails the test.

use std::time::Duration;

use serde_json::{Value, json};
use tenantry::TenantId;
use tenantry::api::ROUTES;
use tenantry::http::Needs;
use tenantry_tests::rls_probe::Outcome;
use tenantry_tests::{TestApp, gateway_event, issuer};

const ORDERS: &str = r#"{"name": "orders", "columns": [{"name": "region", "type": "string"},
  {"name": "note", "type": "string"}], "text_columns": ["note"]}"#;

/// Who tries. Users differ by role; keys by scopes.
const CALLERS: &[&str] = &[
    "owner",
    "admin",
    "member",
    "viewer",
    "no-role",
    "analyst",
    "key:read",
    "key:ingest",
    "key:read+ingest",
];

/// Route → the callers it serves (everyone else gets 403), the permission named in the refusal,
/// and the status of success.
const MATRIX: &[(&str, &str, &str, u16)] = &[
    ("GET /v1/me", "*", "", 200),
    ("GET /v1/members", "owner admin", "manage_members", 200),
    (
        "POST /v1/datasets",
        "owner admin member",
        "manage_datasets",
        201,
    ),
    (
        "GET /v1/datasets",
        "owner admin member viewer key:read key:read+ingest",
        "read_data",
        200,
    ),
    (
        "GET /v1/datasets/{dataset}",
        "owner admin member viewer key:read key:read+ingest",
        "read_data",
        200,
    ),
    (
        "GET /v1/datasets/{dataset}/records/{key}/versions",
        "owner admin member viewer key:read key:read+ingest",
        "read_data",
        200,
    ),
    (
        "GET /v1/datasets/{dataset}/records",
        "owner admin member viewer key:read key:read+ingest",
        "read_data",
        200,
    ),
    (
        "DELETE /v1/datasets/{dataset}",
        "owner admin member",
        "manage_datasets",
        204,
    ),
    (
        "POST /v1/datasets/{dataset}/records",
        "owner admin member key:ingest key:read+ingest",
        "write_data",
        200,
    ),
    (
        "POST /v1/datasets/{dataset}/imports",
        "owner admin member key:ingest key:read+ingest",
        "write_data",
        200,
    ),
    (
        "GET /v1/datasets/{dataset}/records/{key}",
        "owner admin member viewer key:read key:read+ingest",
        "read_data",
        200,
    ),
    (
        "DELETE /v1/datasets/{dataset}/records/{key}",
        "owner admin member key:ingest key:read+ingest",
        "write_data",
        204,
    ),
    (
        "POST /v1/query",
        "owner admin member viewer key:read key:read+ingest",
        "query",
        200,
    ),
    (
        "POST /v1/ask",
        "owner admin member viewer key:read key:read+ingest",
        "query",
        200,
    ),
    ("GET /v1/usage", "owner admin", "read_billing", 200),
    ("GET /v1/audit", "owner admin", "read_audit", 200),
    ("GET /v1/audit/verify", "owner admin", "read_audit", 200),
    ("POST /v1/api-keys", "owner admin", "manage_api_keys", 201),
    ("GET /v1/api-keys", "owner admin", "manage_api_keys", 200),
    (
        "DELETE /v1/api-keys/{key_id}",
        "owner admin",
        "manage_api_keys",
        204,
    ),
    ("GET /v1/export", "owner admin", "export_data", 200),
    (
        "GET /v1/impersonations",
        "owner admin",
        "oversee_support",
        200,
    ),
    (
        "POST /v1/impersonations/{session}/approve",
        "owner admin",
        "oversee_support",
        200,
    ),
    (
        "POST /v1/impersonations/{session}/end",
        "owner admin",
        "oversee_support",
        200,
    ),
    (
        "GET /v1/settings/support-access",
        "owner admin",
        "oversee_support",
        200,
    ),
    (
        "PUT /v1/settings/support-access",
        "owner",
        "manage_support_access",
        200,
    ),
];

struct World {
    app: TestApp,
    tenant: TenantId,
    admin: String,
    tokens: Vec<(&'static str, String)>,
    keys: Vec<(&'static str, String)>,
}

impl World {
    async fn new() -> Self {
        let app = TestApp::new().await;
        let (tenant, admin) = app.tenant_with_token("alpha").await;
        app.create_dataset(&admin, ORDERS).await;
        // Every support session waits for the tenant, so each approval has something to do.
        app.db
            .admin()
            .await
            .execute(
                "UPDATE app.tenants SET support_access = 'ask' WHERE tenant_id = $1",
                &[&tenant.as_uuid()],
            )
            .await
            .unwrap();
        let mut tokens = Vec::new();
        for (caller, roles) in [
            ("owner", &["owner"][..]),
            ("admin", &["admin"]),
            ("member", &["member"]),
            ("viewer", &["viewer"]),
            ("no-role", &[]),
            ("analyst", &["analyst", "Admin", "admin "]),
        ] {
            let sub = format!("auth0|{caller}");
            let t = issuer()
                .token(&sub, "org_alpha", roles, Duration::from_secs(3600))
                .unwrap();
            tokens.push((caller, t));
        }
        let mut keys = Vec::new();
        for (caller, scopes) in [
            ("key:read", json!(["read"])),
            ("key:ingest", json!(["ingest"])),
            ("key:read+ingest", json!(["read", "ingest"])),
        ] {
            let body = json!({"name": caller, "scopes": scopes}).to_string();
            let r = app.call("POST", "/v1/api-keys", &admin, Some(&body)).await;
            assert_eq!(r.status, 201, "{}", r.json);
            keys.push((caller, r.json["key"].as_str().unwrap().to_owned()));
        }
        World {
            app,
            tenant,
            admin,
            tokens,
            keys,
        }
    }

    async fn send(
        &self,
        caller: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let credential = match self.keys.iter().find(|(c, _)| *c == caller) {
            Some((_, key)) => ("x-api-key", key.clone()),
            None => {
                let token = &self.tokens.iter().find(|(c, _)| *c == caller).unwrap().1;
                ("authorization", format!("Bearer {token}"))
            }
        };
        let mut headers = vec![(credential.0, credential.1.as_str())];
        if body.is_some() {
            // An import is NDJSON; every other body here is JSON.
            let media = if path.ends_with("/imports") {
                "application/x-ndjson"
            } else {
                "application/json"
            };
            headers.push(("content-type", media));
        }
        let r = self
            .app
            .send(gateway_event(method, path, &headers, body))
            .await;
        (r.status, r.json)
    }

    async fn as_admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let r = self.app.call(method, path, &self.admin, body).await;
        (r.status, r.json)
    }

    /// A request for `route`, with whatever it acts on made fresh for attempt `n` (so one
    /// caller's successful delete leaves the next caller something to attack), and a check that
    /// tells whether the request changed anything.
    async fn request(&self, route: &str, n: usize) -> (String, Option<String>, Probe) {
        let dataset = format!("d{n}");
        let key = format!("k{n}");
        match route {
            "GET /v1/me" => ("/v1/me".into(), None, Probe::None),
            "GET /v1/members" => ("/v1/members".into(), None, Probe::None),
            "POST /v1/datasets" => (
                "/v1/datasets".into(),
                Some(
                    json!({"name": dataset, "columns": [{"name": "x", "type": "string"}]})
                        .to_string(),
                ),
                Probe::Exists(format!("/v1/datasets/{dataset}")),
            ),
            "GET /v1/datasets" => ("/v1/datasets".into(), None, Probe::None),
            "GET /v1/datasets/{dataset}" => ("/v1/datasets/orders".into(), None, Probe::None),
            "GET /v1/datasets/{dataset}/records" => {
                ("/v1/datasets/orders/records".into(), None, Probe::None)
            }
            "DELETE /v1/datasets/{dataset}" => {
                let spec = json!({"name": dataset, "columns": [{"name": "x", "type": "string"}]})
                    .to_string();
                assert_eq!(
                    self.as_admin("POST", "/v1/datasets", Some(&spec)).await.0,
                    201
                );
                let path = format!("/v1/datasets/{dataset}");
                (path.clone(), None, Probe::Exists(path))
            }
            "POST /v1/datasets/{dataset}/records" => (
                "/v1/datasets/orders/records".into(),
                Some(
                    json!([{"key": key, "data": {"region": "EU", "note": "dented box"}}])
                        .to_string(),
                ),
                Probe::Exists(format!("/v1/datasets/orders/records/{key}")),
            ),
            "POST /v1/datasets/{dataset}/imports" => (
                "/v1/datasets/orders/imports".into(),
                Some(json!({"key": key, "data": {"region": "EU", "note": "bulk"}}).to_string()),
                Probe::Exists(format!("/v1/datasets/orders/records/{key}")),
            ),
            "GET /v1/datasets/{dataset}/records/{key}/versions" => {
                let body = json!([{"key": key, "data": {"region": "US"}}]).to_string();
                let (status, doc) = self
                    .as_admin("POST", "/v1/datasets/orders/records", Some(&body))
                    .await;
                assert_eq!(status, 200, "{doc}");
                (
                    format!("/v1/datasets/orders/records/{key}/versions"),
                    None,
                    Probe::None,
                )
            }
            "GET /v1/datasets/{dataset}/records/{key}"
            | "DELETE /v1/datasets/{dataset}/records/{key}" => {
                let body =
                    json!([{"key": key, "data": {"region": "US", "note": "late"}}]).to_string();
                let (status, doc) = self
                    .as_admin("POST", "/v1/datasets/orders/records", Some(&body))
                    .await;
                assert_eq!(status, 200, "{doc}");
                let path = format!("/v1/datasets/orders/records/{key}");
                (path.clone(), None, Probe::Exists(path))
            }
            "POST /v1/query" => (
                "/v1/query".into(),
                Some(json!({"dataset": "orders", "aggregates": [{"fn": "count"}]}).to_string()),
                Probe::None,
            ),
            "POST /v1/ask" => (
                "/v1/ask".into(),
                Some(json!({"question": "what arrived dented?"}).to_string()),
                Probe::None,
            ),
            "GET /v1/usage" => ("/v1/usage".into(), None, Probe::None),
            "GET /v1/audit" => ("/v1/audit".into(), None, Probe::None),
            "GET /v1/audit/verify" => ("/v1/audit/verify".into(), None, Probe::None),
            "POST /v1/api-keys" => (
                "/v1/api-keys".into(),
                Some(json!({"name": format!("made-{n}"), "scopes": ["read"]}).to_string()),
                Probe::KeyNamed(format!("made-{n}")),
            ),
            "GET /v1/api-keys" => ("/v1/api-keys".into(), None, Probe::None),
            "DELETE /v1/api-keys/{key_id}" => {
                let body = json!({"name": format!("victim-{n}"), "scopes": ["read"]}).to_string();
                let (status, doc) = self.as_admin("POST", "/v1/api-keys", Some(&body)).await;
                assert_eq!(status, 201, "{doc}");
                let id = doc["key_id"].as_str().unwrap();
                (
                    format!("/v1/api-keys/{id}"),
                    None,
                    Probe::KeyLive(id.to_owned()),
                )
            }
            "GET /v1/export" => ("/v1/export".into(), None, Probe::None),
            "GET /v1/impersonations" => ("/v1/impersonations".into(), None, Probe::None),
            "POST /v1/impersonations/{session}/approve"
            | "POST /v1/impersonations/{session}/end" => {
                let id = self.session().await;
                let (path, check) = if route.ends_with("/approve") {
                    ("approve", "tenant_approved_at IS NOT NULL")
                } else {
                    ("end", "ended_at IS NOT NULL")
                };
                (
                    format!("/v1/impersonations/{id}/{path}"),
                    None,
                    Probe::Sql(format!(
                        "SELECT {check} FROM app.impersonation_sessions \
                         WHERE tenant_id = $1 AND session_id = '{id}'"
                    )),
                )
            }
            "GET /v1/settings/support-access" => {
                ("/v1/settings/support-access".into(), None, Probe::None)
            }
            "PUT /v1/settings/support-access" => {
                self.app
                    .db
                    .admin()
                    .await
                    .execute(
                        "UPDATE app.tenants SET support_access = 'ask' WHERE tenant_id = $1",
                        &[&self.tenant.as_uuid()],
                    )
                    .await
                    .unwrap();
                (
                    "/v1/settings/support-access".into(),
                    Some(json!({"support_access": "off"}).to_string()),
                    Probe::Sql(
                        "SELECT support_access = 'off' FROM app.tenants WHERE tenant_id = $1"
                            .into(),
                    ),
                )
            }
            other => panic!("no request for {other}: add the route to MATRIX and to this test"),
        }
    }

    /// A new support session waiting for the tenant's approval.
    async fn session(&self) -> String {
        let staff = TestApp::staff_token("auth0|sam", &["support"]);
        let body = json!({"tenant": self.tenant.to_string(), "reason": "Checking a report, SUP-1", "minutes": 10});
        let r = self
            .app
            .call(
                "POST",
                "/admin/v1/impersonations",
                &staff,
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.json);
        r.json["id"].as_str().unwrap().to_owned()
    }

    /// What the probe sees now: whether the thing exists (or the key is live).
    async fn probe(&self, probe: &Probe) -> Option<bool> {
        match probe {
            Probe::None => None,
            Probe::Sql(sql) => Some(
                self.app
                    .db
                    .admin()
                    .await
                    .query_one(sql.as_str(), &[&self.tenant.as_uuid()])
                    .await
                    .unwrap()
                    .get(0),
            ),
            Probe::Exists(path) => Some(self.as_admin("GET", path, None).await.0 == 200),
            Probe::KeyNamed(name) => {
                let (_, doc) = self.as_admin("GET", "/v1/api-keys", None).await;
                Some(
                    doc["api_keys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["name"] == name.as_str()),
                )
            }
            Probe::KeyLive(id) => {
                let (_, doc) = self.as_admin("GET", "/v1/api-keys", None).await;
                let keys = doc["api_keys"].as_array().unwrap();
                let key = keys.iter().find(|k| k["key_id"] == id.as_str()).unwrap();
                Some(key["revoked_at"].is_null())
            }
        }
    }
}

/// How to tell whether a request changed anything.
enum Probe {
    None,
    Exists(String),
    KeyNamed(String),
    KeyLive(String),
    /// A boolean the superuser reads (`$1`: the tenant).
    Sql(String),
}

fn method_and_template(route: &str) -> (&str, &str) {
    route.split_once(' ').unwrap()
}

#[test]
fn every_route_of_the_table_is_in_the_matrix_with_the_permission_it_declares() {
    for r in ROUTES {
        let name = format!("{} {}", r.method, r.path);
        let row = MATRIX.iter().find(|(route, ..)| *route == name);
        match (r.needs, row) {
            // Webhooks authenticate their sender; admin routes take staff only (support.rs).
            (Needs::Sender | Needs::Staff(_), None) => {}
            (Needs::Principal, Some((_, "*", "", _))) => {}
            (Needs::Permission(p), Some((_, _, permission, _))) => {
                assert_eq!(p.name(), *permission, "{name}")
            }
            (needs, row) => panic!("{name}: declares {needs:?}, matrix has {row:?}"),
        }
    }
    assert_eq!(
        MATRIX.len(),
        ROUTES
            .iter()
            .filter(|r| r.needs != Needs::Sender && !matches!(r.needs, Needs::Staff(_)))
            .count()
    );
}

#[tokio::test]
async fn every_role_and_scope_is_refused_what_it_may_not_do_and_nothing_changes() {
    let w = World::new().await;
    let mut n = 0;
    let mut refused = 0;
    for (route, allowed, permission, ok) in MATRIX {
        let (method, _) = method_and_template(route);
        for caller in CALLERS {
            n += 1;
            let may = *allowed == "*" || allowed.split(' ').any(|a| a == *caller);
            let (path, body, probe) = w.request(route, n).await;
            let before = w.probe(&probe).await;
            let (status, doc) = w.send(caller, method, &path, body.as_deref()).await;
            let after = w.probe(&probe).await;
            if may {
                assert_eq!(status, *ok, "{caller} {route}: {doc}");
            } else {
                refused += 1;
                assert_eq!(
                    (status, doc["code"].as_str(), doc["permission"].as_str()),
                    (403, Some("insufficient_permission"), Some(*permission)),
                    "{caller} {route}: {doc}"
                );
                assert_eq!(
                    before, after,
                    "{caller} {route}: a refused request changed data"
                );
            }
        }
    }
    // The attacks the issue names, among the refusals above: a viewer deletes, a member creates
    // a key, an ingest key queries or reads a record, a read key ingests.
    assert!(refused >= 60, "{refused}");
}

#[tokio::test]
async fn me_reports_what_the_caller_may_do() {
    let w = World::new().await;
    for (caller, expected) in [
        ("viewer", json!(["read_data", "query"])),
        ("no-role", json!([])),
        ("key:ingest", json!(["write_data"])),
        (
            "key:read+ingest",
            json!(["read_data", "query", "write_data"]),
        ),
        (
            "member",
            json!(["read_data", "query", "write_data", "manage_datasets"]),
        ),
    ] {
        let (status, doc) = w.send(caller, "GET", "/v1/me", None).await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["principal"]["permissions"], expected, "{caller}");
    }
    let (_, doc) = w.send("key:ingest", "GET", "/v1/me", None).await;
    assert_eq!(doc["principal"]["scopes"], json!(["ingest"]));
}

/// Scopes are fixed at creation: the app role cannot change them even with its own tenant set
/// (a column grant), and the database refuses a scope it does not know.
#[tokio::test]
async fn a_keys_scopes_cannot_be_widened_after_creation() {
    let w = World::new().await;
    let tenant = w.tenant;
    let mut tx = tenantry_tests::tx(&w.app.app.db, tenant).await;
    let widened = tx
        .execute(
            "UPDATE app.api_keys SET scopes = '{read,ingest}' WHERE name = 'key:ingest'",
            &[],
        )
        .await;
    assert_eq!(Outcome::of_db(widened), Outcome::no_grant("api_keys"));
    drop(tx);
    // Still ingest-only.
    let (status, doc) = w
        .send(
            "key:ingest",
            "POST",
            "/v1/query",
            Some(r#"{"dataset": "orders"}"#),
        )
        .await;
    assert_eq!(
        (status, doc["code"].as_str()),
        (403, Some("insufficient_permission"))
    );

    let admin = w.app.db.admin().await;
    for bad in [
        "{admin}",
        "{}",
        "{read,NULL}",
        "{read,read}",
        "{ingest,read}",
        "{read,ingest,read}",
    ] {
        let inserted = admin
            .execute(
                &format!(
                    "INSERT INTO app.api_keys (tenant_id, prefix, hash, name, created_by, scopes) \
                     VALUES ($1, 'abcdefabcdef', decode(repeat('00', 32), 'hex'), 'x', 'test', '{bad}')"
                ),
                &[&tenant.as_uuid()],
            )
            .await;
        assert_eq!(
            Outcome::of_pg(inserted),
            Outcome::refused(
                "23514",
                "new row for relation \"api_keys\" violates check constraint \"api_keys_scopes_known\""
            ),
            "{bad}"
        );
    }
}

//! Cold start of a function, as Lambda runs it: the release binary of each function package
//! (built here from its own package, so with its own features) is started against a local
//! stand-in for the Lambda Runtime API. `init_ms` is process start to the first
//! `GET /runtime/invocation/next` (the whole init: configuration, SDK, pool, router); `first_ms`
//! is process start to the first response posted back (the first request, which opens the
//! database connection; `query` also writes its usage event, in the query's own transaction). The
//! floor is starting and reaping `/bin/true`, measured in the same run.
//!
//!   scripts/bench cold-start        # BENCH_FUNCTIONS=me,query BENCH_ITERATIONS=20
//!                                   # BENCH_TARGET_DIR: where the functions are built
//!                                   # BENCH_BINARIES: a directory of prebuilt ones instead

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tenantry::App;
use tenantry::config::Config;
use tenantry_bench::{Error, Samples, bench_database, env};
use tenantry_tests::{AUDIENCE, ISSUER, JwksServer, dev_jwk, gateway_event, issuer};
use tokio::sync::Notify;

#[derive(Default)]
struct Runtime {
    event: Mutex<String>,
    served: Mutex<bool>,
    init_done: Mutex<Option<Instant>>,
    response: Mutex<Option<(Instant, String)>>,
    notify: Notify,
}

async fn next(State(rt): State<Arc<Runtime>>) -> axum::response::Response {
    let already = {
        let mut served = rt.served.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *served, true)
    };
    if already {
        // One invocation per process: later polls wait until the process is killed.
        std::future::pending::<()>().await;
    }
    *rt.init_done.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    let body = rt.event.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let deadline = (std::time::SystemTime::now() + Duration::from_secs(30))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string();
    axum::response::Response::builder()
        .header("lambda-runtime-aws-request-id", "req-1")
        .header("lambda-runtime-deadline-ms", deadline)
        .header(
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:eu-west-1:123456789012:function:bench",
        )
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap_or_default()
}

async fn respond(State(rt): State<Arc<Runtime>>, body: String) -> &'static str {
    *rt.response.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), body));
    rt.notify.notify_one();
    "{}"
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let iterations = env("BENCH_ITERATIONS", 20);
    let functions = std::env::var("BENCH_FUNCTIONS").unwrap_or_else(|_| "me,query".into());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Where the function packages are built (release): BENCH_TARGET_DIR, else the usual one.
    let target = std::env::var("BENCH_TARGET_DIR")
        .or_else(|_| std::env::var("CARGO_TARGET_DIR"))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));

    let db = bench_database("bench_cold_start", None).await?;
    let jwks = JwksServer::start(json!({ "keys": [dev_jwk("dev")] })).await;
    let vars: Vec<(&str, String)> = vec![
        ("APP_DATABASE_URL", db.app_url.clone()),
        ("AUTH0_ISSUER", ISSUER.to_owned()),
        ("AUTH0_AUDIENCE", AUDIENCE.to_owned()),
        ("AUTH0_JWKS_URL", jwks.url.clone()),
    ];
    let config =
        Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))?;
    let app = Arc::new(App::builder(config).build()?);
    tenantry_tests::tenant(&app.db, "cold").await;
    let token = issuer().token(
        "auth0|bench",
        "org_cold",
        &["admin"],
        Duration::from_secs(3600),
    )?;
    let auth = format!("Bearer {token}");
    let router = tenantry::http::router(Arc::clone(&app), &tenantry::api::all_routes());
    let spec = r#"{"name": "orders", "columns": [{"name": "region", "type": "string"}]}"#;
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let created = tenantry::http::call(
        &router,
        gateway_event("POST", "/v1/datasets", &headers, Some(spec)),
    )
    .await;
    if created.status() != 201 {
        return Err(format!("creating the dataset: {}", created.status()).into());
    }

    // A real SQS API (moto) for the usage queue, as in AWS (since 2026-12-07 `query` writes its
    // usage in its own transaction and no longer links SQS; the queue stays for the functions
    // that do).
    let moto = tenantry_tests::Moto::start();
    let (_, usage_queue_url) = moto.queue("usage").await;

    // The floor: starting and reaping a process that does nothing.
    let mut floor = Samples::default();
    for _ in 0..iterations {
        let started = Instant::now();
        std::process::Command::new("/bin/true").status()?;
        floor.record(started.elapsed());
    }
    let floor_ms = floor.quantile_ms(0.5);
    floor.report("process_floor", json!({}));

    // BENCH_BINARIES: a directory of already built function binaries (e.g. an older build, to
    // compare); without it each function is built here from its own package.
    let prebuilt = std::env::var("BENCH_BINARIES")
        .ok()
        .map(std::path::PathBuf::from);
    for function in functions.split(',') {
        let binary = match &prebuilt {
            Some(dir) => dir.join(function),
            None => target.join("release").join(function),
        };
        if prebuilt.is_none() {
            let status = std::process::Command::new(
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            )
            .args(["build", "--quiet", "--locked", "--release", "-p"])
            .arg(format!("tenantry-fn-{function}"))
            .arg("--target-dir")
            .arg(&target)
            .current_dir(&root)
            .status()?;
            if !status.success() {
                return Err(format!("building {function}").into());
            }
        }
        let bytes = std::fs::metadata(&binary)?.len();
        let (method, path, body) = match function {
            "query" => (
                "POST",
                "/v1/query",
                Some(r#"{"dataset": "orders", "aggregates": [{"fn": "count"}]}"#),
            ),
            _ => ("GET", "/v1/me", None),
        };
        let mut event: Value = serde_json::from_str(include_str!("../../../events/me/get.json"))?;
        event["rawPath"] = json!(path);
        event["routeKey"] = json!(format!("{method} {path}"));
        event["requestContext"]["http"]["method"] = json!(method);
        event["requestContext"]["http"]["path"] = json!(path);
        event["headers"]["authorization"] = json!(auth);
        event["headers"]["content-type"] = json!("application/json");
        event["body"] = json!(body);

        let (mut init, mut first) = (Samples::default(), Samples::default());
        for _ in 0..iterations {
            let rt = Arc::new(Runtime::default());
            *rt.event.lock().unwrap_or_else(|e| e.into_inner()) = event.to_string();
            let api = Router::new()
                .route("/2018-06-01/runtime/invocation/next", get(next))
                .route(
                    "/2018-06-01/runtime/invocation/{id}/response",
                    post(respond),
                )
                .route("/2018-06-01/runtime/invocation/{id}/error", post(respond))
                .route("/2018-06-01/runtime/init/error", post(respond))
                .with_state(Arc::clone(&rt));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let server = tokio::spawn(async move { axum::serve(listener, api).await });
            let started = Instant::now();
            let mut child = tokio::process::Command::new(&binary)
                .env_clear()
                .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
                .env("PATH", "/usr/bin:/bin")
                .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
                .env("AWS_LAMBDA_FUNCTION_NAME", function)
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
                .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
                .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
                .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
                .env("AWS_REGION", "eu-west-1")
                .env("AWS_ACCESS_KEY_ID", "bench")
                .env("AWS_SECRET_ACCESS_KEY", "bench")
                .env("AWS_ENDPOINT_URL", &moto.endpoint)
                // Required in Lambda (the start-up check refuses the in-process queue); neither
                // `me` nor `query` links SQS any more.
                .env("USAGE_QUEUE_URL", &usage_queue_url)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()?;
            tokio::time::timeout(Duration::from_secs(30), rt.notify.notified()).await?;
            let _ = child.kill().await;
            server.abort();
            let init_at = rt
                .init_done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let response = rt.response.lock().unwrap_or_else(|e| e.into_inner()).take();
            match (init_at, response) {
                (Some(i), Some((r, body))) if body.contains("\"statusCode\":200") => {
                    init.record(i - started);
                    first.record(r - started);
                }
                (_, r) => {
                    eprintln!("{function}: {:?}", r.map(|(_, b)| b));
                    init.errors += 1;
                }
            }
        }
        let init_p50 = init.quantile_ms(0.5);
        let first_p50 = first.quantile_ms(0.5);
        init.report(
            &format!("{function}_init"),
            json!({"binary_bytes": bytes, "p50_vs_floor": (init_p50 / floor_ms * 100.0).round() / 100.0}),
        );
        first.report(
            &format!("{function}_first_response"),
            json!({"p50_vs_floor": (first_p50 / floor_ms * 100.0).round() / 100.0}),
        );
    }
    Ok(())
}

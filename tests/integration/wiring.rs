//! The composition root: nothing but the wiring imports it, each function links only the SDKs
//! its routes call, and an HTTP function in Lambda refuses to start with usage that would be
//! billed by the local adapter.

use tenantry::app::refuse_local_billing_in_lambda;
use tenantry_tests::{StripeStub, TestApp, local_sdk_config, repo_root};

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_imports_the_wiring() {
    let src = repo_root().join("shared/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 30, "{}", files.len());
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        if rel == "app.rs" || rel == "lib.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            assert!(
                !code.contains("crate::app::")
                    && !code.contains("crate::app;")
                    && !code.contains("crate::app::{"),
                "shared/src/{rel}:{}: imports the wiring: {line}",
                n + 1
            );
        }
    }
}

/// What each function links of the AWS SDK, from cargo's own resolution of that package alone
/// (as a per-package build, e.g. SAM's, resolves it); and that none links the local model's
/// inference crates (candle, tokenizers: the `minilm` feature is for the local runner).
#[test]
fn each_function_links_only_the_sdks_it_calls() {
    let sqs_and_bedrock = [
        "aws-sdk-bedrockruntime",
        "aws-sdk-secretsmanager",
        "aws-sdk-sqs",
    ];
    let sqs = ["aws-sdk-secretsmanager", "aws-sdk-sqs"];
    let secrets = ["aws-sdk-secretsmanager"];
    let expected: &[(&str, &[&str])] = &[
        ("me", &secrets),
        ("datasets", &secrets),
        ("usage", &secrets),
        ("api-keys", &secrets),
        ("audit", &secrets),
        ("admin", &secrets),
        ("authorizer", &secrets),
        ("stripe-webhook", &secrets),
        ("auth0-webhook", &secrets),
        ("usage-meter", &secrets),
        ("billing-reconcile", &sqs),
        ("vector-indexes", &secrets),
        ("records", &sqs),
        ("query", &secrets),
        ("ask", &sqs_and_bedrock),
        ("embed", &sqs_and_bedrock),
    ];
    let dirs = std::fs::read_dir(repo_root().join("functions"))
        .unwrap()
        .count();
    assert_eq!(
        dirs,
        expected.len(),
        "a function without an expectation here"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (function, sdks) in expected {
        let out = std::process::Command::new(&cargo)
            .args([
                "tree",
                "--offline",
                "-e",
                "normal",
                "--prefix",
                "none",
                "-p",
            ])
            .arg(format!("tenantry-fn-{function}"))
            .current_dir(repo_root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut linked: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(' ').next())
            .filter(|c| {
                (c.starts_with("aws-sdk-")
                    && *c != "aws-sdk-sts"
                    && *c != "aws-sdk-sso"
                    && *c != "aws-sdk-ssooidc")
                    || c.starts_with("candle-")
                    || *c == "tokenizers"
            })
            .map(str::to_owned)
            .collect();
        linked.sort();
        linked.dedup();
        assert_eq!(linked, *sdks, "{function}");
    }
}

#[tokio::test]
async fn in_lambda_local_billing_through_the_in_process_queue_refuses_to_start() {
    let local = TestApp::new().await;
    let err = refuse_local_billing_in_lambda(&local.app, true).unwrap_err();
    assert!(
        err.to_string().starts_with("USAGE_QUEUE_URL is invalid"),
        "{err}"
    );
    // Outside Lambda (the local runner, tests) it is the point of the local adapter.
    assert!(refuse_local_billing_in_lambda(&local.app, false).is_ok());

    // With an SQS usage queue, or with Stripe behind the in-process queue, it starts.
    let sdk = local_sdk_config("http://127.0.0.1:9").await;
    let sqs = TestApp::with_sdk_vars(
        &[(
            "USAGE_QUEUE_URL",
            "http://127.0.0.1:9/000000000000/usage".to_owned(),
        )],
        sdk,
    )
    .await;
    assert!(refuse_local_billing_in_lambda(&sqs.app, true).is_ok());
    let stripe = StripeStub::start().await;
    let billed = TestApp::with_stripe(&stripe, &[]).await;
    assert!(refuse_local_billing_in_lambda(&billed.app, true).is_ok());
}

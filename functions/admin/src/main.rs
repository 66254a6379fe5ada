//! The support plane's routes (`/admin/v1/...`) as a Lambda function. Everything but the name
//! lives in the `tenantry` crate.

// One request at a time per execution environment, so one thread: it also keeps TenantTx's
// pipeline (BEGIN + tenant + first statement) in a single write, see BENCHMARKS.md.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    tenantry::app::run_http_function("admin").await
}

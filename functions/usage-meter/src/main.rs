//! The SQS-triggered `usage-meter` function. Everything but the wiring lives in `tenantry-stripe`
//! and the `tenantry` crate.

// One batch at a time per execution environment, so one thread (as the HTTP functions).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    tenantry_stripe::run_usage_meter().await
}

//! The SQS-triggered `embed` function. Everything but the wiring lives in the `tenantry` crate.

// One batch at a time per execution environment, so one thread (as the HTTP functions).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    tenantry::app::run_embed_worker().await
}

//! API Gateway's REQUEST authorizer. Everything but the wiring lives in the `tenantry` crate.

// One authorization at a time per execution environment, so one thread (as the HTTP functions).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    tenantry::app::run_authorizer().await
}

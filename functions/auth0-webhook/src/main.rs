//! The `auth0-webhook` Lambda function. Everything but the wiring lives in `tenantry-stripe` (it
//! makes a new tenant's Stripe customer) and the `tenantry` crate.

// One request at a time per execution environment, so one thread: it also keeps TenantTx's
// pipeline (BEGIN + tenant + first statement) in a single write, see BENCHMARKS.md.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    tenantry_stripe::run_http_function("auth0-webhook").await
}

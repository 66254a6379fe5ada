//! The support plane's routes (`/admin/v1/...`) as a Lambda function. Everything but the wiring
//! lives in `tenantry-stripe` (creating a tenant makes its Stripe customer; a reconcile or a flush
//! for one tenant talks to Stripe) and the `tenantry` crate.

// One request at a time per execution environment, so one thread: it also keeps TenantTx's
// pipeline (BEGIN + tenant + first statement) in a single write, see BENCHMARKS.md.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    tenantry_stripe::run_http_function("admin").await
}

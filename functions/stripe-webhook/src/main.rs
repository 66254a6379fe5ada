//! The `stripe-webhook` Lambda function. Everything but the name lives in the `tenantry` crate;
//! it links the Stripe adapter to read meter error reports (thin events) back from Stripe.

// One request at a time per execution environment, so one thread: it also keeps TenantTx's
// pipeline (BEGIN + tenant + first statement) in a single write, see BENCHMARKS.md.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    tenantry_stripe::run_http_function("stripe-webhook").await
}

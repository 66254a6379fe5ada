//! The scheduled `billing-reconcile` function (EventBridge Scheduler). Everything but the wiring
//! lives in `tenantry-stripe` and the `tenantry` crate.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    tenantry_stripe::run_billing_reconcile().await
}

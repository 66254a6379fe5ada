//! The scheduled `vector-indexes` function (EventBridge Scheduler): per-tenant HNSW indexes
//! built and dropped concurrently. Everything but the wiring lives in the `tenantry` crate.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    tenantry::app::run_vector_indexes().await
}

//! `GET /v1/me` as a Lambda function. Everything but the name lives in the `tenantry` crate.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tenantry::app::run_http_function("me").await
}

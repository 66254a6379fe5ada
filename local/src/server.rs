//! Serves the routing table over HTTP/1.1 on localhost with `axum::serve`: the same edge
//! ([`tenantry::http::router`]) every Lambda function runs, plus the dev JWKS.

use std::sync::Arc;

use axum::routing::get;
use tenantry::App;

use crate::Error;

/// Accepts connections until Ctrl-C.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    jwk: &str,
) -> Result<(), Error> {
    let jwks = format!("{{\"keys\":[{jwk}]}}");
    // The local stand-in for Auth0's JWKS endpoint (outside the edge: no auth, no request id).
    let router = tenantry::http::router(app, &tenantry::api::all_routes()).route(
        "/.well-known/jwks.json",
        get(move || async move { ([(http::header::CONTENT_TYPE, "application/json")], jwks) }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

//! Route handlers and the routing table.
//!
//! [`ROUTES`] is the single source of truth: each Lambda function serves its rows, the local runner
//! serves them all, and a test checks the SAM template against it.

mod me;

use http::Method;

use crate::http::Route;

/// Every route of the HTTP API.
pub static ROUTES: &[Route] = &[Route {
    method: Method::GET,
    path: "/v1/me",
    function: "me",
    authenticated: true,
    handler: me::get,
}];

/// The routes one function serves.
pub fn routes_for(function: &str) -> Vec<&'static Route> {
    ROUTES.iter().filter(|r| r.function == function).collect()
}

/// Every route (the local runner serves them all).
pub fn all_routes() -> Vec<&'static Route> {
    ROUTES.iter().collect()
}

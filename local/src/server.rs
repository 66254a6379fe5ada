//! Serves the routing table over HTTP/1.1 on localhost with `axum::serve`: the same edge
//! ([`tenantry::http::router`]) every Lambda function runs, the dev JWKS, and the console.
//!
//! Paths under `/v1/` and `/admin/` are the API's (an unknown one is its 404 problem); the dev
//! endpoints are `/.well-known/jwks.json`, `/local/sign-in` (the demo people's dev tokens, for
//! the console's dev sign-in) and `/config.json` (tells the console to sign in that way); any
//! other path is the console's: a file of its build, else its `index.html` (client-side routes).
//! Every request must name this machine as its Host (DNS rebinding: see `only_loopback`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tenantry::App;
use tower::ServiceExt as _;
use tower_http::services::{ServeDir, ServeFile};

use crate::Error;

/// What the runner serves besides the API.
pub struct Extras {
    /// The dev JWK (public), served as the issuer's JWKS.
    pub jwk: &'static str,
    /// `{"identities": [...]}`: the dev sign-in's choices, with their tokens.
    pub sign_in: String,
    /// The console's build (`console/dist`), if it has been built.
    pub console: Option<PathBuf>,
}

fn json(body: String) -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn only_loopback(req: Request, next: axum::middleware::Next) -> Response {
    if loopback_host(req.headers()) {
        next.run(req).await
    } else {
        (
            http::StatusCode::FORBIDDEN,
            "the local runner answers http://127.0.0.1 and http://localhost only\n",
        )
            .into_response()
    }
}

/// Whether the request names this machine as its host (`127.0.0.1`, `localhost` or `[::1]`,
/// any port).
fn loopback_host(headers: &http::HeaderMap) -> bool {
    let Some(host) = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

fn is_api(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/") || path == "/admin" || path.starts_with("/admin/")
}

const NOT_BUILT: &str = "<!doctype html><title>Tenantry</title><h1>The console is not built</h1>\
    <p>scripts/run-local builds it (it needs Node.js and npm); or run \
    <code>npm ci &amp;&amp; npm run build</code> in <code>console/</code> and reload. The API \
    is served under <code>/v1</code> and <code>/admin/v1</code>.</p>";

/// The console's files; a path that is not a file is a client-side route: `index.html`.
fn console_service(dir: &Path) -> ServeDir<ServeFile> {
    ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html")))
}

/// Accepts connections until Ctrl-C.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    extras: Extras,
) -> Result<(), Error> {
    let jwks = format!("{{\"keys\":[{}]}}", extras.jwk);
    let sign_in = extras.sign_in;
    let api = tenantry::http::router(app, &tenantry::api::all_routes());
    let console = extras.console.as_deref().map(console_service);
    let router = Router::new()
        // The local stand-in for Auth0's JWKS endpoint (outside the edge: no auth, no request id).
        .route(
            "/.well-known/jwks.json",
            get(move || async move { json(jwks) }),
        )
        .route("/local/sign-in", get(move || async move { json(sign_in) }))
        .route(
            "/config.json",
            get(|| async { json(r#"{"auth":"local"}"#.to_owned()) }),
        )
        .fallback(move |req: Request| {
            let api = api.clone();
            let console = console.clone();
            async move {
                if is_api(req.uri().path()) {
                    return api.oneshot(req).await.into_response();
                }
                match console {
                    Some(console) => console.oneshot(req).await.into_response(),
                    None => (http::StatusCode::NOT_FOUND, Html(NOT_BUILT)).into_response(),
                }
            }
        });
    // Every path, to this machine's own pages only: the runner trusts tokens signed with the
    // committed dev key, so a page elsewhere that rebinds its DNS name to 127.0.0.1 (it still
    // sends its own name as Host) must not reach the API or the dev sign-in.
    let router = router.layer(axum::middleware::from_fn(only_loopback));
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::loopback_host;

    fn host(h: &str) -> http::HeaderMap {
        let mut m = http::HeaderMap::new();
        m.insert(http::header::HOST, h.parse().unwrap());
        m
    }

    #[test]
    fn only_this_machine_names_get_dev_tokens() {
        for ok in [
            "127.0.0.1:3000",
            "localhost:3000",
            "localhost",
            "[::1]:3000",
            "127.0.0.1",
        ] {
            assert!(loopback_host(&host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:3000",
            "127.0.0.1.evil.example:3000",
            "localhost.evil.example",
            "evil.example",
            "127.0.0.2:3000",
            "localhost:3000:1",
            ":3000",
        ] {
            assert!(!loopback_host(&host(bad)), "{bad}");
        }
        assert!(!loopback_host(&http::HeaderMap::new()));
    }
}

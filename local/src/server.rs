//! Serves the routing table over HTTP/1.1 on localhost, turning each request into the same
//! `lambda_http::Request` API Gateway would deliver, and each response back.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lambda_http::{Body, RequestExt as _};
use tenantry::App;
use tenantry::http::ApiError;

use crate::Error;

/// Accepts connections until Ctrl-C.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    jwk: &str,
) -> Result<(), Error> {
    let jwks: Arc<str> = format!("{{\"keys\":[{jwk}]}}").into();
    let routes = Arc::new(tenantry::api::all_routes());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let (app, jwks, routes) = (app.clone(), jwks.clone(), routes.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (app, jwks, routes) = (app.clone(), jwks.clone(), routes.clone());
                async move { Ok::<_, Infallible>(handle(&app, &jwks, &routes, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    app: &App,
    jwks: &str,
    routes: &[&'static tenantry::http::Route],
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    // The local stand-in for Auth0's JWKS endpoint.
    if req.uri().path() == "/.well-known/jwks.json" {
        return hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(jwks.to_owned())))
            .unwrap_or_default();
    }
    let (parts, body) = req.into_parts();
    // Read at most one byte past the limit: enough for the dispatcher to answer 413.
    let limit = app.config.http.max_body_bytes + 1;
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::from(vec![0u8; limit]),
    };
    let body = if bytes.is_empty() {
        Body::Empty
    } else {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => Body::Text(text),
            Err(e) => Body::Binary(e.into_bytes()),
        }
    };
    let mut query: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        query
            .entry(k.into_owned())
            .or_default()
            .push(v.into_owned());
    }
    let request = http::Request::from_parts(parts, body).with_query_string_parameters(query);
    let resp = tenantry::http::dispatch(app, routes, request).await;
    let (parts, body) = resp.into_parts();
    let bytes = match body {
        Body::Empty => Bytes::new(),
        Body::Text(t) => Bytes::from(t),
        Body::Binary(b) => Bytes::from(b),
        _ => {
            return ApiError::internal(std::io::Error::other("unsupported body"))
                .into_response("local")
                .map(|_| Full::new(Bytes::new()));
        }
    };
    hyper::Response::from_parts(parts, Full::new(bytes))
}

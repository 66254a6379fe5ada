//! `POST /v1/customers` with Stripe's idempotency: a key's first request that ran is saved
//! (parameters and answer); the same key with the same parameters gets that answer again, with
//! other parameters a 400 `idempotency_error`. A refusal before the endpoint ran (the 429s a test
//! queues with [`StripeStub::fail_customers`](super::StripeStub::fail_customers)) saves nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::json;

use super::{State, error, respond};

/// A customer the stub made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StubCustomer {
    /// `cus_...`
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its metadata.
    pub metadata: Vec<(String, String)>,
    /// The idempotency key it was made with.
    pub idempotency_key: Option<String>,
}

pub(super) fn create(
    state: &Arc<Mutex<State>>,
    idempotency_key: Option<String>,
    form: &HashMap<String, String>,
) -> hyper::Response<Full<Bytes>> {
    let mut s = state.lock().unwrap();
    s.customer_calls += 1;
    if s.customer_failures > 0 {
        s.customer_failures -= 1;
        return error(
            429,
            "invalid_request_error",
            Some("rate_limit"),
            "Injected failure.",
        );
    }
    let mut params: Vec<(String, String)> =
        form.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    params.sort();
    if let Some(key) = &idempotency_key
        && let Some((saved_params, saved)) = s.customer_keys.get(key)
    {
        if *saved_params != params {
            return error(
                400,
                "idempotency_error",
                None,
                "Keys for idempotent requests can only be used with the same parameters they were first used with.",
            );
        }
        return respond(200, saved.clone());
    }
    let id = format!("cus_stub{:04}", s.created_customers.len() + 1);
    let metadata: Vec<(String, String)> = params
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[")
                .and_then(|k| k.strip_suffix(']'))
                .map(|k| (k.to_owned(), v.clone()))
        })
        .collect();
    let name = form.get("name").cloned().unwrap_or_default();
    let body = json!({
        "id": id, "object": "customer", "name": name, "livemode": false,
        "created": s.now(), "metadata": metadata.iter().cloned().collect::<HashMap<_, _>>(),
    });
    s.customers.insert(id.clone());
    s.created_customers.push(StubCustomer {
        id,
        name,
        metadata,
        idempotency_key: idempotency_key.clone(),
    });
    if let Some(key) = idempotency_key {
        s.customer_keys.insert(key, (params, body.clone()));
    }
    respond(200, body)
}

//! `POST /v1/webhooks/stripe` and `POST /v1/webhooks/auth0`: no user token (the senders are
//! Stripe and Auth0); each proves itself instead — a signature over the raw body, or a shared
//! secret. The work is in [`crate::billing::webhooks`].

use std::sync::Arc;

use axum::extract::State;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::App;
use crate::billing::webhooks::{
    Auth0Event, Outcome, StripeEvent, ThinEvent, ThinEventError, apply_auth0_event,
    apply_stripe_event, apply_thin_event, bearer_matches, verify_stripe_signature,
};
use crate::http::{ApiError, HandlerResult, RawBody, json_from, json_response, require_json};

fn not_configured(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "webhook_not_configured",
        format!("This deployment has no {what} configured."),
    )
    // The deployment's state, not a failure: one error line per request would bury real ones.
    .expected()
}

pub(super) async fn stripe(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> HandlerResult {
    let cfg = &app.config.billing;
    if cfg.stripe_webhook_secrets.is_empty() {
        return Err(not_configured("Stripe webhook signing secret"));
    }
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    verify_stripe_signature(
        header,
        &body,
        &cfg.stripe_webhook_secrets,
        cfg.stripe_webhook_tolerance_secs,
        chrono::Utc::now().timestamp(),
    )
    .map_err(|e| {
        tracing::warn!(reason = %e, "stripe webhook refused");
        ApiError::bad_request(
            "invalid_signature",
            "The Stripe-Signature header does not verify this body.",
        )
    })?;
    // The signature covers the bytes; only then are they read.
    require_json(&headers)?;
    let request_id = crate::http::current_request_id();
    // A thin event (an event destination's) or a snapshot event (a webhook endpoint's).
    let thin = serde_json::from_slice::<serde_json::Value>(&body)
        .is_ok_and(|v| v.get("object").and_then(|o| o.as_str()) == Some("v2.core.event"));
    let outcome = if thin {
        let event: ThinEvent = json_from(&body)?;
        apply_thin_event(&app.db, app.billing.as_ref(), &event, Some(&request_id))
            .await
            .map_err(|e| match e {
                ThinEventError::Db(e) => ApiError::from(e),
                ThinEventError::Provider(e) => {
                    tracing::warn!(error = %e, "thin event not applied; Stripe will redeliver it");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "provider_unavailable",
                        "The event's details could not be read from Stripe; retry later.",
                    )
                }
            })?
    } else {
        let event: StripeEvent = json_from(&body)?;
        apply_stripe_event(&app.db, &event, Some(&request_id)).await?
    };
    json_response(
        StatusCode::OK,
        &json!({"received": true, "outcome": outcome}),
    )
}

/// Auth0 Event Streams deliver one CloudEvent per request; a batch (array) is taken too.
#[derive(Deserialize)]
#[serde(untagged)]
enum Auth0Body {
    One(Box<Auth0Event>),
    Many(Vec<Auth0Event>),
}

pub(super) async fn auth0(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> HandlerResult {
    let Some(secret) = &app.config.billing.auth0_webhook_secret else {
        return Err(not_configured("Auth0 webhook secret"));
    };
    let header = headers.get("authorization").and_then(|v| v.to_str().ok());
    if !bearer_matches(header, secret) {
        tracing::warn!("auth0 webhook refused: bad or missing secret");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_webhook_secret",
            "Send the shared secret as Authorization: Bearer <secret>.",
        ));
    }
    require_json(&headers)?;
    let events = match json_from::<Auth0Body>(&body)? {
        Auth0Body::One(e) => vec![*e],
        Auth0Body::Many(list) => list,
    };
    let request_id = crate::http::current_request_id();
    let (mut applied, mut duplicates, mut ignored) = (0, 0, 0);
    for e in &events {
        match apply_auth0_event(&app.db, app.billing.as_ref(), e, Some(&request_id)).await? {
            Outcome::Applied => applied += 1,
            Outcome::Duplicate => duplicates += 1,
            Outcome::Ignored => ignored += 1,
        }
    }
    json_response(
        StatusCode::OK,
        &json!({"applied": applied, "duplicates": duplicates, "ignored": ignored}),
    )
}

//! `POST /v1/webhooks/stripe` and `POST /v1/webhooks/auth0`: no user token (the senders are
//! Stripe and Auth0); each proves itself instead — a signature over the raw body, or a shared
//! secret. The work is in [`crate::billing::webhooks`].

use http::StatusCode;
use lambda_http::Request;
use serde::Deserialize;
use serde_json::json;

use crate::App;
use crate::billing::webhooks::{
    Auth0Event, Outcome, StripeEvent, apply_auth0_event, apply_stripe_event, bearer_matches,
    verify_stripe_signature,
};
use crate::http::{ApiError, HandlerFuture, RequestCtx, json_body, json_response};

fn not_configured(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "webhook_not_configured",
        format!("This deployment has no {what} configured."),
    )
}

pub(super) fn stripe<'a>(
    app: &'a App,
    _ctx: &'a RequestCtx,
    req: &'a Request,
) -> HandlerFuture<'a> {
    Box::pin(async move {
        let cfg = &app.config.billing;
        if cfg.stripe_webhook_secrets.is_empty() {
            return Err(not_configured("Stripe webhook signing secret"));
        }
        let header = req
            .headers()
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok());
        let body: &[u8] = req.body().as_ref();
        verify_stripe_signature(
            header,
            body,
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
        let event: StripeEvent = json_body(req)?;
        let outcome = apply_stripe_event(&app.db, &event).await?;
        json_response(
            StatusCode::OK,
            &json!({"received": true, "outcome": outcome}),
        )
    })
}

/// Auth0 Event Streams deliver one CloudEvent per request; a batch (array) is taken too.
#[derive(Deserialize)]
#[serde(untagged)]
enum Auth0Body {
    One(Box<Auth0Event>),
    Many(Vec<Auth0Event>),
}

pub(super) fn auth0<'a>(app: &'a App, _ctx: &'a RequestCtx, req: &'a Request) -> HandlerFuture<'a> {
    Box::pin(async move {
        let Some(secret) = &app.config.billing.auth0_webhook_secret else {
            return Err(not_configured("Auth0 webhook secret"));
        };
        let header = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if !bearer_matches(header, secret) {
            tracing::warn!("auth0 webhook refused: bad or missing secret");
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_webhook_secret",
                "Send the shared secret as Authorization: Bearer <secret>.",
            ));
        }
        let events = match json_body::<Auth0Body>(req)? {
            Auth0Body::One(e) => vec![*e],
            Auth0Body::Many(list) => list,
        };
        let (mut applied, mut duplicates, mut ignored) = (0, 0, 0);
        for e in &events {
            match apply_auth0_event(&app.db, e).await? {
                Outcome::Applied => applied += 1,
                Outcome::Duplicate => duplicates += 1,
                Outcome::Ignored => ignored += 1,
            }
        }
        json_response(
            StatusCode::OK,
            &json!({"applied": applied, "duplicates": duplicates, "ignored": ignored}),
        )
    })
}

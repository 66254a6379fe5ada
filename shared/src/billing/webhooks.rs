//! Stripe and Auth0 webhooks (see `api::webhooks` for the routes).

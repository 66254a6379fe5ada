//! What a function builds once per cold start and lends to every request.

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::billing::{BillingSink, LocalBilling};
use crate::config::{Config, ConfigError};
use crate::db::{Db, DbError};
use crate::rag::answer::{Answerer, LocalAnswerer};
use crate::rag::bedrock::{BedrockAnswerer, BedrockEmbedder};
use crate::rag::embed::{Embedder, LocalEmbedder};
use crate::rag::queue::{EmbedQueue, InProcessEmbedQueue, SqsEmbedQueue};
use crate::usage::queue::{InProcessUsageQueue, SqsUsageQueue, UsageQueue};

/// Why the function could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database pool could not be built.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Configuration, pool and clients: built once per cold start, shared by reference.
#[derive(Debug)]
pub struct App {
    /// The configuration it was built from.
    pub config: Config,
    /// The app role's connection pool.
    pub db: Db,
    /// Bearer-token and API-key verification.
    pub auth: Authenticator,
    /// Text → vectors (questions, and chunks through the queue).
    pub embedder: Arc<dyn Embedder>,
    /// Sources → answer.
    pub answerer: Arc<dyn Answerer>,
    /// Where embedding work goes after ingest.
    pub embed_queue: Arc<dyn EmbedQueue>,
    /// Where billable requests send their usage.
    pub usage_queue: Arc<dyn UsageQueue>,
    /// The billing provider (local unless a Stripe-linked function supplies its adapter).
    pub billing: Arc<dyn BillingSink>,
}

impl App {
    /// Builds the app with the local adapters (no AWS). Opens no connection yet.
    pub fn new(config: Config) -> Result<Self, StartError> {
        Self::with_sdk(config, None)
    }

    /// Builds the app; ports configured for AWS use clients made from `sdk`.
    pub fn with_sdk(
        config: Config,
        sdk: Option<&aws_config::SdkConfig>,
    ) -> Result<Self, StartError> {
        Self::with_billing(config, sdk, None)
    }

    /// As [`with_sdk`](Self::with_sdk), with the billing provider's adapter (None: the local
    /// one, which records meter events instead of sending them).
    pub fn with_billing(
        config: Config,
        sdk: Option<&aws_config::SdkConfig>,
        billing: Option<Arc<dyn BillingSink>>,
    ) -> Result<Self, StartError> {
        let db = Db::connect(&config.db)?;
        let auth = Authenticator::new(&config.auth, db.clone());
        let rag = &config.rag;
        let bedrock = || {
            sdk.map(crate::rag::bedrock::client)
                .ok_or(ConfigError::Invalid {
                    name: "BEDROCK_*_MODEL_ID",
                    reason: "set, but no AWS configuration was loaded".into(),
                })
        };
        let embedder: Arc<dyn Embedder> = match &rag.embed_model_id {
            Some(model) => Arc::new(BedrockEmbedder::new(
                bedrock()?,
                model,
                rag.embed_dims,
                rag.embed_concurrency,
            )),
            None => Arc::new(LocalEmbedder::new(rag.embed_dims)),
        };
        let answerer: Arc<dyn Answerer> = match &rag.answer_model_id {
            Some(model) => Arc::new(BedrockAnswerer::new(
                bedrock()?,
                model,
                rag.answer_max_tokens,
            )),
            None => Arc::new(LocalAnswerer::default()),
        };
        let embed_queue: Arc<dyn EmbedQueue> = match (&rag.embed_queue_url, sdk) {
            (Some(url), Some(sdk)) => {
                Arc::new(SqsEmbedQueue::new(aws_sdk_sqs::Client::new(sdk), url))
            }
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    name: "EMBED_QUEUE_URL",
                    reason: "set, but no AWS configuration was loaded".into(),
                }
                .into());
            }
            (None, _) => Arc::new(InProcessEmbedQueue::new(db.clone(), Arc::clone(&embedder))),
        };
        let billing: Arc<dyn BillingSink> =
            billing.unwrap_or_else(|| Arc::new(LocalBilling::default()));
        let usage_queue: Arc<dyn UsageQueue> = match (&config.billing.usage_queue_url, sdk) {
            (Some(url), Some(sdk)) => {
                Arc::new(SqsUsageQueue::new(aws_sdk_sqs::Client::new(sdk), url))
            }
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    name: "USAGE_QUEUE_URL",
                    reason: "set, but no AWS configuration was loaded".into(),
                }
                .into());
            }
            (None, _) => Arc::new(InProcessUsageQueue::new(
                db.clone(),
                Arc::clone(&billing),
                config.billing.meter.clone(),
            )),
        };
        if billing.kind() == "local" {
            tracing::info!(
                "billing: local adapter: meter events are recorded in this process, not sent to Stripe"
            );
        }
        tracing::info!(
            jwks_url = %config.auth.jwks_url,
            pool_max = config.db.pool_max,
            embedder = embedder.model(),
            answerer = answerer.model(),
            embed_queue = embed_queue.kind(),
            usage_queue = usage_queue.kind(),
            billing = billing.kind(),
            "app ready"
        );
        Ok(Self {
            config,
            db,
            auth,
            embedder,
            answerer,
            embed_queue,
            usage_queue,
            billing,
        })
    }

    /// Builds the app from the environment (and Secrets Manager, where configured).
    pub async fn from_env() -> Result<Self, StartError> {
        Self::from_env_with_billing(|_| Ok(None)).await
    }

    /// As [`from_env`](Self::from_env), with the billing adapter `billing` makes from the
    /// resolved configuration (None: the local one).
    pub async fn from_env_with_billing(
        billing: impl FnOnce(&Config) -> Result<Option<Arc<dyn BillingSink>>, ConfigError>,
    ) -> Result<Self, StartError> {
        let config = Config::from_env()?;
        let sdk = match config.needs_aws() {
            true => Some(aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await),
            false => None,
        };
        let config = config.resolve(sdk.as_ref()).await?;
        let billing = billing(&config)?;
        Self::with_billing(config, sdk.as_ref(), billing)
    }
}

/// Whether this process is a Lambda execution environment.
pub fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
}

/// The whole `main` of an HTTP function: builds the app once, then serves `function`'s routes.
pub async fn run_http_function(function: &'static str) -> Result<(), lambda_http::Error> {
    crate::telemetry::init();
    let app = Arc::new(App::from_env().await?);
    let routes = crate::api::routes_for(function);
    if routes.is_empty() {
        return Err(format!("no routes for function {function}").into());
    }
    lambda_http::run(crate::http::router(app, &routes)).await
}

/// The whole `main` of the `authorizer` function (API Gateway's REQUEST authorizer): the
/// configuration, the pool and the [`Authenticator`], nothing else.
pub async fn run_authorizer() -> Result<(), lambda_runtime::Error> {
    use crate::auth::authorizer::Authorizer;
    use aws_lambda_events::apigw::ApiGatewayV2CustomAuthorizerV2Request;
    crate::telemetry::init();
    let ttl = match std::env::var("AUTHORIZER_CACHE_SECS") {
        Ok(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= 300)
            .ok_or(ConfigError::Invalid {
                name: "AUTHORIZER_CACHE_SECS",
                reason: "whole seconds, at most 300".into(),
            })?,
        Err(_) => 30,
    };
    let config = Config::from_env()?;
    let sdk = match config.needs_aws() {
        true => Some(aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await),
        false => None,
    };
    let config = config.resolve(sdk.as_ref()).await?;
    let db = Db::connect(&config.db)?;
    let authorizer = Arc::new(Authorizer::new(
        Authenticator::new(&config.auth, db),
        std::time::Duration::from_secs(ttl),
    ));
    tracing::info!(cache_secs = ttl, "authorizer ready");
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<ApiGatewayV2CustomAuthorizerV2Request>| {
            let authorizer = Arc::clone(&authorizer);
            async move { Ok::<_, lambda_runtime::Error>(authorizer.handle(&event.payload).await?) }
        },
    ))
    .await
}

/// The whole `main` of the `embed` function (SQS batches and the scheduled sweep).
pub async fn run_embed_worker() -> Result<(), lambda_runtime::Error> {
    crate::telemetry::init();
    let app = Arc::new(App::from_env().await?);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<crate::rag::queue::EmbedEvent>| {
            let app = Arc::clone(&app);
            async move { handle_embed_event(&app, event.payload).await }
        },
    ))
    .await
}

/// The `embed` function's handler. A sweep that cannot reach the database fails the invocation
/// (the scheduler retries it); SQS batches report failed messages one by one.
pub async fn handle_embed_event(
    app: &App,
    event: crate::rag::queue::EmbedEvent,
) -> Result<serde_json::Value, lambda_runtime::Error> {
    use crate::rag::queue::{EmbedEvent, handle_sqs, sweep};
    Ok(match event {
        EmbedEvent::Sweep { sweep: input } => {
            serde_json::to_value(sweep(&app.db, app.embed_queue.as_ref(), &input).await?)?
        }
        EmbedEvent::Sqs(batch) => {
            serde_json::to_value(handle_sqs(&app.db, app.embedder.as_ref(), batch).await)?
        }
    })
}

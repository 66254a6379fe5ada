//! The composition root: builds an [`App`] from configuration and runs a function with it. Every
//! function's `main` calls one `run_*` here (or the Stripe crate's, which builds on
//! [`AppBuilder`]); no other module imports this one.
//!
//! What a function links is its cargo features: `sqs` (the SQS adapters of the embed and usage
//! queues) and `bedrock` (the Bedrock embedder and answerer); `minilm` (all-MiniLM-L6-v2
//! in-process) is for the local runner, the tests and the benchmarks only. A port whose adapter the
//! configuration names but this function does not link is [`Unlinked`]: it fails each call
//! with a clear error instead of quietly using a local stand-in. A function links what its
//! routes call, so the unlinked ports of a function are the ones it never calls.

use std::sync::Arc;

use crate::App;
use crate::TenantId;
use crate::analytics::planner::local::LocalPlanner;
use crate::analytics::planner::{PlanError, PlanFuture, PlanRequest, QueryPlanner};
use crate::auth::Authenticator;
use crate::billing::reconcile::ReconcileQueue;
use crate::billing::{BillingSink, LocalBilling};
use crate::config::{Config, ConfigError};
use crate::db::{Db, DbError};
use crate::rag::answer::{AnswerError, AnswerFuture, Answerer, LocalAnswerer, Source};
use crate::rag::embed::{EmbedError, EmbedFuture, Embedder, LocalEmbedder};
use crate::rag::queue::{EmbedQueue, EnqueueFuture, InProcessEmbedQueue, QueueError};
use crate::runtime::Work;
use crate::telemetry::LogFormat;
use crate::usage::UsageEvent;
use crate::usage::queue::{InProcessUsageQueue, SendFuture, UsageQueue, UsageQueueError};

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

/// `config` with what comes from AWS filled in ([`Config::resolve`]), and the AWS configuration
/// it was read with (loaded only when the configuration names something in AWS).
async fn resolve_with_aws(
    config: Config,
) -> Result<(Config, Option<aws_config::SdkConfig>), ConfigError> {
    let sdk = match config.needs_aws() {
        true => Some(aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await),
        false => None,
    };
    Ok((config.resolve(sdk.as_ref()).await?, sdk))
}

/// Whether this process is a Lambda execution environment.
pub fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
}

/// How in-process work runs here: inline in Lambda, in the background elsewhere.
pub fn work_mode() -> Work {
    if in_lambda() {
        Work::Inline
    } else {
        Work::Background
    }
}

/// The log format here: JSON in Lambda, text elsewhere.
pub fn log_format() -> LogFormat {
    if in_lambda() {
        LogFormat::Lambda
    } else {
        LogFormat::Local
    }
}

/// Builds an [`App`]: the configuration, plus what the caller supplies (an AWS SDK configuration,
/// a billing adapter, how in-process work runs).
#[derive(Debug)]
pub struct AppBuilder {
    config: Config,
    sdk: Option<aws_config::SdkConfig>,
    billing: Option<Arc<dyn BillingSink>>,
    embed_queue: Option<Arc<dyn EmbedQueue>>,
    work: Work,
}

impl App {
    /// A builder over `config`: local adapters, no AWS, background work.
    pub fn builder(config: Config) -> AppBuilder {
        AppBuilder {
            config,
            sdk: None,
            billing: None,
            embed_queue: None,
            work: Work::Background,
        }
    }
}

impl AppBuilder {
    /// The configuration from the environment, with its secrets resolved (Secrets Manager where
    /// configured), the SDK configuration loaded if any setting needs AWS, and this process's
    /// work mode.
    pub async fn from_env() -> Result<Self, StartError> {
        let (config, sdk) = resolve_with_aws(Config::from_env()?).await?;
        let mut b = App::builder(config).work(work_mode());
        b.sdk = sdk;
        Ok(b)
    }

    /// The configuration it will build from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Ports configured for AWS use clients made from `sdk`.
    pub fn sdk(mut self, sdk: aws_config::SdkConfig) -> Self {
        self.sdk = Some(sdk);
        self
    }

    /// The billing provider's adapter (without one: the local adapter, which records meter
    /// events instead of sending them).
    pub fn billing(mut self, billing: Option<Arc<dyn BillingSink>>) -> Self {
        self.billing = billing;
        self
    }

    /// Where ingests ask for their chunks' embedding, instead of what the configuration says
    /// (SQS, or the in-process worker): for a benchmark that embeds elsewhere, or not yet.
    pub fn embed_queue(mut self, queue: Arc<dyn EmbedQueue>) -> Self {
        self.embed_queue = Some(queue);
        self
    }

    /// How in-process queues run their work.
    pub fn work(mut self, work: Work) -> Self {
        self.work = work;
        self
    }

    /// Builds the app. Opens no connection yet.
    pub fn build(self) -> Result<App, StartError> {
        let AppBuilder {
            config,
            sdk,
            billing,
            embed_queue,
            work,
        } = self;
        let db = Db::connect(&config.db)?;
        let support_db = match &config.db.support_url {
            Some(url) => Some(Db::connect(&crate::db::DbConfig {
                url: url.clone(),
                support_url: None,
                impersonation_url: None,
                ..config.db.clone()
            })?),
            None => None,
        };
        let impersonation_db = match &config.db.impersonation_url {
            Some(url) => Some(Db::connect(&crate::db::DbConfig {
                url: url.clone(),
                support_url: None,
                impersonation_url: None,
                ..config.db.clone()
            })?),
            None => None,
        };
        let auth = Authenticator::new(&config.auth, db.clone());
        let rag = &config.rag;
        let embedder: Arc<dyn Embedder> = match (&rag.embed_model_id, &rag.embed_model_dir) {
            (Some(model), _) => bedrock_embedder(sdk.as_ref(), model, &config)?,
            (None, Some(dir)) => minilm_embedder(dir)?,
            (None, None) => Arc::new(LocalEmbedder::new(rag.embed_dims)),
        };
        let answerer: Arc<dyn Answerer> = match &rag.answer_model_id {
            Some(model) => bedrock_answerer(sdk.as_ref(), model, &config)?,
            // With all-MiniLM-L6-v2 the local answerer picks sentences by that model too; the
            // hashed embedder's 256 dimensions otherwise (what its thresholds were set on),
            // never Bedrock per sentence.
            None if rag.embed_model_dir.is_some() => {
                Arc::new(LocalAnswerer::with_embedder(Arc::clone(&embedder)))
            }
            None => Arc::new(LocalAnswerer::default()),
        };
        let planner: Arc<dyn QueryPlanner> = match &rag.planner_model_id {
            Some(model) => bedrock_planner(sdk.as_ref(), model)?,
            None => Arc::new(LocalPlanner),
        };
        let embed_queue: Arc<dyn EmbedQueue> = match (embed_queue, &rag.embed_queue_url) {
            (Some(queue), _) => queue,
            (None, Some(url)) => sqs_embed_queue(sdk.as_ref(), url)?,
            (None, None) => Arc::new(InProcessEmbedQueue::new(
                db.clone(),
                Arc::clone(&embedder),
                work,
            )),
        };
        let billing: Arc<dyn BillingSink> =
            billing.unwrap_or_else(|| Arc::new(LocalBilling::default()));
        let usage_queue: Arc<dyn UsageQueue> = match &config.billing.usage_queue_url {
            Some(url) => sqs_usage_queue(sdk.as_ref(), url)?,
            None => Arc::new(InProcessUsageQueue::new(
                db.clone(),
                Arc::clone(&billing),
                config.billing.meter.clone(),
                work,
            )),
        };
        let reconcile_queue = match &config.billing.reconcile_queue_url {
            Some(url) => Some(sqs_reconcile_queue(sdk.as_ref(), url)?),
            None => None,
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
            planner = planner.model(),
            embed_queue = embed_queue.kind(),
            usage_queue = usage_queue.kind(),
            billing = billing.kind(),
            "app ready"
        );
        let plan_gate = crate::billing::plans::PlanGate::new(config.auth.lookup_cache);
        Ok(App {
            plan_gate,
            datasets: Default::default(),
            config,
            db,
            support_db,
            impersonation_db,
            auth,
            embedder,
            answerer,
            planner,
            embed_queue,
            usage_queue,
            reconcile_queue,
            billing,
        })
    }
}

#[cfg(feature = "minilm")]
fn minilm_embedder(dir: &std::path::Path) -> Result<Arc<dyn Embedder>, ConfigError> {
    let started = std::time::Instant::now();
    let embedder =
        crate::rag::minilm::MiniLmEmbedder::load(dir).map_err(|e| ConfigError::Invalid {
            name: "EMBED_MODEL_DIR",
            reason: format!("not a usable all-MiniLM-L6-v2 directory: {e}"),
        })?;
    tracing::info!(
        load_ms = started.elapsed().as_millis() as u64,
        "embedder: all-MiniLM-L6-v2 loaded"
    );
    Ok(Arc::new(embedder))
}

#[cfg(not(feature = "minilm"))]
fn minilm_embedder(_: &std::path::Path) -> Result<Arc<dyn Embedder>, ConfigError> {
    Ok(Arc::new(Unlinked("embedder (all-MiniLM-L6-v2)")))
}

#[cfg(any(feature = "sqs", feature = "bedrock"))]
fn no_sdk(name: &'static str) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: "set, but no AWS configuration was loaded".into(),
    }
}

#[cfg(feature = "bedrock")]
fn bedrock_embedder(
    sdk: Option<&aws_config::SdkConfig>,
    model: &str,
    config: &Config,
) -> Result<Arc<dyn Embedder>, ConfigError> {
    let sdk = sdk.ok_or_else(|| no_sdk("BEDROCK_EMBED_MODEL_ID"))?;
    let rag = &config.rag;
    Ok(Arc::new(crate::rag::bedrock::BedrockEmbedder::new(
        crate::rag::bedrock::client(sdk),
        model,
        rag.embed_dims,
        rag.embed_concurrency,
    )))
}

#[cfg(not(feature = "bedrock"))]
fn bedrock_embedder(
    _: Option<&aws_config::SdkConfig>,
    _: &str,
    _: &Config,
) -> Result<Arc<dyn Embedder>, ConfigError> {
    Ok(Arc::new(Unlinked("embedder (Bedrock)")))
}

#[cfg(feature = "bedrock")]
fn bedrock_answerer(
    sdk: Option<&aws_config::SdkConfig>,
    model: &str,
    config: &Config,
) -> Result<Arc<dyn Answerer>, ConfigError> {
    let sdk = sdk.ok_or_else(|| no_sdk("BEDROCK_ANSWER_MODEL_ID"))?;
    Ok(Arc::new(crate::rag::bedrock::BedrockAnswerer::new(
        crate::rag::bedrock::client(sdk),
        model,
        config.rag.answer_max_tokens,
    )))
}

#[cfg(not(feature = "bedrock"))]
fn bedrock_answerer(
    _: Option<&aws_config::SdkConfig>,
    _: &str,
    _: &Config,
) -> Result<Arc<dyn Answerer>, ConfigError> {
    Ok(Arc::new(Unlinked("answerer (Bedrock)")))
}

#[cfg(feature = "bedrock")]
fn bedrock_planner(
    sdk: Option<&aws_config::SdkConfig>,
    model: &str,
) -> Result<Arc<dyn QueryPlanner>, ConfigError> {
    let sdk = sdk.ok_or_else(|| no_sdk("BEDROCK_PLANNER_MODEL_ID"))?;
    Ok(Arc::new(
        crate::analytics::planner::bedrock::BedrockPlanner::new(
            crate::rag::bedrock::client(sdk),
            model,
        ),
    ))
}

#[cfg(not(feature = "bedrock"))]
fn bedrock_planner(
    _: Option<&aws_config::SdkConfig>,
    _: &str,
) -> Result<Arc<dyn QueryPlanner>, ConfigError> {
    Ok(Arc::new(Unlinked("query planner (Bedrock)")))
}

#[cfg(feature = "sqs")]
fn sqs_embed_queue(
    sdk: Option<&aws_config::SdkConfig>,
    url: &str,
) -> Result<Arc<dyn EmbedQueue>, ConfigError> {
    let sdk = sdk.ok_or_else(|| no_sdk("EMBED_QUEUE_URL"))?;
    Ok(Arc::new(crate::rag::queue::SqsEmbedQueue::new(
        aws_sdk_sqs::Client::new(sdk),
        url,
    )))
}

#[cfg(not(feature = "sqs"))]
fn sqs_embed_queue(
    _: Option<&aws_config::SdkConfig>,
    _: &str,
) -> Result<Arc<dyn EmbedQueue>, ConfigError> {
    Ok(Arc::new(Unlinked("embed queue (SQS)")))
}

#[cfg(feature = "sqs")]
fn sqs_usage_queue(
    sdk: Option<&aws_config::SdkConfig>,
    url: &str,
) -> Result<Arc<dyn UsageQueue>, ConfigError> {
    let sdk = sdk.ok_or_else(|| no_sdk("USAGE_QUEUE_URL"))?;
    Ok(Arc::new(crate::usage::queue::SqsUsageQueue::new(
        aws_sdk_sqs::Client::new(sdk),
        url,
    )))
}

#[cfg(not(feature = "sqs"))]
fn sqs_usage_queue(
    _: Option<&aws_config::SdkConfig>,
    _: &str,
) -> Result<Arc<dyn UsageQueue>, ConfigError> {
    Ok(Arc::new(Unlinked("usage queue (SQS)")))
}

#[cfg(feature = "sqs")]
fn sqs_reconcile_queue(
    sdk: Option<&aws_config::SdkConfig>,
    url: &str,
) -> Result<Arc<dyn ReconcileQueue>, ConfigError> {
    let sdk = sdk.ok_or_else(|| no_sdk("BILLING_RECONCILE_QUEUE_URL"))?;
    Ok(Arc::new(crate::billing::reconcile::SqsReconcileQueue::new(
        aws_sdk_sqs::Client::new(sdk),
        url,
    )))
}

#[cfg(not(feature = "sqs"))]
fn sqs_reconcile_queue(
    _: Option<&aws_config::SdkConfig>,
    _: &str,
) -> Result<Arc<dyn ReconcileQueue>, ConfigError> {
    Ok(Arc::new(Unlinked("reconcile queue (SQS)")))
}

/// A port whose configured adapter this function does not link: every call fails, naming it.
#[derive(Debug)]
pub struct Unlinked(pub &'static str);

impl Unlinked {
    fn message(&self) -> String {
        format!("the {} is not linked into this function", self.0)
    }
}

impl Embedder for Unlinked {
    fn model(&self) -> &str {
        "unlinked"
    }
    fn dims(&self) -> usize {
        0
    }
    fn embed<'a>(&'a self, _: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move { Err(EmbedError::Fatal(self.message())) })
    }
}

impl Answerer for Unlinked {
    fn model(&self) -> &str {
        "unlinked"
    }
    fn answer<'a>(&'a self, _: &'a str, _: &'a [Source]) -> AnswerFuture<'a> {
        Box::pin(async move { Err(AnswerError::Fatal(self.message())) })
    }
}

impl QueryPlanner for Unlinked {
    fn model(&self) -> &str {
        "unlinked"
    }
    fn plan<'a>(&'a self, _: &'a PlanRequest<'a>) -> PlanFuture<'a> {
        Box::pin(async move { Err(PlanError::Fatal(self.message())) })
    }
}

impl EmbedQueue for Unlinked {
    fn kind(&self) -> &'static str {
        "unlinked"
    }
    fn enqueue(&self, _: TenantId) -> EnqueueFuture<'_> {
        Box::pin(async move { Err(QueueError(self.message())) })
    }
}

impl ReconcileQueue for Unlinked {
    fn send<'a>(
        &'a self,
        _: &'a [crate::billing::reconcile::ReconcileInput],
        _: u32,
    ) -> crate::billing::reconcile::QueueFuture<'a> {
        Box::pin(async move { Err(self.message()) })
    }
}

impl UsageQueue for Unlinked {
    fn kind(&self) -> &'static str {
        "unlinked"
    }
    fn send<'a>(&'a self, _: &'a [UsageEvent]) -> SendFuture<'a> {
        Box::pin(async move { Err(UsageQueueError(self.message())) })
    }
}

/// In Lambda, an HTTP function must not meter through the in-process usage queue into the local
/// billing adapter: that would mark usage delivered that never reached Stripe.
pub fn refuse_local_billing_in_lambda(app: &App, lambda: bool) -> Result<(), ConfigError> {
    if lambda && app.usage_queue.kind() == "in-process" && app.billing.kind() == "local" {
        return Err(ConfigError::Invalid {
            name: "USAGE_QUEUE_URL",
            reason: "required in Lambda: without it usage would be billed by the local adapter"
                .into(),
        });
    }
    Ok(())
}

/// The whole `main` of an HTTP function: builds the app once, then serves `function`'s routes.
pub async fn run_http_function(function: &'static str) -> Result<(), lambda_http::Error> {
    crate::telemetry::init(log_format());
    let routes = crate::api::routes_for(function);
    if routes.is_empty() {
        return Err(format!("no routes for function {function}").into());
    }
    let app = AppBuilder::from_env().await?.build()?;
    refuse_local_billing_in_lambda(&app, in_lambda())?;
    lambda_http::run(crate::http::router(Arc::new(app), &routes)).await
}

/// The whole `main` of the `authorizer` function (API Gateway's REQUEST authorizer): the
/// configuration, the pool and the [`Authenticator`], nothing else.
pub async fn run_authorizer() -> Result<(), lambda_runtime::Error> {
    use crate::auth::authorizer::Authorizer;
    use aws_lambda_events::apigw::ApiGatewayV2CustomAuthorizerV2Request;
    crate::telemetry::init(log_format());
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
    let config = AppBuilder::from_env().await?.config;
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
    crate::telemetry::init(log_format());
    let app = Arc::new(AppBuilder::from_env().await?.build()?);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<crate::rag::queue::EmbedEvent>| {
            let app = Arc::clone(&app);
            async move { handle_embed_event(&app, event.payload).await }
        },
    ))
    .await
}

/// The whole `main` of the scheduled `vector-indexes` function: builds and drops per-tenant
/// search indexes ([`crate::rag::tenant_index`]) on a session of the indexer role, its only
/// database credential ([`indexer_config`]); the rest of the configuration (the embedding
/// dimension, the `RAG_TENANT_INDEX_*` settings, TLS) is the shared one.
pub async fn run_vector_indexes() -> Result<(), lambda_runtime::Error> {
    crate::telemetry::init(log_format());
    let (config, _) = resolve_with_aws(indexer_config(|name| std::env::var(name).ok())?).await?;
    let config = Arc::new(config);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |_: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let config = Arc::clone(&config);
            async move {
                let report = maintain_vector_indexes(&config).await?;
                Ok::<_, lambda_runtime::Error>(serde_json::to_value(report)?)
            }
        },
    ))
    .await
}

/// The `vector-indexes` function's configuration from `lookup`: the indexer role's credentials
/// (`INDEXER_DATABASE_URL` or `INDEXER_DATABASE_SECRET_ARN`) stand where the app role's would;
/// an `APP_DATABASE_*` setting is never read.
pub fn indexer_config(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    if lookup("INDEXER_DATABASE_URL").is_none() && lookup("INDEXER_DATABASE_SECRET_ARN").is_none() {
        return Err(ConfigError::Missing(
            "INDEXER_DATABASE_URL or INDEXER_DATABASE_SECRET_ARN",
        ));
    }
    Config::from_lookup(|name| match name {
        "APP_DATABASE_URL" => lookup("INDEXER_DATABASE_URL"),
        "APP_DATABASE_SECRET_ARN" => lookup("INDEXER_DATABASE_SECRET_ARN"),
        _ => lookup(name),
    })
}

/// One run of the `vector-indexes` function: a session as the configured role (the indexer's,
/// from [`indexer_config`]) and [`crate::rag::tenant_index::maintain`] for this deployment's
/// embedding dimension.
pub async fn maintain_vector_indexes(
    config: &Config,
) -> Result<crate::rag::tenant_index::Report, DbError> {
    let client =
        crate::db::connect_session(&config.db.url, &config.db.tls, config.db.connect_timeout)
            .await?;
    crate::rag::tenant_index::maintain(&client, embedding_dims(config), &config.rag.tenant_index)
        .await
}

/// The dimension of the embeddings this deployment makes: all-MiniLM-L6-v2's where that is the
/// embedder, `EMBED_DIMS` otherwise (Bedrock's, or the hashed embedder's).
fn embedding_dims(config: &Config) -> usize {
    match (&config.rag.embed_model_id, &config.rag.embed_model_dir) {
        (None, Some(_)) => crate::rag::embed::MINILM_DIMS,
        _ => config.rag.embed_dims,
    }
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

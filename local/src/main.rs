//! The local runner: Tenantry on one machine, with the same handlers the Lambda functions use.
//!
//! ```text
//! tenantry-local up        migrate, seed the demo tenants, serve every route on 127.0.0.1
//! tenantry-local migrate   apply pending migrations to DATABASE_URL (also usable against RDS)
//! tenantry-local rollups   give an existing dataset rollups while it takes writes (APP_DATABASE_URL)
//! tenantry-local token ORG [SUB] [ROLE...]   print a dev token for an Auth0 org id
//! tenantry-local stripe-signature FILE        print a Stripe-Signature header for FILE's bytes
//! ```
//!
//! The webhooks' secrets come from the environment (`STRIPE_WEBHOOK_SECRETS`,
//! `AUTH0_WEBHOOK_SECRET`); unset, `up` makes dev ones and prints them, as `stripe listen` does,
//! so both webhooks can be called with a signed request.
//!
//! `DATABASE_URL` is an admin URL (the local superuser from `scripts/pg`). Tokens are signed with
//! the dev key in `dev/` and verified against the JWKS this process serves: dev-only.
#![allow(clippy::print_stdout)] // a CLI: stdout is its interface

mod seed;
mod server;

use std::time::Duration;

use tenantry::auth::dev::DevIssuer;
use tenantry::config::Config;
use tenantry::db::migrate::{self, RolePasswords};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The app role's password on a local cluster (a dev constant, like the cluster's own).
const DEV_APP_PASSWORD: &str = "tenantry_app_dev";
/// The support role's password on a local cluster.
const DEV_SUPPORT_PASSWORD: &str = "tenantry_support_dev";
const DEV_IMPERSONATOR_PASSWORD: &str = "tenantry_impersonator_dev";
/// The indexer role's password on a local cluster (per-tenant vector indexes).
const DEV_INDEXER_PASSWORD: &str = "tenantry_indexer_dev";
/// The staff organization locally (`SUPPORT_ORG_ID` overrides it).
const DEV_STAFF_ORG: &str = "org_tenantrystaff";
const AUDIENCE: &str = "https://api.tenantry.local";
const ROLES_CLAIM: &str = "https://tenantry.dev/roles";
const DEV_KEY: &[u8] = include_bytes!("../../dev/jwt-dev-key.pem");
const DEV_JWK: &str = include_str!("../../dev/jwt-dev-jwk.json");
const DEV_KID: &str = "tenantry-dev-1";

#[tokio::main]
async fn main() {
    tenantry::telemetry::init(tenantry::telemetry::LogFormat::Local);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => up().await,
        Some("migrate") => migrate_only().await.map(|_| ()),
        Some("token") => token(&args[1..]),
        Some("stripe-signature") => stripe_signature(&args[1..]),
        Some("rollups") => rollups(&args[1..]).await,
        _ => Err(
            "usage: tenantry-local up | migrate | token ORG [SUB] [ROLE...] | stripe-signature FILE \
             | rollups TENANT_ID DATASET [ROLLUPS_JSON]"
                .into(),
        ),
    };
    if let Err(e) = result {
        eprintln!("tenantry-local: {e}");
        std::process::exit(1);
    }
}

/// `rollups TENANT_ID DATASET [ROLLUPS_JSON]`: gives an existing dataset rollups (the default,
/// one hourly, unless given) while it keeps taking writes, through the app role at
/// `APP_DATABASE_URL` (the tenant's RLS applies; see `rollup::enable`).
async fn rollups(args: &[String]) -> Result<(), Error> {
    use tenantry::analytics::datasets::DatasetRef;
    use tenantry::analytics::rollup;
    let (Some(tenant), Some(dataset)) = (args.first(), args.get(1)) else {
        return Err("usage: tenantry-local rollups TENANT_ID DATASET [ROLLUPS_JSON]".into());
    };
    let tenant = tenantry::TenantId::from(uuid::Uuid::try_parse(tenant)?);
    let dataset = DatasetRef::parse(dataset).ok_or("DATASET is a dataset's name or id")?;
    let specs: Vec<rollup::RollupSpec> = match args.get(2) {
        Some(json) => serde_json::from_str(json)?,
        None => rollup::default_rollups(),
    };
    let url = std::env::var("APP_DATABASE_URL").map_err(|_| "APP_DATABASE_URL is not set")?;
    let db = tenantry::db::Db::connect(&tenantry::config::DbConfig::new(&url, 2))?;
    let ctx = tenantry::db::TenantContext {
        tenant_id: tenant,
        actor_id: "system:rollups".into(),
    };
    let rows = rollup::enable(&db, &ctx, &dataset, specs).await?;
    println!("{rows} rollup rows computed; queries read them from now on");
    Ok(())
}

fn port() -> Result<u16, Error> {
    Ok(std::env::var("TENANTRY_PORT")
        .ok()
        .map(|p| p.parse())
        .transpose()
        .map_err(|_| "TENANTRY_PORT is not a port number")?
        .unwrap_or(3000))
}

fn issuer_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/")
}

fn dev_issuer(port: u16) -> Result<DevIssuer, Error> {
    Ok(DevIssuer::new(
        DEV_KEY,
        DEV_KID,
        &issuer_url(port),
        AUDIENCE,
        ROLES_CLAIM,
    )?)
}

fn admin_url() -> Result<String, Error> {
    std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set (scripts/run-local sets it from scripts/pg)".into())
}

/// The local database's URLs, per role.
struct Urls {
    admin: String,
    app: String,
    support: String,
    impersonation: String,
    indexer: String,
}

/// Creates the local database if needed, migrates it, and returns its URLs.
async fn migrate_only() -> Result<Urls, Error> {
    let admin: tokio_postgres::Config = admin_url()?.parse()?;
    let db_name = std::env::var("TENANTRY_DB").unwrap_or_else(|_| "tenantry".into());
    if !db_name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err("TENANTRY_DB must be lowercase letters, digits and underscores".into());
    }
    let user = admin.get_user().unwrap_or("postgres").to_owned();
    let admin_password = String::from_utf8(admin.get_password().unwrap_or_default().to_vec())?;
    ensure_database(&admin, &db_name).await?;

    let password = std::env::var("APP_DB_PASSWORD").unwrap_or_else(|_| DEV_APP_PASSWORD.into());
    let support_password =
        std::env::var("SUPPORT_DB_PASSWORD").unwrap_or_else(|_| DEV_SUPPORT_PASSWORD.into());
    let impersonator_password = std::env::var("IMPERSONATOR_DB_PASSWORD")
        .unwrap_or_else(|_| DEV_IMPERSONATOR_PASSWORD.into());
    let indexer_password =
        std::env::var("INDEXER_DB_PASSWORD").unwrap_or_else(|_| DEV_INDEXER_PASSWORD.into());
    let admin_db_url = url_for(&admin, &user, &admin_password, &db_name);
    let applied = migrate::run(
        &admin_db_url,
        &migrate::embedded()?,
        &RolePasswords {
            app: Some(password.clone()),
            support: Some(support_password.clone()),
            impersonator: Some(impersonator_password.clone()),
            indexer: Some(indexer_password.clone()),
        },
    )
    .await?;
    println!("database {db_name}: {} migrations applied", applied.len());
    Ok(Urls {
        admin: admin_db_url,
        app: url_for(&admin, "tenantry_app", &password, &db_name),
        support: url_for(&admin, "tenantry_support", &support_password, &db_name),
        impersonation: url_for(
            &admin,
            "tenantry_impersonator",
            &impersonator_password,
            &db_name,
        ),
        indexer: url_for(&admin, "tenantry_indexer", &indexer_password, &db_name),
    })
}

/// One runner per database: the first holds this advisory lock for its lifetime (on the admin
/// session [`claim_database`] keeps open), so a second one refuses to start instead of resetting
/// the first one's embeddings under it.
const RUNNER_LOCK: i64 = 0x7465_6e61_6e74_7279; // "tenantry"

/// Takes the database for this runner (see [`RUNNER_LOCK`]) and readies its chunks for this
/// run's embedder: chunks embedded by another model (the embedder was switched since the last
/// run) are made pending again, so vectors of two models are never compared, and leases left by
/// a runner that was stopped mid-embedding are released. The seed's drain and the start-up sweep
/// then embed them. Every tenant's, as the admin role; returns the session holding the lock.
async fn claim_database(admin_url: &str, model: &str) -> Result<tokio_postgres::Client, Error> {
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    // The lock lives as long as this session: if the server ends it (a restart), the runner
    // stops rather than go on without it. (Dropping the client at shutdown ends it cleanly.)
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!(
                "tenantry-local: the session holding the runner's lock ended ({e}); stopping"
            );
            std::process::exit(1);
        }
    });
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&RUNNER_LOCK])
        .await?
        .get(0);
    if !locked {
        return Err("another tenantry-local is running on this database; stop it first".into());
    }
    let other_model = client
        .execute(
            "UPDATE app.chunks SET embedding = NULL, embedding_model = NULL, \
               embed_lease = NULL, embed_lease_until = NULL \
             WHERE embedding IS NOT NULL AND embedding_model IS DISTINCT FROM $1",
            &[&model],
        )
        .await?;
    if other_model > 0 {
        println!(
            "embedder {model}: {other_model} chunks embedded by another model are embedded again"
        );
    }
    client
        .execute(
            "UPDATE app.chunks SET embed_lease = NULL, embed_lease_until = NULL \
             WHERE embedding IS NULL AND embed_lease IS NOT NULL",
            &[],
        )
        .await?;
    Ok(client)
}

async fn ensure_database(admin: &tokio_postgres::Config, name: &str) -> Result<(), Error> {
    let (client, conn) = admin.connect(tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let exists = client
        .query_typed_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[(&name, tokio_postgres::types::Type::TEXT)],
        )
        .await?
        .is_some();
    if !exists {
        // The name was checked to be a plain identifier above.
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

fn url_for(cfg: &tokio_postgres::Config, user: &str, password: &str, db: &str) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "postgres://{}:{}@{host}:{port}/{db}",
        enc(user),
        enc(password)
    )
}

async fn up() -> Result<(), Error> {
    let port = port()?;
    let urls = migrate_only().await?;
    let staff_org = std::env::var("SUPPORT_ORG_ID").unwrap_or_else(|_| DEV_STAFF_ORG.into());
    let env_or = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let mut vars = vec![
        ("APP_DATABASE_URL", urls.app),
        ("SUPPORT_DATABASE_URL", urls.support),
        ("IMPERSONATION_DATABASE_URL", urls.impersonation),
        ("SUPPORT_ORG_ID", staff_org.clone()),
        ("AUTH0_ISSUER", issuer_url(port)),
        ("AUTH0_AUDIENCE", AUDIENCE.to_owned()),
        ("AUTH_ROLES_CLAIM", ROLES_CLAIM.to_owned()),
        ("DB_POOL_MAX", env_or("DB_POOL_MAX", "16")),
        // Short usage windows, so /v1/usage shows acknowledged usage within a minute.
        ("USAGE_WINDOW_SECS", env_or("USAGE_WINDOW_SECS", "60")),
        ("USAGE_GRACE_SECS", env_or("USAGE_GRACE_SECS", "5")),
        ("BILLING_SETTLE_SECS", env_or("BILLING_SETTLE_SECS", "60")),
    ];
    // The webhooks' secrets: the environment's, else dev ones made for this run.
    let stripe_secret = std::env::var("STRIPE_WEBHOOK_SECRETS")
        .unwrap_or_else(|_| format!("whsec_dev_{}", uuid::Uuid::new_v4().simple()));
    let auth0_secret = std::env::var("AUTH0_WEBHOOK_SECRET")
        .unwrap_or_else(|_| format!("auth0_dev_{}", uuid::Uuid::new_v4().simple()));
    vars.push(("STRIPE_WEBHOOK_SECRETS", stripe_secret.clone()));
    vars.push(("AUTH0_WEBHOOK_SECRET", auth0_secret.clone()));
    // With Stripe test-mode settings in the environment, bill to Stripe; otherwise locally. With
    // EMBED_MODEL_DIR (`scripts/run-local` sets it for LOCAL_EMBEDDER=minilm), embed with
    // all-MiniLM-L6-v2 in-process; RAG_MIN_RELEVANCE to calibrate retrieval for it.
    let meter_vars = tenantry::usage::METERS.map(|d| tenantry::config::stripe_meter_var(d.meter));
    for name in [
        "STRIPE_API_KEY",
        "STRIPE_API_BASE",
        "EMBED_MODEL_DIR",
        "RAG_MIN_RELEVANCE",
        "RAG_TENANT_INDEX_MIN_CHUNKS",
        "RAG_TENANT_INDEX_DROP_BELOW",
        "RAG_TENANT_INDEX_BUILD_MEMORY_MIB",
        "RAG_TENANT_INDEX_EVERY_SECS",
    ]
    .into_iter()
    .chain(meter_vars)
    {
        if let Ok(v) = std::env::var(name) {
            vars.push((name, v));
        }
    }
    let config =
        Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))?;
    let billing = tenantry_stripe::StripeBilling::from_config(&config.billing)?
        .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn tenantry::billing::BillingSink>);
    let app = std::sync::Arc::new(tenantry::App::builder(config).billing(billing).build()?);
    // The port first, then the lock: a second runner stops before it resets any chunk (it has
    // applied pending migrations by then, which a running runner tolerates).
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let _runner_lock = claim_database(&urls.admin, app.embedder.model()).await?;
    let tenants = seed::demo(&app.db, app.embedder.as_ref()).await?;
    // The schedules AWS runs (EventBridge Scheduler), in-process: flush closed usage windows
    // every 30 s; snapshot and reconcile at start and every 10 minutes.
    tokio::spawn(billing_schedules(std::sync::Arc::clone(&app)));
    // Per-tenant search indexes, as the scheduled vector-indexes function does in AWS: as the
    // indexer role, at start and every RAG_TENANT_INDEX_EVERY_SECS.
    tokio::spawn(vector_index_schedule(
        std::sync::Arc::clone(&app),
        urls.indexer,
    ));
    // Chunks a previous run left pending (stopped mid-embedding) are embedded now, as the
    // scheduled sweep does in AWS.
    tenantry::rag::queue::sweep(
        &app.db,
        app.embed_queue.as_ref(),
        &tenantry::rag::queue::SweepInput { older_than_secs: 0 },
    )
    .await?;

    let issuer = dev_issuer(port)?;
    println!("\nTenantry is running on http://127.0.0.1:{port} (local mode, dev-only tokens)\n");
    match app.billing.kind() {
        "local" => println!(
            "Billing: local adapter (no STRIPE_API_KEY): meter events are recorded in this process, \
             not sent to Stripe; see GET /v1/usage.\n"
        ),
        kind => println!("Billing: {kind} (STRIPE_API_KEY is set).\n"),
    }
    for t in &tenants {
        let token = issuer.token(
            "auth0|dev-user",
            &t.org_id,
            &["admin"],
            Duration::from_secs(12 * 3600),
        )?;
        println!(
            "{} ({}), token valid 12h:\n  export TOKEN_{}={token}\n",
            t.name, t.org_id, t.env_name
        );
    }
    let staff_token = issuer.token(
        "auth0|dev-support",
        &staff_org,
        &["support_admin"],
        Duration::from_secs(12 * 3600),
    )?;
    println!(
        "Support staff ({staff_org}, role support_admin) for /admin/v1/..., token valid 12h:\n  \
         export TOKEN_STAFF={staff_token}\n"
    );
    let first_stripe_secret = stripe_secret.split(',').next().unwrap_or_default().trim();
    println!(
        "Webhook secrets (from the environment, or made for this run):\n  \
         export STRIPE_WEBHOOK_SECRET={first_stripe_secret}\n  \
         export AUTH0_WEBHOOK_SECRET={auth0_secret}\n"
    );
    let base = format!("http://127.0.0.1:{port}");
    let query = r#"{"dataset": "orders", "group_by": ["region"], "aggregates": [{"fn": "sum", "column": "amount", "as": "revenue"}], "order_by": [{"by": "revenue", "dir": "desc"}]}"#;
    println!("Try (README.md has more):");
    println!("  curl -s {base}/v1/me -H \"Authorization: Bearer $TOKEN_ACME\"");
    println!(
        "  curl -s {base}/v1/datasets/orders/records/o-1000 -H \"Authorization: Bearer $TOKEN_ACME\""
    );
    println!(
        "  curl -s {base}/v1/query -H \"Authorization: Bearer $TOKEN_ACME\" -H 'content-type: application/json' \\"
    );
    println!("    -d '{query}'");
    println!("  curl -s {base}/v1/usage -H \"Authorization: Bearer $TOKEN_ACME\"\n");
    let console = console_dir();
    match &console {
        Some(dir) => println!(
            "Console: {base}/ (dev sign-in; built in {})\n",
            dir.display()
        ),
        None => println!(
            "Console: not built (scripts/run-local builds it when Node.js and npm are here)\n"
        ),
    }
    let extras = server::Extras {
        jwk: DEV_JWK,
        sign_in: dev_identities(&issuer, &tenants, &staff_org)?.to_string(),
        console,
    };
    server::serve(listener, app, extras).await
}

/// The console's build: `TENANTRY_CONSOLE_DIR`, else `console/dist` of this checkout; `None`
/// when it has no `index.html`.
fn console_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("TENANTRY_CONSOLE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../console/dist")
        });
    dir.join("index.html").is_file().then_some(dir)
}

/// Tenant roles the console's dev sign-in offers for each demo tenant, and the staff roles.
const DEV_TENANT_ROLES: [&str; 4] = ["owner", "admin", "member", "viewer"];
const DEV_STAFF_ROLES: [&str; 2] = ["support_admin", "support"];

/// The console's dev sign-in (`GET /local/sign-in`): each demo tenant's people by role, and
/// support staff, with dev tokens (valid 12 hours, for this runner only).
fn dev_identities(
    issuer: &DevIssuer,
    tenants: &[seed::DemoTenant],
    staff_org: &str,
) -> Result<serde_json::Value, Error> {
    let ttl = Duration::from_secs(12 * 3600);
    let mut out = Vec::new();
    for t in tenants {
        for role in DEV_TENANT_ROLES {
            let sub = format!("auth0|dev-{}-{role}", t.env_name.to_ascii_lowercase());
            out.push(serde_json::json!({
                "id": format!("{}-{role}", t.org_id),
                "label": format!("{} {role}", t.name),
                "kind": "tenant",
                "tenant": t.name,
                "role": role,
                "token": issuer.token(&sub, &t.org_id, &[role], ttl)?,
            }));
        }
    }
    for role in DEV_STAFF_ROLES {
        out.push(serde_json::json!({
            "id": format!("staff-{role}"),
            "label": format!("staff {role}"),
            "kind": "staff",
            "role": role,
            "token": issuer.token(&format!("auth0|dev-{role}"), staff_org, &[role], ttl)?,
        }));
    }
    Ok(serde_json::json!({ "identities": out }))
}

async fn vector_index_schedule(app: std::sync::Arc<tenantry::App>, indexer_url: String) {
    use tenantry::rag::tenant_index::maintain;
    let cfg = &app.config.rag.tenant_index;
    loop {
        let run = async {
            let client = tenantry::db::connect_session(
                &indexer_url,
                &app.config.db.tls,
                app.config.db.connect_timeout,
            )
            .await?;
            maintain(&client, app.embedder.dims(), cfg).await
        };
        match run.await {
            Ok(r) if !r.built.is_empty() || !r.dropped.is_empty() || !r.failed.is_empty() => {
                tracing::info!(
                    built = r.built.len(),
                    dropped = r.dropped.len(),
                    failed = r.failed.len(),
                    deferred = r.deferred,
                    kept = r.kept,
                    "per-tenant search indexes maintained"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "per-tenant search index maintenance failed"),
        }
        tokio::time::sleep(cfg.every).await;
    }
}

async fn billing_schedules(app: std::sync::Arc<tenantry::App>) {
    use tenantry::billing::reconcile::{Mode, ReconcileInput, run};
    let mut tick = 0u64;
    loop {
        let mode = if tick.is_multiple_of(20) {
            Mode::Reconcile
        } else {
            Mode::Flush
        };
        let input = ReconcileInput::all(mode);
        if let Err(e) = run(
            &app.db,
            app.billing.as_ref(),
            &app.config.billing.meter,
            &app.config.billing.plans,
            &input,
        )
        .await
        {
            tracing::warn!(error = %e, "local billing schedule failed");
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

/// Prints the `Stripe-Signature` header Stripe would send for FILE's bytes, signed now with
/// `STRIPE_WEBHOOK_SECRET` (or the first of `STRIPE_WEBHOOK_SECRETS`).
fn stripe_signature(args: &[String]) -> Result<(), Error> {
    let file = args
        .first()
        .ok_or("usage: tenantry-local stripe-signature FILE")?;
    let secret = std::env::var("STRIPE_WEBHOOK_SECRET")
        .or_else(|_| {
            std::env::var("STRIPE_WEBHOOK_SECRETS")
                .map(|all| all.split(',').next().unwrap_or_default().trim().to_owned())
        })
        .map_err(|_| "set STRIPE_WEBHOOK_SECRET (tenantry-local up prints it)")?;
    let body = std::fs::read(file)?;
    let header = tenantry::billing::webhooks::stripe_signature_header(
        &body,
        &secret,
        chrono::Utc::now().timestamp(),
    );
    println!("{header}");
    Ok(())
}

fn token(args: &[String]) -> Result<(), Error> {
    let org = args
        .first()
        .ok_or("usage: tenantry-local token ORG [SUB] [ROLE...]")?;
    let sub = args.get(1).map_or("auth0|dev-user", String::as_str);
    let roles: Vec<&str> = args.iter().skip(2).map(String::as_str).collect();
    if roles.is_empty() {
        eprintln!(
            "note: a token without a role (owner, admin, member, viewer) may only call GET /v1/me"
        );
    }
    let token = dev_issuer(port()?)?.token(sub, org, &roles, Duration::from_secs(12 * 3600))?;
    println!("{token}");
    Ok(())
}

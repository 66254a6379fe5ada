//! The integration-test harness: a real Postgres (started if needed), one fresh database per test
//! cloned from a migrated template, a real PgBouncer, a real JWKS server, and a dev token issuer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

pub mod rls_probe;
pub mod stripe_stub;
pub use stripe_stub::{Fault, StripeStub};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tenantry::auth::dev::DevIssuer;
use tenantry::config::Config;
use tenantry::db::migrate::{self, RolePasswords};
use tenantry::db::{Access, Db, TenantContext, TenantTx};
use tenantry::tenants::{self, NewTenant};
use tenantry::{App, TenantId};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;
use tokio_postgres::types::Type;

/// The app role's password on dev and test clusters (set by the migrate step).
pub const DEV_APP_PASSWORD: &str = "tenantry_app_dev";
/// The support role's password on the test cluster.
pub const DEV_SUPPORT_PASSWORD: &str = "tenantry_support_dev";
/// The impersonator role's password on the test cluster.
pub const DEV_IMPERSONATOR_PASSWORD: &str = "tenantry_impersonator_dev";
/// The indexer role's password on the test cluster (per-tenant vector indexes).
pub const DEV_INDEXER_PASSWORD: &str = "tenantry_indexer_dev";
/// The staff organization of every test app (`SUPPORT_ORG_ID`).
pub const STAFF_ORG: &str = "org_tenantrystaff";
/// The token audience the tests use.
pub const AUDIENCE: &str = "https://api.tenantry.test";
/// The token issuer the tests use.
pub const ISSUER: &str = "https://tenantry-test.us.auth0.com/";
/// The roles claim.
pub const ROLES_CLAIM: &str = "https://tenantry.dev/roles";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file from the repository, read at run time.
pub fn repo_file(rel: &str) -> Vec<u8> {
    std::fs::read(repo_root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

static ADMIN_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The admin (superuser) URL of the test server: `DATABASE_URL`, or the project's embedded
/// Postgres, started if it is not running.
pub fn admin_url() -> String {
    ADMIN_URL
        .get_or_init(|| {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                return url;
            }
            let out = Command::new(repo_root().join("scripts/pg"))
                .arg("start")
                .output()
                .expect("running scripts/pg start");
            assert!(
                out.status.success(),
                "scripts/pg start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .clone()
}

/// `url` with another user, password and database.
pub fn with_login(url: &str, user: &str, password: &str, db: &str) -> String {
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("postgres://{user}:{password}@{host}:{port}/{db}")
}

/// A raw connection (for tests that play the attacker or read the catalog).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// The migrated template database, built once per migration set (shared across test processes).
async fn template() -> String {
    TEMPLATE
        .get_or_init(|| async {
            let migrations = migrate::embedded().unwrap();
            let mut hash = 0u64;
            for m in &migrations {
                for b in m.checksum().bytes() {
                    hash = hash
                        .wrapping_mul(1_099_511_628_211)
                        .wrapping_add(u64::from(b));
                }
            }
            let name = format!("tenantry_tpl_{hash:016x}");
            let admin = connect(&admin_url()).await;
            admin
                .query_typed("SELECT pg_advisory_lock(4242)", &[])
                .await
                .unwrap();
            let exists = admin
                .query_typed(
                    "SELECT 1 FROM pg_database WHERE datname = $1",
                    &[(&name, Type::TEXT)],
                )
                .await
                .unwrap();
            if exists.is_empty() {
                let building = format!("{name}_build");
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
                    .await
                    .unwrap();
                admin
                    .batch_execute(&format!("CREATE DATABASE {building}"))
                    .await
                    .unwrap();
                let url = admin_url_for(&building);
                migrate::run(
                    &url,
                    &migrations,
                    &RolePasswords {
                        app: Some(DEV_APP_PASSWORD.into()),
                        support: Some(DEV_SUPPORT_PASSWORD.into()),
                        impersonator: Some(DEV_IMPERSONATOR_PASSWORD.into()),
                        indexer: Some(DEV_INDEXER_PASSWORD.into()),
                    },
                )
                .await
                .unwrap();
                admin
                    .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
                    .await
                    .unwrap();
            }
            admin
                .query_typed("SELECT pg_advisory_unlock(4242)", &[])
                .await
                .unwrap();
            name
        })
        .await
        .clone()
}

/// The admin URL for another database on the same server.
pub fn admin_url_for(db: &str) -> String {
    let url = admin_url();
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    with_login(
        &url,
        cfg.get_user().unwrap_or("postgres"),
        &password(&url),
        db,
    )
}

fn password(url: &str) -> String {
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    String::from_utf8(cfg.get_password().unwrap_or_default().to_vec()).unwrap()
}

/// A fresh database for one test, cloned from the migrated template.
///
/// Test databases are not dropped when a test ends: `DROP DATABASE` waits for every backend in
/// the cluster to absorb a signal barrier, and under parallel tests that stalled whole runs for a
/// minute. `scripts/test` drops them all before and after the run instead.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// Superuser URL.
    pub admin_url: String,
    /// App-role URL.
    pub app_url: String,
    /// Support-role URL.
    pub support_url: String,
    /// Impersonator-role URL (read-only impersonation sessions).
    pub impersonator_url: String,
}

impl TestDb {
    /// Clones the template.
    pub async fn new() -> Self {
        tenantry::telemetry::init_for_tests();
        let template = template().await;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY"
            ))
            .await
            .unwrap();
        rls_probe::apply_sql_mutant(&admin_url_for(&name)).await;
        let admin_url = admin_url_for(&name);
        let app_url = with_login(&admin_url, "tenantry_app", DEV_APP_PASSWORD, &name);
        let support_url = with_login(&admin_url, "tenantry_support", DEV_SUPPORT_PASSWORD, &name);
        let impersonator_url = with_login(
            &admin_url,
            "tenantry_impersonator",
            DEV_IMPERSONATOR_PASSWORD,
            &name,
        );
        Self {
            name,
            admin_url,
            app_url,
            support_url,
            impersonator_url,
        }
    }

    /// A pool for the app role with `pool_max` connections.
    pub fn pool(&self, pool_max: usize) -> Db {
        self.pool_at(&self.app_url, pool_max)
    }

    /// A pool for the app role at another URL (PgBouncer).
    pub fn pool_at(&self, url: &str, pool_max: usize) -> Db {
        let mut cfg = tenantry::config::DbConfig::new(url, pool_max);
        cfg.connect_timeout = Duration::from_secs(10);
        Db::connect(&cfg).unwrap()
    }

    /// A superuser connection to this database.
    pub async fn admin(&self) -> tokio_postgres::Client {
        connect(&self.admin_url).await
    }
}

/// Creates an active tenant with an Auth0 org id of `org_<slug>`.
pub async fn tenant(db: &Db, slug: &str) -> TenantId {
    let id = TenantId::new();
    tenants::provision(
        db,
        &NewTenant {
            tenant_id: id,
            name: format!("Tenant {slug}"),
            slug: slug.to_owned(),
            auth0_org_id: Some(format!("org_{slug}")),
            plan: "team".into(),
        },
        "system:test",
    )
    .await
    .unwrap();
    id
}

/// Everything on an SQS queue, as the Lambda event source would deliver it (received until the
/// queue answers empty).
pub async fn sqs_receive_all(
    client: &aws_sdk_sqs::Client,
    url: &str,
) -> aws_lambda_events::event::sqs::SqsEvent {
    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
    loop {
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        if out.messages().is_empty() {
            return event;
        }
        for m in out.messages() {
            let mut msg = aws_lambda_events::event::sqs::SqsMessage::default();
            msg.message_id = m.message_id().map(str::to_owned);
            msg.body = m.body().map(str::to_owned);
            msg.event_source = Some("aws:sqs".into());
            event.records.push(msg);
        }
    }
}

/// A pool for a database that is not there (nothing listens on its port): every checkout fails
/// within a second.
pub fn unreachable_db() -> Db {
    let mut cfg = tenantry::config::DbConfig::new(
        format!("postgres://tenantry_app:x@127.0.0.1:{}/x", free_port()),
        1,
    );
    cfg.connect_timeout = Duration::from_secs(1);
    Db::connect(&cfg).unwrap()
}

/// The context for acting as `tenant` in tests.
pub fn as_tenant(tenant: TenantId) -> TenantContext {
    TenantContext {
        tenant_id: tenant,
        actor_id: "user:test".into(),
    }
}

/// Begins a read-write transaction as `tenant`.
pub async fn tx(db: &Db, tenant: TenantId) -> TenantTx {
    db.begin(&as_tenant(tenant), Access::ReadWrite)
        .await
        .unwrap()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A JWKS endpoint over real HTTP, whose key set a test can change, counting its fetches.
pub struct JwksServer {
    /// `http://127.0.0.1:port/.well-known/jwks.json`
    pub url: String,
    jwks: Arc<Mutex<String>>,
    fetches: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves the given JWKS document.
    pub async fn start(jwks: serde_json::Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(jwks.to_string()));
        let fetches = Arc::new(AtomicU64::new(0));
        let (d, f) = (doc.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (d, f) = (d.clone(), f.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        f.fetch_add(1, Ordering::SeqCst);
                        let body = d.lock().unwrap().clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{addr}/.well-known/jwks.json"),
            jwks: doc,
            fetches,
            task,
        }
    }

    /// Replaces the key set (a key rotation).
    pub fn set(&self, jwks: serde_json::Value) {
        *self.jwks.lock().unwrap() = jwks.to_string();
    }

    /// How many times the key set was fetched.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A JWK from `dev/`.
pub fn dev_jwk(name: &str) -> serde_json::Value {
    serde_json::from_slice(&repo_file(&format!("dev/jwt-{name}-jwk.json"))).unwrap()
}

/// The issuer whose key the test JWKS serves.
pub fn issuer() -> DevIssuer {
    DevIssuer::new(
        &repo_file("dev/jwt-dev-key.pem"),
        "tenantry-dev-1",
        ISSUER,
        AUDIENCE,
        ROLES_CLAIM,
    )
    .unwrap()
}

/// An issuer with a key the server does not trust, claiming the trusted key's `kid`.
pub fn attacker() -> DevIssuer {
    DevIssuer::new(
        &repo_file("dev/jwt-attacker-key.pem"),
        "tenantry-dev-1",
        ISSUER,
        AUDIENCE,
        ROLES_CLAIM,
    )
    .unwrap()
}

/// A whole app (as a function builds it) over a fresh database and a JWKS server.
pub struct TestApp {
    /// The app (a test may replace it; every request builds the edge over the current one).
    pub app: Arc<App>,
    /// Its database.
    pub db: TestDb,
    /// Its JWKS server.
    pub jwks: JwksServer,
}

impl TestApp {
    /// An app whose JWKS serves the dev key, refetching at most every `refetch` on unknown kids.
    pub async fn new() -> Self {
        Self::with_refetch(Duration::from_secs(60)).await
    }

    /// As [`new`](Self::new) with a given refetch interval.
    pub async fn with_refetch(refetch: Duration) -> Self {
        Self::build(refetch, &[], None).await
    }

    /// An app whose Bedrock ports (embeddings and answers) talk to `bedrock`.
    pub async fn with_bedrock(bedrock: &BedrockStub) -> Self {
        let sdk = local_sdk_config(&bedrock.endpoint).await;
        let vars = [
            (
                "BEDROCK_EMBED_MODEL_ID",
                "amazon.titan-embed-text-v2:0".to_owned(),
            ),
            (
                "BEDROCK_ANSWER_MODEL_ID",
                "amazon.nova-lite-v1:0".to_owned(),
            ),
            (
                "BEDROCK_PLANNER_MODEL_ID",
                "amazon.nova-pro-v1:0".to_owned(),
            ),
        ];
        Self::build(Duration::from_secs(60), &vars, Some(sdk)).await
    }

    /// An app with extra configuration variables (local adapters otherwise).
    pub async fn with_vars(vars: &[(&str, String)]) -> Self {
        Self::build(Duration::from_secs(60), vars, None).await
    }

    /// An app billing through the Stripe adapter against `stripe` (a local Stripe test server),
    /// with one-minute windows, no grace or settling delay, and fast retries; `extra` on top.
    pub async fn with_stripe(stripe: &StripeStub, extra: &[(&str, String)]) -> Self {
        // `extra` first: the first setting of a name wins.
        let mut vars: Vec<(&str, String)> = extra.iter().map(|(k, v)| (*k, v.clone())).collect();
        vars.extend(stripe.vars());
        vars.extend([
            ("USAGE_WINDOW_SECS", "60".to_owned()),
            ("USAGE_GRACE_SECS", "0".to_owned()),
            ("BILLING_SETTLE_SECS", "0".to_owned()),
            ("STRIPE_BACKOFF_BASE_MS", "5".to_owned()),
            ("STRIPE_TIMEOUT_MS", "1500".to_owned()),
        ]);
        Self::build_with(Duration::from_secs(60), &vars, None, true).await
    }

    /// An app with extra configuration variables and an AWS SDK configuration (e.g. moto's).
    pub async fn with_sdk_vars(vars: &[(&str, String)], sdk: aws_config::SdkConfig) -> Self {
        Self::build(Duration::from_secs(60), vars, Some(sdk)).await
    }

    /// An app that sends embedding work to an SQS queue (on moto) instead of embedding in-process.
    pub async fn with_sqs(moto: &Moto, queue_url: &str) -> Self {
        let sdk = moto.sdk_config().await;
        let vars = [("EMBED_QUEUE_URL", queue_url.to_owned())];
        Self::build(Duration::from_secs(60), &vars, Some(sdk)).await
    }

    async fn build(
        refetch: Duration,
        extra: &[(&str, String)],
        sdk: Option<aws_config::SdkConfig>,
    ) -> Self {
        Self::build_with(refetch, extra, sdk, false).await
    }

    async fn build_with(
        refetch: Duration,
        extra: &[(&str, String)],
        sdk: Option<aws_config::SdkConfig>,
        stripe: bool,
    ) -> Self {
        let db = TestDb::new().await;
        let jwks = JwksServer::start(serde_json::json!({ "keys": [dev_jwk("dev")] })).await;
        // A test's own settings first: the first setting of a name wins.
        let mut vars: Vec<(&str, String)> = extra.iter().map(|(k, v)| (*k, v.clone())).collect();
        vars.extend([
            ("APP_DATABASE_URL", db.app_url.clone()),
            ("SUPPORT_DATABASE_URL", db.support_url.clone()),
            ("IMPERSONATION_DATABASE_URL", db.impersonator_url.clone()),
            ("SUPPORT_ORG_ID", STAFF_ORG.to_owned()),
            ("AUTH0_ISSUER", ISSUER.to_owned()),
            ("AUTH0_AUDIENCE", AUDIENCE.to_owned()),
            ("AUTH0_JWKS_URL", jwks.url.clone()),
            ("AUTH_LEEWAY_SECS", "5".to_owned()),
            ("JWKS_REFETCH_INTERVAL_SECS", refetch.as_secs().to_string()),
            ("MAX_BODY_BYTES", "65536".to_owned()),
            ("MAX_INGEST_RECORDS", "500".to_owned()),
        ]);
        // After `extra`, so a test may turn it on (the first setting of a name wins): off, so a
        // test that changes a tenant's status or revokes a key straight at the database sees it
        // at once. The cache itself is tested in round_trips.rs.
        vars.push(("AUTH_LOOKUP_CACHE_SECS", "0".to_owned()));
        let config = Config::from_lookup(|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        let billing = match stripe {
            true => tenantry_stripe::StripeBilling::from_config(&config.billing)
                .unwrap()
                .map(|s| Arc::new(s) as Arc<dyn tenantry::billing::BillingSink>),
            false => None,
        };
        let mut builder = App::builder(config).billing(billing);
        if let Some(sdk) = sdk {
            builder = builder.sdk(sdk);
        }
        let app = Arc::new(builder.build().unwrap());
        Self { app, db, jwks }
    }
}

/// A PgBouncer in transaction pooling mode (how RDS Proxy multiplexes), in front of the test
/// server, with `server_pool_size` server connections per database. Stopped on drop.
pub struct PgBouncer {
    /// The port it listens on.
    pub port: u16,
    child: std::process::Child,
    dir: PathBuf,
}

impl PgBouncer {
    /// Starts one. Needs the `pgbouncer` binary (the test command installs Debian's package).
    pub fn start(server_pool_size: u32) -> Self {
        Self::start_with(server_pool_size, false)
    }

    /// Starts one that requires TLS from clients, as RDS Proxy can, with a certificate for
    /// 127.0.0.1 signed by a fresh CA at [`ca_file`](Self::ca_file).
    pub fn start_tls(server_pool_size: u32) -> Self {
        Self::start_with(server_pool_size, true)
    }

    /// The CA that signed this PgBouncer's certificate (TLS mode only).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("root.crt")
    }

    fn start_with(server_pool_size: u32, tls: bool) -> Self {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("pgbouncer is not installed: run the README's test command, which installs it");
        let cfg: tokio_postgres::Config = admin_url().parse().unwrap();
        let pg_port = cfg.get_ports().first().copied().unwrap_or(5432);
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tenantry-pgbouncer-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("userlist.txt"),
            format!("\"tenantry_app\" \"{DEV_APP_PASSWORD}\"\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = scram-sha-256\nauth_file = {dir}/userlist.txt\n\
                 pool_mode = transaction\ndefault_pool_size = {server_pool_size}\n\
                 max_client_conn = 500\nignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        if tls {
            let d = dir.display().to_string();
            let script = format!(
                "set -e; cd {d}; \
                 openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=test CA' -keyout ca.key -out root.crt \
                   -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign; \
                 openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr; \
                 printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext; \
                 openssl x509 -req -in server.csr -CA root.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out server.crt; \
                 chmod 600 server.key"
            );
            let ok = Command::new("sh").args(["-c", &script]).output().unwrap();
            assert!(
                ok.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&ok.stderr)
            );
            let mut ini = std::fs::read_to_string(dir.join("pgbouncer.ini")).unwrap();
            ini.push_str(&format!(
                "client_tls_sslmode = require\nclient_tls_key_file = {d}/server.key\nclient_tls_cert_file = {d}/server.crt\n"
            ));
            std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        }
        let ini = dir.join("pgbouncer.ini");
        // PgBouncer refuses to run as root; the cluster's unprivileged user runs it.
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        let child = if is_root {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            Command::new("runuser")
                .args(["-u", "postgres", "--", bin, "-q"])
                .arg(&ini)
                .spawn()
                .unwrap()
        } else {
            Command::new(bin).arg("-q").arg(&ini).spawn().unwrap()
        };
        // Wait until it accepts connections.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child, dir }
    }

    /// The app role's URL for `db` through this PgBouncer.
    pub fn app_url(&self, db: &str) -> String {
        format!(
            "postgres://tenantry_app:{DEV_APP_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // runuser passes SIGTERM on to its child.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy in front of Postgres that counts what the client sends. With a request/response
/// protocol each client flight is one round trip, so flights per request is the round-trip count.
#[derive(Debug, Clone)]
pub struct CountingProxy {
    /// The port it listens on.
    pub port: u16,
    flights: Arc<AtomicU64>,
}

impl CountingProxy {
    /// Starts a proxy to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let flights = Arc::new(AtomicU64::new(0));
        let counter = flights.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = cr.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            counter.fetch_add(1, Ordering::Relaxed);
                            sw.write_all(&buf[..n]).await?;
                        }
                    };
                    let down = tokio::io::copy(&mut sr, &mut cw);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(Self { port, flights })
    }

    /// Client flights so far.
    pub fn flights(&self) -> u64 {
        self.flights.load(Ordering::Relaxed)
    }
}

/// An API Gateway (HTTP API, payload v2) event for a request, as Lambda would receive it.
pub fn gateway_event(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> lambda_http::Request {
    let (raw_path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut h = serde_json::Map::new();
    h.insert(
        "host".into(),
        "abc123defg.execute-api.eu-west-1.amazonaws.com".into(),
    );
    for (k, v) in headers {
        h.insert(k.to_ascii_lowercase(), (*v).into());
    }
    let event = serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": query,
        "headers": h,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123defg",
            "domainName": "abc123defg.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "abc123defg",
            "http": {"method": method, "path": raw_path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.10", "userAgent": "tests"},
            "requestId": format!("test-{}", uuid::Uuid::new_v4().simple()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "26/Nov/2026:13:20:01 +0000",
            "timeEpoch": 1_795_692_001_000u64
        },
        "body": body,
        "isBase64Encoded": false
    });
    lambda_http::request::from_str(&event.to_string()).unwrap()
}

/// A response's status and JSON body (Null when empty).
pub struct Reply {
    /// The status.
    pub status: u16,
    /// The body as JSON.
    pub json: serde_json::Value,
    /// The headers.
    pub headers: http::HeaderMap,
}

impl TestApp {
    /// Sends a request through the edge exactly as the Lambda functions do.
    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<&str>) -> Reply {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        self.send(gateway_event(method, path, &headers, body)).await
    }

    /// Posts an NDJSON body (one record per line) to a dataset's bulk import.
    pub async fn import(&self, token: &str, dataset: &str, ndjson: &str) -> Reply {
        let auth = format!("Bearer {token}");
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/x-ndjson"),
        ];
        self.send(gateway_event(
            "POST",
            &format!("/v1/datasets/{dataset}/imports"),
            &headers,
            Some(ndjson),
        ))
        .await
    }

    /// Sends any request through the edge.
    pub async fn send(&self, req: lambda_http::Request) -> Reply {
        let router = tenantry::http::router(Arc::clone(&self.app), &tenantry::api::all_routes());
        let resp = tenantry::http::call(&router, req).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes: &[u8] = resp.body().as_ref();
        let ndjson = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/x-ndjson");
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else if ndjson {
            // One JSON document per line (an export): the lines, as an array.
            serde_json::Value::Array(
                bytes
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_slice(l).unwrap())
                    .collect(),
            )
        } else {
            serde_json::from_slice(bytes).unwrap()
        };
        Reply {
            status,
            json,
            headers,
        }
    }

    /// Creates a dataset from its JSON spec; panics unless it was created.
    pub async fn create_dataset(&self, token: &str, spec: &str) {
        let r = self.call("POST", "/v1/datasets", token, Some(spec)).await;
        assert_eq!(r.status, 201, "{}", r.json);
    }

    /// Ingests `records` (a JSON array) into `dataset`; panics unless it succeeded.
    pub async fn ingest(&self, token: &str, dataset: &str, records: &serde_json::Value) {
        let path = format!("/v1/datasets/{dataset}/records");
        let r = self
            .call("POST", &path, token, Some(&records.to_string()))
            .await;
        assert_eq!(r.status, 200, "{}", r.json);
    }

    /// Embeds `tenant`'s pending chunks with `embedder` (alongside the in-process queue ingest
    /// already started, which may hold some of them under its lease) until none are pending;
    /// returns how many chunks the tenant has.
    pub async fn embed_all(
        &self,
        tenant: TenantId,
        embedder: &dyn tenantry::rag::embed::Embedder,
    ) -> i64 {
        let admin = self.db.admin().await;
        for _ in 0..600 {
            tenantry::rag::queue::drain(&self.app.db, embedder, tenant)
                .await
                .unwrap();
            let row = admin
                .query_one(
                    "SELECT count(*) FILTER (WHERE embedding IS NULL), count(*) \
                     FROM app.chunks WHERE tenant_id = $1",
                    &[&tenant.as_uuid()],
                )
                .await
                .unwrap();
            if row.get::<_, i64>(0) == 0 {
                return row.get(1);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("chunks stayed pending");
    }

    /// A staff token (the staff organization) for `sub` with `roles`.
    pub fn staff_token(sub: &str, roles: &[&str]) -> String {
        issuer()
            .token(sub, STAFF_ORG, roles, Duration::from_secs(3600))
            .unwrap()
    }

    /// A tenant with org `org_<slug>` and a token for a user in it.
    pub async fn tenant_with_token(&self, slug: &str) -> (TenantId, String) {
        let id = tenant(&self.app.db, slug).await;
        let token = issuer()
            .token(
                &format!("auth0|{slug}-user"),
                &format!("org_{slug}"),
                &["admin"],
                Duration::from_secs(3600),
            )
            .unwrap();
        (id, token)
    }
}

static PY_TOOLS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The bin folder of the project's pinned Python tools (moto, cfn-lint, cargo-lambda), installed
/// by `scripts/py-tools` if needed.
pub fn py_tools() -> PathBuf {
    PY_TOOLS
        .get_or_init(|| {
            let out = Command::new(repo_root().join("scripts/py-tools"))
                .output()
                .expect("running scripts/py-tools");
            assert!(
                out.status.success(),
                "scripts/py-tools failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
}

/// A moto server: real AWS APIs (Secrets Manager, SQS, ...) on loopback, for the real SDK clients.
pub struct Moto {
    /// `http://127.0.0.1:port`
    pub endpoint: String,
    child: std::process::Child,
}

impl Moto {
    /// Starts one on a free port and waits until it answers.
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new(py_tools().join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting moto_server");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        }
    }

    /// An SDK configuration that talks to this server.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        local_sdk_config(&self.endpoint).await
    }

    /// Creates an SQS queue; returns a client for this server and the queue's URL.
    pub async fn queue(&self, name: &str) -> (aws_sdk_sqs::Client, String) {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk_config().await);
        let url = sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        (sqs, url)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An SDK configuration for a local endpoint (moto, the Bedrock stub): fixed region, static
/// credentials, the endpoint overridden.
pub async fn local_sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "test", "test", None, None, "local",
        ))
        .load()
        .await
}

/// A local Bedrock runtime: `InvokeModel` answering like Titan Text Embeddings V2 (vectors from
/// the local embedder, so similarity is meaningful) and `Converse` answering with a scripted
/// text. It records every request body and can answer with throttling errors first.
pub struct BedrockStub {
    /// `http://127.0.0.1:port`
    pub endpoint: String,
    requests: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    throttle: Arc<std::sync::atomic::AtomicU32>,
    reply: Arc<Mutex<String>>,
    plan: Arc<Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl BedrockStub {
    /// Starts one.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let throttle = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let reply = Arc::new(Mutex::new("From your data [S1].".to_owned()));
        let plan: Arc<Mutex<Vec<serde_json::Value>>> = Arc::new(Mutex::new(Vec::new()));
        let (r, t, p, pl) = (
            requests.clone(),
            throttle.clone(),
            reply.clone(),
            plan.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, t, p, pl) = (r.clone(), t.clone(), p.clone(), pl.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (r, t, p, pl) = (r.clone(), t.clone(), p.clone(), pl.clone());
                        async move {
                            use http_body_util::BodyExt as _;
                            let path = req.uri().path().to_owned();
                            let bytes = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let body: serde_json::Value =
                                serde_json::from_slice(&bytes).unwrap_or_default();
                            r.lock().unwrap().push((path.clone(), body.clone()));
                            let json =
                                |status: u16, value: serde_json::Value, error: Option<&str>| {
                                    let mut b = hyper::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json");
                                    if let Some(e) = error {
                                        b = b.header("x-amzn-errortype", e);
                                    }
                                    Ok::<_, std::convert::Infallible>(
                                        b.body(Full::new(Bytes::from(value.to_string()))).unwrap(),
                                    )
                                };
                            if t.load(Ordering::SeqCst) > 0 {
                                t.fetch_sub(1, Ordering::SeqCst);
                                return json(
                                    429,
                                    serde_json::json!({"message": "Too many requests, please wait before trying again."}),
                                    Some("ThrottlingException"),
                                );
                            }
                            if path.ends_with("/invoke") {
                                let text = body["inputText"].as_str().unwrap_or_default();
                                if text.contains("force-validation-error") {
                                    return json(
                                        400,
                                        serde_json::json!({"message": "Malformed input request"}),
                                        Some("ValidationException"),
                                    );
                                }
                                let dims = body["dimensions"].as_u64().unwrap_or(1024) as usize;
                                let v = tenantry::rag::embed::LocalEmbedder::new(dims).vector(text);
                                return json(
                                    200,
                                    serde_json::json!({"embedding": v, "inputTextTokenCount": text.split_whitespace().count()}),
                                    None,
                                );
                            }
                            if path.ends_with("/converse") && body.get("toolConfig").is_some() {
                                // The planner's call: the scripted content blocks (tool calls
                                // and text), or a reply without a tool call.
                                let mut content = pl.lock().unwrap().clone();
                                if let Some(e) = content.first().and_then(|c| c["error"].as_str()) {
                                    return json(
                                        400,
                                        serde_json::json!({"message": "The model rejected the request."}),
                                        Some(e),
                                    );
                                }
                                if content.is_empty() {
                                    content.push(serde_json::json!({"text": "That is not a question about figures."}));
                                }
                                let tool = content.iter().any(|c| c.get("toolUse").is_some());
                                return json(
                                    200,
                                    serde_json::json!({
                                        "output": {"message": {"role": "assistant", "content": content}},
                                        "stopReason": if tool { "tool_use" } else { "end_turn" },
                                        "usage": {"inputTokens": 300, "outputTokens": 40, "totalTokens": 340},
                                        "metrics": {"latencyMs": 42}
                                    }),
                                    None,
                                );
                            }
                            if path.ends_with("/converse") {
                                let text = p.lock().unwrap().clone();
                                return json(
                                    200,
                                    serde_json::json!({
                                        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                                        "stopReason": "end_turn",
                                        "usage": {"inputTokens": 100, "outputTokens": 20, "totalTokens": 120},
                                        "metrics": {"latencyMs": 42}
                                    }),
                                    None,
                                );
                            }
                            json(
                                404,
                                serde_json::json!({"message": "unknown operation"}),
                                Some("UnknownOperationException"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            endpoint,
            requests,
            throttle,
            reply,
            plan,
            task,
        }
    }

    /// What the planner's `Converse` call (the one with a tool) answers from now on: these
    /// content blocks (`{"toolUse": {...}}`, `{"text": ...}`); none: a reply with no tool call;
    /// `[{"error": "ValidationException"}]`: a 400 of that error type.
    pub fn plan_with(&self, content: Vec<serde_json::Value>) {
        *self.plan.lock().unwrap() = content;
    }

    /// A tool call of the planner's tool with `input`.
    pub fn tool_use(input: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"toolUse": {"toolUseId": "tooluse_1", "name": "run_query", "input": input}})
    }

    /// The next `n` requests get a throttling error.
    pub fn throttle(&self, n: u32) {
        self.throttle.store(n, Ordering::SeqCst);
    }

    /// What `Converse` answers from now on.
    pub fn reply_with(&self, text: &str) {
        *self.reply.lock().unwrap() = text.to_owned();
    }

    /// Every request so far: (path, JSON body).
    pub fn requests(&self) -> Vec<(String, serde_json::Value)> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for BedrockStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

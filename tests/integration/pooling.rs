//! Many tenants interleaved on one connection, directly and through PgBouncer in transaction mode:
//! each sees only its own canary, whatever the others did before it on that connection.

use std::time::Duration;

use futures_util::future::join_all;
use tenantry::TenantId;
use tenantry::db::{Access, Db};
use tenantry_tests::{PgBouncer, TestDb, as_tenant, tenant, tx};
use tokio_postgres::types::Type;

const TENANTS: usize = 12;
const ROUNDS: usize = 8;

async fn seed_canaries(db: &Db) -> Vec<(TenantId, String)> {
    let mut out = Vec::new();
    for i in 0..TENANTS {
        let id = tenant(db, &format!("canary-{i}")).await;
        let name = format!("canary_{i}");
        let mut t = tx(db, id).await;
        let uid = id.as_uuid();
        t.execute(
            "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, $2)",
            &[(&uid, Type::UUID), (&name, Type::TEXT)],
        )
        .await
        .unwrap();
        t.commit().await.unwrap();
        out.push((id, name));
    }
    out
}

/// One tenant's turn: read the canary and the session's idea of the tenant, sometimes leaving
/// the transaction in a state a careless pool would hand to the next tenant.
async fn turn(db: &Db, tenant: TenantId, canary: &str, round: usize) {
    let mut t = db
        .begin(&as_tenant(tenant), Access::ReadWrite)
        .await
        .unwrap();
    let rows = t
        .query(
            "SELECT name, current_setting('app.tenant_id') FROM app.datasets",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        seen,
        vec![(canary.to_owned(), tenant.to_string())],
        "tenant {tenant} saw {seen:?}"
    );
    match round % 4 {
        // The turn after a drop commits, so a drop that leaked its transaction would be caught.
        1 => t.commit().await.unwrap(),
        0 => {
            // Dropped mid-transaction after a write: it must roll back before anyone reuses the
            // connection, or the next tenant's COMMIT would commit this write.
            let uid = tenant.as_uuid();
            t.execute(
                "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'ghost')",
                &[(&uid, Type::UUID)],
            )
            .await
            .unwrap();
            drop(t);
        }
        2 => {
            // A failed statement, then an attempted commit: an error, never a silent success.
            assert!(t.query("SELECT 1/0", &[]).await.is_err());
            assert!(t.commit().await.is_err());
        }
        _ => {
            // A write that is rolled back must not be seen by the next tenant or by this one.
            let uid = tenant.as_uuid();
            t.execute(
                "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'ghost')",
                &[(&uid, Type::UUID)],
            )
            .await
            .unwrap();
            t.rollback().await.unwrap();
        }
    }
}

async fn interleave(db: &Db, canaries: &[(TenantId, String)]) {
    for round in 0..ROUNDS {
        let turns = canaries
            .iter()
            .enumerate()
            .map(|(i, (id, name))| turn(db, *id, name, round + i));
        join_all(turns).await;
    }
    // Give background rollbacks of dropped transactions a moment, then check once more.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (id, name) in canaries {
        turn(db, *id, name, 1).await;
    }
}

#[tokio::test]
async fn one_connection_many_tenants_direct() {
    let test = TestDb::new().await;
    let seed = test.pool(2);
    let canaries = seed_canaries(&seed).await;
    let db = test.pool(1);
    interleave(&db, &canaries).await;
    // The single connection carries no tenant between transactions.
    let mut t = db
        .begin(&as_tenant(TenantId::new()), Access::ReadOnly)
        .await
        .unwrap();
    let n: i64 = t
        .query_one("SELECT count(*) FROM app.datasets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a tenant with no rows sees rows");
    t.commit().await.unwrap();
}

#[tokio::test]
async fn one_server_connection_many_tenants_through_pgbouncer() {
    let test = TestDb::new().await;
    let seed = test.pool(2);
    let canaries = seed_canaries(&seed).await;
    let bouncer = PgBouncer::start(1);
    // Several client connections multiplexed onto one server connection by PgBouncer.
    let db = test.pool_at(&bouncer.app_url(&test.name), 6);
    interleave(&db, &canaries).await;
    // And a session-level setting made by someone else on the shared server connection is not
    // what TenantTx relies on: it sets its tenant in every transaction.
    let raw = tenantry_tests::connect(&bouncer.app_url(&test.name)).await;
    let other = canaries[0].0.to_string();
    raw.simple_query(&format!(
        "SELECT set_config('app.tenant_id', '{other}', false)"
    ))
    .await
    .unwrap();
    let (id, name) = &canaries[1];
    turn(&db, *id, name, 1).await;
}

/// TLS to the pooler, as to RDS Proxy with "Require TLS": the certificate is verified (a CA we
/// did not trust is refused), and plain connections are refused by the pooler.
#[tokio::test]
async fn tls_to_the_pooler_is_verified() {
    use tenantry::config::{DbConfig, DbTls};
    let test = TestDb::new().await;
    let seed = test.pool(1);
    let canaries = seed_canaries(&seed).await;
    let bouncer = PgBouncer::start_tls(1);
    let url = bouncer.app_url(&test.name);

    let mut cfg = DbConfig::new(&url, 2);
    cfg.tls = DbTls::Require {
        ca_file: Some(bouncer.ca_file()),
    };
    let db = tenantry::db::Db::connect(&cfg).unwrap();
    let (id, name) = &canaries[0];
    turn(&db, *id, name, 1).await;

    // Only the public roots: the test CA is unknown, so the handshake must fail.
    cfg.tls = DbTls::Require { ca_file: None };
    let untrusting = tenantry::db::Db::connect(&cfg).unwrap();
    assert!(
        untrusting
            .begin(&as_tenant(*id), Access::ReadOnly)
            .await
            .is_err()
    );

    // No TLS at all: the pooler refuses.
    cfg.tls = DbTls::Disable;
    let plain = tenantry::db::Db::connect(&cfg).unwrap();
    assert!(
        plain
            .begin(&as_tenant(*id), Access::ReadOnly)
            .await
            .is_err()
    );
}

//! Isolation, table by table, written as the attack: two tenants, act as A, reach for B, and check
//! both the refusal and that B's rows are byte-for-byte unchanged.

use tenantry::TenantId;
use tenantry::auth::ApiKeys;
use tenantry::db::{Db, Param, TenantTx};
use tenantry_tests::{TestDb, connect, tenant, tx};
use tokio_postgres::types::Type;
use uuid::Uuid;

/// Every tenant-owned table, with how to insert a row for a tenant ($1) in it.
const TABLES: &[(&str, &str)] = &[
    (
        "tenants",
        "INSERT INTO app.tenants (tenant_id, name, slug) VALUES ($1, 'Intruder', 'intruder-' || left(md5(random()::text), 8))",
    ),
    (
        "members",
        "INSERT INTO app.members (tenant_id, auth0_user_id, email) VALUES ($1, 'auth0|new', 'new@example.com')",
    ),
    (
        "api_keys",
        "INSERT INTO app.api_keys (tenant_id, prefix, hash, name, created_by)
         VALUES ($1, left(md5(random()::text), 12), sha256('x'), 'k', 'user:test')",
    ),
    (
        "datasets",
        "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'intruded')",
    ),
    (
        "records",
        "INSERT INTO app.records (tenant_id, dataset_id, key, data) VALUES ($1, gen_random_uuid(), 'intruded', '{}')",
    ),
    (
        "chunks",
        "INSERT INTO app.chunks (tenant_id, dataset_id, record_key, chunk_no, record_version, column_name, content)
         VALUES ($1, gen_random_uuid(), 'intruded', 0, 1, 'note', 'x')",
    ),
    (
        "usage_events",
        "INSERT INTO app.usage_events (tenant_id, event_id, meter, quantity, occurred_at, window_start, source)
         VALUES ($1, gen_random_uuid(), 'queries', 1, now(), date_trunc('hour', now()), 'intruder')",
    ),
    (
        "usage_deliveries",
        "INSERT INTO app.usage_deliveries (tenant_id, meter, window_start, seq, value, event_time)
         VALUES ($1, 'queries', date_trunc('hour', now()), 99, 1, now())",
    ),
    (
        "billing_customers",
        "INSERT INTO app.billing_customers (tenant_id, stripe_customer_id) VALUES ($1, 'cus_intruder')",
    ),
    (
        "billing_reconciliations",
        "INSERT INTO app.billing_reconciliations (tenant_id, run_id, meter, day, ledger_total, action)
         VALUES ($1, gen_random_uuid(), 'queries', current_date, 0, 'in_sync')",
    ),
    (
        "processed_webhooks",
        "INSERT INTO app.processed_webhooks (tenant_id, source, event_id, event_type)
         VALUES ($1, 'stripe', 'evt_intruder', 'x')",
    ),
];

struct Seeded {
    tenant: TenantId,
    dataset: Uuid,
    prefix: String,
}

/// The same rows for each tenant: same member user id, dataset name and record key, so the second
/// tenant's inserts also prove that unique keys do not reveal the first tenant's rows.
async fn seed(db: &Db, slug: &str) -> Seeded {
    let tenant = tenant(db, slug).await;
    let mut t = tx(db, tenant).await;
    let id = tenant.as_uuid();
    t.execute(
        "INSERT INTO app.members (tenant_id, auth0_user_id, email) VALUES ($1, 'auth0|shared', 'a@example.com')",
        &[(&id, Type::UUID)],
    )
    .await
    .unwrap();
    let dataset: Uuid = t
        .query_one(
            "INSERT INTO app.datasets (tenant_id, name, columns) VALUES ($1, 'sales', '[]') RETURNING dataset_id",
            &[(&id, Type::UUID)],
        )
        .await
        .unwrap()
        .get(0);
    let secret = format!("{{\"secret\": \"{slug}\"}}");
    t.execute(
        "INSERT INTO app.records (tenant_id, dataset_id, key, data) VALUES ($1, $2, 'r1', $3::text::jsonb)",
        &[(&id, Type::UUID), (&dataset, Type::UUID), (&secret, Type::TEXT)],
    )
    .await
    .unwrap();
    t.execute(
        "INSERT INTO app.chunks (tenant_id, dataset_id, record_key, chunk_no, record_version, column_name, content) \
         VALUES ($1, $2, 'r1', 0, 1, 'note', 'shared words')",
        &[(&id, Type::UUID), (&dataset, Type::UUID)],
    )
    .await
    .unwrap();
    // Billing rows with the same keys (event id, window, run, webhook id) in both tenants.
    let customer = format!("cus_{slug}");
    for (sql, extra) in [
        (
            "INSERT INTO app.usage_events (tenant_id, event_id, meter, quantity, occurred_at, window_start, source) \
             VALUES ($1, '01900000-0000-7000-8000-0000000000e1', 'queries', 1, now(), date_trunc('hour', now()), 'seed')",
            None,
        ),
        (
            "INSERT INTO app.usage_deliveries (tenant_id, meter, window_start, seq, value, event_time) \
             VALUES ($1, 'queries', date_trunc('hour', now()), 0, 1, now())",
            None,
        ),
        (
            "INSERT INTO app.billing_customers (tenant_id, stripe_customer_id) VALUES ($1, $2)",
            Some(&customer),
        ),
        (
            "INSERT INTO app.billing_reconciliations (tenant_id, run_id, meter, day, ledger_total, action) \
             VALUES ($1, '01900000-0000-7000-8000-0000000000e2', 'queries', current_date, 1, 'in_sync')",
            None,
        ),
        (
            "INSERT INTO app.processed_webhooks (tenant_id, source, event_id, event_type) \
             VALUES ($1, 'stripe', 'evt_shared', 'invoice.paid')",
            None,
        ),
    ] {
        match extra {
            None => t.execute(sql, &[(&id, Type::UUID)]).await.unwrap(),
            Some(v) => t
                .execute(sql, &[(&id, Type::UUID), (v, Type::TEXT)])
                .await
                .unwrap(),
        };
    }
    let key = ApiKeys::create(&mut t, "ci").await.unwrap();
    t.commit().await.unwrap();
    Seeded {
        tenant,
        dataset,
        prefix: key.prefix,
    }
}

/// A fingerprint of every row a tenant owns, read as the superuser (who bypasses RLS).
async fn fingerprint(admin: &tokio_postgres::Client, tenant: TenantId) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (table, _) in TABLES {
        let row = admin
            .query_one(
                &format!(
                    "SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '')
                     FROM app.{table} t WHERE tenant_id = $1"
                ),
                &[&tenant.as_uuid()],
            )
            .await
            .unwrap();
        out.push(((*table).to_owned(), row.get(0)));
    }
    out
}

/// Runs one statement as A in its own transaction: Ok(rows changed) or the error, rolled back
/// unless it succeeded.
async fn attempt(
    db: &Db,
    as_a: TenantId,
    sql: &str,
    params: &[Param<'_>],
) -> Result<u64, tenantry::db::DbError> {
    let mut t: TenantTx = tx(db, as_a).await;
    let result = t.execute(sql, params).await;
    if result.is_ok() {
        t.commit().await.unwrap();
    }
    result
}

#[tokio::test]
async fn every_tenant_table_has_an_attack_fixture() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let rows = admin
        .query("SELECT relname FROM pg_class WHERE relnamespace = 'app'::regnamespace AND relkind = 'r' AND relrowsecurity", &[])
        .await
        .unwrap();
    for row in rows {
        let name: String = row.get(0);
        assert!(
            TABLES.iter().any(|(t, _)| *t == name),
            "app.{name} is tenant-owned but the isolation tests do not attack it: add it to TABLES"
        );
    }
}

#[tokio::test]
async fn tenant_a_cannot_read_or_touch_tenant_b() {
    let test = TestDb::new().await;
    let db = test.pool(4);
    let admin = test.admin().await;
    let a = seed(&db, "alpha").await;
    let b = seed(&db, "bravo").await;
    let (a_id, b_id) = (a.tenant.as_uuid(), b.tenant.as_uuid());
    let before = fingerprint(&admin, b.tenant).await;

    for (table, insert) in TABLES {
        // SELECT: A sees its own rows and none of B's, even when it asks for them by id.
        let mut t = tx(&db, a.tenant).await;
        let own: i64 = t
            .query_one(&format!("SELECT count(*) FROM app.{table}"), &[])
            .await
            .unwrap()
            .get(0);
        let foreign: i64 = t
            .query_one(
                &format!("SELECT count(*) FROM app.{table} WHERE tenant_id <> $1"),
                &[(&a_id, Type::UUID)],
            )
            .await
            .unwrap()
            .get(0);
        t.commit().await.unwrap();
        assert!(own >= 1, "{table}: A cannot see its own rows");
        assert_eq!(foreign, 0, "{table}: A sees rows of another tenant");

        // UPDATE and DELETE aimed at B change nothing (or are refused outright).
        let upd = attempt(
            &db,
            a.tenant,
            &format!("UPDATE app.{table} SET tenant_id = tenant_id WHERE tenant_id = $1"),
            &[(&b_id, Type::UUID)],
        )
        .await;
        assert!(
            matches!(upd, Ok(0) | Err(_)),
            "{table}: UPDATE reached B: {upd:?}"
        );
        let del = attempt(
            &db,
            a.tenant,
            &format!("DELETE FROM app.{table} WHERE tenant_id = $1"),
            &[(&b_id, Type::UUID)],
        )
        .await;
        assert!(
            matches!(del, Ok(0) | Err(_)),
            "{table}: DELETE reached B: {del:?}"
        );

        // INSERT a row labelled as B's: refused by the policy's WITH CHECK.
        let ins = attempt(&db, a.tenant, insert, &[(&b_id, Type::UUID)]).await;
        assert!(
            ins.as_ref().is_err_and(|e| e.is_permission_denied()),
            "{table}: INSERT with B's tenant_id was not refused by RLS: {ins:?}"
        );

        // Moving A's own row to B: refused by WITH CHECK.
        let mv = attempt(
            &db,
            a.tenant,
            &format!("UPDATE app.{table} SET tenant_id = $1 WHERE tenant_id = $2"),
            &[(&b_id, Type::UUID), (&a_id, Type::UUID)],
        )
        .await;
        assert!(
            mv.as_ref().is_err_and(|e| e.is_permission_denied()),
            "{table}: moving A's row to B was not refused by RLS: {mv:?}"
        );
    }

    // Upserts aimed at B's keys: either refused or confined to A's own rows.
    let upserts: Vec<(&str, String, Vec<Param<'_>>)> = vec![
        (
            "tenants by id",
            "INSERT INTO app.tenants (tenant_id, name, slug) VALUES ($1, 'pwned', 'pwned') \
             ON CONFLICT (tenant_id) DO UPDATE SET name = 'pwned'".into(),
            vec![(&b_id, Type::UUID)],
        ),
        (
            "tenants by slug",
            "INSERT INTO app.tenants (tenant_id, name, slug) VALUES ($1, 'pwned', 'bravo') \
             ON CONFLICT (slug) DO UPDATE SET name = 'pwned', plan = 'enterprise'".into(),
            vec![(&a_id, Type::UUID)],
        ),
        (
            "members",
            "INSERT INTO app.members (tenant_id, auth0_user_id) VALUES ($1, 'auth0|shared') \
             ON CONFLICT (tenant_id, auth0_user_id) DO UPDATE SET role = 'owner'".into(),
            vec![(&b_id, Type::UUID)],
        ),
        (
            "api_keys by prefix",
            "INSERT INTO app.api_keys (tenant_id, prefix, hash, name, created_by) \
             VALUES ($1, $2, sha256('x'), 'pwned', 'attacker') \
             ON CONFLICT (prefix) DO UPDATE SET hash = sha256('x'), revoked_at = NULL".into(),
            vec![(&a_id, Type::UUID), (&b.prefix, Type::TEXT)],
        ),
        (
            "datasets",
            "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'sales') \
             ON CONFLICT (tenant_id, name) DO UPDATE SET columns = '[\"pwned\"]'".into(),
            vec![(&b_id, Type::UUID)],
        ),
        (
            "records",
            "INSERT INTO app.records (tenant_id, dataset_id, key, data) VALUES ($1, $2, 'r1', '{}') \
             ON CONFLICT (tenant_id, dataset_id, key) DO UPDATE SET data = '{\"pwned\": true}'".into(),
            vec![(&b_id, Type::UUID), (&b.dataset, Type::UUID)],
        ),
        (
            "chunks",
            "INSERT INTO app.chunks (tenant_id, dataset_id, record_key, chunk_no, record_version, column_name, content) \
             VALUES ($1, $2, 'r1', 0, 1, 'note', 'x') \
             ON CONFLICT (tenant_id, dataset_id, record_key, chunk_no) DO UPDATE SET content = 'pwned'".into(),
            vec![(&b_id, Type::UUID), (&b.dataset, Type::UUID)],
        ),
    ];
    for (what, sql, params) in &upserts {
        let result = attempt(&db, a.tenant, sql, params).await;
        assert!(
            result.is_err(),
            "{what}: upsert against B's key was not refused: {result:?}"
        );
    }

    // A record of A's pointing at B's dataset is refused (the foreign key leads with tenant_id).
    let cross = attempt(
        &db,
        a.tenant,
        "INSERT INTO app.records (tenant_id, dataset_id, key, data) VALUES ($1, $2, 'x', '{}')",
        &[(&a_id, Type::UUID), (&b.dataset, Type::UUID)],
    )
    .await;
    assert!(cross.is_err(), "A attached a record to B's dataset");

    assert_eq!(
        fingerprint(&admin, b.tenant).await,
        before,
        "B's rows changed"
    );
    // A still has exactly its own seeded rows plus nothing from the attacks.
    assert!(a.dataset != b.dataset);
}

/// With no tenant set, or an empty or malformed one, the app role reads nothing and writes nothing.
#[tokio::test]
async fn without_a_tenant_every_read_is_empty_and_every_write_fails() {
    let test = TestDb::new().await;
    let db = test.pool(2);
    let a = seed(&db, "alpha").await;
    let raw = connect(&test.app_url).await;
    let a_id = a.tenant.as_uuid();

    for setting in [None, Some("")] {
        if let Some(v) = setting {
            raw.query("SELECT set_config('app.tenant_id', $1, false)", &[&v])
                .await
                .unwrap();
        }
        for (table, insert) in TABLES {
            let n: i64 = raw
                .query_one(&format!("SELECT count(*) FROM app.{table}"), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                n, 0,
                "{table}: rows visible with tenant setting {setting:?}"
            );
            let ins = raw.execute(*insert, &[&a_id]).await;
            assert!(
                ins.is_err(),
                "{table}: insert succeeded with tenant setting {setting:?}"
            );
            let upd = raw
                .execute(
                    &format!("UPDATE app.{table} SET tenant_id = tenant_id"),
                    &[],
                )
                .await;
            assert!(
                matches!(upd, Ok(0) | Err(_)),
                "{table}: update touched rows"
            );
        }
    }
    // A malformed setting fails closed: an error, not rows.
    raw.query(
        "SELECT set_config('app.tenant_id', 'not-a-uuid', false)",
        &[],
    )
    .await
    .unwrap();
    assert!(raw.query("SELECT * FROM app.records", &[]).await.is_err());

    let admin = test.admin().await;
    let n: i64 = admin
        .query_one("SELECT count(*) FROM app.records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the seeded record is gone or a new one appeared");
}

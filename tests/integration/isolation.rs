//! Isolation, table by table, written as the attack: two tenants, act as A, reach for B, and check
//! both the exact refusal and that B's (and A's) rows are byte-for-byte unchanged.
//!
//! Each attack runs as the app role through TenantTx (the real path), where a missing grant may
//! refuse before RLS is asked (the ledger is append-only), and again as the probe role, which has
//! every DML grant and only RLS in its way; and as the owner, which forced RLS confines too.

use tenantry::TenantId;
use tenantry::auth::{ApiKeys, Scope};
use tenantry::db::{Db, Param, TenantTx};
use tenantry_tests::rls_probe::{OWNER_ROLE, Outcome, PROBE_ROLE, Probe};
use tenantry_tests::{TestDb, connect, tenant, tx};
use tokio_postgres::types::Type;
use uuid::Uuid;

/// Every tenant-owned table: how to insert a row in it, and what the app role's grants let it do.
struct Table {
    name: &'static str,
    /// Inserts a row for tenant `$1` (`$2`: a dataset of that tenant, for tables that hang off
    /// one) whose parents exist, so no foreign key can refuse it first. In `tenants` and
    /// `billing_customers` the key is the tenant, so B's row would also collide with B's own:
    /// the asserted message is what shows that RLS refused it, before any constraint.
    insert: &'static str,
    /// The app role may INSERT (every table but the trigger-written record versions).
    insert_granted: bool,
    /// A SET clause that changes nothing, on a column the app role may update if it may update
    /// the table at all.
    touch: &'static str,
    /// The app role may UPDATE the touched column.
    update: bool,
    /// The app role may UPDATE `tenant_id`.
    update_tenant: bool,
    /// The app role may DELETE.
    delete: bool,
    /// The owner reads every tenant's rows here (its read-only lookup policy, for the SECURITY
    /// DEFINER lookups).
    owner_lookup: bool,
    /// A trigger refuses every UPDATE of a row (append-only), whoever asks: its message.
    update_refused: Option<&'static str>,
    /// A trigger refuses every DELETE of a row, whoever asks: its message.
    delete_refused: Option<&'static str>,
}

const TABLES: &[Table] = &[
    Table {
        name: "tenants",
        insert: "INSERT INTO app.tenants (tenant_id, name, slug) VALUES ($1, 'Intruder', 'intruder-' || left(md5(random()::text), 8))",
        insert_granted: true,
        touch: "tenant_id = tenant_id",
        update: true,
        update_tenant: true,
        delete: false,
        owner_lookup: true,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "members",
        insert: "INSERT INTO app.members (tenant_id, auth0_user_id, email) VALUES ($1, 'auth0|new', 'new@example.com')",
        insert_granted: true,
        touch: "tenant_id = tenant_id",
        update: true,
        update_tenant: true,
        delete: true,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "api_keys",
        insert: "INSERT INTO app.api_keys (tenant_id, prefix, hash, name, created_by, scopes)
                 VALUES ($1, left(md5(random()::text), 12), sha256('x'), 'k', 'user:test', '{read}')",
        // The app role may update only these two columns (scopes are fixed at creation).
        insert_granted: true,
        touch: "revoked_at = revoked_at, last_used_at = last_used_at",
        update: true,
        update_tenant: false,
        delete: true,
        owner_lookup: true,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "datasets",
        insert: "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'intruded')",
        insert_granted: true,
        touch: "tenant_id = tenant_id",
        update: true,
        update_tenant: true,
        delete: true,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "records",
        insert: "INSERT INTO app.records (tenant_id, dataset_id, key, data) VALUES ($1, $2, 'intruded', '{}')",
        insert_granted: true,
        touch: "tenant_id = tenant_id",
        update: true,
        update_tenant: true,
        delete: true,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "record_versions",
        insert: "INSERT INTO app.record_versions (tenant_id, dataset_id, key, version, data, written_at)
                 VALUES ($1, $2, 'r1', 99, '{}', now())",
        insert_granted: false,
        touch: "tenant_id = tenant_id",
        update: false,
        update_tenant: false,
        delete: false,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "rollups",
        insert: "INSERT INTO app.rollups (tenant_id, dataset_id, rollup, bucket, n) VALUES ($1, $2, 1, now(), 1)",
        insert_granted: true,
        touch: "tenant_id = tenant_id",
        update: true,
        update_tenant: true,
        delete: true,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "chunks",
        insert: "INSERT INTO app.chunks (tenant_id, dataset_id, record_key, chunk_no, record_version, column_name, content)
                 VALUES ($1, $2, 'r1', 1, 1, 'note', 'x')",
        insert_granted: true,
        touch: "tenant_id = tenant_id",
        update: true,
        update_tenant: true,
        delete: true,
        owner_lookup: true,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "usage_events",
        insert: "INSERT INTO app.usage_events (tenant_id, event_id, meter, quantity, occurred_at, window_start, source)
                 VALUES ($1, gen_random_uuid(), 'queries', 1, now(), date_trunc('hour', now()), 'intruder')",
        insert_granted: true,
        touch: "tenant_id = tenant_id",
        update: false,
        update_tenant: false,
        delete: false,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "usage_deliveries",
        insert: "INSERT INTO app.usage_deliveries (tenant_id, meter, window_start, seq, value, event_time)
                 VALUES ($1, 'queries', date_trunc('hour', now()), 99, 1, now())",
        // Only a delivery's progress may change: status, reason, attempts, lease, claim, settled.
        insert_granted: true,
        touch: "attempts = attempts",
        update: true,
        update_tenant: false,
        delete: false,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "billing_customers",
        insert: "INSERT INTO app.billing_customers (tenant_id, stripe_customer_id) VALUES ($1, 'cus_intruder')",
        insert_granted: true,
        touch: "tenant_id = tenant_id",
        update: true,
        update_tenant: true,
        delete: false,
        owner_lookup: true,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "usage_counters",
        insert: "INSERT INTO app.usage_counters (tenant_id, meter, period_start, used)
                 VALUES ($1, 'questions', now(), 1)",
        // Only the count and its notice may change.
        insert_granted: true,
        touch: "used = used",
        update: true,
        update_tenant: false,
        delete: false,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "billing_periods",
        insert: "INSERT INTO app.billing_periods (tenant_id, subscription_id, period_start, period_end, source)
                 VALUES ($1, 'sub_intruder', now(), now() + interval '1 month', 'webhook')",
        // Only a period's end and its finalization may change.
        insert_granted: true,
        touch: "period_end = period_end",
        update: true,
        update_tenant: false,
        delete: false,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "billing_reconciliations",
        insert: "INSERT INTO app.billing_reconciliations (tenant_id, run_id, meter, day, ledger_total, action)
                 VALUES ($1, gen_random_uuid(), 'queries', current_date, 0, 'in_sync')",
        insert_granted: true,
        touch: "tenant_id = tenant_id",
        update: false,
        update_tenant: false,
        delete: false,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "billing_reconciliation_days",
        insert: "INSERT INTO app.billing_reconciliation_days
                   (tenant_id, day, runs, first_run_at, last_run_at, last_run_id, checked, actions,
                    issues, repaired, drift)
                 VALUES ($1, current_date, 1, now(), now(), gen_random_uuid(), 0, '{}', '[]', 0, 0)",
        // Only the run's figures may change.
        insert_granted: true,
        touch: "runs = runs",
        update: true,
        update_tenant: false,
        delete: false,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "usage_window_changes",
        insert: "INSERT INTO app.usage_window_changes (tenant_id, meter, window_start)
                 VALUES ($1, 'queries', date_trunc('hour', now()))",
        insert_granted: true,
        touch: "tenant_id = tenant_id",
        update: false,
        update_tenant: false,
        delete: true,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "processed_webhooks",
        insert: "INSERT INTO app.processed_webhooks (tenant_id, source, event_id, event_type)
                 VALUES ($1, 'stripe', 'evt_intruder', 'x')",
        insert_granted: true,
        touch: "tenant_id = tenant_id",
        update: false,
        update_tenant: false,
        delete: false,
        owner_lookup: false,
        update_refused: None,
        delete_refused: None,
    },
    Table {
        name: "audit_events",
        // The trigger skips chaining a row that is not the transaction's tenant's, so RLS is
        // what refuses it.
        insert: "INSERT INTO app.audit_events (tenant_id, action) VALUES ($1, 'dataset.created')",
        insert_granted: true,
        touch: "tenant_id = tenant_id",
        update: false,
        update_tenant: false,
        delete: false,
        owner_lookup: false,
        update_refused: Some("audit_events is append-only: UPDATE refused"),
        delete_refused: Some("audit_events is append-only: DELETE refused"),
    },
    Table {
        name: "audit_heads",
        insert: "INSERT INTO app.audit_heads (tenant_id, seq, hash) VALUES ($1, 0, sha256('x'))",
        // The app role moves a head forward (seq, hash) in the audit trigger, never elsewhere.
        insert_granted: true,
        touch: "seq = seq",
        update: true,
        update_tenant: false,
        delete: false,
        owner_lookup: false,
        update_refused: None,
        delete_refused: Some("audit_heads is append-only: DELETE refused"),
    },
    Table {
        name: "impersonation_sessions",
        insert: "INSERT INTO app.impersonation_sessions (tenant_id, session_id, staff_id, reason, mode, \
                 needs_staff_approval, needs_tenant_approval, expires_at) \
                 VALUES ($1, gen_random_uuid(), 'auth0|x', 'a long enough reason', 'read_only', \
                 false, false, now() + interval '5 minutes')",
        // Only approvals and the end may change (once); this changes nothing.
        insert_granted: true,
        touch: "ended_by = ended_by",
        update: true,
        update_tenant: false,
        delete: false,
        owner_lookup: true,
        update_refused: None,
        delete_refused: Some("impersonation_sessions is append-only: DELETE refused"),
    },
];

/// A trigger's refusal, or what the statement does without it.
fn unless_refused(refused: Option<&str>, then: Outcome) -> Outcome {
    match refused {
        Some(message) => Outcome::refused("42501", message),
        None => then,
    }
}

/// What the app role gets: `then` if it has the grant, else the missing grant's refusal.
fn granted(has_grant: bool, table: &str, then: Outcome) -> Outcome {
    if has_grant {
        then
    } else {
        Outcome::no_grant(table)
    }
}

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
    // Its first version, kept by the update trigger (app.record_versions).
    t.execute(
        "UPDATE app.records SET data = data || '{\"v\": 2}', version = 2, updated_at = now() \
         WHERE tenant_id = $1 AND dataset_id = $2 AND key = 'r1'",
        &[(&id, Type::UUID), (&dataset, Type::UUID)],
    )
    .await
    .unwrap();
    // The same group in both tenants' rollups.
    t.execute(
        "INSERT INTO app.rollups (tenant_id, dataset_id, rollup, bucket, g1, n) \
         VALUES ($1, $2, 1, '2026-11-01T00:00:00Z', 'EU', 1)",
        &[(&id, Type::UUID), (&dataset, Type::UUID)],
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
        (
            "INSERT INTO app.billing_reconciliation_days \
               (tenant_id, day, runs, first_run_at, last_run_at, last_run_id, checked, actions, \
                issues, repaired, drift) \
             VALUES ($1, current_date, 1, now(), now(), gen_random_uuid(), 1, '{}', '[]', 0, 0)",
            None,
        ),
        (
            "INSERT INTO app.billing_periods (tenant_id, subscription_id, period_start, period_end, source) \
             VALUES ($1, 'sub_shared', '2026-11-14T10:00:00Z', '2026-12-14T10:00:00Z', 'webhook')",
            None,
        ),
        (
            "INSERT INTO app.usage_counters (tenant_id, meter, period_start, used) \
             VALUES ($1, 'queries', '2026-11-01T00:00:00Z', 3)",
            None,
        ),
        (
            "INSERT INTO app.impersonation_sessions (tenant_id, session_id, staff_id, reason, mode, \
               needs_staff_approval, needs_tenant_approval, expires_at) \
             VALUES ($1, gen_random_uuid(), 'auth0|shared', 'a long enough reason', 'read_only', \
               false, false, now() + interval '5 minutes')",
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
    let key = ApiKeys::create(&mut t, "ci", &[Scope::Read, Scope::Ingest])
        .await
        .unwrap();
    tenantry::audit::record(
        &mut t,
        tenantry::audit::Action::DatasetCreated,
        Some("sales"),
        serde_json::json!({}),
        None,
    )
    .await
    .unwrap();
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
    for table in TABLES {
        let row = admin
            .query_one(
                &format!(
                    "SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '')
                     FROM app.{} t WHERE tenant_id = $1",
                    table.name
                ),
                &[&tenant.as_uuid()],
            )
            .await
            .unwrap();
        out.push((table.name.to_owned(), row.get(0)));
    }
    out
}

/// How many rows of `table` a tenant owns, read as the superuser.
async fn owned(admin: &tokio_postgres::Client, table: &str, tenant: TenantId) -> u64 {
    let n: i64 = admin
        .query_one(
            &format!("SELECT count(*) FROM app.{table} WHERE tenant_id = $1"),
            &[&tenant.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    u64::try_from(n).unwrap()
}

/// Runs one statement as A through TenantTx (the app role) in its own transaction: what it came
/// to, committed if it succeeded.
async fn attempt(db: &Db, as_a: TenantId, sql: &str, params: &[Param<'_>]) -> Outcome {
    let mut t: TenantTx = tx(db, as_a).await;
    let result = t.execute(sql, params).await;
    if result.is_ok() {
        t.commit().await.unwrap();
    }
    Outcome::of_db(result)
}

#[tokio::test]
async fn every_tenant_table_has_an_attack_fixture() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let rows = admin
        .query("SELECT relname FROM pg_class WHERE relnamespace = 'app'::regnamespace AND relkind = 'r' AND relrowsecurity", &[])
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    for name in &names {
        assert!(
            TABLES.iter().any(|t| t.name == name),
            "app.{name} is tenant-owned but the isolation tests do not attack it: add it to TABLES"
        );
    }
    for t in TABLES {
        assert!(
            names.iter().any(|n| n == t.name),
            "app.{} is attacked here but is not a table under RLS",
            t.name
        );
    }
}

#[tokio::test]
async fn tenant_a_cannot_read_or_touch_tenant_b() {
    let test = TestDb::new().await;
    let db = test.pool(4);
    let admin = test.admin().await;
    let probe = Probe::new(&test.admin_url).await;
    let a = seed(&db, "alpha").await;
    let b = seed(&db, "bravo").await;
    let (a_id, b_id) = (a.tenant.as_uuid(), b.tenant.as_uuid());
    let a_str = a.tenant.to_string();
    let as_a = Some(a_str.as_str());
    let before_a = fingerprint(&admin, a.tenant).await;
    let before_b = fingerprint(&admin, b.tenant).await;
    let b_only: [Param<'_>; 1] = [(&b_id, Type::UUID)];
    let b_row: [Param<'_>; 2] = [(&b_id, Type::UUID), (&b.dataset, Type::UUID)];

    for t in TABLES {
        let table = t.name;
        let mine = owned(&admin, table, a.tenant).await;
        let theirs = owned(&admin, table, b.tenant).await;
        assert!(
            mine >= 1 && theirs >= 1,
            "{table}: the seed left nothing to attack"
        );

        // SELECT with no tenant filter: exactly A's rows, as the app role and as the probe.
        let count =
            format!("SELECT count(*), count(*) FILTER (WHERE tenant_id <> $1) FROM app.{table}");
        let a_only: [Param<'_>; 1] = [(&a_id, Type::UUID)];
        let mut tx_a = tx(&db, a.tenant).await;
        let row = tx_a.query_one(&count, &a_only).await.unwrap();
        tx_a.commit().await.unwrap();
        let seen = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
        assert_eq!(
            seen,
            (mine, 0),
            "{table}: app role as A sees (all, not A's)"
        );
        let rows = probe
            .rows_as(PROBE_ROLE, as_a, &count, &a_only)
            .await
            .unwrap();
        let seen = (
            rows[0].get::<_, i64>(0) as u64,
            rows[0].get::<_, i64>(1) as u64,
        );
        assert_eq!(seen, (mine, 0), "{table}: probe as A sees (all, not A's)");

        // UPDATE aimed at B's rows: nothing matches. With no WHERE at all: A's rows only.
        let upd_b = format!("UPDATE app.{table} SET {} WHERE tenant_id = $1", t.touch);
        let upd_all = format!("UPDATE app.{table} SET {}", t.touch);
        assert_eq!(
            attempt(&db, a.tenant, &upd_b, &b_only).await,
            granted(t.update, table, Outcome::Rows(0)),
            "{table}: app role's UPDATE of B's rows"
        );
        assert_eq!(
            attempt(&db, a.tenant, &upd_all, &[]).await,
            granted(t.update, table, Outcome::Rows(mine)),
            "{table}: app role's UPDATE with no WHERE"
        );
        assert_eq!(
            probe.attempt(as_a, &upd_b, &b_only).await,
            Outcome::Rows(0),
            "{table}: probe's UPDATE of B's rows"
        );
        assert_eq!(
            probe.attempt(as_a, &upd_all, &[]).await,
            unless_refused(t.update_refused, Outcome::Rows(mine)),
            "{table}: probe's UPDATE with no WHERE"
        );

        // DELETE aimed at B's rows: nothing matches. With no WHERE (rolled back): A's rows only.
        let del_b = format!("DELETE FROM app.{table} WHERE tenant_id = $1");
        assert_eq!(
            attempt(&db, a.tenant, &del_b, &b_only).await,
            granted(t.delete, table, Outcome::Rows(0)),
            "{table}: app role's DELETE of B's rows"
        );
        assert_eq!(
            probe.attempt(as_a, &del_b, &b_only).await,
            Outcome::Rows(0),
            "{table}: probe's DELETE of B's rows"
        );
        let deleted = probe
            .rows_as(
                PROBE_ROLE,
                as_a,
                &format!("DELETE FROM app.{table} RETURNING tenant_id"),
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect::<Vec<Uuid>>());
        match t.delete_refused {
            Some(message) => assert_eq!(
                deleted.err(),
                Some(Outcome::refused("42501", message)),
                "{table}: probe's DELETE with no WHERE"
            ),
            None => assert_eq!(
                deleted.ok(),
                Some(vec![a_id; mine as usize]),
                "{table}: probe's DELETE with no WHERE reached beyond A's rows"
            ),
        }

        // INSERT a row labelled as B's: refused by the policy's WITH CHECK.
        assert_eq!(
            attempt(&db, a.tenant, t.insert, &b_row).await,
            granted(t.insert_granted, table, Outcome::rls(table)),
            "{table}: app role's INSERT with B's tenant_id"
        );
        assert_eq!(
            probe.attempt(as_a, t.insert, &b_row).await,
            Outcome::rls(table),
            "{table}: probe's INSERT with B's tenant_id"
        );

        // Moving A's rows to B (no WHERE: every row A sees): refused by WITH CHECK.
        let mv = format!("UPDATE app.{table} SET tenant_id = $1");
        assert_eq!(
            attempt(&db, a.tenant, &mv, &b_only).await,
            granted(t.update_tenant, table, Outcome::rls(table)),
            "{table}: app role moving A's rows to B"
        );
        assert_eq!(
            probe.attempt(as_a, &mv, &b_only).await,
            unless_refused(t.update_refused, Outcome::rls(table)),
            "{table}: probe moving A's rows to B"
        );

        // The owner is under RLS too (forced): the SECURITY DEFINER lookups run as the owner.
        // Its lookup policy lets it read, never write, another tenant's rows.
        let owner_reads = format!("SELECT count(*) FROM app.{table} WHERE tenant_id = $1");
        let rows = probe
            .rows_as(OWNER_ROLE, as_a, &owner_reads, &b_only)
            .await
            .unwrap();
        let expected = if t.owner_lookup { theirs } else { 0 };
        assert_eq!(
            rows[0].get::<_, i64>(0) as u64,
            expected,
            "{table}: B's rows the owner reads as A"
        );
        for (what, sql, params, expected) in [
            (
                "UPDATE of B's rows",
                upd_b.as_str(),
                &b_only[..],
                Outcome::Rows(0),
            ),
            (
                "DELETE of B's rows",
                del_b.as_str(),
                &b_only[..],
                Outcome::Rows(0),
            ),
            ("INSERT for B", t.insert, &b_row[..], Outcome::rls(table)),
            (
                "moving A's rows to B",
                mv.as_str(),
                &b_only[..],
                unless_refused(t.update_refused, Outcome::rls(table)),
            ),
        ] {
            assert_eq!(
                probe.attempt_as(OWNER_ROLE, as_a, sql, params).await,
                expected,
                "{table}: the owner's {what}"
            );
        }
    }

    // Upserts aimed at B's keys: the inserted row is B's (WITH CHECK refuses it), or the
    // conflicting row is (USING refuses updating it). Where the app role may not update the
    // table at all, its grant refuses first, and the probe shows RLS would refuse too.
    let b_customer = "cus_bravo";
    let upserts: Vec<(&str, String, Vec<Param<'_>>, bool, Outcome)> = vec![
        (
            "tenants by id",
            "INSERT INTO app.tenants (tenant_id, name, slug) VALUES ($1, 'pwned', 'pwned') \
             ON CONFLICT (tenant_id) DO UPDATE SET name = 'pwned'".into(),
            vec![(&b_id, Type::UUID)],
            true,
            Outcome::rls("tenants"),
        ),
        (
            "tenants by slug",
            "INSERT INTO app.tenants (tenant_id, name, slug) VALUES ($1, 'pwned', 'bravo') \
             ON CONFLICT (slug) DO UPDATE SET name = 'pwned', plan = 'enterprise'".into(),
            vec![(&a_id, Type::UUID)],
            true,
            Outcome::rls_using("tenants"),
        ),
        (
            "members",
            "INSERT INTO app.members (tenant_id, auth0_user_id) VALUES ($1, 'auth0|shared') \
             ON CONFLICT (tenant_id, auth0_user_id) DO UPDATE SET role = 'owner'".into(),
            vec![(&b_id, Type::UUID)],
            true,
            Outcome::rls("members"),
        ),
        (
            "api_keys by prefix",
            "INSERT INTO app.api_keys (tenant_id, prefix, hash, name, created_by, scopes) \
             VALUES ($1, $2, sha256('x'), 'pwned', 'attacker', '{read}') \
             ON CONFLICT (prefix) DO UPDATE SET revoked_at = NULL".into(),
            vec![(&a_id, Type::UUID), (&b.prefix, Type::TEXT)],
            true,
            Outcome::rls_using("api_keys"),
        ),
        (
            "datasets",
            "INSERT INTO app.datasets (tenant_id, name) VALUES ($1, 'sales') \
             ON CONFLICT (tenant_id, name) DO UPDATE SET columns = '[\"pwned\"]'".into(),
            vec![(&b_id, Type::UUID)],
            true,
            Outcome::rls("datasets"),
        ),
        (
            "records",
            "INSERT INTO app.records (tenant_id, dataset_id, key, data) VALUES ($1, $2, 'r1', '{}') \
             ON CONFLICT (tenant_id, dataset_id, key) DO UPDATE SET data = '{\"pwned\": true}'".into(),
            vec![(&b_id, Type::UUID), (&b.dataset, Type::UUID)],
            true,
            Outcome::rls("records"),
        ),
        (
            "chunks",
            "INSERT INTO app.chunks (tenant_id, dataset_id, record_key, chunk_no, record_version, column_name, content) \
             VALUES ($1, $2, 'r1', 0, 1, 'note', 'x') \
             ON CONFLICT (tenant_id, dataset_id, record_key, chunk_no) DO UPDATE SET content = 'pwned'".into(),
            vec![(&b_id, Type::UUID), (&b.dataset, Type::UUID)],
            true,
            Outcome::rls("chunks"),
        ),
        (
            "usage_events",
            "INSERT INTO app.usage_events (tenant_id, event_id, meter, quantity, occurred_at, window_start, source) \
             VALUES ($1, '01900000-0000-7000-8000-0000000000e1', 'queries', 1000, now(), date_trunc('hour', now()), 'x') \
             ON CONFLICT (tenant_id, event_id) DO UPDATE SET quantity = 1000".into(),
            vec![(&b_id, Type::UUID)],
            false,
            Outcome::rls("usage_events"),
        ),
        (
            "usage_deliveries",
            "INSERT INTO app.usage_deliveries (tenant_id, meter, window_start, seq, value, event_time) \
             VALUES ($1, 'queries', date_trunc('hour', now()), 0, 1, now()) \
             ON CONFLICT (tenant_id, meter, window_start, seq) DO UPDATE SET status = 'delivered'".into(),
            vec![(&b_id, Type::UUID)],
            true,
            Outcome::rls("usage_deliveries"),
        ),
        (
            "billing_customers by tenant",
            "INSERT INTO app.billing_customers (tenant_id, stripe_customer_id) VALUES ($1, 'cus_pwned') \
             ON CONFLICT (tenant_id) DO UPDATE SET billing_status = 'active'".into(),
            vec![(&b_id, Type::UUID)],
            true,
            Outcome::rls("billing_customers"),
        ),
        (
            "billing_customers by Stripe customer",
            "INSERT INTO app.billing_customers (tenant_id, stripe_customer_id) VALUES ($1, $2) \
             ON CONFLICT (stripe_customer_id) DO UPDATE SET billing_status = 'canceled'".into(),
            vec![(&a_id, Type::UUID), (&b_customer, Type::TEXT)],
            true,
            Outcome::rls_using("billing_customers"),
        ),
        (
            "billing_reconciliations",
            "INSERT INTO app.billing_reconciliations (tenant_id, run_id, meter, day, ledger_total, action) \
             VALUES ($1, '01900000-0000-7000-8000-0000000000e2', 'queries', current_date, 0, 'repaired') \
             ON CONFLICT (tenant_id, run_id, meter, day) DO UPDATE SET ledger_total = 0".into(),
            vec![(&b_id, Type::UUID)],
            false,
            Outcome::rls("billing_reconciliations"),
        ),
        (
            // A reservation's own shape (plans::admit): an upsert against B's key.
            "usage_counters",
            "INSERT INTO app.usage_counters AS u (tenant_id, meter, period_start, used) \
             VALUES ($1, 'queries', '2026-11-01T00:00:00Z', 1) \
             ON CONFLICT (tenant_id, meter, period_start) DO UPDATE SET used = u.used + 1".into(),
            vec![(&b_id, Type::UUID)],
            true,
            Outcome::rls("usage_counters"),
        ),
        (
            // A period's own shape (periods::record): DO NOTHING against B's key.
            "billing_periods",
            "INSERT INTO app.billing_periods (tenant_id, subscription_id, period_start, period_end, source) \
             VALUES ($1, 'sub_shared', '2026-11-14T10:00:00Z', '2026-12-14T10:00:00Z', 'webhook') \
             ON CONFLICT DO NOTHING".into(),
            vec![(&b_id, Type::UUID)],
            true,
            Outcome::rls("billing_periods"),
        ),
        (
            // DO NOTHING needs no UPDATE grant: the webhook dedupe's own shape.
            "processed_webhooks",
            "INSERT INTO app.processed_webhooks (tenant_id, source, event_id, event_type) \
             VALUES ($1, 'stripe', 'evt_shared', 'x') ON CONFLICT DO NOTHING".into(),
            vec![(&b_id, Type::UUID)],
            true,
            Outcome::rls("processed_webhooks"),
        ),
    ];
    for (what, sql, params, app_may, rls) in &upserts {
        let table = what.split(' ').next().unwrap();
        assert_eq!(
            attempt(&db, a.tenant, sql, params).await,
            granted(*app_may, table, rls.clone()),
            "{what}: app role's upsert against B's key"
        );
        assert_eq!(
            probe.attempt(as_a, sql, params).await,
            *rls,
            "{what}: probe's upsert against B's key"
        );
    }

    // A record of A's pointing at B's dataset is refused (the foreign key leads with tenant_id).
    let cross =
        "INSERT INTO app.records (tenant_id, dataset_id, key, data) VALUES ($1, $2, 'x', '{}')";
    let cross_params: [Param<'_>; 2] = [(&a_id, Type::UUID), (&b.dataset, Type::UUID)];
    let fk = Outcome::refused(
        "23503",
        "insert or update on table \"records\" violates foreign key constraint \"records_dataset_fkey\"",
    );
    assert_eq!(attempt(&db, a.tenant, cross, &cross_params).await, fk);
    assert_eq!(probe.attempt(as_a, cross, &cross_params).await, fk);

    assert_eq!(
        fingerprint(&admin, b.tenant).await,
        before_b,
        "B's rows changed"
    );
    assert_eq!(
        fingerprint(&admin, a.tenant).await,
        before_a,
        "A's rows changed"
    );
    let tenants: i64 = admin
        .query_one("SELECT count(*) FROM app.tenants", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tenants, 2, "a tenant appeared or disappeared");
}

/// With no tenant set, or an empty or malformed one, the app role reads nothing and writes
/// nothing: the tenant is NULL, and NULL matches no row.
#[tokio::test]
async fn without_a_tenant_every_read_is_empty_and_every_write_fails() {
    let test = TestDb::new().await;
    let db = test.pool(2);
    let admin = test.admin().await;
    let probe = Probe::new(&test.admin_url).await;
    let a = seed(&db, "alpha").await;
    let before = fingerprint(&admin, a.tenant).await;
    let raw = connect(&test.app_url).await;
    let a_id = a.tenant.as_uuid();
    let a_row: [Param<'_>; 2] = [(&a_id, Type::UUID), (&a.dataset, Type::UUID)];
    let nil = Uuid::nil();

    for setting in [None, Some("")] {
        if let Some(v) = setting {
            raw.query("SELECT set_config('app.tenant_id', $1, false)", &[&v])
                .await
                .unwrap();
        }
        let current: Option<Uuid> = raw
            .query_one("SELECT app.current_tenant_id()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(current, None, "the tenant with setting {setting:?}");
        for t in TABLES {
            let table = t.name;
            let count = format!("SELECT count(*) FROM app.{table}");
            let n: i64 = raw.query_one(&count, &[]).await.unwrap().get(0);
            assert_eq!(
                n, 0,
                "{table}: rows visible with tenant setting {setting:?}"
            );
            let rows = probe
                .rows_as(PROBE_ROLE, setting, &count, &[])
                .await
                .unwrap();
            assert_eq!(
                rows[0].get::<_, i64>(0),
                0,
                "{table}: the probe sees rows with tenant setting {setting:?}"
            );

            // Even a row labelled as a real tenant's is refused: the check compares with NULL.
            let ins = Outcome::of_pg(raw.execute_typed(t.insert, &a_row).await);
            assert_eq!(
                ins,
                granted(t.insert_granted, table, Outcome::rls(table)),
                "{table}: app role's insert, {setting:?}"
            );
            assert_eq!(
                probe.attempt(setting, t.insert, &a_row).await,
                Outcome::rls(table),
                "{table}: probe's insert, {setting:?}"
            );

            let upd = format!("UPDATE app.{table} SET {}", t.touch);
            let del = format!("DELETE FROM app.{table}");
            let upd_app = Outcome::of_pg(raw.execute_typed(&upd, &[]).await);
            assert_eq!(
                upd_app,
                granted(t.update, table, Outcome::Rows(0)),
                "{table}: app role's update, {setting:?}"
            );
            let del_app = Outcome::of_pg(raw.execute_typed(&del, &[]).await);
            assert_eq!(
                del_app,
                granted(t.delete, table, Outcome::Rows(0)),
                "{table}: app role's delete, {setting:?}"
            );
            assert_eq!(
                probe.attempt(setting, &upd, &[]).await,
                Outcome::Rows(0),
                "{table}: probe's update, {setting:?}"
            );
            assert_eq!(
                probe.attempt(setting, &del, &[]).await,
                Outcome::Rows(0),
                "{table}: probe's delete, {setting:?}"
            );
        }
        // No tenant is not some default tenant: a row for the nil id is refused too.
        let nil_tenant = Outcome::of_pg(
            raw.execute_typed(TABLES[0].insert, &[(&nil, Type::UUID), (&nil, Type::UUID)])
                .await,
        );
        assert_eq!(nil_tenant, Outcome::rls("tenants"), "{setting:?}");
    }
    // A malformed setting fails closed: an error, not rows.
    raw.query(
        "SELECT set_config('app.tenant_id', 'not-a-uuid', false)",
        &[],
    )
    .await
    .unwrap();
    let malformed = raw.query("SELECT * FROM app.records", &[]).await;
    assert_eq!(
        malformed
            .map(|r| r.len() as u64)
            .map_err(|e| Outcome::of_pg_error(&e)),
        Err(Outcome::refused(
            "22P02",
            "invalid input syntax for type uuid: \"not-a-uuid\""
        ))
    );

    assert_eq!(
        fingerprint(&admin, a.tenant).await,
        before,
        "the seeded rows changed"
    );
}

//! The migrate command: ordered, recorded, checksummed, and safe to run twice at once.

use tenantry::db::migrate::{self, MigrateError, RolePasswords};
use tenantry_tests::{admin_url, admin_url_for, connect};

async fn empty_database() -> String {
    let name = format!("m_{}", uuid::Uuid::new_v4().simple());
    let admin = connect(&admin_url()).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    admin_url_for(&name)
}

#[tokio::test]
async fn concurrent_runs_apply_each_file_once_and_a_rerun_is_a_no_op() {
    let url = empty_database().await;
    let all = migrate::embedded().unwrap();
    let pw = RolePasswords::default();
    let (a, b) = tokio::join!(migrate::run(&url, &all, &pw), migrate::run(&url, &all, &pw));
    let (a, b) = (a.unwrap(), b.unwrap());
    // One of them applied everything, the other waited on the lock and found nothing to do.
    let mut applied = [a.len(), b.len()];
    applied.sort();
    assert_eq!(applied, [0, all.len()]);
    assert!(migrate::run(&url, &all, &pw).await.unwrap().is_empty());

    let db = connect(&url).await;
    let rows = db
        .query(
            "SELECT version FROM tenantry_meta.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, all.iter().map(|m| m.version).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_changed_applied_file_is_an_error_and_changes_nothing() {
    let url = empty_database().await;
    let all = migrate::embedded().unwrap();
    migrate::run(&url, &all, &RolePasswords::default())
        .await
        .unwrap();

    let mut edited = all.clone();
    edited[1].sql.push_str("\nCREATE TABLE app.sneaky (x int);");
    let err = migrate::run(&url, &edited, &RolePasswords::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, MigrateError::ChecksumMismatch { ref name } if name == &all[1].name),
        "{err}"
    );

    // A database that is ahead of the code is refused too.
    let err = migrate::run(&url, &all[..1], &RolePasswords::default())
        .await
        .unwrap_err();
    assert!(matches!(err, MigrateError::UnknownApplied(2)), "{err}");

    let db = connect(&url).await;
    let sneaky = db
        .query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'sneaky'", &[])
        .await
        .unwrap();
    assert!(sneaky.is_none());
}

#[tokio::test]
async fn a_failing_file_leaves_nothing_behind() {
    let url = empty_database().await;
    let mut all = migrate::embedded().unwrap();
    all.push(migrate::Migration {
        version: 9999,
        name: "9999_broken.sql".into(),
        sql: "SET LOCAL ROLE tenantry_owner; CREATE TABLE app.half (x int); SELECT 1/0;".into(),
    });
    assert!(
        migrate::run(&url, &all, &RolePasswords::default())
            .await
            .is_err()
    );
    let db = connect(&url).await;
    let half = db
        .query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'half'", &[])
        .await
        .unwrap();
    assert!(half.is_none(), "the failed migration left a table behind");
    let recorded: i64 = db
        .query_one(
            "SELECT count(*) FROM tenantry_meta.schema_migrations WHERE version = 9999",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 0);
}

#[tokio::test]
async fn billing_at_scale_notes_the_windows_already_in_the_ledger() {
    // 0024 and 0025 on a database with usage: every recent window of every tenant is noted for
    // the planner (whose notes start with them), under forced RLS, with no tenant set.
    let url = empty_database().await;
    let all = migrate::embedded().unwrap();
    let before: Vec<_> = all.iter().filter(|m| m.version < 24).cloned().collect();
    assert!(before.len() < all.len());
    migrate::run(&url, &before, &RolePasswords::default())
        .await
        .unwrap();
    let db = connect(&url).await;
    db.batch_execute(
        "INSERT INTO app.tenants (tenant_id, name, slug) VALUES \
           ('01900000-0000-7000-8000-00000000000a', 'A', 'tenant-a'), \
           ('01900000-0000-7000-8000-00000000000b', 'B', 'tenant-b'); \
         INSERT INTO app.usage_events \
           (tenant_id, event_id, meter, quantity, occurred_at, window_start, source) \
         SELECT t, gen_random_uuid(), 'queries', 1, w, w, 'test' \
         FROM unnest(ARRAY['01900000-0000-7000-8000-00000000000a', \
                           '01900000-0000-7000-8000-00000000000b']::uuid[]) AS t, \
              unnest(ARRAY[date_trunc('hour', now()) - interval '2 hours', \
                           date_trunc('hour', now()) - interval '2 hours', \
                           date_trunc('hour', now()) - interval '1 hour', \
                           date_trunc('hour', now()) - interval '90 days']) AS w",
    )
    .await
    .unwrap();
    migrate::run(&url, &all, &RolePasswords::default())
        .await
        .unwrap();
    let notes: Vec<(String, i64)> = db
        .query(
            "SELECT right(tenant_id::text, 1), count(*) FROM app.usage_window_changes \
             GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Two recent windows each (once per window, not per event); the 90-day-old one is not.
    assert_eq!(notes, [("a".to_owned(), 2), ("b".to_owned(), 2)]);
    let forced: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'app'::regnamespace \
             AND relname IN ('usage_events', 'usage_window_changes') AND relforcerowsecurity",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(forced, 2, "RLS stays forced");
}

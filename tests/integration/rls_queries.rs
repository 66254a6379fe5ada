//! The retrieval-style queries with no tenant filter of their own: what stands between tenant A
//! and tenant B is RLS alone. (The handlers' SQL also filters by tenant, so the HTTP-level tests
//! in `rag.rs` and `analytics.rs` would still pass with RLS off; these would not.)
//!
//! B's rows are word-for-word what A asks for, and the superuser (who bypasses RLS) finds them
//! with the same statement, so an empty answer is RLS refusing, not a query that matches nothing.

use tenantry::TenantId;
use tenantry::db::{Access, Db, Param, TenantTx, TxSettings};
use tenantry::rag::embed::{LocalEmbedder, to_pgvector};
use tenantry_tests::{TestDb, as_tenant, tenant, tx};
use tokio_postgres::types::Type;
use uuid::Uuid;

const DIMS: usize = 256;
const A_TEXT: &str = "The parcel arrived dented and the customer wants a refund";
const B_TEXT: &str =
    "Zephyr quartz manifest: confidential merger terms with Globex, signed in March";
const A_SECRET: &str = r#"{"secret": "dented-parcel"}"#;
const B_SECRET: &str = r#"{"secret": "zephyr-merger"}"#;

/// A tenant with a dataset `sales`, a record `r1` holding `data`, and one embedded chunk of
/// `text` (the same names and keys for both tenants).
async fn seed(db: &Db, slug: &str, text: &str, data: &str) -> TenantId {
    let t = tenant(db, slug).await;
    let id = t.as_uuid();
    let v = to_pgvector(&LocalEmbedder::new(DIMS).vector(text));
    let mut x = tx(db, t).await;
    let dataset: Uuid = x
        .query_one(
            "INSERT INTO app.datasets (tenant_id, name, text_columns) VALUES ($1, 'sales', '{body}') \
             RETURNING dataset_id",
            &[(&id, Type::UUID)],
        )
        .await
        .unwrap()
        .get(0);
    x.execute(
        "INSERT INTO app.records (tenant_id, dataset_id, key, data) VALUES ($1, $2, 'r1', $3::text::jsonb)",
        &[(&id, Type::UUID), (&dataset, Type::UUID), (&data, Type::TEXT)],
    )
    .await
    .unwrap();
    x.execute(
        "INSERT INTO app.chunks (tenant_id, dataset_id, record_key, chunk_no, record_version, column_name, \
                                 content, embedding, embedding_model) \
         VALUES ($1, $2, 'r1', 0, 1, 'body', $3, $4::text::vector, 'local-hashed-ngrams-v1')",
        &[
            (&id, Type::UUID),
            (&dataset, Type::UUID),
            (&text, Type::TEXT),
            (&v, Type::TEXT),
        ],
    )
    .await
    .unwrap();
    x.commit().await.unwrap();
    t
}

/// Begins a read-only transaction as `t`, steered onto the indexes where it can (the HNSW
/// index, as on a big tenant): there RLS is a filter on an index scan that finds the other
/// tenant's rows first.
async fn begin(db: &Db, t: TenantId) -> TenantTx {
    let settings = TxSettings {
        hnsw_ef_search: Some(100),
        ..TxSettings::default()
    };
    let mut x = db
        .begin_with(&as_tenant(t), Access::ReadOnly, settings)
        .await
        .unwrap();
    x.query(
        "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true), \
                set_config('enable_sort', 'off', true)",
        &[],
    )
    .await
    .unwrap();
    x
}

/// The tenant ids of the rows a statement returns (its first column), as tenant `t` through
/// TenantTx, and as the superuser.
async fn tenants_seen(
    db: &Db,
    admin: &tokio_postgres::Client,
    t: TenantId,
    sql: &str,
    params: &[Param<'_>],
) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut x = begin(db, t).await;
    let as_tenant: Vec<Uuid> = x
        .query(sql, params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    x.commit().await.unwrap();
    let as_superuser: Vec<Uuid> = admin
        .query_typed(sql, params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (as_tenant, as_superuser)
}

/// What a query is, its SQL, whether the order is the answer, and which of the victim's values it
/// is given.
type Query<'a> = (&'a str, &'a str, bool, fn(&Content) -> Vec<Param<'_>>);

/// One tenant's seeded content, to be searched for by the other.
struct Content {
    tenant: TenantId,
    text: String,
    vector: String,
    secret: String,
    word: String,
}

#[tokio::test]
async fn retrieval_queries_without_a_tenant_filter_return_only_the_tenants_rows() {
    let test = TestDb::new().await;
    let db = test.pool(2);
    let admin = test.admin().await;
    let content = |tenant: TenantId, text: &str, secret: &str, word: &str| Content {
        tenant,
        text: text.to_owned(),
        vector: to_pgvector(&LocalEmbedder::new(DIMS).vector(text)),
        secret: secret.to_owned(),
        word: format!("%{word}%"),
    };
    let a = seed(&db, "alpha", A_TEXT, A_SECRET).await;
    let b = seed(&db, "bravo", B_TEXT, B_SECRET).await;
    let a = content(a, A_TEXT, A_SECRET, "dented");
    let b = content(b, B_TEXT, B_SECRET, "zephyr");

    let vector_index = format!(
        "SELECT tenant_id FROM app.chunks WHERE vector_dims(embedding) = {DIMS} \
         ORDER BY embedding::vector({DIMS}) <=> $1::text::vector({DIMS}) LIMIT 10"
    );
    let hybrid = format!(
        "SELECT c.tenant_id FROM app.chunks c \
         JOIN app.records r ON r.tenant_id = c.tenant_id AND r.dataset_id = c.dataset_id AND r.key = c.record_key \
         JOIN app.datasets d ON d.tenant_id = c.tenant_id AND d.dataset_id = c.dataset_id \
         WHERE d.name = 'sales' AND (c.tsv @@ websearch_to_tsquery('english', $1) \
                                     OR c.embedding::vector({DIMS}) <=> $2::text::vector({DIMS}) < 0.01)"
    );
    let queries: Vec<Query<'_>> = vec![
        (
            "full text match",
            "SELECT tenant_id FROM app.chunks WHERE tsv @@ websearch_to_tsquery('english', $1)",
            false,
            |v| vec![(&v.text, Type::TEXT)],
        ),
        (
            "exact vector order",
            "SELECT tenant_id FROM app.chunks WHERE embedding IS NOT NULL \
             ORDER BY embedding <=> $1::text::vector LIMIT 10",
            true,
            |v| vec![(&v.vector, Type::TEXT)],
        ),
        (
            "approximate vector order (the HNSW index)",
            vector_index.as_str(),
            true,
            |v| vec![(&v.vector, Type::TEXT)],
        ),
        ("hybrid join", hybrid.as_str(), false, |v| {
            vec![(&v.text, Type::TEXT), (&v.vector, Type::TEXT)]
        }),
        (
            "records by key",
            "SELECT tenant_id FROM app.records WHERE key = 'r1'",
            false,
            |_| vec![],
        ),
        (
            "records by content",
            "SELECT tenant_id FROM app.records WHERE data @> $1::text::jsonb",
            false,
            |v| vec![(&v.secret, Type::TEXT)],
        ),
        (
            "records by a word of their data",
            "SELECT tenant_id FROM app.records WHERE data::text ILIKE $1",
            false,
            |v| vec![(&v.word, Type::TEXT)],
        ),
        (
            "datasets by name",
            "SELECT tenant_id FROM app.datasets WHERE name = 'sales'",
            false,
            |_| vec![],
        ),
        (
            "datasets of the chunks with this content",
            "SELECT tenant_id FROM app.datasets WHERE dataset_id IN \
             (SELECT dataset_id FROM app.chunks WHERE content = $1)",
            false,
            |v| vec![(&v.text, Type::TEXT)],
        ),
    ];
    for (what, sql, ordered, values) in &queries {
        for (me, victim) in [(&a, &b), (&b, &a)] {
            let params = values(victim);
            let (mut seen, mut all) = tenants_seen(&db, &admin, me.tenant, sql, &params).await;
            // The statement does find the victim's row when RLS is not in the way...
            assert!(
                all.contains(&victim.tenant.as_uuid()),
                "{what}: the superuser does not find the victim's row, so the attack proves nothing"
            );
            // ...and through RLS the tenant gets exactly the superuser's answer restricted to
            // its own rows: none of the victim's, none of its own missing.
            all.retain(|t| *t == me.tenant.as_uuid());
            if !ordered {
                seen.sort();
                all.sort();
            }
            assert_eq!(
                seen, all,
                "{what}: as {} with {}'s values",
                me.tenant, victim.tenant
            );
        }
    }

    // The approximate query did go through the HNSW index (B's row its nearest), RLS filtering.
    let mut x = begin(&db, a.tenant).await;
    let plan: Vec<String> = x
        .query(
            &format!("EXPLAIN (COSTS OFF) {vector_index}"),
            &[(&b.vector, Type::TEXT)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    x.commit().await.unwrap();
    assert!(
        plan.iter()
            .any(|l| l.contains("Index Scan using chunks_embedding_256")),
        "{plan:#?}"
    );
}

//! Per-tenant search indexes: an HNSW index and a full-text index for one large tenant alone.
//!
//! The shared HNSW index of a dimension (`0005_chunks.sql`) holds every tenant's chunks, so a
//! tenant that is a small share of it finds its neighbours only after the index has offered, and
//! RLS discarded, everyone else's: slow, and short of the true neighbours (BENCHMARKS.md,
//! `retrieval`). The shared GIN index on `tsv` has the same flaw for full text: it returns every
//! tenant's matching rows, and each is visited in the heap to be discarded. A tenant with at
//! least [`TenantIndexConfig::min_chunks`] chunks gets partial indexes of its own,
//!
//! ```sql
//! CREATE INDEX CONCURRENTLY app.chunks_tenant_<tenant as 32 hex digits>_<dims> ON app.chunks
//!   USING hnsw ((embedding::vector(<dims>)) vector_cosine_ops)
//!   WHERE tenant_id = '<tenant>'::uuid AND vector_dims(embedding) = <dims>;
//! CREATE INDEX CONCURRENTLY app.chunks_tenant_<tenant as 32 hex digits>_tsv ON app.chunks
//!   USING gin (tsv) WHERE tenant_id = '<tenant>'::uuid;
//! ```
//!
//! and the search names the tenant as a literal ([`super::search`]), so the planner can prove
//! the predicates and takes the small indexes. They are dropped (also concurrently) when the
//! tenant falls below [`TenantIndexConfig::drop_below`] chunks, when it is closed or gone, and
//! (the vector index) when the deployment's embedding dimension changes. A build that failed
//! part-way (a concurrent build leaves an invalid index behind) is dropped by the next run and,
//! if the tenant still qualifies, built again in it. A run spends at most
//! [`TenantIndexConfig::budget`] on builds; a build or drop that fails is reported and the run
//! goes on with the others.
//!
//! [`maintain`] does all of it, one index at a time, on a session that may `SET ROLE` to the
//! owner (only the owner may create indexes on its table): `tenantry_indexer`
//! (`0019_tenant_vector_indexes.sql`), from the scheduled `vector-indexes` function in AWS and
//! from `tenantry-local up`'s background schedule locally. It reads the catalog, each tenant's
//! status and the number of its chunks (through the owner's lookup policy on `app.chunks`),
//! never a row's content.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::db::DbError;
use crate::env::{ConfigError, Env};

/// Prefix of every per-tenant index's name.
const PREFIX: &str = "chunks_tenant_";

/// The session advisory lock [`maintain`] holds while it runs, so two runs never build the same
/// index.
pub const MAINTENANCE_LOCK: i64 = 0x7665_6374_6964_7831; // "vectidx1"

/// When tenants get an index of their own.
#[derive(Clone, Debug)]
pub struct TenantIndexConfig {
    /// A tenant with at least this many chunks gets its own index (0: none do, and existing
    /// ones are dropped).
    pub min_chunks: i64,
    /// A tenant's index is dropped when it has fewer chunks than this (below `min_chunks`, so
    /// a tenant near the threshold is not built and dropped in turn).
    pub drop_below: i64,
    /// `maintenance_work_mem` for a build, in MiB: HNSW builds fastest when the graph fits.
    pub build_memory_mib: u32,
    /// `hnsw.ef_search` of a search on a tenant's own vector index.
    pub ef_search: u32,
    /// How long one run may take: each drop and build gets what is left of it as its
    /// `statement_timeout`, and no build starts with less than [`MIN_BUILD_SECS`] left (the
    /// Lambda function stops at 15 minutes; what a run did not reach, the next one does).
    pub budget: Duration,
    /// How often the local runner maintains the indexes (at least a second).
    pub every: Duration,
}

impl TenantIndexConfig {
    /// `RAG_TENANT_INDEX_MIN_CHUNKS` (20,000), `RAG_TENANT_INDEX_DROP_BELOW` (half of it),
    /// `RAG_TENANT_INDEX_BUILD_MEMORY_MIB` (512), `RAG_TENANT_INDEX_EF_SEARCH` (200),
    /// `RAG_TENANT_INDEX_BUDGET_SECS` (780), `RAG_TENANT_INDEX_EVERY_SECS` (300).
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let min_chunks: i64 = env.parse("RAG_TENANT_INDEX_MIN_CHUNKS", 20_000)?;
        let drop_below: i64 = env.parse("RAG_TENANT_INDEX_DROP_BELOW", min_chunks / 2)?;
        if min_chunks < 0 || drop_below < 0 || (min_chunks > 0 && drop_below > min_chunks) {
            return Err(ConfigError::Invalid {
                name: "RAG_TENANT_INDEX_DROP_BELOW",
                reason: "use 0 to RAG_TENANT_INDEX_MIN_CHUNKS (both at least 0)".into(),
            });
        }
        Ok(Self {
            min_chunks,
            drop_below,
            build_memory_mib: match env.parse("RAG_TENANT_INDEX_BUILD_MEMORY_MIB", 512)? {
                m @ 1..=65_536 => m,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "RAG_TENANT_INDEX_BUILD_MEMORY_MIB",
                        reason: "use 1 to 65536".into(),
                    });
                }
            },
            ef_search: match env.parse("RAG_TENANT_INDEX_EF_SEARCH", 200)? {
                n @ 1..=1000 => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "RAG_TENANT_INDEX_EF_SEARCH",
                        reason: "use 1 to 1000 (pgvector's range)".into(),
                    });
                }
            },
            budget: match env.parse("RAG_TENANT_INDEX_BUDGET_SECS", 780)? {
                secs @ 1..=840 => Duration::from_secs(secs),
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "RAG_TENANT_INDEX_BUDGET_SECS",
                        reason: "use 1 to 840 (the function stops at 900)".into(),
                    });
                }
            },
            every: match env.parse("RAG_TENANT_INDEX_EVERY_SECS", 300)? {
                0 => {
                    return Err(ConfigError::Invalid {
                        name: "RAG_TENANT_INDEX_EVERY_SECS",
                        reason: "use at least 1".into(),
                    });
                }
                secs => Duration::from_secs(secs),
            },
        })
    }
}

/// A build is not started with less of the run's budget left than this.
pub const MIN_BUILD_SECS: u64 = 10;

/// The per-tenant HNSW graph's links per node (pgvector's default).
const HNSW_M: u32 = 16;
/// Its build-time candidate list (pgvector's default): 128 built a 50,000-chunk index 1.5 times
/// slower for no better recall (BENCHMARKS.md, `tenant-index`); recall comes from the search's
/// `hnsw.ef_search` ([`TenantIndexConfig::ef_search`]).
const HNSW_EF_CONSTRUCTION: u32 = 64;

/// What a per-tenant index serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Approximate nearest neighbours of `dims`-dimension embeddings (HNSW, cosine).
    Vectors(usize),
    /// Full-text matches (GIN on `tsv`): the shared GIN index returns every tenant's matching
    /// rows, which the tenant predicate then discards one heap visit at a time.
    Text,
}

/// The name of `tenant`'s index of `kind`: `chunks_tenant_<hex>_<dims>` or
/// `chunks_tenant_<hex>_tsv`.
pub fn index_name(tenant: Uuid, kind: Kind) -> String {
    match kind {
        Kind::Vectors(dims) => format!("{PREFIX}{}_{dims}", tenant.simple()),
        Kind::Text => format!("{PREFIX}{}_tsv", tenant.simple()),
    }
}

/// A per-tenant index's tenant and kind, from its name (None: not one of ours).
fn parse_name(name: &str) -> Option<(Uuid, Kind)> {
    let (tenant, kind) = name.strip_prefix(PREFIX)?.split_once('_')?;
    let tenant = Uuid::try_parse(tenant).ok()?;
    let kind = match kind {
        "tsv" => Kind::Text,
        dims => Kind::Vectors(dims.parse().ok()?),
    };
    // Only the canonical spelling (no braces, hyphens, capitals or leading zeros) is ours.
    (index_name(tenant, kind) == name).then_some((tenant, kind))
}

/// The statement that builds `tenant`'s index of `kind`. Every name and number in it is ours (a
/// UUID's hex digits, a dimension): no client text.
fn create_statement(tenant: Uuid, kind: Kind) -> String {
    let name = index_name(tenant, kind);
    match kind {
        Kind::Vectors(dims) => format!(
            "CREATE INDEX CONCURRENTLY {name} ON app.chunks \
             USING hnsw ((embedding::vector({dims})) vector_cosine_ops) \
             WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) \
             WHERE tenant_id = '{tenant}'::uuid AND vector_dims(embedding) = {dims}"
        ),
        Kind::Text => format!(
            "CREATE INDEX CONCURRENTLY {name} ON app.chunks USING gin (tsv) \
             WHERE tenant_id = '{tenant}'::uuid"
        ),
    }
}

/// What one run of [`maintain`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Tenants whose chunks were counted.
    pub tenants: usize,
    /// Indexes built, with the tenant's chunk count and the build's seconds.
    pub built: Vec<Built>,
    /// Indexes dropped, by name, with why.
    pub dropped: Vec<Dropped>,
    /// Valid indexes left as they are.
    pub kept: usize,
    /// Builds and drops that failed (the others went ahead). A build that failed part-way
    /// leaves an invalid index, which the next run drops and builds again, after the others.
    pub failed: Vec<Failed>,
    /// Builds and drops due but not started, the run's budget spent: the next run's.
    pub deferred: usize,
    /// False when another run held the lock: this one did nothing.
    pub ran: bool,
}

/// A build or drop that failed.
#[derive(Clone, Debug, Serialize)]
pub struct Failed {
    /// The index.
    pub index: String,
    /// `build` or `drop`.
    pub action: &'static str,
    /// Postgres's SQLSTATE, where it gave one (`57014`: the budget ran out mid-build).
    pub sqlstate: Option<String>,
}

/// An index [`maintain`] built.
#[derive(Clone, Debug, Serialize)]
pub struct Built {
    /// Its name.
    pub index: String,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// The tenant's chunks when counted (capped at the count that decides).
    pub chunks: i64,
    /// How long the build took.
    pub seconds: f64,
}

/// An index [`maintain`] dropped.
#[derive(Clone, Debug, Serialize)]
pub struct Dropped {
    /// Its name.
    pub index: String,
    /// `invalid` (a failed build), `shrunk`, `tenant_closed`, `tenant_gone` (no such tenant),
    /// `dims_changed` or `disabled`.
    pub reason: &'static str,
}

/// Builds and drops per-tenant indexes (vectors of `dims` dimensions, and full text), as the
/// module docs say.
///
/// `client` is a session (not a pooled transaction: the DDL runs outside any transaction) of a
/// role that may `SET ROLE tenantry_owner`. Builds run one at a time; a run that finds another
/// holding the lock returns at once with `ran: false`.
pub async fn maintain(
    client: &Client,
    dims: usize,
    cfg: &TenantIndexConfig,
) -> Result<Report, DbError> {
    let started = Instant::now();
    let mut report = Report::default();
    client
        .batch_execute(&format!(
            "SET ROLE tenantry_owner; SET maintenance_work_mem = '{}MB'",
            cfg.build_memory_mib
        ))
        .await?;
    let locked: bool = client
        .query_typed_one(
            "SELECT pg_try_advisory_lock($1)",
            &[(&MAINTENANCE_LOCK, Type::INT8)],
        )
        .await?
        .get(0);
    if !locked {
        return Ok(report);
    }
    report.ran = true;
    let result = run(client, dims, cfg, started, &mut report).await;
    // Unlocked even after a failure, so the session can be reused; a lost session drops it.
    let unlocked = client
        .query_typed(
            "SELECT pg_advisory_unlock($1)",
            &[(&MAINTENANCE_LOCK, Type::INT8)],
        )
        .await;
    result?;
    unlocked?;
    Ok(report)
}

async fn run(
    client: &Client,
    dims: usize,
    cfg: &TenantIndexConfig,
    started: Instant,
    report: &mut Report,
) -> Result<(), DbError> {
    let left = || cfg.budget.saturating_sub(started.elapsed());
    // Our indexes as the catalog has them (valid or not): the name is the record.
    let existing: Vec<(String, bool)> = client
        .query_typed(
            "SELECT c.relname::text, i.indisvalid FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = 'app.chunks'::regclass AND starts_with(c.relname::text, $1) \
             ORDER BY 1",
            &[(&PREFIX, Type::TEXT)],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Each tenant's chunks, counted (a primary-key range each) only as far as the decision
    // needs; a closed tenant has left, whatever it still holds until it is purged.
    let cap = cfg.min_chunks.max(cfg.drop_below).saturating_add(1);
    let counts: Vec<(Uuid, Option<i64>)> = client
        .query_typed(
            "SELECT t.tenant_id, CASE WHEN t.status <> 'closed' THEN \
               (SELECT count(*) FROM (SELECT 1 FROM app.chunks c \
                 WHERE c.tenant_id = t.tenant_id LIMIT $1) n) END \
             FROM app.tenants t ORDER BY 1",
            &[(&cap, Type::INT8)],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    report.tenants = counts.len();

    for (name, valid) in &existing {
        let reason = match parse_name(name) {
            None => continue,
            Some(_) if !valid => Some("invalid"),
            Some(_) if cfg.min_chunks == 0 => Some("disabled"),
            Some((_, Kind::Vectors(d))) if d != dims => Some("dims_changed"),
            Some((tenant, _)) => match counts.iter().find(|(t, _)| *t == tenant) {
                None => Some("tenant_gone"),
                Some((_, None)) => Some("tenant_closed"),
                Some((_, Some(n))) if *n < cfg.drop_below => Some("shrunk"),
                Some(_) => None,
            },
        };
        match reason {
            Some(_) if left() < Duration::from_secs(1) => report.deferred += 1,
            Some(reason) => match ddl(
                client,
                left(),
                &format!("DROP INDEX CONCURRENTLY IF EXISTS app.{name}"),
            )
            .await
            {
                Ok(()) => {
                    tracing::info!(index = %name, reason, "per-tenant index dropped");
                    report.dropped.push(Dropped {
                        index: name.clone(),
                        reason,
                    });
                }
                Err(e) => report.fail(client, name, "drop", e)?,
            },
            None => report.kept += 1,
        }
    }

    if cfg.min_chunks == 0 {
        return Ok(());
    }
    // Builds whose index was left invalid (a build that failed before) go last, so one that
    // cannot finish in a run's budget does not keep the others waiting.
    let mut due = Vec::new();
    for (tenant, chunks) in counts {
        let Some(chunks) = chunks else { continue };
        if chunks < cfg.min_chunks {
            continue;
        }
        for kind in [Kind::Vectors(dims), Kind::Text] {
            let name = index_name(tenant, kind);
            let state = existing.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
            let dropped = report.dropped.iter().any(|d| d.index == name);
            match (state, dropped) {
                // Still there: valid and kept, or its drop failed (reported) or was deferred.
                (Some(_), false) => {}
                (state, _) => due.push((state == Some(false), tenant, kind, chunks)),
            }
        }
    }
    due.sort_by_key(|(failed_before, ..)| *failed_before);
    for (_, tenant, kind, chunks) in due {
        let name = index_name(tenant, kind);
        if left() < Duration::from_secs(MIN_BUILD_SECS) {
            report.deferred += 1;
            continue;
        }
        let build = Instant::now();
        match ddl(client, left(), &create_statement(tenant, kind)).await {
            Ok(()) => {
                let seconds = build.elapsed().as_secs_f64();
                tracing::info!(index = %name, chunks, seconds, "per-tenant index built");
                report.built.push(Built {
                    index: name,
                    tenant_id: tenant,
                    chunks,
                    seconds,
                });
            }
            Err(e) => report.fail(client, &name, "build", e)?,
        }
    }
    Ok(())
}

/// One concurrent build or drop with `timeout` as its `statement_timeout` (reset after: the
/// session may go on). Separate calls: a string of several statements is one transaction, which
/// a concurrent build refuses.
async fn ddl(client: &Client, timeout: Duration, statement: &str) -> Result<(), DbError> {
    client
        .batch_execute(&format!(
            "SET statement_timeout = {}",
            timeout.as_millis().max(1)
        ))
        .await?;
    let done = client.batch_execute(statement).await;
    let reset = client.batch_execute("RESET statement_timeout").await;
    done?;
    reset?;
    Ok(())
}

impl Report {
    /// Records a failed build or drop and lets the run go on, unless the session itself is
    /// gone (then nothing else can be done in this run).
    fn fail(
        &mut self,
        client: &Client,
        index: &str,
        action: &'static str,
        e: DbError,
    ) -> Result<(), DbError> {
        let sqlstate = e.sqlstate().map(|c| c.code().to_owned());
        // The session is gone or going (connection errors, an administrator's or the server's
        // shutdown): nothing else can be done in this run.
        let fatal = client.is_closed()
            || e.is_connection_lost()
            || sqlstate
                .as_deref()
                .is_some_and(|c| c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03"));
        if fatal {
            return Err(e);
        }
        let message = match &e {
            DbError::Postgres(pg) => pg.as_db_error().map(|d| d.message().to_owned()),
            _ => None,
        };
        tracing::warn!(index, action, sqlstate = ?sqlstate, message = ?message, "per-tenant index failed");
        self.failed.push(Failed {
            index: index.to_owned(),
            action,
            sqlstate,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every name we make is ours again, with its tenant and kind, and fits an identifier.
        #[test]
        fn names_round_trip(bits in any::<u128>(), dims in 1usize..=16_000, text in any::<bool>()) {
            let tenant = Uuid::from_u128(bits);
            let kind = if text { Kind::Text } else { Kind::Vectors(dims) };
            let name = index_name(tenant, kind);
            prop_assert!(name.len() <= 63, "{name} is longer than a Postgres identifier");
            prop_assert_eq!(parse_name(&name), Some((tenant, kind)));
        }

        /// Other names are never taken for ours (so maintenance never drops them).
        #[test]
        fn other_names_are_not_ours(name in "(chunks_tenant_)?[a-z0-9_]{0,50}") {
            if let Some((tenant, kind)) = parse_name(&name) {
                prop_assert_eq!(index_name(tenant, kind), name);
            }
        }
    }

    #[test]
    fn shared_and_foreign_indexes_are_not_ours() {
        for name in [
            "chunks_embedding_256",
            "chunks_pending",
            "chunks_tsv",
            "chunks_tenant_",
            "chunks_tenant_0190000000007000800000000001000_256",
            "chunks_tenant_01900000000070008000000000010000_",
            "chunks_tenant_01900000000070008000000000010000_25x",
            "chunks_tenant_01900000000070008000000000010000_0256",
            "chunks_tenant_01900000000070008000000000010000_TSV",
            "chunks_tenant_0190000000007000800000000001000g_256",
            "chunks_tenant_01900000-0000-7000-8000-000000010000_256",
        ] {
            assert_eq!(parse_name(name), None, "{name}");
        }
    }
}

//! [`TenantTx`]: the only way handler code runs tenant SQL.

use std::time::Duration;

use deadpool_postgres::Object;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::{Db, DbError};
use crate::ids::TenantId;

/// A statement parameter with its declared type. Declaring types lets every statement go out as
/// an unnamed statement in one round trip (no prepare, nothing pinned at RDS Proxy or PgBouncer).
pub type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// Whose transaction this is: the tenant (always) and who acts for it (for audit columns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantContext {
    /// The tenant every statement is confined to by RLS.
    pub tenant_id: TenantId,
    /// Who acts: `user:<auth0 sub>`, `api_key:<key id>`, `staff:<auth0 sub>`, `system:<job>`.
    pub actor_id: String,
}

/// Whether the transaction may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `BEGIN READ ONLY`: any write fails.
    ReadOnly,
    /// A normal read-write transaction.
    ReadWrite,
    /// `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`: every statement sees the same
    /// snapshot (an export, read a page at a time, is one consistent copy).
    Snapshot,
}

/// Per-transaction settings, applied with `set_config(..., true)` alongside the tenant.
#[derive(Clone, Debug, Default)]
pub struct TxSettings {
    /// Cancels any statement that runs longer than this.
    pub statement_timeout: Option<Duration>,
    /// For approximate vector search: `hnsw.ef_search`, with pgvector's iterative index scan
    /// (`hnsw.iterative_scan = relaxed_order`) so filtered searches keep scanning until they
    /// have enough rows.
    pub hnsw_ef_search: Option<u32>,
    /// The impersonation session this transaction acts under (`app.impersonation_id`, which the
    /// audit log records with every entry).
    pub impersonation_id: Option<uuid::Uuid>,
    /// Run as `tenantry_impersonation` (`SET LOCAL ROLE`), the role that can only read, and only
    /// while the session is live. Only on the impersonator role's pool (a member of that role);
    /// on any other the transaction's first statement fails.
    pub impersonation_role: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Checked out; BEGIN not sent yet (it goes out with the first statement).
    Pending,
    /// BEGIN sent.
    Open,
    /// Committed or rolled back; the connection is back in the pool.
    Done,
}

/// A transaction confined to one tenant.
///
/// - The tenant (and actor, statement timeout, and UTC as the time zone, so timestamps render
///   the same everywhere) are set with `set_config(..., true)`: transaction-local, so nothing
///   survives into the next use of the connection, and transaction-mode poolers are safe.
/// - `BEGIN`, the settings and the first statement are pipelined: one round trip, so the tenant
///   costs no round trip of its own. A transaction that runs no statement costs none at all.
/// - Every statement is unnamed ([`Param`] carries its type), so no prepared statement is pinned.
/// - [`commit`](Self::commit) is explicit; dropping the transaction, or any error, rolls it back.
///   A connection is never returned to the pool inside a transaction.
#[derive(Debug)]
pub struct TenantTx {
    db: Db,
    conn: Option<Object>,
    ctx: TenantContext,
    access: Access,
    settings: TxSettings,
    state: State,
    failed: bool,
}

/// The statement that sets the transaction's context: `$1` tenant, `$2` actor, `$3` statement
/// timeout, `$4` impersonation session (or ''). [`TenantTx::pipeline_begin`] appends the
/// optional settings.
const SET_CONTEXT: &str = "SELECT set_config('app.tenant_id', $1, true), \
     set_config('app.actor_id', $2, true), \
     set_config('statement_timeout', $3, true), \
     set_config('TimeZone', 'UTC', true), \
     set_config('app.impersonation_id', $4, true)";

/// The HNSW search settings (`$5` ef_search).
const SET_HNSW: &str = ", set_config('hnsw.ef_search', $5, true), \
     set_config('hnsw.iterative_scan', 'relaxed_order', true)";

/// The read-only impersonation role.
const SET_IMPERSONATION_ROLE: &str = ", set_config('role', 'tenantry_impersonation', true)";

impl TenantTx {
    pub(super) async fn begin(
        db: Db,
        ctx: TenantContext,
        access: Access,
        settings: TxSettings,
    ) -> Result<Self, DbError> {
        let conn = db.checkout().await?;
        Ok(Self {
            db,
            conn: Some(conn),
            ctx,
            access,
            settings,
            state: State::Pending,
            failed: false,
        })
    }

    /// The tenant this transaction is confined to.
    pub fn tenant_id(&self) -> TenantId {
        self.ctx.tenant_id
    }

    /// The tenant and actor.
    pub fn context(&self) -> &TenantContext {
        &self.ctx
    }

    /// Whether it runs as the read-only impersonation role ([`TxSettings::impersonation_role`]).
    pub fn is_read_only_impersonation(&self) -> bool {
        self.settings.impersonation_role
    }

    /// Runs a statement and returns its rows.
    pub async fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        self.run(Kind::Query, sql, params).await.map(Out::rows)
    }

    /// Runs a statement that returns exactly one row.
    pub async fn query_one(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Row, DbError> {
        let mut rows = self.query(sql, params).await?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => Err(self.fail(DbError::RowCount(n))),
        }
    }

    /// Runs a statement that returns at most one row.
    pub async fn query_opt(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, DbError> {
        let mut rows = self.query(sql, params).await?;
        match rows.len() {
            0 => Ok(None),
            1 => Ok(Some(rows.remove(0))),
            n => Err(self.fail(DbError::RowCount(n))),
        }
    }

    /// Runs a statement and returns the number of rows it changed.
    pub async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        self.run(Kind::Execute, sql, params).await.map(Out::count)
    }

    /// Commits. A transaction that ran no statement has nothing to commit and costs nothing.
    pub async fn commit(mut self) -> Result<(), DbError> {
        match self.state {
            State::Done => Ok(()),
            State::Pending => {
                self.release();
                Ok(())
            }
            State::Open if self.failed => {
                // Postgres would silently turn this COMMIT into a ROLLBACK: say so instead.
                self.rollback_now().await?;
                Err(DbError::Aborted)
            }
            State::Open => {
                let conn = self.conn()?;
                let result = conn.batch_execute("COMMIT").await;
                match result {
                    Ok(()) => {
                        self.release();
                        Ok(())
                    }
                    Err(e) => {
                        // The outcome is unknown only if the connection broke; either way this
                        // connection is not reused.
                        self.discard();
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// Runs the transaction's last statement and commits it in the same flight: one round trip
    /// fewer than [`query`](Self::query) then [`commit`](Self::commit). If the statement fails,
    /// the COMMIT that follows it ends the failed transaction as a rollback, and the statement's
    /// error is returned. A transaction that has run nothing yet takes the ordinary path (its
    /// first statement already travels with BEGIN).
    pub async fn query_and_commit(
        mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, DbError> {
        if self.state != State::Open || self.failed {
            let rows = self.query(sql, params).await?;
            self.commit().await?;
            return Ok(rows);
        }
        let conn = self.conn()?;
        let (out, commit) = tokio::join!(
            statement(conn, Kind::Query, sql, params),
            conn.batch_execute("COMMIT"),
        );
        match (out, commit) {
            (Ok(out), Ok(())) => {
                self.release();
                Ok(out.rows())
            }
            (Err(e), Ok(())) => {
                self.release();
                Err(DbError::Postgres(e))
            }
            // The outcome is unknown only if the connection broke; it is not reused either way.
            (_, Err(e)) => {
                self.discard();
                Err(e.into())
            }
        }
    }

    /// Rolls back explicitly (dropping the transaction does the same, in the background).
    pub async fn rollback(mut self) -> Result<(), DbError> {
        self.rollback_now().await
    }

    async fn rollback_now(&mut self) -> Result<(), DbError> {
        if self.state == State::Open {
            let result = self.conn()?.batch_execute("ROLLBACK").await;
            if let Err(e) = result {
                self.discard();
                return Err(e.into());
            }
        }
        self.release();
        Ok(())
    }

    fn conn(&self) -> Result<&Object, DbError> {
        self.conn.as_ref().ok_or(DbError::Aborted)
    }

    fn fail(&mut self, e: DbError) -> DbError {
        self.failed = true;
        e
    }

    async fn run(&mut self, kind: Kind, sql: &str, params: &[Param<'_>]) -> Result<Out, DbError> {
        if self.failed || self.state == State::Done {
            return Err(DbError::Aborted);
        }
        if self.state == State::Open {
            let result = statement(self.conn()?, kind, sql, params).await;
            return self.settle(result);
        }
        self.state = State::Open;
        let first = self.pipeline_begin(self.conn()?, kind, sql, params).await;
        // A connection that died while idle (a frozen Lambda, a proxy restart) fails before
        // anything could commit: retry once on a fresh connection.
        if first.is_err() && self.conn()?.is_closed() {
            self.discard();
            self.conn = Some(self.db.checkout().await?);
            self.state = State::Open;
            let second = self.pipeline_begin(self.conn()?, kind, sql, params).await;
            return self.settle(second);
        }
        self.settle(first)
    }

    /// Sends BEGIN, the tenant settings and the first statement together: one round trip.
    async fn pipeline_begin(
        &self,
        conn: &Object,
        kind: Kind,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Out, tokio_postgres::Error> {
        let tenant = self.ctx.tenant_id.to_string();
        let timeout = self
            .settings
            .statement_timeout
            .map(|t| format!("{}ms", t.as_millis()))
            .unwrap_or_else(|| "0".into());
        let begin_sql = match self.access {
            Access::ReadOnly => "BEGIN READ ONLY",
            Access::Snapshot => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            Access::ReadWrite => "BEGIN",
        };
        // Futures send nothing until polled; join! polls them in this order on its first poll,
        // so the three requests leave in one write and the connection answers them in order.
        let ef_search = self.settings.hnsw_ef_search.map(|n| n.to_string());
        let impersonation = self
            .settings
            .impersonation_id
            .map(|id| id.to_string())
            .unwrap_or_default();
        let mut set_params: Vec<Param<'_>> = vec![
            (&tenant, Type::TEXT),
            (&self.ctx.actor_id, Type::TEXT),
            (&timeout, Type::TEXT),
            (&impersonation, Type::TEXT),
        ];
        let mut set_sql = std::borrow::Cow::Borrowed(SET_CONTEXT);
        if let Some(ef) = &ef_search {
            set_params.push((ef, Type::TEXT));
            set_sql.to_mut().push_str(SET_HNSW);
        }
        if self.settings.impersonation_role {
            set_sql.to_mut().push_str(SET_IMPERSONATION_ROLE);
        }
        let (begin, set, out) = tokio::join!(
            conn.batch_execute(begin_sql),
            conn.query_typed(&set_sql, &set_params),
            statement(conn, kind, sql, params),
        );
        begin?;
        set?;
        out
    }

    fn settle<T>(&mut self, result: Result<T, tokio_postgres::Error>) -> Result<T, DbError> {
        result.map_err(|e| {
            self.failed = true;
            DbError::Postgres(e)
        })
    }

    /// Returns the connection to the pool (only ever outside a transaction).
    fn release(&mut self) {
        self.state = State::Done;
        self.conn = None;
    }

    /// Closes the connection instead of returning it to the pool.
    fn discard(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take() {
            drop(Object::take(conn));
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Query,
    Execute,
}

enum Out {
    Rows(Vec<Row>),
    Count(u64),
}

impl Out {
    fn rows(self) -> Vec<Row> {
        match self {
            Out::Rows(rows) => rows,
            Out::Count(_) => Vec::new(),
        }
    }

    fn count(self) -> u64 {
        match self {
            Out::Rows(rows) => rows.len() as u64,
            Out::Count(n) => n,
        }
    }
}

async fn statement(
    conn: &Object,
    kind: Kind,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Out, tokio_postgres::Error> {
    match kind {
        Kind::Query => conn.query_typed(sql, params).await.map(Out::Rows),
        Kind::Execute => conn.execute_typed(sql, params).await.map(Out::Count),
    }
}

impl Drop for TenantTx {
    fn drop(&mut self) {
        if self.state != State::Open {
            return;
        }
        let Some(conn) = self.conn.take() else { return };
        // Roll back before the connection can be reused. The ROLLBACK is queued behind anything
        // still in flight on this connection, and the connection rejoins the pool only after it.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if conn.batch_execute("ROLLBACK").await.is_err() {
                        drop(Object::take(conn));
                    }
                });
            }
            Err(_) => drop(Object::take(conn)),
        }
    }
}

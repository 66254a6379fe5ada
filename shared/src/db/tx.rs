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
/// timeout, `$4` impersonation session (or ''). [`TenantTx::opening`] appends the optional
/// settings.
const SET_CONTEXT: &str = "SELECT set_config('app.tenant_id', $1, true), \
     set_config('app.actor_id', $2, true), \
     set_config('statement_timeout', $3, true), \
     set_config('TimeZone', 'UTC', true), \
     set_config('app.impersonation_id', $4, true)";

/// The HNSW search settings (`$5` ef_search).
const SET_HNSW: &str = ", set_config('hnsw.ef_search', $5, true), \
     set_config('hnsw.iterative_scan', 'relaxed_order', true)";

/// Turns the transaction read-only from the next statement on (`SET TRANSACTION READ ONLY`, as a
/// SELECT).
const READ_ONLY_FROM_HERE: &str = "SELECT set_config('transaction_read_only', 'on', true)";

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
        encodable(params).map_err(|e| self.fail(e))?;
        let conn = self.conn()?;
        let (out, commit) = tokio::join!(
            biased;
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

    /// Runs `writes`, then the query `sql` with the transaction turned read-only
    /// (`set_config('transaction_read_only', 'on', true)`, what `SET TRANSACTION READ ONLY` does,
    /// but a SELECT, as every setting here is, so nothing pins the session at RDS Proxy; Postgres
    /// allows it after a write, never the reverse), and commits, all in one flight (with BEGIN and
    /// the settings too, on a transaction that has run nothing yet). For a read that checks or
    /// records something about itself in its own transaction: everything commits or nothing does,
    /// a failed statement stops the ones after it, and the read still cannot write. Returns the
    /// first error among the statements.
    ///
    /// On a transaction that has run nothing yet, a connection that died while idle is replaced
    /// and the flight sent once more, as for any first statement. As that flight carries the read
    /// and the COMMIT, a connection that broke later (its backend terminated mid-read, a
    /// failover) gets the same retry: the read runs again, and `writes` must be idempotent (a
    /// flight that committed before its connection broke is then sent again).
    pub async fn writes_then_query_and_commit(
        mut self,
        writes: &[(&str, &[Param<'_>])],
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, DbError> {
        if self.failed || self.state == State::Done {
            return Err(DbError::Aborted);
        }
        // `join_all` polls up to 30 futures in order on its first poll (past that it batches, and
        // a write could leave after the COMMIT): callers send a few (a check, a usage event).
        if writes.len() > 30 {
            return Err(self.fail(DbError::Invalid(format!(
                "{} writes before a read in one flight; at most 30",
                writes.len()
            ))));
        }
        for (_, params) in writes {
            encodable(params).map_err(|e| self.fail(e))?;
        }
        encodable(params).map_err(|e| self.fail(e))?;
        let opens = self.state == State::Pending;
        self.state = State::Open;
        let mut flight = self.last_flight(opens, writes, sql, params).await;
        if opens && flight.is_err() && self.conn()?.is_closed() {
            self.discard();
            self.conn = Some(self.db.checkout().await?);
            self.state = State::Open;
            flight = self.last_flight(opens, writes, sql, params).await;
        }
        match flight {
            Ok(rows) => {
                self.release();
                Ok(rows)
            }
            Err((e, committed)) => {
                if committed {
                    self.release();
                } else {
                    // The outcome is unknown only if the connection broke; it is not reused.
                    self.discard();
                }
                Err(e)
            }
        }
    }

    /// The flight of [`writes_then_query_and_commit`](Self::writes_then_query_and_commit):
    /// its rows, or the first error and whether the COMMIT itself went through (the
    /// transaction ended, as a commit or as the rollback of a failed one).
    async fn last_flight(
        &self,
        opens: bool,
        writes: &[(&str, &[Param<'_>])],
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, (DbError, bool)> {
        let conn = self.conn().map_err(|e| (e, false))?;
        let opening = self.opening();
        let open = async {
            if opens {
                opening.send(conn).await
            } else {
                Ok(())
            }
        };
        let written = futures_util::future::join_all(
            writes
                .iter()
                .map(|(sql, params)| statement(conn, Kind::Execute, sql, params)),
        );
        // As in `pipeline_begin`: join! polls in order, so the requests leave together.
        let (opened, written, read_only, out, commit) = tokio::join!(
            biased;
            open,
            written,
            conn.query_typed(READ_ONLY_FROM_HERE, &[]),
            statement(conn, Kind::Query, sql, params),
            conn.batch_execute("COMMIT"),
        );
        let ended = commit.is_ok();
        let first_error = opened
            .err()
            .or_else(|| written.into_iter().find_map(Result::err))
            .or_else(|| read_only.err());
        match (first_error, out, commit) {
            (Some(e), _, _) | (None, Err(e), _) => Err((e.into(), ended)),
            (None, Ok(_), Err(e)) => Err((e.into(), false)),
            (None, Ok(out), Ok(())) => Ok(out.rows()),
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
        let opening = self.opening();
        // Futures send nothing until polled; join! polls them in this order on its first poll,
        // so the requests leave in one write and the connection answers them in order.
        let (opened, out) = tokio::join!(
            biased;
            opening.send(conn),
            statement(conn, kind, sql, params),
        );
        opened?;
        out
    }

    /// BEGIN and the statement that sets the transaction's context, as this transaction opens.
    fn opening(&self) -> Opening<'_> {
        let timeout = self
            .settings
            .statement_timeout
            .map(|t| format!("{}ms", t.as_millis()))
            .unwrap_or_else(|| "0".into());
        let begin = match self.access {
            Access::ReadOnly => "BEGIN READ ONLY",
            Access::Snapshot => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            Access::ReadWrite => "BEGIN",
        };
        let mut set = std::borrow::Cow::Borrowed(SET_CONTEXT);
        let ef_search = self.settings.hnsw_ef_search.map(|n| n.to_string());
        if ef_search.is_some() {
            set.to_mut().push_str(SET_HNSW);
        }
        if self.settings.impersonation_role {
            set.to_mut().push_str(SET_IMPERSONATION_ROLE);
        }
        Opening {
            begin,
            set,
            tenant: self.ctx.tenant_id.to_string(),
            actor: &self.ctx.actor_id,
            timeout,
            impersonation: self
                .settings
                .impersonation_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            ef_search,
        }
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

/// Checks that every parameter encodes as its declared type, before a flight that carries its own
/// COMMIT: tokio-postgres encodes a statement's parameters as it sends it (with the same
/// `to_sql_checked`), and one that fails to encode is never sent, so the COMMIT behind it would
/// commit what went before it. (What else fails client-side cannot arise from our statements: a
/// NUL in SQL text, which the query compiler refuses in names and never puts in values, or more
/// than 32,767 parameters or a value over 2 GiB, far past the query language's limits.)
fn encodable(params: &[Param<'_>]) -> Result<(), DbError> {
    let mut buf = bytes::BytesMut::new();
    for (i, (value, ty)) in params.iter().enumerate() {
        buf.clear();
        value
            .to_sql_checked(ty, &mut buf)
            .map_err(|e| DbError::Invalid(format!("parameter ${}: {e}", i + 1)))?;
    }
    Ok(())
}

/// BEGIN and the context statement of a transaction about to open ([`TenantTx::opening`]).
struct Opening<'a> {
    begin: &'static str,
    set: std::borrow::Cow<'static, str>,
    tenant: String,
    actor: &'a str,
    timeout: String,
    impersonation: String,
    ef_search: Option<String>,
}

impl Opening<'_> {
    /// Sends both; each request leaves when this is first polled.
    async fn send(&self, conn: &Object) -> Result<(), tokio_postgres::Error> {
        let mut params: Vec<Param<'_>> = vec![
            (&self.tenant, Type::TEXT),
            (&self.actor, Type::TEXT),
            (&self.timeout, Type::TEXT),
            (&self.impersonation, Type::TEXT),
        ];
        if let Some(ef) = &self.ef_search {
            params.push((ef, Type::TEXT));
        }
        let (begin, set) = tokio::join!(
            biased;
            conn.batch_execute(self.begin),
            conn.query_typed(&self.set, &params),
        );
        begin?;
        set.map(drop)
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

//! What lets one body of query code serve SQLite and PostgreSQL: a connection or transaction
//! of either back end, macros that run the same `$N` query text on it, and the [`Dialect`]
//! holding the few real differences (locking, byte-order sorting, error classes).
//!
//! The query text is shared because sqlx's SQLite driver binds `$N` placeholders by number,
//! as PostgreSQL does. Each macro expands to one arm per back end; both arms run the same text
//! with the same binds, so a bound type must encode on both (`&str`, `String`, `i64`, `bool`,
//! and their `Option`s) and a fetched type must decode from both (tuples of those, or a
//! `#[derive(sqlx::FromRow)]` struct). `bool` columns are `BOOLEAN` on PostgreSQL and 0/1
//! `INTEGER` on SQLite, which sqlx decodes as `bool` too.

use std::future::Future;
use std::ops::DerefMut;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{Postgres, Sqlite, Transaction};

use super::error::{DbError, DbResult, Unreachable};
use crate::pg_gate::PgGate;

/// The store, on SQLite or PostgreSQL: [`SqlDb::open`] or [`SqlDb::connect`]. One body of
/// code and query text serves both (crate README, "Storage"). Times are ms since the Unix
/// epoch, passed in by the caller so that tests can drive a clock. Its methods are spread
/// over the files of this module by topic: accounts and OAuth (`repo.rs`, `grants.rs`), the
/// client-server keys and devices (`client.rs`), the Synapse outbox (`outbox.rs`).
#[derive(Clone, Debug)]
pub struct SqlDb {
    pub(super) pool: Pool,
}

/// The real differences between the two back ends' SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    /// One writer at a time: transactions that write start with `BEGIN IMMEDIATE`, so they
    /// are serialized as a whole and need no row locks.
    Sqlite,
    /// Many writers (several instances): row locks (`FOR UPDATE`) and advisory locks,
    /// taken in one order everywhere, serialize what must not interleave.
    Postgres,
}

impl Dialect {
    /// Suffix of a `SELECT` whose rows the transaction goes on to change: racing
    /// transactions wait, then read the first one's result.
    pub(super) fn for_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE",
        }
    }

    /// Like [`Self::for_update`], but leaving the foreign-key checks of other writes
    /// unblocked (the row's key does not change).
    pub(super) fn for_no_key_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR NO KEY UPDATE",
        }
    }

    /// Collation sorting text by bytes: SQLite's default, PostgreSQL's `"C"` whatever the
    /// database's own collation.
    pub(super) fn byte_order(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " COLLATE \"C\"",
        }
    }
}

/// Maps a SQLite driver error: a unique violation is [`DbError::Conflict`]; anything else is
/// a bug or bad data ([`DbError::Backend`]), as the file is local and a busy writer is waited
/// for (busy timeout).
pub(super) fn sqlite_error(err: sqlx::Error) -> DbError {
    if err
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
    {
        DbError::Conflict
    } else {
        DbError::Backend(err)
    }
}

/// Maps a PostgreSQL driver error: lost connections, timeouts, shutdowns, overload and
/// serialization failures are worth a retry ([`DbError::Unavailable`]); anything else is a
/// bug or bad data.
pub(super) fn pg_error(err: sqlx::Error) -> DbError {
    let retry = match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => return DbError::Conflict,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection exception, 53: insufficient resources, 57: operator intervention
            // (shutdown, statement timeout), 40001/40P01: serialization failure, deadlock.
            ["08", "53", "57"].iter().any(|c| code.starts_with(c))
                || code == "40001"
                || code == "40P01"
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    };
    if retry {
        DbError::Unavailable(Unreachable::Driver(err))
    } else {
        DbError::Backend(err)
    }
}

/// A pool of either back end.
#[derive(Clone, Debug)]
pub(super) enum Pool {
    /// The SQLite file.
    Sqlite(SqlitePool),
    /// The PostgreSQL database, behind its admission gate.
    Postgres {
        /// Connections.
        pool: PgPool,
        /// One permit per pooled connection, and the time bound of each call.
        gate: Arc<PgGate>,
    },
}

impl SqlDb {
    /// The SQL dialect of this back end.
    pub(super) fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::Sqlite(_) => Dialect::Sqlite,
            Pool::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// Runs a unit of store work (one store method, or [`Self::begin`] … [`Tx::commit`]); on
    /// PostgreSQL once admitted and under the store's time bound, so that a database that is
    /// down or stalls yields [`DbError::Unavailable`], never a hang.
    pub async fn run<T>(&self, work: impl Future<Output = DbResult<T>>) -> DbResult<T> {
        match &self.pool {
            Pool::Sqlite(_) => work.await,
            Pool::Postgres { gate, .. } => {
                gate.run(work, |reason| {
                    DbError::Unavailable(Unreachable::Gate(reason))
                })
                .await
            }
        }
    }

    /// Starts a transaction that may write (run it inside [`Self::run`]). On SQLite it takes
    /// the write lock up front (`BEGIN IMMEDIATE`), so concurrent redemptions serialize
    /// instead of failing with `SQLITE_BUSY` on lock upgrade; on PostgreSQL (READ COMMITTED)
    /// the transaction's statements take the row locks.
    pub async fn begin(&self) -> DbResult<Tx> {
        Ok(Tx(match &self.pool {
            Pool::Sqlite(pool) => Backend::Sqlite(
                pool.begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(sqlite_error)?,
            ),
            Pool::Postgres { pool, .. } => Backend::Postgres(pool.begin().await.map_err(pg_error)?),
        }))
    }

    /// A connection for statements that need no transaction.
    pub(super) async fn acquire(&self) -> DbResult<Pooled> {
        Ok(match &self.pool {
            Pool::Sqlite(pool) => Backend::Sqlite(pool.acquire().await.map_err(sqlite_error)?),
            Pool::Postgres { pool, .. } => {
                Backend::Postgres(pool.acquire().await.map_err(pg_error)?)
            }
        })
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres { pool, .. } => pool.close().await,
        }
    }
}

/// Something of either back end: a pooled connection ([`Pooled`]), a transaction ([`Tx`]),
/// or the connection either lends to the query macros ([`Conn`]).
pub(super) enum Backend<S, P> {
    /// SQLite.
    Sqlite(S),
    /// PostgreSQL.
    Postgres(P),
}

/// A borrowed connection of either back end: what the query macros run on.
pub(super) type Conn<'c> = Backend<&'c mut SqliteConnection, &'c mut PgConnection>;

/// A pooled connection of either back end, outside a transaction.
pub(super) type Pooled = Backend<PoolConnection<Sqlite>, PoolConnection<Postgres>>;

impl<S, P> Backend<S, P>
where
    S: DerefMut<Target = SqliteConnection>,
    P: DerefMut<Target = PgConnection>,
{
    /// The connection, for the query macros.
    pub(super) fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Sqlite(c) => Backend::Sqlite(&mut **c),
            Self::Postgres(c) => Backend::Postgres(&mut **c),
        }
    }
}

/// An open transaction of the store ([`SqlDb::begin`]), holding what it loaded locked
/// until [`Tx::commit`]; dropped without it, it rolls back. On SQLite it holds the write lock.
pub struct Tx(Backend<Transaction<'static, Sqlite>, Transaction<'static, Postgres>>);

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tx").field(&self.dialect()).finish()
    }
}

impl Tx {
    /// The connection, for the query macros.
    pub(super) fn conn(&mut self) -> Conn<'_> {
        self.0.conn()
    }

    /// The SQL dialect of this transaction's back end.
    pub(super) fn dialect(&self) -> Dialect {
        match self.0 {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Makes the transaction's changes durable and releases its locks.
    pub async fn commit(self) -> DbResult<()> {
        match self.0 {
            Backend::Sqlite(tx) => tx.commit().await.map_err(sqlite_error),
            Backend::Postgres(tx) => tx.commit().await.map_err(pg_error),
        }
    }
}

/// Runs `$query`, a query on `$c`, the connection `$conn` borrows, whichever its back end,
/// and maps the driver's error: the one arm per back end of the macros below.
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $query:expr) => {
        match $conn {
            $crate::accounts::sql::Backend::Sqlite($c) => {
                $query.map_err($crate::accounts::sql::sqlite_error)
            }
            $crate::accounts::sql::Backend::Postgres($c) => {
                $query.map_err($crate::accounts::sql::pg_error)
            }
        }
    };
}

/// Runs a statement: `exec!(conn, "… $1 …", arg, …)` → `DbResult<u64>` (rows affected).
macro_rules! exec {
    ($conn:expr, $sql:expr $(, $arg:expr)* $(,)?) => {
        $crate::accounts::sql::on_backend!($conn, |c| sqlx::query($sql)
            $(.bind($arg))*
            .execute(&mut *c)
            .await
            .map(|done| done.rows_affected()))
    };
}

/// Fetches rows as a tuple or `FromRow` type: `fetch!(conn, fetch_optional, "…", arg, …)`
/// (or `fetch_one`, `fetch_all`) → `DbResult<…>`, typed by the caller's binding.
macro_rules! fetch {
    ($conn:expr, $how:ident, $sql:expr $(, $arg:expr)* $(,)?) => {
        $crate::accounts::sql::on_backend!($conn, |c| sqlx::query_as($sql)
            $(.bind($arg))*
            .$how(&mut *c)
            .await)
    };
}

/// Like [`fetch!`], for a single column.
macro_rules! scalar {
    ($conn:expr, $how:ident, $sql:expr $(, $arg:expr)* $(,)?) => {
        $crate::accounts::sql::on_backend!($conn, |c| sqlx::query_scalar($sql)
            $(.bind($arg))*
            .$how(&mut *c)
            .await)
    };
}

/// Runs the body of a store method on a pooled connection: `with_conn!(self, |c| { … })`,
/// or `with_conn!(self, |c| exec!(c.conn(), …))` for a single statement, under
/// [`SqlDb::run`] (admission and time bound on PostgreSQL).
macro_rules! with_conn {
    ($db:expr, |$c:ident| $body:expr) => {
        $db.run(async move {
            let mut $c = $db.acquire().await?;
            $body
        })
        .await
    };
}

/// Like [`with_conn!`], in a transaction that may write (`$tx`, committed by the body).
macro_rules! with_tx {
    ($db:expr, |$tx:ident| $body:block) => {
        $db.run(async move {
            let mut $tx = $db.begin().await?;
            $body
        })
        .await
    };
}

pub(super) use {exec, fetch, on_backend, scalar, with_conn, with_tx};

#[cfg(test)]
mod tests {
    use super::*;

    async fn memory() -> SqlDb {
        SqlDb {
            pool: Pool::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect("sqlite::memory:")
                    .await
                    .unwrap(),
            ),
        }
    }

    /// The mechanism everything else rests on: SQLite binds `$N` by number (reused and out of
    /// order), decodes a 0/1 INTEGER as `bool`, and reports a unique violation as a conflict.
    #[tokio::test]
    async fn sqlite_binds_dollar_placeholders_by_number() {
        let db = memory().await;
        let mut tx = db.begin().await.unwrap();
        exec!(
            tx.conn(),
            "CREATE TABLE t (a TEXT PRIMARY KEY, b INTEGER NOT NULL, c INTEGER NOT NULL, \
             flag INTEGER NOT NULL)"
        )
        .unwrap();
        let n = exec!(
            tx.conn(),
            "INSERT INTO t (a, b, c, flag) VALUES ($2, $1, $1, $3)",
            7_i64,
            "x",
            true
        )
        .unwrap();
        assert_eq!(n, 1);
        let row: (String, i64, i64, bool) = fetch!(
            tx.conn(),
            fetch_one,
            "SELECT a, b, c, flag FROM t WHERE a = $1 AND NOT flag = $2",
            "x",
            false
        )
        .unwrap();
        assert_eq!(row, ("x".to_owned(), 7, 7, true));
        let again = exec!(
            tx.conn(),
            "INSERT INTO t (a, b, c, flag) VALUES ($1, 1, 1, FALSE)",
            "x"
        );
        assert!(matches!(again, Err(DbError::Conflict)), "{again:?}");
        tx.commit().await.unwrap();
        let mut conn = db.acquire().await.unwrap();
        let missing: Option<i64> = scalar!(
            conn.conn(),
            fetch_optional,
            "SELECT b FROM t WHERE a = $1",
            "y"
        )
        .unwrap();
        assert_eq!(missing, None);
    }

    /// A failure keeps the driver's error as its source, for logs and for telling causes
    /// apart, instead of flattening it to text.
    #[tokio::test]
    async fn errors_keep_the_driver_error_as_source() {
        let db = memory().await;
        let mut conn = db.acquire().await.unwrap();
        let err = exec!(conn.conn(), "SELECT * FROM no_such_table").unwrap_err();
        assert!(matches!(err, DbError::Backend(_)), "{err:?}");
        let source = std::error::Error::source(&err).expect("a source");
        let driver = source
            .downcast_ref::<sqlx::Error>()
            .expect("the sqlx error");
        assert!(driver.as_database_error().is_some(), "{driver:?}");
        assert!(err.to_string().contains("no_such_table"), "{err}");
    }
}

//! The Synapse outbox ([`OutboxDb`]), which still has one implementation per back end (the
//! two halves of `outbox.rs`): [`SqlDb`] hands these calls to the one for its back end until
//! they move onto the shared code.

use super::outbox::{OutboxEntry, OutboxJob};
use super::postgres::LegacyPg;
use super::sql::Pool;
use super::sqlite::LegacySqlite;
use super::{DbResult, OutboxDb, SqlDb};
use crate::store::BoxFuture;

/// The per-back-end implementation over the same pool (and, on PostgreSQL, the same gate).
#[derive(Clone, Debug)]
pub(super) enum Legacy {
    /// SQLite.
    Sqlite(LegacySqlite),
    /// PostgreSQL.
    Postgres(LegacyPg),
}

impl Legacy {
    pub(super) fn new(pool: &Pool) -> Self {
        match pool {
            Pool::Sqlite(pool) => Self::Sqlite(LegacySqlite::new(pool.clone())),
            Pool::Postgres { pool, gate } => {
                Self::Postgres(LegacyPg::new(pool.clone(), gate.clone()))
            }
        }
    }
}

macro_rules! legacy {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.legacy {
            Legacy::Sqlite(db) => db.$method($($arg),*),
            Legacy::Postgres(db) => db.$method($($arg),*),
        }
    };
}

/// Not yet on the shared code: the legacy per-back-end implementations answer.
impl OutboxDb for SqlDb {
    fn outbox_push<'a>(&'a self, jobs: &'a [OutboxJob], now: i64) -> BoxFuture<'a, DbResult<i64>> {
        legacy!(self.outbox_push(jobs, now))
    }

    fn outbox_head(&self, limit: i64) -> BoxFuture<'_, DbResult<Vec<OutboxEntry>>> {
        legacy!(self.outbox_head(limit))
    }

    fn outbox_done(&self, id: i64) -> BoxFuture<'_, DbResult<()>> {
        legacy!(self.outbox_done(id))
    }

    fn outbox_retry<'a>(
        &'a self,
        id: i64,
        next_attempt_at: i64,
        error: &'a str,
    ) -> BoxFuture<'a, DbResult<()>> {
        legacy!(self.outbox_retry(id, next_attempt_at, error))
    }

    fn outbox_pending(&self, id: i64) -> BoxFuture<'_, DbResult<bool>> {
        legacy!(self.outbox_pending(id))
    }

    fn token_owner<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<(String, String)>>> {
        legacy!(self.token_owner(token_hash))
    }
}

//! SQLite pool handle of the outbox half ([`super::OutboxDb`]) that is not yet on the shared
//! code.

use sqlx::SqlitePool;

pub(super) use super::sql::sqlite_error as backend;

/// The SQLite pool, for `client.rs` and `outbox.rs`.
#[derive(Clone, Debug)]
pub(super) struct LegacySqlite {
    pool: SqlitePool,
}

impl LegacySqlite {
    pub(super) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The pool, for the [`super::OutboxDb`] implementation in `outbox.rs`.
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

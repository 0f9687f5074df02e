//! PostgreSQL pool handle of the outbox half ([`super::OutboxDb`]) that is not yet on the
//! shared code.

use std::future::Future;
use std::sync::Arc;

use sqlx::postgres::PgPool;

use super::{DbError, DbResult, Unreachable};
use crate::pg_gate::PgGate;
use crate::store::BoxFuture;

pub(super) use super::sql::pg_error;

/// The PostgreSQL pool and its admission gate (shared with [`super::SqlDb`]'s), for the
/// outbox.
#[derive(Clone, Debug)]
pub(super) struct LegacyPg {
    pool: PgPool,
    /// Admission: one permit per pooled connection.
    gate: Arc<PgGate>,
}

impl LegacyPg {
    pub(super) fn new(pool: PgPool, gate: Arc<PgGate>) -> Self {
        Self { pool, gate }
    }

    /// The pool, for the [`super::OutboxDb`] implementation in `outbox.rs`.
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs one store call once admitted, under the overall time bound.
    pub(super) fn bounded<'a, T: Send + 'a>(
        &'a self,
        call: impl Future<Output = DbResult<T>> + Send + 'a,
    ) -> BoxFuture<'a, DbResult<T>> {
        Box::pin(self.gate.run(call, |reason| {
            DbError::Unavailable(Unreachable::Gate(reason))
        }))
    }
}

//! Admission to a PostgreSQL pool, shared by the rendezvous and the accounts stores.
//!
//! One permit per pooled connection. Under overload, calls queue here, first come first
//! served, instead of in the pool, whose short acquire timeout is kept for telling a database
//! that is down. Without it, a burst past what the database serves timed out in the pool, was
//! shed as 503 and retried, and collapsed.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Longest a call queues for a free connection when all are busy; past it, a 503.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on one admitted call, for a database that accepts connections but stalls.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct PgGate {
    permits: Semaphore,
}

impl PgGate {
    pub(crate) fn new(connections: u32) -> Self {
        Self {
            permits: Semaphore::new(connections.max(1) as usize),
        }
    }

    /// Runs `call` once admitted, under the operation bound; `unavailable` builds the store's
    /// retryable error. A call cut short drops its transaction, which sqlx rolls back before
    /// the connection is reused.
    pub(crate) async fn run<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
        unavailable: impl FnOnce(String) -> E,
    ) -> Result<T, E> {
        let _permit = match tokio::time::timeout(QUEUE_TIMEOUT, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; answer as for a store going away.
            Ok(Err(_)) => return Err(unavailable("store closed".into())),
            Err(_) => {
                return Err(unavailable(
                    "PostgreSQL is overloaded: no connection came free in time".into(),
                ));
            }
        };
        match tokio::time::timeout(OPERATION_TIMEOUT, call).await {
            Ok(result) => result,
            Err(_) => Err(unavailable("PostgreSQL did not answer in time".into())),
        }
    }
}

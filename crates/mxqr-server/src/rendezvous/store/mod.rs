//! Rendezvous session storage: one [`Store`] over two back ends.
//!
//! The HTTP layer speaks only to [`Store`], so a shared back end (PostgreSQL with
//! `LISTEN/NOTIFY` for wake-ups) can replace the in-memory one to run several instances. Each
//! back end gets right atomically what the store promises: compare-and-set on the sequence
//! token, the retried-write rule, transaction-ID idempotency and waiting for a change.

mod ids;
pub mod limits;
mod memory;
mod postgres;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

pub use ids::{InvalidId, SequenceToken, SessionId};
pub use limits::{MAX_PAYLOAD, PROTECT_WRITTEN_WITHIN, SessionLimits};
pub use memory::MemoryStore;
pub use postgres::{PgStoreError, PostgresStore, open_configured};

/// Boxed future, for the object-safe traits of the crate (hooks, the creation policy).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which rendezvous API a session belongs to; a session is visible only through its own API.
/// The discriminant is its [`index`](Self::index).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Transport {
    /// MSC4388: JSON bodies with `sequence_token`.
    Msc4388 = 0,
    /// MSC4108 (2024 revision): text bodies, ETag versioning.
    Msc4108 = 1,
}

impl Transport {
    /// Both transports, for per-transport statistics.
    pub const ALL: [Transport; 2] = [Transport::Msc4388, Transport::Msc4108];

    /// Label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Msc4388 => "msc4388",
            Transport::Msc4108 => "msc4108",
        }
    }

    /// Its position in [`Self::ALL`], also its code in the PostgreSQL store: neither may
    /// change.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Version metadata of a session, as the HTTP layer reports it.
#[derive(Clone, Debug)]
pub struct SessionMeta {
    /// Token of the current payload.
    pub token: SequenceToken,
    /// Time left before expiry, measured by the server (clients must not compare clocks).
    pub expires_in: Duration,
    /// Wall-clock time of the last write (MSC4108 `Last-Modified`).
    pub last_modified: SystemTime,
}

/// A session's payload with its metadata.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Current payload.
    pub data: Arc<str>,
    /// Its version and expiry.
    pub meta: SessionMeta,
}

/// A write that replaces the payload if `expected` is still current.
#[derive(Clone, Debug)]
pub struct Write {
    /// Token the writer last saw.
    pub expected: SequenceToken,
    /// New payload.
    pub data: Arc<str>,
    /// Client transaction ID (`PUT …/{id}/{txnId}`): a repeat with the same body gets the
    /// first answer again.
    pub txn_id: Option<Box<str>>,
}

/// Why a store operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Unknown, deleted, evicted or expired session (or one of the other transport).
    #[error("no such rendezvous session")]
    NotFound,
    /// The expected token is not the current one.
    #[error("the sequence token is stale")]
    ConcurrentWrite,
    /// The transaction ID was used before with a different body.
    #[error("transaction ID reused with a different request body")]
    TxnReused,
    /// The session or byte cap is reached and every session was written too recently to be
    /// evicted.
    #[error("the rendezvous is full; retry in {retry_after:?}")]
    Full {
        /// When room is expected (a protected session ages or expires).
        retry_after: Duration,
    },
    /// The back end could not be reached or failed.
    #[error("rendezvous store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// [`StoreError::Full`] for a `wait` until room is expected, told to the client as at
    /// least a second and at most the protection window.
    fn full_after(wait: Duration, limits: &SessionLimits) -> Self {
        Self::Full {
            retry_after: wait.clamp(
                Duration::from_secs(1),
                limits.protect_written_within.max(Duration::from_secs(1)),
            ),
        }
    }
}

/// Counters for metrics and health; cheap to read, may lag a shared back end slightly. A
/// store keeps them as relaxed atomics, `StoreStats<AtomicU64>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats<T = u64> {
    /// Live sessions per transport ([`Transport::index`] order).
    pub live: [T; 2],
    /// Sessions created since start, per transport.
    pub created: [T; 2],
    /// Sessions that reached their expiry, per transport.
    pub expired: [T; 2],
    /// Sessions evicted by the live-session cap, per transport.
    pub evicted: [T; 2],
    /// Sessions deleted by a client, per transport.
    pub deleted: [T; 2],
}

/// What a store did, behind [`StoreStats`].
type Counters = StoreStats<AtomicU64>;

impl Counters {
    fn bump(counter: &[AtomicU64; 2], transport: Transport) {
        counter[transport.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a session that expired, was evicted or deleted: one fewer live.
    fn gone(&self, counter: &[AtomicU64; 2], transport: Transport) {
        Self::bump(counter, transport);
        self.live[transport.index()].fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets `live` from the database's count, which it mirrors on a shared back end.
    fn set_live(&self, msc4388: i64, msc4108: i64) {
        let live = [msc4388, msc4108].map(|n| u64::try_from(n).unwrap_or(0));
        for (slot, value) in self.live.iter().zip(live) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    fn stats(&self) -> StoreStats {
        let read = |c: &[AtomicU64; 2]| c.each_ref().map(|n| n.load(Ordering::Relaxed));
        StoreStats {
            live: read(&self.live),
            created: read(&self.created),
            expired: read(&self.expired),
            evicted: read(&self.evicted),
            deleted: read(&self.deleted),
        }
    }
}

/// Storage of rendezvous sessions: in this process, or in PostgreSQL shared by several.
///
/// Each back end makes [`update`](Self::update) atomic (compare-and-set on the token) and
/// wakes every [`wait_for_change`](Self::wait_for_change) caller of a session when it is
/// written, deleted, evicted or expires.
pub enum Store {
    /// One process; sessions are lost on restart.
    Memory(MemoryStore),
    /// Shared by every instance using the database.
    Postgres(PostgresStore),
}

impl Store {
    /// Creates a session holding `data`; returns its ID and metadata.
    pub async fn create(
        &self,
        transport: Transport,
        data: Arc<str>,
    ) -> Result<(SessionId, SessionMeta), StoreError> {
        match self {
            Self::Memory(store) => store.create(transport, data),
            Self::Postgres(store) => store.create(transport, data).await,
        }
    }

    /// Current payload of a live session.
    pub async fn get(&self, transport: Transport, id: SessionId) -> Result<Snapshot, StoreError> {
        match self {
            Self::Memory(store) => store.get(transport, id),
            Self::Postgres(store) => store.get(transport, id).await,
        }
    }

    /// Waits until the session's token differs from `since` or `deadline` passes, then
    /// answers as [`get`](Self::get) would.
    pub async fn wait_for_change(
        &self,
        transport: Transport,
        id: SessionId,
        since: SequenceToken,
        deadline: Instant,
    ) -> Result<Snapshot, StoreError> {
        match self {
            Self::Memory(store) => store.wait_for_change(transport, id, since, deadline).await,
            Self::Postgres(store) => store.wait_for_change(transport, id, since, deadline).await,
        }
    }

    /// Replaces the payload if `write.expected` is current. Also succeeds, returning the
    /// current metadata unchanged, when `write.expected` is the token the latest write
    /// replaced and the data is identical: that is a retry whose response was lost.
    pub async fn update(
        &self,
        transport: Transport,
        id: SessionId,
        write: Write,
    ) -> Result<SessionMeta, StoreError> {
        match self {
            Self::Memory(store) => store.update(transport, id, write),
            Self::Postgres(store) => store.update(transport, id, write).await,
        }
    }

    /// Removes a session.
    pub async fn delete(&self, transport: Transport, id: SessionId) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => store.delete(transport, id),
            Self::Postgres(store) => store.delete(transport, id).await,
        }
    }

    /// Removes sessions past their expiry; returns how many. Called periodically.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.purge_expired().await),
            Self::Postgres(store) => store.purge_expired().await,
        }
    }

    /// Counters for metrics.
    pub fn stats(&self) -> StoreStats {
        match self {
            Self::Memory(store) => store.stats(),
            Self::Postgres(store) => store.stats(),
        }
    }
}

//! What a store did, per transport, for [`StoreStats`]: relaxed atomics, read only by metrics
//! and health.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{StoreStats, Transport};

/// One slot per transport, in [`Transport::index`] order.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) live: [AtomicU64; 2],
    pub(super) created: [AtomicU64; 2],
    pub(super) expired: [AtomicU64; 2],
    pub(super) evicted: [AtomicU64; 2],
    pub(super) deleted: [AtomicU64; 2],
}

impl Counters {
    pub(super) fn bump(counter: &[AtomicU64; 2], transport: Transport) {
        counter[transport.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a session that expired, was evicted or deleted: one fewer live.
    pub(super) fn gone(&self, counter: &[AtomicU64; 2], transport: Transport) {
        Self::bump(counter, transport);
        self.live[transport.index()].fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets `live` from the database's count, which it mirrors on a shared back end.
    pub(super) fn set_live(&self, msc4388: i64, msc4108: i64) {
        let live = [msc4388, msc4108].map(|n| u64::try_from(n).unwrap_or(0));
        for (slot, value) in self.live.iter().zip(live) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    pub(super) fn stats(&self) -> StoreStats {
        let read =
            |c: &[AtomicU64; 2]| [c[0].load(Ordering::Relaxed), c[1].load(Ordering::Relaxed)];
        StoreStats {
            live: read(&self.live),
            created: read(&self.created),
            expired: read(&self.expired),
            evicted: read(&self.evicted),
            deleted: read(&self.deleted),
        }
    }
}

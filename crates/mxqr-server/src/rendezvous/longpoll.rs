//! Caps on concurrent long-polls: per client address, per session and in total. A GET past a
//! cap answers at once, as a plain GET would (clients then poll again), so no connection is
//! held for a long-poll the server did not grant.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ratelimit::client_key;
use crate::rendezvous::store::SessionId;
use crate::sync::lock;

#[derive(Default)]
struct Counts {
    by_address: HashMap<IpAddr, usize>,
    by_session: HashMap<u128, usize>,
}

/// Long-polls in progress.
pub struct LongPolls {
    per_address: usize,
    per_session: usize,
    total: Arc<Semaphore>,
    counts: Mutex<Counts>,
}

/// A granted long-poll; released when dropped (also when the client goes away).
pub struct LongPollSlot {
    polls: Arc<LongPolls>,
    address: IpAddr,
    session: u128,
    _total: OwnedSemaphorePermit,
}

impl LongPolls {
    /// At most `per_address` per client address (IPv6 by /64), `per_session` per session
    /// and `total` overall.
    pub fn new(per_address: usize, per_session: usize, total: usize) -> Self {
        Self {
            per_address,
            per_session,
            total: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Lowers the overall cap to `total` (the connection budget is known only when serving).
    pub fn lower_total(&self, total: usize) {
        let available = self.total.available_permits();
        if available > total {
            self.total.forget_permits(available - total);
        }
    }

    /// A slot for a long-poll by `client` on `session`, or `None` past a cap.
    pub fn try_start(self: &Arc<Self>, client: IpAddr, session: SessionId) -> Option<LongPollSlot> {
        let permit = self.total.clone().try_acquire_owned().ok()?;
        let address = client_key(client);
        let mut counts = lock(&self.counts);
        let by_address = counts.by_address.get(&address).copied().unwrap_or(0);
        let by_session = counts.by_session.get(&session.0).copied().unwrap_or(0);
        if by_address >= self.per_address || by_session >= self.per_session {
            return None;
        }
        *counts.by_address.entry(address).or_default() += 1;
        *counts.by_session.entry(session.0).or_default() += 1;
        Some(LongPollSlot {
            polls: self.clone(),
            address,
            session: session.0,
            _total: permit,
        })
    }
}

/// Decrements a count, dropping the entry at zero so the maps hold only live polls.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for LongPollSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.polls.counts);
        release(&mut counts.by_address, &self.address);
        release(&mut counts.by_session, &self.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_per_session_and_in_total() {
        let polls = Arc::new(LongPolls::new(2, 3, 4));
        let (a, b, c) = (
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([10, 0, 0, 3]),
        );
        let (s1, s2) = (SessionId(1), SessionId(2));
        let a1 = polls.try_start(a, s1).unwrap();
        let _a2 = polls.try_start(a, s1).unwrap();
        assert!(polls.try_start(a, s2).is_none(), "per address");
        let _b1 = polls.try_start(b, s1).unwrap();
        assert!(polls.try_start(b, s1).is_none(), "per session");
        let _b2 = polls.try_start(b, s2).unwrap();
        assert!(polls.try_start(c, s2).is_none(), "in total");
        drop(a1);
        assert!(polls.try_start(c, s2).is_some());
        polls.lower_total(0);
        assert!(polls.try_start(c, s2).is_none());
    }
}

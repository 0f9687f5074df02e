//! Caps on guessing: failed attempts per address and per account, and password checks in
//! flight per address.
//!
//! Only failures use up a budget, so people signing in and approving devices are never
//! slowed down, while guessing stops after a few misses. A password attempt is counted
//! *before* it is checked and given back when it succeeds, so parallel requests cannot all
//! slip under the cap while the first ones are still being verified.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ratelimit::client_key;
use crate::sync::lock;

/// Keys tracked before stale entries are dropped inline.
const PRUNE_AT: usize = 100_000;

/// What a limit is kept per: addresses are grouped as the rate limits group them.
pub(crate) trait LimitKey: Eq + Hash + Clone {
    /// The entry this key is counted under.
    fn normalize(self) -> Self;
}

impl LimitKey for IpAddr {
    fn normalize(self) -> Self {
        client_key(self)
    }
}

impl LimitKey for String {
    fn normalize(self) -> Self {
        self
    }
}

/// Failures per key (an address, an account) within a window.
pub(crate) struct FailureLimiter<K = IpAddr> {
    max: u32,
    window: Duration,
    entries: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K: LimitKey> FailureLimiter<K> {
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        Self {
            max: max.max(1),
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long `key` must wait, if it has used up its failures.
    pub(crate) fn blocked(&self, key: K) -> Option<Duration> {
        let entries = lock(&self.entries);
        let (count, since) = entries.get(&key.normalize())?;
        let elapsed = since.elapsed();
        (*count >= self.max && elapsed < self.window).then(|| self.window - elapsed)
    }

    /// Counts one failure of `key`.
    pub(crate) fn fail(&self, key: K) {
        // Over the cap already: the count only matters up to it.
        let _ = self.charge(key, u32::MAX);
    }

    /// Counts an attempt of `key` before it is checked, unless the budget is spent (then
    /// how long to wait). Undo with [`Self::refund`] when the attempt succeeds.
    pub(crate) fn attempt(&self, key: K) -> Result<(), Duration> {
        self.charge(key, self.max)
    }

    /// Gives back an attempt counted by [`Self::attempt`] that succeeded.
    pub(crate) fn refund(&self, key: K) {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get_mut(&key.normalize()) {
            entry.0 = entry.0.saturating_sub(1);
        }
    }

    /// Adds one to `key`'s count if it is below `cap`.
    fn charge(&self, key: K, cap: u32) -> Result<(), Duration> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        if entries.len() >= PRUNE_AT {
            let window = self.window;
            entries.retain(|_, (_, since)| now.duration_since(*since) < window);
        }
        let entry = entries.entry(key.normalize()).or_insert((0, now));
        let elapsed = now.duration_since(entry.1);
        if elapsed >= self.window {
            *entry = (0, now);
        } else if entry.0 >= cap {
            return Err(self.window - elapsed);
        }
        entry.0 = entry.0.saturating_add(1);
        Ok(())
    }

    /// Drops entries whose window has passed.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        let window = self.window;
        lock(&self.entries).retain(|_, (_, since)| now.duration_since(*since) < window);
    }
}

/// Password checks running per address: each holds an Argon2 computation (19 MiB), so one
/// address firing many at once is refused rather than queued.
pub(crate) struct InFlight {
    max: u32,
    running: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// One running check; the slot is freed when this is dropped.
pub(crate) struct InFlightSlot {
    key: IpAddr,
    running: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl InFlight {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max: max.max(1),
            running: Arc::default(),
        }
    }

    /// A slot for `ip`, or `None` while it has `max` checks running.
    pub(crate) fn enter(&self, ip: IpAddr) -> Option<InFlightSlot> {
        let key = client_key(ip);
        let mut running = lock(&self.running);
        let count = running.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(InFlightSlot {
            key,
            running: Arc::clone(&self.running),
        })
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        let mut running = lock(&self.running);
        if let Some(count) = running.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_per_address() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.blocked(ip).is_none());
            limiter.fail(ip);
        }
        assert!(
            limiter
                .blocked(ip)
                .is_some_and(|d| d <= Duration::from_secs(60))
        );
        assert!(limiter.blocked("192.0.2.2".parse().unwrap()).is_none());
        let short = FailureLimiter::new(1, Duration::ZERO);
        short.fail(ip);
        assert!(short.blocked(ip).is_none(), "window passed");
    }

    #[test]
    fn attempts_are_counted_up_front_and_refunded_on_success() {
        let limiter = FailureLimiter::<String>::new(2, Duration::from_secs(60));
        let alice = || "alice".to_owned();
        assert!(limiter.attempt(alice()).is_ok());
        assert!(limiter.attempt(alice()).is_ok());
        // Two attempts in progress use up the budget before either is decided.
        assert!(limiter.attempt(alice()).is_err());
        limiter.refund(alice());
        assert!(limiter.attempt(alice()).is_ok());
        assert!(limiter.blocked(alice()).is_some());
        assert!(limiter.attempt("bob".to_owned()).is_ok());
    }

    #[test]
    fn in_flight_slots_per_address() {
        let gate = InFlight::new(2);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let first = gate.enter(ip).unwrap();
        let _second = gate.enter("2001:db8::2".parse().unwrap()).unwrap();
        assert!(gate.enter(ip).is_none(), "same /64");
        assert!(gate.enter("192.0.2.1".parse().unwrap()).is_some());
        drop(first);
        assert!(gate.enter(ip).is_some());
    }
}

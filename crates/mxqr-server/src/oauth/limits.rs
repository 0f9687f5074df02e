//! Per-address caps on *failed* attempts (wrong password, unknown user or device code).
//!
//! Only failures count, so people signing in and approving devices are never slowed down,
//! while guessing stops after a few misses. The check comes before the attempt: a blocked
//! address cannot succeed by luck either.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::ratelimit::client_key;

/// Addresses tracked before stale entries are dropped inline.
const PRUNE_AT: usize = 100_000;

/// Failures per address within a window.
pub(crate) struct FailureLimiter {
    max: u32,
    window: Duration,
    entries: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureLimiter {
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        Self {
            max: max.max(1),
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` must wait, if it has used up its failures.
    pub(crate) fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, since) = entries.get(&client_key(ip))?;
        let elapsed = since.elapsed();
        (*count >= self.max && elapsed < self.window).then(|| self.window - elapsed)
    }

    /// Counts one failure of `ip`.
    pub(crate) fn fail(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= PRUNE_AT {
            let window = self.window;
            entries.retain(|_, (_, since)| now.duration_since(*since) < window);
        }
        let entry = entries.entry(client_key(ip)).or_insert((0, now));
        if now.duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }

    /// Drops entries whose window has passed.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        let window = self.window;
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, (_, since)| now.duration_since(*since) < window);
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
}

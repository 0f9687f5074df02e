//! Per-client token buckets (creations and writes are limited separately).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// Buckets kept before idle ones are pruned inline (the periodic task prunes too), bounding
/// memory under a spray of source addresses.
const PRUNE_AT: usize = 100_000;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// One token bucket per client address.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// `burst` requests at once, refilled at `per_second`.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client`, or says how long until one is available.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(&client) {
            Self::prune_locked(&mut buckets, now, self.per_second, self.burst);
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    /// Drops buckets that have refilled completely: they carry no state worth keeping.
    pub fn prune(&self) {
        let mut buckets = lock(&self.buckets);
        Self::prune_locked(&mut buckets, Instant::now(), self.per_second, self.burst);
    }

    fn prune_locked(buckets: &mut HashMap<IpAddr, Bucket>, now: Instant, rate: f64, burst: f64) {
        buckets.retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
    }
}

/// The address a limit applies to: IPv4 as is, IPv6 by /64 (one host usually owns a /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_wait_time() {
        let limiter = RateLimiter::new(2.0, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(ip).is_ok());
        }
        let wait = limiter.check(ip).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another address has its own bucket.
        assert!(limiter.check("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_grouped_by_prefix() {
        let a = client_key("2001:db8::1".parse().unwrap());
        let b = client_key("2001:db8::ffff:1".parse().unwrap());
        let c = client_key("2001:db8:0:1::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            client_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }
}

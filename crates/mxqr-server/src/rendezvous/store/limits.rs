//! The rules a rendezvous store enforces, free of any other module so that configuration can
//! check its values against them without importing the store.

use std::time::Duration;

/// Largest MSC4388 `data` and MSC4108 body, in UTF-8 bytes (never characters: the memory a
/// session may hold is what the budget counts).
pub const MAX_PAYLOAD: usize = 4096;

/// Sessions written this recently are never evicted to make room: a flood of creations must
/// not end sign-ins in progress. At the cap with only such sessions, creation is refused.
pub const PROTECT_WRITTEN_WITHIN: Duration = Duration::from_secs(60);

/// Lifetime and capacity rules a store enforces.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Life of a session from creation (and from each write when `renew_on_write`).
    pub ttl: Duration,
    /// Extend the life to `ttl` after each successful write.
    pub renew_on_write: bool,
    /// Hard cap on a session's life from creation, whatever the renewals.
    pub max_lifetime: Duration,
    /// Live sessions at most; creating one more evicts the session closest to expiry among
    /// those not written within `protect_written_within`, or fails with [`super::StoreError::Full`].
    pub max_sessions: usize,
    /// Payload bytes of all live sessions together, at most (same eviction rule).
    pub max_total_bytes: usize,
    /// Sessions written this recently are never evicted ([`PROTECT_WRITTEN_WITHIN`]).
    pub protect_written_within: Duration,
}

//! `[rendezvous]`: the two rendezvous APIs and the limits of their sessions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rendezvous::store::limits::{MAX_PAYLOAD, PROTECT_WRITTEN_WITHIN, SessionLimits};

/// Session life bounds. MSC4388 asks for 120–300 s (the default is 180); shorter lives are
/// allowed for tests of expiry, longer ones for slow consent flows (MFA, a second device).
const TTL_RANGE_SECS: std::ops::RangeInclusive<u64> = 10..=3600;

/// Longest a long-poll may hold a request: beyond this, proxies start cutting connections.
pub const LONG_POLL_CAP_MS: u64 = 30_000;

/// Smallest body limit that still admits any 4096-byte payload in an MSC4388 JSON body, even
/// one whose every byte JSON escapes as `\u00XX` (6 bytes), plus the envelope.
const MIN_BODY_BYTES: usize = MAX_PAYLOAD * 6 + 1024;

/// Who may create an MSC4388 session.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CreatePolicy {
    /// Anyone.
    Open,
    /// Only requests with an access token.
    Authenticated,
}

/// `[rendezvous]` table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RendezvousConfig {
    /// Serve MSC4388 (stable and unstable prefixes).
    pub msc4388_enabled: bool,
    /// Serve the MSC4108 (2024) ETag rendezvous.
    pub msc4108_enabled: bool,
    /// MSC4388 creation policy: `open` or `authenticated`.
    pub create_policy: CreatePolicy,
    /// Session life in seconds, 10–3600 (MSC4388 recommends 120–300).
    pub ttl_secs: u64,
    /// Restart the life (`ttl_secs`) on every successful write.
    pub renew_on_write: bool,
    /// Upper bound on a session's life from creation, renewals included.
    pub max_lifetime_secs: u64,
    /// Live sessions at most. A create beyond it (or beyond `max_total_bytes`) evicts the
    /// session closest to expiry among those not written in the last minute; when there is
    /// none, it is refused with 503 and `Retry-After`.
    pub max_sessions: usize,
    /// Payload bytes of all live sessions together, at most (each payload is ≤ 4096 bytes).
    pub max_total_bytes: usize,
    /// Concurrent long-polls per client address; past it a GET answers at once.
    pub long_polls_per_address: usize,
    /// Concurrent long-polls per session; past it a GET answers at once.
    pub long_polls_per_session: usize,
    /// Concurrent long-polls in total (further lowered to half the connection budget).
    pub max_long_polls: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest a long-poll GET may wait, in milliseconds (at most 30000); 0 turns long-poll
    /// off: it is no longer advertised and every GET answers at once.
    pub long_poll_max_ms: u64,
    /// Path (under `public_url`) of MSC4108 session URLs.
    pub msc4108_sessions_path: String,
    /// Keep sessions in this PostgreSQL database (`postgres://…`) instead of memory, so that
    /// several instances behind one load balancer serve the same sessions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    /// Pooled connections to `postgres_url` (one more is kept for `LISTEN`).
    pub postgres_max_connections: u32,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        Self {
            msc4388_enabled: true,
            msc4108_enabled: true,
            create_policy: CreatePolicy::Open,
            ttl_secs: 180,
            renew_on_write: true,
            max_lifetime_secs: 600,
            // A host with 1 GiB survives both caps reached at once (README: figures).
            max_sessions: 100_000,
            max_total_bytes: 128 << 20,
            long_polls_per_address: 8,
            long_polls_per_session: 4,
            max_long_polls: 4096,
            max_body_bytes: 64 * 1024,
            long_poll_max_ms: LONG_POLL_CAP_MS,
            msc4108_sessions_path: "_matrix/client/unstable/org.matrix.msc4108/rendezvous"
                .to_owned(),
            postgres_url: None,
            postgres_max_connections: 16,
        }
    }
}

impl RendezvousConfig {
    /// Range and format checks; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        super::checks::check_range("rendezvous.ttl_secs", self.ttl_secs, TTL_RANGE_SECS)?;
        if self.max_lifetime_secs < self.ttl_secs {
            return Err("rendezvous.max_lifetime_secs must be at least ttl_secs".into());
        }
        if self.max_sessions == 0 {
            return Err("rendezvous.max_sessions must be at least 1".into());
        }
        if self.max_total_bytes < MAX_PAYLOAD {
            return Err(format!(
                "rendezvous.max_total_bytes must be at least {} (one payload)",
                MAX_PAYLOAD
            ));
        }
        if self.long_polls_per_address == 0
            || self.long_polls_per_session == 0
            || self.max_long_polls == 0
        {
            return Err(
                "rendezvous.long_polls_per_*, max_long_polls must be at least 1 (set long_poll_max_ms = 0 to turn long-poll off)"
                    .into(),
            );
        }
        if self.max_body_bytes < MIN_BODY_BYTES {
            return Err(format!(
                "rendezvous.max_body_bytes must be at least {MIN_BODY_BYTES} (a 4096-byte payload)"
            ));
        }
        if self.long_poll_max_ms > LONG_POLL_CAP_MS {
            return Err(format!(
                "rendezvous.long_poll_max_ms must be at most {LONG_POLL_CAP_MS}"
            ));
        }
        let path = self.msc4108_sessions_path.trim_matches('/');
        let path_ok = !path.is_empty()
            && path.split('/').all(|seg| {
                !seg.is_empty()
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
            });
        if !path_ok {
            return Err(format!(
                "rendezvous.msc4108_sessions_path {:?} must be /-separated segments of [A-Za-z0-9._~-]",
                self.msc4108_sessions_path
            ));
        }
        // Those paths carry MSC4388 sessions already: the routes would collide.
        let msc4388_prefixes = [
            "_matrix/client/v1/rendezvous",
            "_matrix/client/unstable/io.element.msc4388/rendezvous",
        ];
        if msc4388_prefixes.contains(&path) {
            return Err(format!(
                "rendezvous.msc4108_sessions_path {path:?} is an MSC4388 prefix"
            ));
        }
        super::checks::check_postgres_url("rendezvous.postgres_url", self.postgres_url.as_deref())?;
        if self.postgres_max_connections == 0 {
            return Err("rendezvous.postgres_max_connections must be at least 1".into());
        }
        Ok(())
    }

    /// Session limits for the store.
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            ttl: Duration::from_secs(self.ttl_secs),
            renew_on_write: self.renew_on_write,
            max_lifetime: Duration::from_secs(self.max_lifetime_secs),
            max_sessions: self.max_sessions,
            max_total_bytes: self.max_total_bytes,
            protect_written_within: PROTECT_WRITTEN_WITHIN,
        }
    }
}

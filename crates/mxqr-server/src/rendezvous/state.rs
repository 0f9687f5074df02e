//! What the rendezvous handlers get of the application state: the session store, the
//! creation policy, their rate limits and long-poll budget, and the shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use super::create_policy::CreateAuthorizer;
use super::longpoll::LongPolls;
use super::store::{RendezvousStore, SequenceToken, SessionId, Snapshot, StoreError, Transport};
use crate::client_ip::ClientIp;
use crate::config::RendezvousConfig;
use crate::error::ApiError;
use crate::ratelimit::{RateLimiter, client_key};

/// The rendezvous part of the application state (cheap to clone).
#[derive(Clone)]
pub struct RendezvousState(Arc<Parts>);

/// The parts a [`RendezvousState`] is made of.
pub struct Parts {
    /// `[rendezvous]`.
    pub config: RendezvousConfig,
    /// Base URL clients see, ending in `/` (MSC4108 session URLs start with it).
    pub public_url: String,
    /// The session store.
    pub store: Arc<dyn RendezvousStore>,
    /// The MSC4388 creation policy.
    pub authorizer: Box<dyn CreateAuthorizer>,
    /// Session creations per address, when rate limits are on.
    pub create_limiter: Option<Arc<RateLimiter>>,
    /// Writes per address, shared with the client-server API.
    pub write_limiter: Option<Arc<RateLimiter>>,
    /// Concurrent long-polls.
    pub long_polls: Arc<LongPolls>,
    /// Flips to `true` when the server starts shutting down, ending long-polls early.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl RendezvousState {
    /// Assembles the state.
    pub fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }

    /// `[rendezvous]`.
    pub fn config(&self) -> &RendezvousConfig {
        &self.0.config
    }

    /// Base URL clients see, ending in `/`.
    pub fn public_url(&self) -> &str {
        &self.0.public_url
    }

    /// The session store.
    pub fn store(&self) -> &dyn RendezvousStore {
        &*self.0.store
    }

    /// The MSC4388 creation policy.
    pub fn authorizer(&self) -> &dyn CreateAuthorizer {
        &*self.0.authorizer
    }

    /// The session's payload: at once, or with `poll = Some((since, wait))` once its token
    /// differs from `since`, waiting at most `wait` (within `long_poll_max_ms`). Past a
    /// long-poll cap it answers at once, as a plain GET would, and once shutdown begins too,
    /// so a graceful stop is not held up for the length of a poll.
    pub async fn read(
        &self,
        client: ClientIp,
        transport: Transport,
        id: SessionId,
        poll: Option<(SequenceToken, Duration)>,
    ) -> Result<Snapshot, StoreError> {
        let store = self.store();
        let slot = poll.and_then(|poll| Some((self.0.long_polls.try_start(client.0, id)?, poll)));
        let Some((_slot, (since, wait))) = slot else {
            return store.get(transport, id).await;
        };
        let until = super::deadline(wait, self.0.config.long_poll_max_ms);
        let mut stopping = self.0.shutdown.clone();
        // The watch guards are not `Send`: let none of them live across an await.
        let already = *stopping.borrow_and_update();
        if already {
            return store.get(transport, id).await;
        }
        let stopped = async move {
            let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
        };
        tokio::select! {
            value = store.wait_for_change(transport, id, since, until) => value,
            () = stopped => store.get(transport, id).await,
        }
    }

    /// The write budget, which the client-server API charges too.
    pub fn write_limiter(&self) -> Option<Arc<RateLimiter>> {
        self.0.write_limiter.clone()
    }

    /// Drops idle rate-limit buckets.
    pub fn prune_limiters(&self) {
        for limiter in [&self.0.create_limiter, &self.0.write_limiter]
            .into_iter()
            .flatten()
        {
            limiter.prune();
        }
    }

    /// Lowers the long-poll cap (to leave connections for everything else).
    pub fn lower_long_poll_total(&self, total: usize) {
        self.0.long_polls.lower_total(total);
    }

    /// Charges one session creation to `client`.
    pub fn check_create_rate(&self, client: ClientIp) -> Result<(), ApiError> {
        charge(self.0.create_limiter.as_deref(), client)
    }

    /// Charges one write to `client`.
    pub fn check_write_rate(&self, client: ClientIp) -> Result<(), ApiError> {
        charge(self.0.write_limiter.as_deref(), client)
    }
}

/// Charges one request of `client` to `limiter`, if rate limits are on.
pub fn charge(limiter: Option<&RateLimiter>, client: ClientIp) -> Result<(), ApiError> {
    match limiter {
        Some(limiter) => limiter
            .check(client_key(client.0))
            .map_err(|retry_after| ApiError::LimitExceeded { retry_after }),
        None => Ok(()),
    }
}

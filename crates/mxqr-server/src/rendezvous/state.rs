//! What the rendezvous handlers get of the application state: the session store, the
//! creation policy, their rate limits and long-poll budget, and the shutdown signal.

use std::future::Future;
use std::sync::Arc;

use super::create_policy::CreateAuthorizer;
use super::longpoll::{LongPollSlot, LongPolls};
use super::store::{RendezvousStore, SessionId};
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

    /// Runs a long-poll `wait`, but answers with `now` instead once shutdown begins, so a
    /// graceful stop is not held up for the length of a poll.
    pub async fn until_shutdown<T>(
        &self,
        wait: impl Future<Output = T>,
        now: impl Future<Output = T>,
    ) -> T {
        let mut stopping = self.0.shutdown.clone();
        // The watch guards are not `Send`: let none of them live across an await.
        let already = *stopping.borrow_and_update();
        if already {
            return now.await;
        }
        let stopped = async move {
            let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
        };
        tokio::select! {
            value = wait => value,
            () = stopped => now.await,
        }
    }

    /// A long-poll slot for `client` on `session`, or `None` past a cap: the caller then
    /// answers at once, as a plain GET.
    pub fn start_long_poll(&self, client: ClientIp, session: SessionId) -> Option<LongPollSlot> {
        self.0.long_polls.try_start(client.0, session)
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

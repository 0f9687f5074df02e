//! What the rendezvous handlers get of the application state: the session store, the
//! creation policy, their rate limits and long-poll budget, and the shutdown signal.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use super::create_policy::CreateAuthorizer;
use super::longpoll::LongPolls;
use super::store::{SequenceToken, SessionId, SessionMeta, Snapshot, Store, Transport, Write};
use crate::client_ip::ClientIp;
use crate::config::RendezvousConfig;
use crate::error::{ApiError, ConflictStyle};
use crate::ratelimit::{RateLimiter, client_key};

/// The rendezvous part of the application state (cheap to clone), its [`Parts`] at hand.
#[derive(Clone)]
pub struct RendezvousState(Arc<Parts>);

/// The parts a [`RendezvousState`] is made of.
pub struct Parts {
    /// `[rendezvous]`.
    pub config: RendezvousConfig,
    /// Base URL clients see, ending in `/` (MSC4108 session URLs start with it).
    pub public_url: String,
    /// The session store.
    pub store: Arc<Store>,
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

impl Deref for RendezvousState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// The sessions an API sees, told by its conflict style: MSC4388 under either prefix shares
/// one set, MSC4108 has its own.
fn transport(style: ConflictStyle) -> Transport {
    match style {
        ConflictStyle::Msc4388Stable | ConflictStyle::Msc4388Unstable => Transport::Msc4388,
        ConflictStyle::Msc4108 => Transport::Msc4108,
    }
}

/// The session operations of the handlers take the API's conflict style, which picks the
/// transport and spells store errors as that API does.
impl RendezvousState {
    /// Assembles the state.
    pub fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }

    /// Creates a session holding `data`.
    pub async fn create(
        &self,
        style: ConflictStyle,
        data: Arc<str>,
    ) -> Result<(SessionId, SessionMeta), ApiError> {
        let created = self.store.create(transport(style), data).await;
        created.map_err(|e| ApiError::from_store(e, style))
    }

    /// The session's payload: at once, or with `poll = Some((since, wait))` once its token
    /// differs from `since`, waiting at most `wait` (within `long_poll_max_ms`). Past a
    /// long-poll cap it answers at once, as a plain GET would, and once shutdown begins too,
    /// so a graceful stop is not held up for the length of a poll.
    pub async fn read(
        &self,
        client: ClientIp,
        style: ConflictStyle,
        id: SessionId,
        poll: Option<(SequenceToken, Duration)>,
    ) -> Result<Snapshot, ApiError> {
        let (store, transport) = (&self.store, transport(style));
        let slot = poll.and_then(|poll| Some((self.long_polls.try_start(client.0, id)?, poll)));
        let read = match slot {
            None => store.get(transport, id).await,
            Some((_slot, (since, wait))) => {
                let until = super::deadline(wait, self.config.long_poll_max_ms);
                let mut stopping = self.shutdown.clone();
                // The watch guards are not `Send`: let none of them live across an await.
                let already = *stopping.borrow_and_update();
                let stopped = async move {
                    let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
                };
                if already {
                    store.get(transport, id).await
                } else {
                    tokio::select! {
                        value = store.wait_for_change(transport, id, since, until) => value,
                        () = stopped => store.get(transport, id).await,
                    }
                }
            }
        };
        read.map_err(|e| ApiError::from_store(e, style))
    }

    /// Replaces the payload with `data` if `expected` is still current; see [`Write`].
    pub async fn update(
        &self,
        style: ConflictStyle,
        id: SessionId,
        expected: SequenceToken,
        data: Arc<str>,
        txn_id: Option<Box<str>>,
    ) -> Result<SessionMeta, ApiError> {
        let write = Write {
            expected,
            data,
            txn_id,
        };
        let written = self.store.update(transport(style), id, write).await;
        written.map_err(|e| ApiError::from_store(e, style))
    }

    /// Removes a session.
    pub async fn delete(&self, style: ConflictStyle, id: SessionId) -> Result<(), ApiError> {
        let deleted = self.store.delete(transport(style), id).await;
        deleted.map_err(|e| ApiError::from_store(e, style))
    }

    /// Drops idle rate-limit buckets.
    pub fn prune_limiters(&self) {
        for limiter in [&self.create_limiter, &self.write_limiter]
            .into_iter()
            .flatten()
        {
            limiter.prune();
        }
    }

    /// Charges one session creation to `client`.
    pub fn check_create_rate(&self, client: ClientIp) -> Result<(), ApiError> {
        charge(self.create_limiter.as_deref(), client)
    }

    /// Charges one write to `client`.
    pub fn check_write_rate(&self, client: ClientIp) -> Result<(), ApiError> {
        charge(self.write_limiter.as_deref(), client)
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

//! The rendezvous session two devices talk through (docs/protocol.md §3).
//!
//! One [`Rendezvous`] hides which transport carries the payloads. Both keep one payload at a
//! time and a version token (MSC4388 `sequence_token`, MSC4108 2024 `ETag`); every write names
//! the last version the writer saw, and every read waits until the version changes.
//!
//! Field lessons built in (docs/protocol.md §7): expiry is measured locally from the relative
//! lifetime the server reports, never from its clock; a write whose response was lost is
//! retried and a 409/412 is resolved by re-reading instead of stalling; long-poll is used where
//! the server advertises it, polling with back-off otherwise. Reads and writes that get no
//! answer or a 503 are retried for a bounded time, so an instance behind a load balancer going
//! away, restarting, or losing its database for a moment does not end a sign-in.

pub mod msc4108;
pub mod msc4388;

use std::time::Duration;

use mxqr_proto::channel::Binding;
use mxqr_proto::machine::CreatedRendezvous;
use mxqr_proto::qr::{Msc4388Prefix, QrRendezvous};
use tokio::time::Instant;
use url::Url;

use crate::ClientError;
use crate::body::{self, Cap, parse_json};

/// Our own `unstable_features` flag for the long-poll extension.
pub const LONG_POLL_FEATURE: &str = "io.mxqr.rendezvous_long_poll";
/// Longest a single long-poll request is asked to wait.
const LONG_POLL_MAX: Duration = Duration::from_secs(30);
/// Back-off between plain polls.
const POLL_MIN: Duration = Duration::from_millis(250);
const POLL_MAX: Duration = Duration::from_secs(2);
/// How long a request that got no answer (or 503) keeps being retried: long enough for a
/// load balancer to fail over, an instance to restart or its database to come back.
const RETRY_FOR: Duration = Duration::from_secs(10);
/// First pause before such a retry; doubled up to [`POLL_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest session lifetime taken from a server (sessions live minutes): a sign-in never
/// waits longer, and the local deadline cannot overflow.
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Lifetime assumed when the server reports none.
const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(120);

/// The local deadline of a session the server says lives `lifetime` from now, measured on
/// this device's clock and held to [`MAX_SESSION_LIFETIME`].
pub fn expiry_after(lifetime: Duration) -> Instant {
    let now = Instant::now();
    // Within the bound, the sum always fits; if it still did not, the session counts as
    // expired rather than the client panicking.
    now.checked_add(lifetime.min(MAX_SESSION_LIFETIME))
        .unwrap_or(now)
}

/// Whether a failed request may succeed if sent again: no answer at all (connection refused or
/// cut, e.g. an instance going away behind a load balancer), or 503 (the server's database is
/// unavailable). Callers only retry requests that are safe to repeat.
pub(crate) fn is_transient(error: &ClientError) -> bool {
    match error {
        ClientError::Network(e) => !e.is_builder(),
        ClientError::Status { status, .. } | ClientError::OAuth { status, .. } => {
            *status == reqwest::StatusCode::SERVICE_UNAVAILABLE
        }
        _ => false,
    }
}

/// Bounded retries of transient failures: exponential pauses, for at most [`RETRY_FOR`]
/// from the first failure of a run of failures.
#[derive(Default)]
pub(crate) struct Retry {
    first_failure: Option<Instant>,
    pause: Duration,
}

impl Retry {
    /// After a transient failure: the pause before the next try, or `None` once the budget
    /// is spent.
    pub(crate) fn next_pause(&mut self) -> Option<Duration> {
        let first = *self.first_failure.get_or_insert_with(Instant::now);
        self.pause = if self.pause.is_zero() {
            RETRY_MIN
        } else {
            (self.pause * 2).min(POLL_MAX)
        };
        (first.elapsed() + self.pause <= RETRY_FOR).then_some(self.pause)
    }

    /// After a success: the next failure starts a fresh budget.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

/// What the server offers, read from `GET /_matrix/client/versions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RendezvousSupport {
    pub msc4388: bool,
    pub msc4108: bool,
    pub long_poll: bool,
}

impl RendezvousSupport {
    pub fn from_versions(versions: &serde_json::Value) -> Self {
        let flag = |name: &str| {
            versions
                .get("unstable_features")
                .and_then(|f| f.get(name))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        Self {
            msc4388: flag("io.element.msc4388"),
            msc4108: flag("org.matrix.msc4108"),
            long_poll: flag(LONG_POLL_FEATURE),
        }
    }

    pub async fn discover(http: &reqwest::Client, base_url: &Url) -> Result<Self, ClientError> {
        let url = join(base_url, "_matrix/client/versions")?;
        let response = http.get(url).send().await?;
        if !response.status().is_success() {
            return Err(ClientError::from_response(response).await);
        }
        Self::from_versions_body(&body::read(response, Cap::Other).await?)
    }

    /// Parses a `/versions` answer.
    pub fn from_versions_body(bytes: &[u8]) -> Result<Self, ClientError> {
        let versions: serde_json::Value = parse_json(bytes, "/versions answer")?;
        Ok(Self::from_versions(&versions))
    }
}

/// Appends a path to a base URL that may or may not end in `/`.
pub(crate) fn join(base: &Url, path: &str) -> Result<Url, ClientError> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join(path)
        .map_err(|e| ClientError::Protocol(format!("bad URL: {e}")))
}

enum Transport {
    Msc4388(msc4388::Session),
    Msc4108(msc4108::Session),
}

/// A rendezvous session, from this device's point of view.
pub struct Rendezvous {
    http: reqwest::Client,
    transport: Transport,
    long_poll: bool,
    /// The version of the payload this device saw last (read or written).
    token: String,
    /// Local deadline from the server's relative lifetime.
    expires_at: Instant,
    /// A payload found while resolving a write conflict, handed out by the next `receive`.
    pending: Option<String>,
}

impl std::fmt::Debug for Rendezvous {
    // The session ID is a capability: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendezvous")
            .field("long_poll", &self.long_poll)
            .finish_non_exhaustive()
    }
}

/// One observed state of the session, as a read answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The payload (empty before the first write).
    pub data: String,
    /// Its version (MSC4388 `sequence_token`, MSC4108 `ETag`).
    pub token: String,
    /// The session's remaining lifetime, as the server reported it.
    pub expires_in: Option<Duration>,
}

/// The outcome of one write attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Written {
        token: String,
        expires_in: Option<Duration>,
    },
    /// 409 / 412: the version moved on.
    Conflict,
    Gone,
}

impl Rendezvous {
    /// Creates an MSC4388 session on `base_url` (the device that shows the QR code does this).
    pub async fn create_msc4388(
        http: reqwest::Client,
        base_url: &Url,
        prefix: Msc4388Prefix,
        support: &RendezvousSupport,
        access_token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let (session, snap) =
            msc4388::Session::create(&http, base_url, prefix, access_token).await?;
        Ok(Self::new(
            http,
            Transport::Msc4388(session),
            snap,
            support.long_poll,
        ))
    }

    /// Creates an MSC4108 (2024) session at the server's rendezvous endpoint.
    pub async fn create_msc4108(
        http: reqwest::Client,
        base_url: &Url,
        support: &RendezvousSupport,
    ) -> Result<Self, ClientError> {
        let (session, snap) = msc4108::Session::create(&http, base_url).await?;
        Ok(Self::new(
            http,
            Transport::Msc4108(session),
            snap,
            support.long_poll,
        ))
    }

    /// Joins the session a scanned QR code names. `long_poll` only if the QR's server
    /// advertised it.
    pub async fn join(
        http: reqwest::Client,
        rendezvous: &QrRendezvous,
        long_poll: bool,
    ) -> Result<Self, ClientError> {
        let (transport, snap) = match rendezvous {
            QrRendezvous::Msc4388 {
                prefix,
                rendezvous_id,
                base_url,
            } => {
                let base = Url::parse(base_url)
                    .map_err(|e| ClientError::Protocol(format!("bad base URL: {e}")))?;
                let (s, snap) =
                    msc4388::Session::join(&http, &base, *prefix, rendezvous_id).await?;
                (Transport::Msc4388(s), snap)
            }
            QrRendezvous::Msc4108 { rendezvous_url, .. } => {
                let url = Url::parse(rendezvous_url)
                    .map_err(|e| ClientError::Protocol(format!("bad rendezvous URL: {e}")))?;
                let (s, snap) = msc4108::Session::join(&http, url).await?;
                (Transport::Msc4108(s), snap)
            }
        };
        Ok(Self::new(http, transport, snap, long_poll))
    }

    fn new(http: reqwest::Client, transport: Transport, snap: Snapshot, long_poll: bool) -> Self {
        let lifetime = snap.expires_in.unwrap_or(DEFAULT_SESSION_LIFETIME);
        Self {
            http,
            transport,
            long_poll,
            token: snap.token,
            expires_at: expiry_after(lifetime),
            pending: None,
        }
    }

    /// The version of the payload this device saw last.
    pub fn sequence_token(&self) -> &str {
        &self.token
    }

    /// The session as the state machine of the device that created it needs it.
    pub fn created(&self) -> CreatedRendezvous {
        match &self.transport {
            Transport::Msc4388(s) => CreatedRendezvous::Msc4388 {
                prefix: s.prefix,
                base_url: s.base_url.to_string(),
                rendezvous_id: s.id.clone(),
                sequence_token: self.token.clone(),
            },
            Transport::Msc4108(s) => CreatedRendezvous::Msc4108 {
                url: s.url.to_string(),
                etag: self.token.clone(),
            },
        }
    }

    /// Writes `data` replacing the version `token` (as a state machine asks), and returns the
    /// new version.
    pub async fn send_replacing(&mut self, token: &str, data: &str) -> Result<String, ClientError> {
        token.clone_into(&mut self.token);
        self.send(data).await?;
        Ok(self.token.clone())
    }

    /// Waits for a payload newer than `token`; returns it with its version.
    pub async fn receive_after(
        &mut self,
        token: &str,
        max_wait: Duration,
    ) -> Result<(String, String), ClientError> {
        if self.pending.is_none() {
            token.clone_into(&mut self.token);
        }
        let data = self.receive(max_wait).await?;
        Ok((data, self.token.clone()))
    }

    /// What the QR code must carry for the other device to find this session.
    pub fn qr_rendezvous(&self, homeserver: Option<String>) -> QrRendezvous {
        match &self.transport {
            Transport::Msc4388(s) => QrRendezvous::Msc4388 {
                prefix: s.prefix,
                rendezvous_id: s.id.clone(),
                base_url: s.base_url_for_qr(),
            },
            Transport::Msc4108(s) => QrRendezvous::Msc4108 {
                rendezvous_url: s.url.to_string(),
                homeserver,
            },
        }
    }

    /// The binding of a payload sealed now: this session and the last version seen.
    pub fn binding(&self) -> Binding {
        match &self.transport {
            Transport::Msc4388(s) => {
                Binding::new(s.base_url.as_str(), s.id.as_str(), self.token.as_str())
            }
            Transport::Msc4108(s) => Binding::new(s.url.as_str(), "", self.token.as_str()),
        }
    }

    /// Time left before the session expires, measured on this device's clock.
    pub fn remaining(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }

    fn refresh_expiry(&mut self, expires_in: Option<Duration>) {
        if let Some(d) = expires_in {
            self.expires_at = expiry_after(d);
        }
    }

    async fn get(&self, wait: Option<Duration>) -> Result<Option<Snapshot>, ClientError> {
        match &self.transport {
            Transport::Msc4388(s) => s.get(&self.http, &self.token, wait).await,
            Transport::Msc4108(s) => s.get(&self.http, &self.token, wait).await,
        }
    }

    async fn put(&self, data: &str) -> Result<WriteOutcome, ClientError> {
        match &self.transport {
            Transport::Msc4388(s) => s.put(&self.http, &self.token, data).await,
            Transport::Msc4108(s) => s.put(&self.http, &self.token, data).await,
        }
    }

    /// Writes the next payload. A lost response or a 503 is retried for a bounded time (the
    /// server accepts the retry with the same token and data); a conflict is resolved by
    /// re-reading: if the session holds our payload, our earlier attempt landed; otherwise the
    /// other device wrote first, and its payload is kept for the next
    /// [`receive`](Self::receive).
    pub async fn send(&mut self, data: &str) -> Result<(), ClientError> {
        if self.remaining().is_zero() {
            return Err(ClientError::Expired);
        }
        let mut retry = Retry::default();
        loop {
            match self.put(data).await {
                Ok(WriteOutcome::Written { token, expires_in }) => {
                    self.token = token;
                    self.refresh_expiry(expires_in);
                    return Ok(());
                }
                Ok(WriteOutcome::Gone) => return Err(self.gone()),
                Ok(WriteOutcome::Conflict) => {
                    let snap = self.get_retrying().await?.ok_or_else(|| self.gone())?;
                    self.token = snap.token;
                    self.refresh_expiry(snap.expires_in);
                    if snap.data == data {
                        return Ok(());
                    }
                    self.pending = Some(snap.data);
                    return Err(ClientError::ConcurrentWrite);
                }
                Err(e) if is_transient(&e) => match retry.next_pause() {
                    Some(pause) if pause < self.remaining() => {
                        tracing::debug!("rendezvous write failed ({e}); retrying");
                        tokio::time::sleep(pause).await;
                    }
                    _ => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// A read, retried for a bounded time when it gets no answer or a 503 (reads change
    /// nothing, so repeating one is always safe).
    async fn get_retrying(&self) -> Result<Option<Snapshot>, ClientError> {
        let mut retry = Retry::default();
        loop {
            match self.get(None).await {
                Err(e) if is_transient(&e) => match retry.next_pause() {
                    Some(pause) if pause < self.remaining() => {
                        tracing::debug!("rendezvous read failed ({e}); retrying");
                        tokio::time::sleep(pause).await;
                    }
                    _ => return Err(e),
                },
                result => return result,
            }
        }
    }

    fn gone(&self) -> ClientError {
        if self.remaining().is_zero() {
            ClientError::Expired
        } else {
            ClientError::Gone
        }
    }

    /// Waits for the other device's next payload, at most `max_wait` and never past expiry.
    pub async fn receive(&mut self, max_wait: Duration) -> Result<String, ClientError> {
        if let Some(data) = self.pending.take() {
            return Ok(data);
        }
        // Past the session's expiry the wait ends anyway.
        let deadline = Instant::now()
            .checked_add(max_wait)
            .unwrap_or(self.expires_at);
        let mut backoff = POLL_MIN;
        let mut retry = Retry::default();
        loop {
            let now = Instant::now();
            let until = deadline.min(self.expires_at);
            if now >= until {
                return Err(if now >= self.expires_at {
                    ClientError::Expired
                } else {
                    ClientError::Timeout
                });
            }
            let wait = self.long_poll.then(|| (until - now).min(LONG_POLL_MAX));
            let snap = match self.get(wait).await {
                Ok(snap) => {
                    retry.reset();
                    snap
                }
                // The instance holding a long-poll may go away: read again, elsewhere.
                Err(e) if is_transient(&e) => match retry.next_pause() {
                    Some(pause) if pause < self.remaining() => {
                        tracing::debug!("rendezvous read failed ({e}); retrying");
                        tokio::time::sleep(pause.min(until.saturating_duration_since(now))).await;
                        continue;
                    }
                    _ => return Err(e),
                },
                Err(e) => return Err(e),
            };
            match snap {
                None => return Err(self.gone()),
                Some(snap) if snap.token != self.token => {
                    self.token = snap.token;
                    self.refresh_expiry(snap.expires_in);
                    return Ok(snap.data);
                }
                Some(snap) => {
                    self.refresh_expiry(snap.expires_in);
                    if !self.long_poll {
                        tokio::time::sleep(
                            backoff.min(until.saturating_duration_since(Instant::now())),
                        )
                        .await;
                        backoff = (backoff * 3 / 2).min(POLL_MAX);
                    }
                }
            }
        }
    }

    /// Ends the session on the server. Errors are ignored: the session expires anyway, and
    /// this runs on every exit path, including after failures.
    pub async fn delete(self) {
        self.delete_session().await;
    }

    /// [`delete`](Self::delete) without giving up the handle (a state machine asks for it
    /// before its last action).
    pub async fn delete_session(&self) {
        let result = match &self.transport {
            Transport::Msc4388(s) => s.delete(&self.http).await,
            Transport::Msc4108(s) => s.delete(&self.http).await,
        };
        if let Err(e) = result {
            tracing::debug!("rendezvous delete failed: {e}");
        }
    }
}

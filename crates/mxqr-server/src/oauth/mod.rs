//! The Matrix OAuth 2.0 authorization server (Matrix spec "OAuth 2.0 API"): its state
//! ([`OAuthState`]: accounts store, clock, lifetimes, guessing budgets), server metadata,
//! dynamic client registration, the token endpoint, revocation, and the bearer-token lookup
//! the client-server API uses. Each grant's browser side lives with the grant
//! ([`crate::auth_code`], [`crate::device_grant`]); what the homeserver must hear about
//! sessions goes out through [`HomeserverHooks`], so this module knows nothing of Synapse.

pub mod client;
pub(crate) mod endpoints;
mod error;
pub mod hooks;
pub(crate) mod limits;
pub mod metadata;
pub mod model;
pub mod password;
mod registration;
pub mod routes;
pub mod scope;
pub mod token;
pub mod tokens;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use error::OAuthError;
pub use hooks::{HomeserverHooks, Standalone};

use crate::accounts::{DbResult, NewTokens, SharedDb, TokenInfo};
use crate::config::{Config, OAuthConfig};
use crate::rendezvous::create_policy::CreateAuthorizer;
use limits::{FailureLimiter, InFlight, InFlightSlot};

/// Source of the current time, injectable so tests can expire codes without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
    }
}

/// Lifetimes and caps, from `[oauth]`.
#[derive(Clone, Debug)]
pub struct Lifetimes {
    /// Access-token life.
    pub access_token: Duration,
    /// Retry window of a superseded refresh token.
    pub refresh_grace: Duration,
    /// Authorization-code life.
    pub auth_code: Duration,
    /// Device-code life.
    pub device_code: Duration,
    /// Initial polling interval, seconds.
    pub device_interval_secs: u64,
    /// Lookups of one user code before its grant is refused.
    pub user_code_max_lookups: u32,
    /// Browser sign-in life.
    pub browser_session: Duration,
    /// How long an approved cross-signing reset stays usable.
    pub cross_signing_reset: Duration,
    /// How long a poll of a pending device grant waits for the decision.
    pub device_poll_hold: Duration,
    /// Pending device grants per client address (applied with the rate limits).
    pub device_grants_per_address: u32,
    /// Pending device grants per client.
    pub device_grants_per_client: u32,
}

impl Lifetimes {
    /// The configured values.
    fn from_config(c: &OAuthConfig) -> Self {
        Self {
            access_token: Duration::from_secs(c.access_token_ttl_secs),
            refresh_grace: Duration::from_secs(c.refresh_grace_secs),
            auth_code: Duration::from_secs(c.auth_code_ttl_secs),
            device_code: Duration::from_secs(c.device_code_ttl_secs),
            device_interval_secs: c.device_poll_interval_secs,
            // Never as long as the interval: the answer must come before the next poll is due.
            device_poll_hold: Duration::from_millis(
                c.device_poll_hold_ms
                    .min((c.device_poll_interval_secs * 1000).saturating_sub(500)),
            ),
            user_code_max_lookups: c.user_code_max_lookups,
            browser_session: Duration::from_secs(c.browser_session_ttl_secs),
            cross_signing_reset: Duration::from_secs(600),
            device_grants_per_address: c.device_grants_pending_per_address,
            device_grants_per_client: c.device_grants_pending_per_client,
        }
    }
}

/// Interval between database purges.
const PURGE_EVERY_MS: i64 = 60_000;

/// A client name fit for Synapse's device display names (at most 100 characters there).
fn device_display_name(client_name: &str) -> String {
    const MAX_CHARS: usize = 100;
    client_name.trim().chars().take(MAX_CHARS).collect()
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

struct Inner {
    db: SharedDb,
    clock: Arc<dyn Clock>,
    life: Lifetimes,
    public_url: String,
    server_name: String,
    registration_enabled: bool,
    secure_cookies: bool,
    last_purge: AtomicI64,
    /// Budgets against guessing (when `rate_limit.enabled`).
    guards: Option<Guards>,
    /// Client registrations and device authorizations per address (both unauthenticated
    /// and stored); `None` when rate limits are off.
    creation_limiter: Option<crate::ratelimit::RateLimiter>,
    /// What the homeserver must hear about sessions (nothing, standalone).
    hooks: Arc<dyn HomeserverHooks>,
    /// Bumped whenever this instance decides a device grant, to wake held token polls.
    device_decisions: tokio::sync::watch::Sender<u64>,
}

/// Separate budgets, so that guessing one kind of secret cannot lock people behind the same
/// address (a NAT) out of the others.
struct Guards {
    /// Failed sign-ins and registrations per address.
    password: FailureLimiter,
    /// Failed sign-ins per account, from any address.
    account: FailureLimiter<String>,
    /// Password checks running per address.
    in_flight: InFlight,
    /// Wrong user codes entered on `/link` per address.
    user_code: FailureLimiter,
    /// Unknown device codes at the token endpoint per address.
    unknown_code: FailureLimiter,
}

/// Password checks one address may have running at once.
const PASSWORD_CHECKS_PER_ADDRESS: u32 = 2;

/// A password attempt counted against the budgets of its address and account, running
/// (holding its in-flight slot) until dropped. Dropped without [`Self::succeeded`], it
/// stays counted as a failure.
pub(crate) struct PasswordAttempt<'a> {
    counted: Option<(&'a Guards, IpAddr, String)>,
    _slot: Option<InFlightSlot>,
}

impl PasswordAttempt<'_> {
    /// The password was right: the attempt does not use up the budgets.
    pub(crate) fn succeeded(mut self) {
        if let Some((guards, ip, account)) = self.counted.take() {
            guards.password.refund(ip);
            guards.account.refund(account);
        }
    }
}

/// Shared state of the OAuth endpoints and pages (cheap to clone).
#[derive(Clone)]
pub struct OAuthState(Arc<Inner>);

/// A freshly minted token pair: the secrets for the client and the digests for the store.
pub struct Minted {
    /// Access token (secret).
    pub access_token: String,
    /// Refresh token (secret).
    pub refresh_token: String,
    /// What the store keeps.
    pub stored: NewTokens,
}

impl OAuthState {
    /// Opens the store named by `config` (`database.url`, else SQLite) and builds the state
    /// with the system clock, as `mxqr admin` does: with the server name pinned in the
    /// database unless the configuration names one (which must then match).
    pub async fn open(config: &Config) -> DbResult<Self> {
        let (config, db) = Self::open_db(config, config.configured_server_name(), false).await?;
        Ok(Self::new(
            &config,
            db,
            Arc::new(Standalone),
            Arc::new(SystemClock),
        ))
    }

    /// Opens the database of `config` and settles the server name against the one pinned in
    /// it ([`crate::accounts::settle_server_name`]): `configured` is the operator's choice, if any.
    /// Returns the configuration with that name.
    pub async fn open_db(
        config: &Config,
        configured: Option<String>,
        pin_derived: bool,
    ) -> DbResult<(Config, SharedDb)> {
        let db = crate::accounts::open(config).await?;
        let name = crate::accounts::settle_server_name(
            &db,
            configured.as_deref(),
            &config.effective_server_name(),
            pin_derived,
        )
        .await?;
        let settled = Config {
            server_name: Some(name),
            ..config.clone()
        };
        Ok((settled, db))
    }

    /// State over `db` with the configured lifetimes, telling the homeserver about sessions
    /// through `hooks` ([`Standalone`]: nobody to tell) and reading the time from `clock`
    /// ([`SystemClock`]; tests turn theirs by hand to expire codes without sleeping).
    pub fn new(
        config: &Config,
        db: SharedDb,
        hooks: Arc<dyn HomeserverHooks>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let public_url = config.effective_public_url();
        let window = Duration::from_secs(config.oauth.failed_attempts_window_secs);
        let per_address = || FailureLimiter::new(config.oauth.failed_attempts_max, window);
        let guards = config.rate_limit.enabled.then(|| Guards {
            password: per_address(),
            account: FailureLimiter::new(config.oauth.account_failed_attempts_max, window),
            in_flight: InFlight::new(PASSWORD_CHECKS_PER_ADDRESS),
            user_code: per_address(),
            unknown_code: per_address(),
        });
        Self(Arc::new(Inner {
            db,
            clock,
            life: Lifetimes::from_config(&config.oauth),
            secure_cookies: public_url.starts_with("https://"),
            server_name: config.effective_server_name(),
            public_url,
            registration_enabled: config.oauth.registration_enabled,
            last_purge: AtomicI64::new(0),
            guards,
            creation_limiter: config.rate_limit.enabled.then(|| {
                crate::ratelimit::RateLimiter::new(
                    config.rate_limit.oauth_create_per_second,
                    config.rate_limit.oauth_create_burst,
                )
            }),
            hooks,
            device_decisions: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// Wakes the token polls held open on this instance (a device grant was decided).
    pub fn device_grant_decided(&self) {
        self.0
            .device_decisions
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Listens for [`Self::device_grant_decided`]; subscribe before the poll so that a
    /// decision between the poll and the wait is not missed.
    pub fn device_decisions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.device_decisions.subscribe()
    }

    /// Waits up to `hold` for the pending grant `device_code_hash` to be decided: woken by
    /// decisions on this instance, and checked once more at the end for decisions made on
    /// another instance. `true` when it is no longer pending.
    pub async fn wait_for_device_decision(
        &self,
        device_code_hash: &str,
        mut decisions: tokio::sync::watch::Receiver<u64>,
        hold: Duration,
    ) -> DbResult<bool> {
        let deadline = tokio::time::Instant::now() + hold;
        loop {
            tokio::select! {
                changed = decisions.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(deadline).await;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {}
            }
            let pending = self
                .db()
                .device_grant_pending(device_code_hash, self.now_ms())
                .await?;
            if !pending || tokio::time::Instant::now() >= deadline {
                return Ok(!pending);
            }
        }
    }

    /// What the homeserver must hear about sessions.
    pub fn hooks(&self) -> &dyn HomeserverHooks {
        &*self.0.hooks
    }

    /// Tells the homeserver about the device of a session before its first tokens go out,
    /// named after the client that signed it in (`client_name`), as people see it in their
    /// device list.
    pub(crate) async fn synapse_session_started(
        &self,
        grant: &crate::accounts::Grant,
    ) -> DbResult<()> {
        if !self.0.hooks.active() {
            return Ok(());
        }
        let name = match &grant.client_id {
            Some(id) => endpoints::load_client(self, id)
                .await?
                .map(|c| device_display_name(&c.display_name())),
            None => None,
        };
        self.0
            .hooks
            .session_started(&grant.localpart, &grant.device_id, name, self.now_ms())
            .await
    }

    /// Tells the homeserver that a device's session ended.
    pub(crate) async fn synapse_device_ended(
        &self,
        localpart: &str,
        device_id: &str,
    ) -> DbResult<()> {
        self.0
            .hooks
            .device_ended(localpart, device_id, self.now_ms())
            .await
    }

    /// Tells the homeserver that the session of the token with this hash ended.
    pub(crate) async fn synapse_token_ended(&self, token_hash: &str) -> DbResult<()> {
        if !self.0.hooks.active() {
            return Ok(());
        }
        match self.0.db.token_owner(token_hash).await? {
            Some((localpart, device_id)) => self.synapse_device_ended(&localpart, &device_id).await,
            None => Ok(()),
        }
    }

    /// The store.
    pub fn db(&self) -> &SharedDb {
        &self.0.db
    }

    /// Current time, ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        self.0.clock.now_ms()
    }

    /// Lifetimes in force.
    pub fn lifetimes(&self) -> &Lifetimes {
        &self.0.life
    }

    /// Base URL, ending in `/`.
    pub fn public_url(&self) -> &str {
        &self.0.public_url
    }

    /// `public_url` + `path` (no leading `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.0.public_url)
    }

    /// The Matrix server name.
    pub fn server_name(&self) -> &str {
        &self.0.server_name
    }

    /// `@localpart:server_name`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.0.server_name)
    }

    /// Whether self-registration is on.
    pub fn registration_enabled(&self) -> bool {
        self.0.registration_enabled
    }

    /// Whether cookies get the `Secure` attribute (public URL is https).
    pub fn secure_cookies(&self) -> bool {
        self.0.secure_cookies
    }

    /// Charges one client registration or device authorization to `ip`'s creation bucket.
    pub(crate) fn charge_creation(&self, ip: IpAddr) -> Result<(), OAuthError> {
        let Some(limiter) = &self.0.creation_limiter else {
            return Ok(());
        };
        limiter
            .check(crate::ratelimit::client_key(ip))
            .map_err(|retry_after| OAuthError::Throttled {
                retry_after,
                reason: "too many registrations or device authorizations from this address",
            })
    }

    /// Whether per-address caps apply (client addresses are only trusted with the rate
    /// limits on).
    pub(crate) fn limits_per_address(&self) -> bool {
        self.0.creation_limiter.is_some()
    }

    /// Counts a password attempt of `ip` on `account` before it is checked: refused (with
    /// how long to wait) while `ip` has [`PASSWORD_CHECKS_PER_ADDRESS`] checks running, or
    /// the address or the account has used up its failures.
    ///
    /// The per-account budget applies whatever the address, so a botnet cannot guess one
    /// password from many addresses; its cost is that such a botnet can keep the account
    /// from signing in with a password for the window. It is set higher than the
    /// per-address one, so one address alone cannot do that, and it blocks only new
    /// sign-ins: browser sessions and devices already signed in keep working.
    pub(crate) fn begin_password_attempt(
        &self,
        ip: IpAddr,
        account: &str,
    ) -> Result<PasswordAttempt<'_>, Duration> {
        let Some(guards) = &self.0.guards else {
            return Ok(PasswordAttempt {
                counted: None,
                _slot: None,
            });
        };
        // Refused at once, as a client would wait much longer in a queue.
        let slot = guards.in_flight.enter(ip).ok_or(Duration::from_secs(1))?;
        guards.password.attempt(ip)?;
        // By digest: a typed name can be as long as the form, and this map lives a window.
        let account = tokens::hash(account);
        if let Err(wait) = guards.account.attempt(account.clone()) {
            guards.password.refund(ip);
            return Err(wait);
        }
        Ok(PasswordAttempt {
            counted: Some((guards, ip, account)),
            _slot: Some(slot),
        })
    }

    /// A slot for a registration's password hash (bounded per address like sign-ins);
    /// refused while `ip` has its checks running or has used up its failures.
    pub(crate) fn begin_registration(&self, ip: IpAddr) -> Result<Option<InFlightSlot>, Duration> {
        let Some(guards) = &self.0.guards else {
            return Ok(None);
        };
        if let Some(wait) = guards.password.blocked(ip) {
            return Err(wait);
        }
        guards
            .in_flight
            .enter(ip)
            .map(Some)
            .ok_or(Duration::from_secs(1))
    }

    /// Counts a failed registration (a taken username) of `ip`.
    pub(crate) fn registration_failed(&self, ip: IpAddr) {
        if let Some(g) = &self.0.guards {
            g.password.fail(ip);
        }
    }

    /// Counts a user code entered on `/link` by `ip` before it is looked up, so that parallel
    /// guesses cannot all pass; refused (with how long to wait) once `ip` has used up its
    /// wrong codes. Give it back with [`Self::uncount_user_code_entry`] when the code is right.
    pub(crate) fn count_user_code_entry(&self, ip: IpAddr) -> Result<(), Duration> {
        let guards = self.0.guards.as_ref();
        guards.map_or(Ok(()), |g| g.user_code.attempt(ip))
    }

    /// Gives back an entry counted by [`Self::count_user_code_entry`] that found its grant
    /// (or never reached the store).
    pub(crate) fn uncount_user_code_entry(&self, ip: IpAddr) {
        if let Some(g) = &self.0.guards {
            g.user_code.refund(ip);
        }
    }

    /// Refuses `ip` while it has used up its unknown device codes at the token endpoint.
    pub(crate) fn check_unknown_code(&self, ip: IpAddr) -> Result<(), Duration> {
        let guards = self.0.guards.as_ref();
        guards
            .and_then(|g| g.unknown_code.blocked(ip))
            .map_or(Ok(()), Err)
    }

    /// Counts an unknown device code presented by `ip`.
    pub(crate) fn unknown_code(&self, ip: IpAddr) {
        if let Some(g) = &self.0.guards {
            g.unknown_code.fail(ip);
        }
    }

    /// Mints an access/refresh pair expiring per the configured access-token life.
    pub fn mint(&self) -> Minted {
        let access_token = tokens::generate(tokens::Kind::Access);
        let refresh_token = tokens::generate(tokens::Kind::Refresh);
        let stored = NewTokens {
            access_hash: tokens::hash(&access_token),
            refresh_hash: tokens::hash(&refresh_token),
            access_expires_at: self.now_ms().saturating_add(ms(self.0.life.access_token)),
        };
        Minted {
            access_token,
            refresh_token,
            stored,
        }
    }

    /// What a presented access token stands for: `None` when it is malformed, unknown,
    /// revoked, expired, or its user is locked. This is the bearer authentication of the
    /// client-server API.
    pub async fn token_info(&self, access_token: &str) -> DbResult<Option<TokenInfo>> {
        if !tokens::well_formed(tokens::Kind::Access, access_token) {
            return Ok(None);
        }
        self.0
            .db
            .token_info(&tokens::hash(access_token), self.now_ms())
            .await
    }

    /// Records the first use of an access token that just authenticated a request (a
    /// refresh retry is refused once the pair it would replace was used). Writes only the
    /// first time; a failed write is logged, not fatal: the request itself is fine.
    pub async fn record_token_use(&self, access_hash: &str, info: &TokenInfo) {
        if info.used {
            return;
        }
        if let Err(err) = self.0.db.record_token_use(access_hash, self.now_ms()).await {
            tracing::warn!(%err, "recording an access token's first use failed");
        }
    }

    /// Whether a cross-signing reset is approved for the user now.
    pub async fn cross_signing_reset_allowed(&self, localpart: &str) -> DbResult<bool> {
        self.0
            .db
            .cross_signing_reset_allowed(localpart, self.now_ms())
            .await
    }

    /// An MSC4388 creation policy that accepts only live access tokens with client-API scope.
    pub fn create_authorizer(&self) -> Box<dyn CreateAuthorizer> {
        Box::new(TokenAuthorizer(self.clone()))
    }

    /// Periodic clean-up of expired codes, grants and browser sessions; called every second
    /// by the server's maintenance task, it touches the database at most once a minute.
    pub async fn purge_expired(&self) {
        let now = self.now_ms();
        let last = self.0.last_purge.load(Ordering::Relaxed);
        if now - last < PURGE_EVERY_MS
            || self
                .0
                .last_purge
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        match self.0.db.purge_expired(self.now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired OAuth rows purged"),
            Err(err) => tracing::warn!(%err, "purging expired OAuth rows failed"),
        }
        if let Some(g) = &self.0.guards {
            for limiter in [&g.password, &g.user_code, &g.unknown_code] {
                limiter.prune();
            }
            g.account.prune();
        }
        if let Some(limiter) = &self.0.creation_limiter {
            limiter.prune();
        }
    }
}

/// Validates bearer tokens against the store for rendezvous creation.
struct TokenAuthorizer(OAuthState);

#[async_trait::async_trait]
impl CreateAuthorizer for TokenAuthorizer {
    async fn may_create(&self, access_token: Option<&str>) -> bool {
        let Some(token) = access_token else {
            return false;
        };
        match self.0.token_info(token).await {
            Ok(Some(info)) => {
                self.0.record_token_use(&tokens::hash(token), &info).await;
                scope::grants_client_api(&info.scope)
            }
            Ok(None) => false,
            Err(err) => {
                tracing::error!(%err, "token lookup failed; refusing creation");
                false
            }
        }
    }
}

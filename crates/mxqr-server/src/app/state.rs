//! The application state, built once: each feature's part is assembled here and handed to
//! its handlers as their own state type (axum `FromRef` or `Router::with_state`), so no
//! handler sees more than it needs and none imports this module.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::http::HeaderName;

use super::metrics::Metrics;
use crate::accounts::{DbError, DbResult, OpenFailure};
use crate::config::{Config, CreatePolicy, HomeserverMode};
use crate::matrix::MatrixState;
use crate::oauth::{HomeserverHooks, OAuthState, Standalone, SystemClock};
use crate::ratelimit::RateLimiter;
use crate::rendezvous::create_policy::{self, CreateAuthorizer};
use crate::rendezvous::longpoll::LongPolls;
use crate::rendezvous::store::{MemoryStore, Store};
use crate::rendezvous::{Parts, RendezvousState};
use crate::synapse::{SynapseHooks, SynapseLink, SynapseState};

/// How often expired sessions are purged (waking long-polls on them) and idle rate-limit
/// buckets dropped.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// Shared state of the whole application (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    config: Arc<Config>,
    rendezvous: RendezvousState,
    oauth: Option<OAuthState>,
    synapse: Option<Arc<SynapseLink>>,
    core: Arc<Core>,
}

/// What the application itself uses: maintenance, metrics, attribution, shutdown.
pub(super) struct Core {
    pub(super) client_ip_header: Option<HeaderName>,
    pub(super) metrics: Metrics,
    /// Flips to `true` when the server starts shutting down, ending long-polls early.
    pub(super) shutdown: tokio::sync::watch::Sender<bool>,
}

impl FromRef<AppState> for RendezvousState {
    fn from_ref(state: &AppState) -> Self {
        state.rendezvous.clone()
    }
}

impl AppState {
    /// What `mxqr serve` runs: the rendezvous with the configured store and, when
    /// `[oauth] enabled`, accounts and the OAuth server over the configured database (in
    /// synapse mode telling Synapse about sessions). With `create_policy = "authenticated"`
    /// rendezvous creation then checks tokens against it. `configured_name` is
    /// [`Config::configured_server_name`] from before `mxqr serve` filled `public_url` in
    /// from the bound address.
    pub async fn open(config: Config, configured_name: Option<String>) -> DbResult<Self> {
        let open_failure =
            |path: &str, e: Box<dyn std::error::Error + Send + Sync>| DbError::Open {
                path: path.into(),
                source: OpenFailure::Other(e),
            };
        let store = crate::rendezvous::store::open_configured(&config)
            .await
            .map_err(|e| {
                open_failure(
                    "rendezvous store (rendezvous.postgres_url, else database.url)",
                    e.into(),
                )
            })?;
        if !config.oauth.enabled {
            return Ok(Self::with_store(config, store));
        }
        let (settled, db) = OAuthState::open_db(&config, configured_name, true).await?;
        let (hooks, link): (Arc<dyn HomeserverHooks>, _) =
            if config.homeserver.mode == HomeserverMode::Synapse {
                let secret = config
                    .homeserver
                    .load_secret()
                    .map_err(|e| open_failure("homeserver shared secret", e.into()))?;
                let url = config.homeserver.synapse_url.as_deref().unwrap_or_default();
                let link = Arc::new(SynapseLink::new(url, secret));
                (
                    Arc::new(SynapseHooks::new(link.clone(), db.clone())),
                    Some(link),
                )
            } else {
                (Arc::new(Standalone), None)
            };
        let oauth = OAuthState::new(&settled, db, hooks, Arc::new(SystemClock));
        let authorizer = match config.rendezvous.create_policy {
            CreatePolicy::Authenticated => oauth.create_authorizer(),
            CreatePolicy::Open => create_policy::for_policy(CreatePolicy::Open),
        };
        let mut state = Self::with_parts(config, store, authorizer).with_oauth(oauth);
        state.synapse = link;
        Ok(state)
    }

    /// State for `config` with the in-memory store and the configured session limits.
    pub fn new(config: Config) -> Self {
        let store = MemoryStore::new(config.session_limits());
        Self::with_store(config, Arc::new(Store::Memory(store)))
    }

    /// State over any store back end (a memory store with explicit session limits bypasses
    /// the TTL floor of user configuration: tests use sub-second lives), with the
    /// configured creation policy.
    pub fn with_store(config: Config, store: Arc<Store>) -> Self {
        let authorizer = create_policy::for_policy(config.rendezvous.create_policy);
        Self::with_parts(config, store, authorizer)
    }

    /// State over any store back end and creation policy (a token validator plugs in here).
    pub fn with_parts(
        config: Config,
        store: Arc<Store>,
        authorizer: Box<dyn CreateAuthorizer>,
    ) -> Self {
        let rl = &config.rate_limit;
        let limiter = |per_second, burst| {
            rl.enabled
                .then(|| Arc::new(RateLimiter::new(per_second, burst)))
        };
        let client_ip_header = rl
            .client_ip_header
            .as_deref()
            .and_then(|h| HeaderName::try_from(h).ok());
        let r = &config.rendezvous;
        let shutdown = tokio::sync::watch::Sender::new(false);
        let rendezvous = RendezvousState::new(Parts {
            config: config.rendezvous.clone(),
            public_url: config.effective_public_url(),
            store,
            authorizer,
            create_limiter: limiter(rl.create_per_second, rl.create_burst),
            write_limiter: limiter(rl.write_per_second, rl.write_burst),
            long_polls: Arc::new(LongPolls::new(
                r.long_polls_per_address,
                r.long_polls_per_session,
                r.max_long_polls,
            )),
            shutdown: shutdown.subscribe(),
        });
        Self {
            config: Arc::new(config),
            rendezvous,
            oauth: None,
            synapse: None,
            core: Arc::new(Core {
                client_ip_header,
                metrics: Metrics::default(),
                shutdown,
            }),
        }
    }

    /// With accounts and the OAuth server (see [`AppState::open`]).
    pub fn with_oauth(mut self, oauth: OAuthState) -> Self {
        self.oauth = Some(oauth);
        self
    }

    /// Synapse mode: with the link to the Synapse this server authenticates for, whose
    /// outbox [`super::serve`] drains.
    pub fn with_synapse(mut self, link: Arc<SynapseLink>) -> Self {
        self.synapse = Some(link);
        self
    }

    /// Effective configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Accounts and the OAuth server, when attached.
    pub fn oauth(&self) -> Option<&OAuthState> {
        self.oauth.as_ref()
    }

    pub(super) fn rendezvous(&self) -> &RendezvousState {
        &self.rendezvous
    }

    pub(super) fn core(&self) -> &Core {
        &self.core
    }

    /// The client-server API's part.
    pub(super) fn matrix(&self) -> MatrixState {
        MatrixState {
            oauth: self.oauth.clone(),
            write_limiter: self.rendezvous.write_limiter.clone(),
            public_url: self.rendezvous.public_url.clone(),
        }
    }

    /// The synapse-mode routes' part, when both sides are there.
    pub(super) fn synapse_state(&self) -> Option<SynapseState> {
        Some(SynapseState {
            oauth: self.oauth.clone()?,
            link: self.synapse.clone()?,
        })
    }

    /// Periodic maintenance: purge expired sessions, drop idle rate-limit buckets.
    pub(super) async fn maintain(self) {
        let mut interval = tokio::time::interval(PURGE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Some(oauth) = &self.oauth {
                oauth.purge_expired().await;
            }
            match self.rendezvous.store.purge_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(purged = n, "expired rendezvous sessions purged"),
                Err(err) => tracing::warn!(%err, "purging expired sessions failed"),
            }
            self.rendezvous.prune_limiters();
        }
    }
}

/// [`AppState::open`] for a configuration whose server name is what the operator chose.
pub async fn app_state(config: Config) -> DbResult<AppState> {
    let configured = config.configured_server_name();
    AppState::open(config, configured).await
}

//! Application state, router assembly and the serving loop.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{self, CreateAuthorizer};
use crate::config::Config;
use crate::error::ApiError;
use crate::listener::{ConnectionLimits, serve_connections};
use crate::matrix;
use crate::metrics::Metrics;
use crate::ratelimit::{RateLimiter, client_key};
use crate::rendezvous;
use crate::rendezvous::longpoll::{LongPollSlot, LongPolls};
use crate::response::json;
use crate::store::{MemoryStore, RendezvousStore, SessionId, SessionLimits};

/// How often expired sessions are purged (waking long-polls on them) and idle rate-limit
/// buckets dropped.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// The client address a request is attributed to, for rate limiting.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

struct Shared {
    config: Config,
    public_url: String,
    store: Arc<dyn RendezvousStore>,
    authorizer: Box<dyn CreateAuthorizer>,
    create_limiter: Option<RateLimiter>,
    write_limiter: Option<RateLimiter>,
    client_ip_header: Option<HeaderName>,
    metrics: Metrics,
    /// Flips to `true` when the server starts shutting down, ending long-polls early.
    shutdown: tokio::sync::watch::Sender<bool>,
    oauth: std::sync::OnceLock<crate::oauth::OAuthState>,
    long_polls: Arc<LongPolls>,
}

/// Shared state handed to every handler (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// State for `config` with the in-memory store and the configured session limits.
    pub fn new(config: Config) -> Self {
        let limits = config.session_limits();
        Self::with_store(config, Arc::new(MemoryStore::new(limits)))
    }

    /// State with explicit session limits, bypassing the 120–300 s TTL floor of user
    /// configuration (tests use sub-second lives).
    pub fn with_limits(config: Config, limits: SessionLimits) -> Self {
        Self::with_store(config, Arc::new(MemoryStore::new(limits)))
    }

    /// State over any store back end, with the configured creation policy.
    pub fn with_store(config: Config, store: Arc<dyn RendezvousStore>) -> Self {
        let authorizer = auth::for_policy(config.rendezvous.create_policy);
        Self::with_parts(config, store, authorizer)
    }

    /// State over any store back end and creation policy (a token validator plugs in here).
    pub fn with_parts(
        config: Config,
        store: Arc<dyn RendezvousStore>,
        authorizer: Box<dyn CreateAuthorizer>,
    ) -> Self {
        let rl = &config.rate_limit;
        let (create_limiter, write_limiter) = if rl.enabled {
            (
                Some(RateLimiter::new(rl.create_per_second, rl.create_burst)),
                Some(RateLimiter::new(rl.write_per_second, rl.write_burst)),
            )
        } else {
            (None, None)
        };
        let client_ip_header = rl
            .client_ip_header
            .as_deref()
            .and_then(|h| HeaderName::try_from(h).ok());
        let r = &config.rendezvous;
        let long_polls = Arc::new(LongPolls::new(
            r.long_polls_per_address,
            r.long_polls_per_session,
            r.max_long_polls,
        ));
        Self(Arc::new(Shared {
            long_polls,
            public_url: config.effective_public_url(),
            authorizer,
            store,
            create_limiter,
            write_limiter,
            client_ip_header,
            metrics: Metrics::default(),
            shutdown: tokio::sync::watch::Sender::new(false),
            oauth: std::sync::OnceLock::new(),
            config,
        }))
    }

    /// Effective configuration.
    pub fn config(&self) -> &Config {
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
        let mut stopping = self.0.shutdown.subscribe();
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

    /// Attaches accounts and the OAuth server (see [`crate::oauth::app_state`]).
    pub fn with_oauth(self, oauth: crate::oauth::OAuthState) -> Self {
        let _ = self.0.oauth.set(oauth);
        self
    }

    /// Accounts and the OAuth server, when attached.
    pub fn oauth(&self) -> Option<&crate::oauth::OAuthState> {
        self.0.oauth.get()
    }

    /// Charges one session creation to `client`.
    pub fn check_create_rate(&self, client: ClientIp) -> Result<(), ApiError> {
        Self::charge(self.0.create_limiter.as_ref(), client)
    }

    /// Charges one write to `client`.
    pub fn check_write_rate(&self, client: ClientIp) -> Result<(), ApiError> {
        Self::charge(self.0.write_limiter.as_ref(), client)
    }

    fn charge(limiter: Option<&RateLimiter>, client: ClientIp) -> Result<(), ApiError> {
        match limiter {
            Some(limiter) => limiter
                .check(client_key(client.0))
                .map_err(|retry_after| ApiError::LimitExceeded { retry_after }),
            None => Ok(()),
        }
    }

    fn client_ip(&self, request: &Request) -> ClientIp {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let forwarded = self.0.client_ip_header.as_ref().and_then(|name| {
            let value = request
                .headers()
                .get_all(name)
                .iter()
                .next_back()?
                .to_str()
                .ok()?;
            value.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
        });
        ClientIp(forwarded.or(peer).unwrap_or(IpAddr::from([0u8, 0, 0, 0])))
    }

    /// Periodic maintenance: purge expired sessions, drop idle rate-limit buckets.
    async fn maintain(self) {
        let mut interval = tokio::time::interval(PURGE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Some(oauth) = self.0.oauth.get() {
                oauth.purge_expired().await;
            }
            match self.0.store.purge_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(purged = n, "expired rendezvous sessions purged"),
                Err(err) => tracing::warn!(%err, "purging expired sessions failed"),
            }
            for limiter in [&self.0.create_limiter, &self.0.write_limiter]
                .into_iter()
                .flatten()
            {
                limiter.prune();
            }
        }
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let config = state.config();
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/_matrix/client/versions", get(matrix::versions));
    if config.http.public_metrics {
        app = app.route("/metrics", get(metrics));
    }
    if config.rendezvous.msc4388_enabled {
        app = app.merge(rendezvous::msc4388::routes());
    }
    if config.rendezvous.msc4108_enabled {
        app = app.merge(rendezvous::msc4108::routes(
            &config.rendezvous.msc4108_sessions_path,
        ));
    }
    if let Some(oauth) = state.oauth() {
        app = app.merge(crate::oauth::routes(oauth.clone()));
    }
    if config.homeserver.mode == crate::config::HomeserverMode::Synapse {
        // Synapse serves the client-server API (discovery included); mxqr answers its
        // introspection and the metadata Synapse relays.
        if let Some(oauth) = state.oauth() {
            app = app.merge(crate::synapse::routes(oauth.clone()));
        }
    } else {
        app = app.merge(matrix::routes(&state));
    }
    let body_limit = config.rendezvous.max_body_bytes;
    // MSC4108 session URLs may live outside `/_matrix/` (a configured path).
    let msc4108_sessions: Arc<str> = format!(
        "/{}/",
        config.rendezvous.msc4108_sessions_path.trim_matches('/')
    )
    .into();
    let routes = app
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit));
    // Two stacks over the same routes, so CORS costs nothing per request to build: the API
    // one with CORS, the pages' one without (a page must not be readable cross-origin).
    let pages = routes
        .clone()
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state.clone());
    let api = routes
        .layer(cors())
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state);
    Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let path = request.uri().path();
        let stack = if is_api_path(path) || path.starts_with(&*msc4108_sessions) {
            api.clone()
        } else {
            pages.clone()
        };
        tower::ServiceExt::oneshot(stack, request)
    }))
}

/// The metrics listener's application: `/metrics` only (`http.metrics_listen`).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(unknown_endpoint)
        .with_state(state)
}

/// Whether browser clients of other origins may call `path`: the Matrix and OAuth APIs, but
/// not the HTML pages (sign-in, consent, account), which only this origin's forms use.
fn is_api_path(path: &str) -> bool {
    (path.starts_with("/_matrix/")
        || path.starts_with("/.well-known/matrix/")
        || path.starts_with("/oauth2/"))
        && !crate::web::is_page(path)
}

/// CORS for browser clients: any origin (the rendezvous carries only end-to-end encrypted
/// payloads, and requests are credential-free or bearer-token based).
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            HeaderName::from_static("prefer"),
            HeaderName::from_static("x-requested-with"),
        ])
        .expose_headers([header::ETAG, header::RETRY_AFTER])
        .max_age(Duration::from_secs(86_400))
}

/// Outermost layer: attributes the client address, stamps `Cache-Control`, records metrics
/// and logs the route template (never the concrete path, whose session ID is a secret).
async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().clone();
    let client = state.client_ip(&request);
    request.extensions_mut().insert(client);
    let mut response = next.run(request).await;
    // Proxies must neither cache nor rewrite (compression weakens ETags): docs/protocol.md §7.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-transform"),
    );
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .0
        .metrics
        .record(&route, method.as_str(), status, elapsed);
    tracing::debug!(%method, route, status, elapsed_ms = elapsed.as_millis() as u64, "request");
    response
}

async fn health() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.0.metrics.render(&state.0.store.stats());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

async fn unknown_endpoint() -> ApiError {
    ApiError::UnknownEndpoint
}

/// 405 in the error format of the path: an HTML page on the pages, Matrix JSON elsewhere.
async fn method_not_allowed(uri: axum::http::Uri) -> Response {
    if crate::web::is_page(uri.path()) {
        crate::web::PageError::MethodNotAllowed.into_response()
    } else {
        ApiError::MethodNotAllowed.into_response()
    }
}

/// Serves `state` on `listener` until `shutdown` completes, with background maintenance,
/// connection caps and timeouts (`[http]`), and the metrics listener when configured.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = state.config();
    let limits = ConnectionLimits::for_process(config);
    // Long-polls must leave connections for everything else.
    state.0.long_polls.lower_total((limits.total / 2).max(1));
    let header_timeout = Duration::from_secs(config.http.header_read_timeout_secs);
    tracing::info!(
        max_connections = limits.total,
        per_address = limits.per_address,
        header_read_timeout_secs = config.http.header_read_timeout_secs,
        "accepting connections"
    );
    let metrics_server = match config.http.metrics_listen {
        Some(addr) => {
            let metrics_listener = TcpListener::bind(addr).await?;
            tracing::info!(addr = %metrics_listener.local_addr()?, "metrics listening");
            let app = metrics_router(state.clone());
            let stop = state.0.shutdown.subscribe();
            let metrics_limits = ConnectionLimits {
                total: 16,
                per_address: 16,
            };
            Some(tokio::spawn(serve_connections(
                app,
                metrics_listener,
                metrics_limits,
                header_timeout,
                async move {
                    let mut stop = stop;
                    let _ = stop.wait_for(|stop| *stop).await;
                },
                || {},
            )))
        }
        None => None,
    };
    let maintenance = tokio::spawn(state.clone().maintain());
    let outbox = state.oauth().and_then(|oauth| {
        let link = oauth.synapse()?.clone();
        Some(tokio::spawn(link.drain(oauth.clone())))
    });
    let stopping = state.0.shutdown.clone();
    let app = router(state);
    serve_connections(app, listener, limits, header_timeout, shutdown, move || {
        // Ends long-polls early, so a graceful stop is not held up for a poll's length.
        stopping.send_replace(true);
    })
    .await;
    maintenance.abort();
    if let Some(outbox) = outbox {
        outbox.abort();
    }
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    Ok(())
}

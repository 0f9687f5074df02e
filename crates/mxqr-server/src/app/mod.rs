//! The application around the features: state assembly ([`state`]), the router with its
//! middleware (client attribution, `Cache-Control`, metrics, CORS for the APIs only), the
//! serving loop ([`listener`]) and the metrics it exposes ([`metrics`]).

pub mod listener;
pub mod metrics;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::client_ip::ClientIp;
use crate::config::HomeserverMode;
use crate::error::ApiError;
use crate::response::json;
use crate::{account_pages, auth_code, device_grant, matrix, oauth, rendezvous, synapse, web};
use listener::{ConnectionLimits, serve_connections};
pub use state::{AppState, app_state};

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
        let pages = web::routes()
            .merge(device_grant::routes())
            .merge(auth_code::routes())
            .merge(account_pages::routes());
        app = app
            .merge(oauth::routes::router(oauth.clone()))
            .merge(pages.with_state(oauth.clone()));
    }
    if config.homeserver.mode == HomeserverMode::Synapse {
        // Synapse serves the client-server API (discovery included); mxqr answers its
        // introspection and the metadata Synapse relays.
        if let Some(synapse) = state.synapse_state() {
            app = app.merge(synapse::routes(synapse));
        }
    } else {
        app = app.merge(matrix::routes::router(state.matrix()));
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
        && !web::is_page(path)
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
    let client = ClientIp::of(&request, state.core().client_ip_header.as_ref());
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
        .core()
        .metrics
        .record(&route, method.as_str(), status, elapsed);
    tracing::debug!(%method, route, status, elapsed_ms = elapsed.as_millis() as u64, "request");
    response
}

async fn health() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state
        .core()
        .metrics
        .render(&state.rendezvous().store.stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn unknown_endpoint() -> ApiError {
    ApiError::UnknownEndpoint
}

/// 405 in the error format of the path: an HTML page on the pages, Matrix JSON elsewhere.
async fn method_not_allowed(uri: axum::http::Uri) -> Response {
    if web::is_page(uri.path()) {
        web::PageError::MethodNotAllowed.into_response()
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
    state
        .rendezvous()
        .long_polls
        .lower_total((limits.total / 2).max(1));
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
            let mut stop = state.core().shutdown.subscribe();
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
                    let _ = stop.wait_for(|stop| *stop).await;
                },
                || {},
            )))
        }
        None => None,
    };
    let maintenance = tokio::spawn(state.clone().maintain());
    let outbox = state
        .synapse_state()
        .map(|s| tokio::spawn(s.link.drain(s.oauth)));
    let stopping = state.core().shutdown.clone();
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

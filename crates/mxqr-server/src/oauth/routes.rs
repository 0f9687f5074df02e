//! The OAuth API's routes, kept apart from the state so that the endpoint modules depend on
//! the state and this module on them, never the other way round.

use axum::Router;
use axum::routing::{get, post};

use super::{OAuthState, endpoints, metadata, registration};

/// Routes of the OAuth API (metadata, registration, token, revocation), ready to merge into
/// the application router; the device authorization endpoint is the device grant's.
pub fn router<S: Clone + Send + Sync + 'static>(state: OAuthState) -> Router<S> {
    let metadata = get(metadata::metadata);
    Router::new()
        .route("/_matrix/client/v1/auth_metadata", metadata.clone())
        .route(
            "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata",
            metadata.clone(),
        )
        .route("/.well-known/oauth-authorization-server", metadata)
        .route("/oauth2/registration", post(registration::register))
        .route("/oauth2/token", post(super::token::token))
        .route("/oauth2/revoke", post(endpoints::revoke))
        .with_state(state)
}

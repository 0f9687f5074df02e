//! `POST /oauth2/introspect` (RFC 7662), the one question Synapse asks mxqr, and the
//! metadata where Synapse looks for it.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::json;

use super::SynapseLink;
use crate::client_ip::ClientIp;
use crate::error::{UNAVAILABLE_RETRY_AFTER_SECS, with_retry_after};
use crate::oauth::{OAuthState, tokens};
use crate::response::{bearer_token, json as json_response};

/// What the synapse-mode routes need: the OAuth server and the link to Synapse.
#[derive(Clone)]
pub struct SynapseState {
    /// Tokens and accounts.
    pub oauth: OAuthState,
    /// The shared secret and what Synapse already knows.
    pub link: Arc<SynapseLink>,
}

/// Routes served only in synapse mode: introspection, and the metadata where Synapse looks
/// for it (`<endpoint>/.well-known/openid-configuration`).
pub fn routes<S: Clone + Send + Sync + 'static>(state: SynapseState) -> Router<S> {
    let metadata = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(crate::oauth::metadata::metadata),
        )
        .with_state(state.oauth.clone());
    Router::new()
        .route("/oauth2/introspect", post(introspect))
        .with_state(state)
        .merge(metadata)
}

fn introspection_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    );
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// `POST /oauth2/introspect` (RFC 7662), for Synapse only: authenticated with the shared
/// secret as a bearer token. Unknown, revoked and expired tokens, and tokens of locked users,
/// are all `{"active": false}`.
pub(crate) async fn introspect(
    State(SynapseState { oauth: state, link }): State<SynapseState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let presented = bearer_token(&headers);
    // The right secret always passes, even from a throttled address: Synapse often shares its
    // address with others (one reverse proxy, one NAT), and ten wrong guesses from there must
    // not cut the homeserver off. Guessing itself is hopeless against the 32 bytes required;
    // the throttle keeps a guesser from spending our CPU and filling the log.
    if !presented.is_some_and(|p| link.secret_matches(p)) {
        if let Some(wait) = link.secret_failures.blocked(ip) {
            let response = introspection_error(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_client",
                "too many wrong shared secrets from this address",
            );
            return with_retry_after(response, Some(wait.as_secs().max(1)));
        }
        link.secret_failures.fail(ip);
        return introspection_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "the shared secret is missing or wrong",
        );
    }
    let Ok(body) = body else {
        return introspection_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "request body could not be read",
        );
    };
    let Some(token) = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
    else {
        return introspection_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is missing",
        );
    };
    // Only access tokens authenticate against Synapse; refresh tokens are never active here.
    let info = match state.token_info(&token).await {
        Ok(Some(info)) => info,
        Ok(None) => return json_response(StatusCode::OK, &json!({ "active": false })),
        Err(err) => {
            tracing::error!(%err, "token lookup for introspection failed");
            let response = introspection_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the store is unavailable",
            );
            return with_retry_after(response, Some(UNAVAILABLE_RETRY_AFTER_SECS));
        }
    };
    // Synapse asks only about tokens a client presented: that is their use.
    state.record_token_use(&tokens::hash(&token), &info).await;
    if !link.is_provisioned(&info.localpart, &info.device_id)
        && let Err(err) = state
            .hooks()
            .session_started(&info.localpart, &info.device_id, None, state.now_ms())
            .await
    {
        tracing::error!(%err, "queueing the provisioning of an introspected device failed");
    }
    let now = state.now_ms();
    json_response(
        StatusCode::OK,
        &json!({
            "active": true,
            "token_type": "access_token",
            "scope": info.scope,
            "username": info.localpart,
            "sub": state.user_id(&info.localpart),
            "device_id": info.device_id,
            "expires_in": ((info.expires_at - now).max(0) + 999) / 1000,
            "exp": (info.expires_at + 999) / 1000,
        }),
    )
}

//! Matrix client-server endpoints that are not the rendezvous itself: `/versions`, the
//! `.well-known` discovery document, and (with accounts attached) what a QR sign-in touches:
//! `whoami`, logout, devices, end-to-end-encryption keys, key-backup versions and account
//! data, all behind [`bearer::Authed`].

mod account;
pub(crate) mod backup;
pub mod bearer;
mod devices;
pub(crate) mod keys;
pub mod routes;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use std::sync::Arc;

use crate::accounts::DbError;
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::oauth::OAuthState;
use crate::ratelimit::RateLimiter;
use crate::rendezvous::{RendezvousState, charge};
use crate::response::{has_nul, json};

/// Spec versions advertised: v1.1 (key and `whoami` paths clients need) through v1.18.
const VERSIONS: [&str; 18] = [
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11",
    "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18",
];

/// `GET /_matrix/client/versions`: clients look here for the rendezvous APIs before using them.
pub async fn versions(State(state): State<RendezvousState>) -> Json<Value> {
    let rendezvous = &state.config;
    // Our extension: GET …/rendezvous/{id}?since=…&timeout_ms=… waits for a change.
    // `long_poll_max_ms = 0` turns it off (requests then answer at once).
    let long_poll = (rendezvous.msc4388_enabled || rendezvous.msc4108_enabled)
        && rendezvous.long_poll_max_ms > 0;
    Json(json!({
        "versions": VERSIONS,
        "unstable_features": {
            "org.matrix.msc4108": rendezvous.msc4108_enabled,
            "io.element.msc4388": rendezvous.msc4388_enabled,
            "io.mxqr.rendezvous_long_poll": long_poll,
        },
    }))
}

/// What the client-server handlers get of the application state.
#[derive(Clone)]
pub struct MatrixState {
    /// Accounts and tokens; `None` without accounts (only discovery is served then).
    pub oauth: Option<OAuthState>,
    /// The rendezvous write budget, which state-changing requests here are charged to too.
    pub write_limiter: Option<Arc<RateLimiter>>,
    /// Base URL clients see, ending in `/`.
    pub public_url: String,
}

/// Charges every state-changing request to the client's write budget (the rendezvous
/// `[rate_limit] write_*` bucket): it bounds, among others, draining other devices'
/// one-time keys through `/keys/claim`. Reads are free.
pub(crate) async fn charge_writes(
    State(state): State<MatrixState>,
    request: Request,
    next: Next,
) -> Response {
    if !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        let client = request.extensions().get::<ClientIp>().copied();
        if let Some(client) = client
            && let Err(err) = charge(state.write_limiter.as_deref(), client)
        {
            return err.into_response();
        }
    }
    next.run(request).await
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        tracing::error!(%err, "database failure in the client-server API");
        ApiError::Database
    }
}

/// Parses a request body: `M_NOT_JSON` when it is not JSON, `M_BAD_JSON` when it is JSON of
/// the wrong shape (the spec's distinction). NUL characters are refused here, at the input
/// boundary: PostgreSQL cannot store them in text or JSONB, and both back ends must agree.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(ApiError::BadJson("the body must be a JSON object".into()));
    }
    if has_nul(&value) {
        return Err(ApiError::BadJson("NUL characters are not allowed".into()));
    }
    serde_json::from_value(value).map_err(|e| ApiError::BadJson(e.to_string()))
}

/// A 200 answer carrying `body`.
pub(crate) fn ok(body: Value) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &body))
}

/// Parses JSON the server stored itself (`what` names it in the log). Everything stored was
/// serialised from a parsed value, so a failure means the database was changed behind our back.
pub(crate) fn stored_json(text: &str, what: &str) -> Result<Value, ApiError> {
    serde_json::from_str(text).map_err(|err| {
        tracing::error!(%err, "stored {what} is not JSON");
        ApiError::Database
    })
}

/// A Matrix user ID split into localpart and server name.
pub(crate) struct UserId<'a> {
    /// Before the first `:`, without the sigil.
    pub localpart: &'a str,
    /// After the first `:`.
    pub server_name: &'a str,
}

/// Splits `@localpart:server`; `None` when it is not shaped like a user ID.
pub(crate) fn parse_user_id(user_id: &str) -> Option<UserId<'_>> {
    let (localpart, server_name) = user_id.strip_prefix('@')?.split_once(':')?;
    (!localpart.is_empty() && !server_name.is_empty()).then_some(UserId {
        localpart,
        server_name,
    })
}

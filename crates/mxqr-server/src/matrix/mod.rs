//! Matrix client-server endpoints that are not the rendezvous itself: `/versions`, the
//! `.well-known` discovery document, and (with accounts attached) what a QR sign-in touches:
//! `whoami`, logout, devices, end-to-end-encryption keys, key-backup versions and account
//! data, all behind [`auth::Authed`].

mod account;
pub mod auth;
pub(crate) mod backup;
mod devices;
pub(crate) mod keys;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::app::{AppState, ClientIp};
use crate::db::DbError;
use crate::error::ApiError;

/// Spec versions advertised: v1.1 (key and `whoami` paths clients need) through v1.18.
const VERSIONS: [&str; 18] = [
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11",
    "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18",
];

/// `GET /_matrix/client/versions`: clients look here for the rendezvous APIs before using them.
pub async fn versions(State(state): State<AppState>) -> Json<Value> {
    let rendezvous = &state.config().rendezvous;
    let mut unstable = Map::new();
    unstable.insert(
        "org.matrix.msc4108".into(),
        rendezvous.msc4108_enabled.into(),
    );
    unstable.insert(
        "io.element.msc4388".into(),
        rendezvous.msc4388_enabled.into(),
    );
    // Our extension: GET …/rendezvous/{id}?since=…&timeout_ms=… waits for a change.
    // `long_poll_max_ms = 0` turns it off (requests then answer at once).
    unstable.insert(
        "io.mxqr.rendezvous_long_poll".into(),
        ((rendezvous.msc4388_enabled || rendezvous.msc4108_enabled)
            && rendezvous.long_poll_max_ms > 0)
            .into(),
    );
    Json(json!({ "versions": VERSIONS, "unstable_features": unstable }))
}

/// Routes of this module. Everything but discovery needs accounts (the OAuth store), so it
/// is mounted only when they are attached; otherwise those paths stay `M_UNRECOGNIZED`.
pub fn routes(state: &AppState) -> Router<AppState> {
    let router = Router::new().route("/.well-known/matrix/client", get(account::well_known));
    if state.oauth().is_none() {
        return router;
    }
    const V3: &str = "/_matrix/client/v3";
    router
        .route(&format!("{V3}/account/whoami"), get(account::whoami))
        .route(&format!("{V3}/logout"), post(account::logout))
        .route(&format!("{V3}/logout/all"), post(account::logout_all))
        .route(
            &format!("{V3}/user/{{user_id}}/account_data/{{data_type}}"),
            get(account::get_account_data).put(account::put_account_data),
        )
        .route(&format!("{V3}/devices"), get(devices::list))
        .route(
            &format!("{V3}/devices/{{device_id}}"),
            get(devices::get_one)
                .put(devices::update)
                .delete(devices::delete),
        )
        .route(&format!("{V3}/keys/upload"), post(keys::upload))
        .route(&format!("{V3}/keys/query"), post(keys::query))
        .route(&format!("{V3}/keys/claim"), post(keys::claim))
        .route(
            &format!("{V3}/keys/device_signing/upload"),
            post(keys::device_signing_upload),
        )
        .route(
            &format!("{V3}/keys/signatures/upload"),
            post(keys::signatures_upload),
        )
        .route(
            &format!("{V3}/room_keys/version"),
            get(backup::latest).post(backup::create),
        )
        .route(
            &format!("{V3}/room_keys/version/{{version}}"),
            get(backup::get_version)
                .put(backup::update)
                .delete(backup::delete_version),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), charge_writes))
}

/// Charges every state-changing request to the client's write budget (the rendezvous
/// `[rate_limit] write_*` bucket): it bounds, among others, draining other devices'
/// one-time keys through `/keys/claim`. Reads are free.
async fn charge_writes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        let client = request.extensions().get::<ClientIp>().copied();
        if let Some(client) = client
            && let Err(err) = state.check_write_rate(client)
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

/// Whether any string or key in `value` contains U+0000 (nesting is bounded by serde_json's
/// recursion limit).
pub(crate) fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
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

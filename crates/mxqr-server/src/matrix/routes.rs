//! The client-server routes, kept apart so that the endpoint modules depend on the shared
//! state and helpers in `mod.rs` and only this module depends on them.

use axum::Router;
use axum::middleware;
use axum::routing::{get, post};

use super::{MatrixState, account, backup, charge_writes, devices, keys};

/// Routes of the client-server API. Everything but discovery needs accounts (the OAuth store), so it
/// is mounted only when they are attached; otherwise those paths stay `M_UNRECOGNIZED`.
pub fn router<S: Clone + Send + Sync + 'static>(state: MatrixState) -> Router<S> {
    let router = Router::new().route("/.well-known/matrix/client", get(account::well_known));
    if state.oauth.is_none() {
        return router.with_state(state);
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
        .with_state(state)
}

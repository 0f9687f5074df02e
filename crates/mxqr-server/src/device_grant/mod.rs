//! The device authorization grant (RFC 8628) in one place: the new device asks for a code
//! (`endpoint.rs`), a person signed in on another device enters it on `/link` and approves
//! (`pages.rs`); the token endpoint then redeems the grant, holding a pending poll open until
//! the decision wakes it ([`crate::oauth::OAuthState::device_grant_decided`]).

mod endpoint;
mod pages;

use axum::Router;
use axum::routing::{get, post};

use crate::oauth::OAuthState;

/// `POST /oauth2/device` and the `/link` pages.
pub fn routes() -> Router<OAuthState> {
    Router::new()
        .route("/oauth2/device", post(endpoint::device_authorization))
        .route("/link", get(pages::link_page).post(pages::link_submit))
}

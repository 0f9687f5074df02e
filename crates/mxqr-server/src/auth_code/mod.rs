//! The authorization code grant with PKCE, browser side: `/oauth2/authorize` checks the
//! request, signs the person in if needed and asks for consent; the code it hands back is
//! redeemed at the token endpoint ([`crate::oauth`]).

mod pages;

use axum::Router;
use axum::routing::get;

use crate::oauth::OAuthState;

/// `GET`/`POST /oauth2/authorize`.
pub fn routes() -> Router<OAuthState> {
    Router::new().route(
        "/oauth2/authorize",
        get(pages::authorize_page).post(pages::authorize_submit),
    )
}

//! Bearer authentication of the client-server API with this server's OAuth access tokens.
//!
//! Only the `Authorization: Bearer` header is read: the `access_token` query parameter was
//! deprecated in spec v1.11 and leaks tokens into logs. The answer tells a client what to do:
//! `M_MISSING_TOKEN`, `M_UNKNOWN_TOKEN` with `soft_logout: true` when refreshing will help
//! (expired) and `false` when it will not (revoked, unknown), `M_USER_LOCKED` for a locked
//! account, and `M_FORBIDDEN` when the token's scope does not cover the client API.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::MatrixState;
use crate::accounts::{TokenInfo, TokenStatus};
use crate::error::ApiError;
use crate::oauth::{OAuthState, scope, tokens};
use crate::response::bearer_token;

/// An authenticated request: who is calling, from which device.
pub struct Authed {
    /// Accounts and the OAuth store.
    pub oauth: OAuthState,
    /// The token's user, device and session.
    pub info: TokenInfo,
    /// `@localpart:server_name`.
    pub user_id: String,
    /// SHA-256 (hex) of the presented access token (for `/logout`).
    pub token_hash: String,
}

impl Authed {
    /// The caller's localpart.
    pub fn localpart(&self) -> &str {
        &self.info.localpart
    }

    /// The device the token is bound to.
    pub fn device_id(&self) -> &str {
        &self.info.device_id
    }
}

impl FromRequestParts<MatrixState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &MatrixState,
    ) -> Result<Self, Self::Rejection> {
        // The routes needing this are mounted only with accounts attached; be safe anyway.
        let oauth = state.oauth.clone().ok_or(ApiError::UnknownEndpoint)?;
        let token = bearer_token(&parts.headers).ok_or(ApiError::MissingToken)?;
        // A malformed token cannot be ours: refuse without a database lookup.
        if !tokens::well_formed(tokens::Kind::Access, token) {
            return Err(ApiError::UnknownToken { soft_logout: false });
        }
        let token_hash = tokens::hash(token);
        let info = match oauth.db().token_status(&token_hash, oauth.now_ms()).await? {
            TokenStatus::Live(info) => info,
            TokenStatus::Expired => return Err(ApiError::UnknownToken { soft_logout: true }),
            TokenStatus::Locked => return Err(ApiError::UserLocked),
            TokenStatus::Revoked | TokenStatus::Unknown => {
                return Err(ApiError::UnknownToken { soft_logout: false });
            }
        };
        if !scope::grants_client_api(&info.scope) {
            return Err(ApiError::Forbidden(
                "the access token's scope does not include the client-server API",
            ));
        }
        oauth.record_token_use(&token_hash, &info).await;
        Ok(Self {
            user_id: oauth.user_id(&info.localpart),
            oauth,
            info,
            token_hash,
        })
    }
}

//! The revocation endpoint, and the form and client helpers the OAuth endpoints and pages
//! share (the token endpoint is `token.rs`).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::client::ClientMetadata;
use super::tokens::{self, Kind};
use super::{OAuthError, OAuthState};
use crate::response::json as json_response;

/// `application/x-www-form-urlencoded` parameters; a repeated parameter is an error
/// (RFC 6749 §3.1), and so is a NUL character.
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, String> {
        let mut map = HashMap::new();
        for (key, value) in url::form_urlencoded::parse(body) {
            // PostgreSQL text cannot hold NUL: refused here, at the one form and query
            // parser, so that every back end answers alike.
            if key.contains('\0') || value.contains('\0') {
                return Err(format!("parameter {key:?} contains a NUL character"));
            }
            if map.insert(key.to_string(), value.into_owned()).is_some() {
                return Err(format!("parameter {key} is repeated"));
            }
        }
        Ok(Self(map))
    }

    /// A parameter, with empty values treated as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub(crate) fn require(&self, key: &str) -> Result<&str, OAuthError> {
        self.get(key)
            .ok_or_else(|| OAuthError::InvalidRequest(format!("{key} is required")))
    }
}

/// The parameters of a form body.
pub(crate) fn form(body: Result<Bytes, BytesRejection>) -> Result<Params, OAuthError> {
    let body =
        body.map_err(|_| OAuthError::InvalidRequest("request body could not be read".into()))?;
    Params::parse(&body).map_err(OAuthError::InvalidRequest)
}

/// The registered client, if any.
pub(crate) async fn load_client(
    state: &OAuthState,
    client_id: &str,
) -> Result<Option<ClientMetadata>, crate::accounts::DbError> {
    Ok(state
        .db()
        .client(client_id)
        .await?
        .and_then(|text| ClientMetadata::from_stored(&text)))
}

/// The registered client, or `invalid_client`.
pub(crate) async fn require_client(
    state: &OAuthState,
    client_id: &str,
) -> Result<ClientMetadata, OAuthError> {
    load_client(state, client_id)
        .await?
        .ok_or_else(|| OAuthError::InvalidClient("unknown client_id".into()))
}

/// `POST /oauth2/revoke` (RFC 7009): either token ends the whole session; unknown tokens
/// are answered 200 like known ones.
pub async fn revoke(
    State(state): State<OAuthState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    let params = form(body)?;
    let token = params.require("token")?;
    match params.get("token_type_hint") {
        None | Some("access_token" | "refresh_token") => {}
        Some(other) => {
            return Err(OAuthError::UnsupportedTokenType(format!(
                "token_type_hint {other:?} is not supported"
            )));
        }
    }
    if tokens::well_formed(Kind::Access, token) || tokens::well_formed(Kind::Refresh, token) {
        let hash = tokens::hash(token);
        state.db().revoke_token(&hash, state.now_ms()).await?;
        state.synapse_token_ended(&hash).await?;
    }
    Ok(json_response(StatusCode::OK, &json!({})))
}

//! The token and revocation endpoints, and the form and client helpers the OAuth endpoints
//! and pages share.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::client::{ClientMetadata, DEVICE_CODE_GRANT};
use super::tokens::{self, Kind};
use super::{Minted, OAuthError, OAuthState, ms};
use crate::client_ip::ClientIp;
use crate::db::{CodeOutcome, Grant, PollOutcome, RedeemCode, RefreshOutcome};
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
) -> Result<Option<ClientMetadata>, crate::db::DbError> {
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

fn token_response(state: &OAuthState, minted: &Minted, grant: &Grant) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": minted.access_token,
            "token_type": "Bearer",
            "expires_in": state.lifetimes().access_token.as_secs(),
            "refresh_token": minted.refresh_token,
            "scope": grant.scope,
        }),
    )
}

/// `POST /oauth2/token`: authorization_code, refresh_token and device_code grants.
pub async fn token(
    State(state): State<OAuthState>,
    ClientIp(ip): ClientIp,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    let params = form(body)?;
    match params.require("grant_type")? {
        "authorization_code" => authorization_code_grant(&state, &params).await,
        "refresh_token" => refresh_grant(&state, &params).await,
        DEVICE_CODE_GRANT => device_code_grant(&state, &params, ip).await,
        other => Err(OAuthError::UnsupportedGrantType(format!(
            "grant_type {other:?} is not supported"
        ))),
    }
}

async fn authorization_code_grant(
    state: &OAuthState,
    params: &Params,
) -> Result<Response, OAuthError> {
    let code = params.require("code")?;
    let client_id = params.require("client_id")?;
    let redirect_uri = params.require("redirect_uri")?;
    let verifier = params.require("code_verifier")?;
    let client = require_client(state, client_id).await?;
    if !client.allows_grant("authorization_code") {
        return Err(OAuthError::UnauthorizedClient(
            "the client did not register the authorization_code grant type".into(),
        ));
    }
    if !tokens::valid_pkce_string(verifier) {
        return Err(OAuthError::InvalidRequest(
            "code_verifier must be 43-128 characters of [A-Za-z0-9-._~]".into(),
        ));
    }
    if !tokens::well_formed(Kind::AuthCode, code) {
        return Err(OAuthError::InvalidGrant(
            "unknown authorization code".into(),
        ));
    }
    let minted = state.mint();
    let request = RedeemCode {
        code_hash: tokens::hash(code),
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        computed_challenge: tokens::s256(verifier),
        tokens: minted.stored.clone(),
    };
    match state
        .db()
        .redeem_auth_code(&request, state.now_ms())
        .await?
    {
        CodeOutcome::Issued(grant) => {
            state.synapse_session_started(&grant).await?;
            Ok(token_response(state, &minted, &grant))
        }
        CodeOutcome::Invalid(reason) => Err(OAuthError::InvalidGrant(reason.into())),
        CodeOutcome::Reused => Err(OAuthError::InvalidGrant(
            "authorization code already used; the tokens it issued are revoked".into(),
        )),
    }
}

async fn refresh_grant(state: &OAuthState, params: &Params) -> Result<Response, OAuthError> {
    let refresh = params.require("refresh_token")?;
    if !tokens::well_formed(Kind::Refresh, refresh) {
        return Err(OAuthError::InvalidGrant("unknown refresh token".into()));
    }
    let minted = state.mint();
    let grace = ms(state.lifetimes().refresh_grace);
    match state
        .db()
        .refresh(
            &tokens::hash(refresh),
            params.get("client_id"),
            &minted.stored,
            state.now_ms(),
            grace,
        )
        .await?
    {
        RefreshOutcome::Rotated(grant) => Ok(token_response(state, &minted, &grant)),
        RefreshOutcome::Invalid => Err(OAuthError::InvalidGrant(
            "unknown or revoked refresh token".into(),
        )),
        RefreshOutcome::Reused(grant) => {
            // RFC 9700 §4.14: a replayed refresh token means the grant leaked. The store has
            // revoked the session; the device goes too, with every other token of it.
            state
                .db()
                .delete_device(&grant.localpart, &grant.device_id, state.now_ms())
                .await?;
            state
                .synapse_device_ended(&grant.localpart, &grant.device_id)
                .await?;
            Err(OAuthError::InvalidGrant(
                "refresh token reused; the session and its device are revoked".into(),
            ))
        }
    }
}

async fn device_code_grant(
    state: &OAuthState,
    params: &Params,
    ip: std::net::IpAddr,
) -> Result<Response, OAuthError> {
    let device_code = params.require("device_code")?;
    let client_id = params.require("client_id")?;
    state
        .check_unknown_code(ip)
        .map_err(OAuthError::RateLimited)?;
    let unknown = |state: &OAuthState| {
        state.unknown_code(ip);
        OAuthError::InvalidGrant("unknown device code".into())
    };
    if !tokens::well_formed(Kind::DeviceCode, device_code) {
        return Err(unknown(state));
    }
    require_client(state, client_id).await?;
    let hash = tokens::hash(device_code);
    let decisions = state.device_decisions();
    let minted = state.mint();
    let mut outcome = state
        .db()
        .poll_device_grant(&hash, client_id, &minted.stored, state.now_ms())
        .await?;
    let hold = state.lifetimes().device_poll_hold;
    if matches!(outcome, PollOutcome::Pending)
        && !hold.is_zero()
        && state
            .wait_for_device_decision(&hash, decisions, hold)
            .await?
    {
        // Decided while held: a decided grant answers before the interval check, so this
        // second look is not a `slow_down`.
        outcome = state
            .db()
            .poll_device_grant(&hash, client_id, &minted.stored, state.now_ms())
            .await?;
    }
    match outcome {
        PollOutcome::Unknown => Err(unknown(state)),
        PollOutcome::Pending => Err(OAuthError::AuthorizationPending),
        PollOutcome::SlowDown => Err(OAuthError::SlowDown),
        PollOutcome::Denied => Err(OAuthError::AccessDenied),
        PollOutcome::Expired => Err(OAuthError::ExpiredToken),
        PollOutcome::AlreadyRedeemed => Err(OAuthError::InvalidGrant(
            "the device code was already exchanged".into(),
        )),
        PollOutcome::Issued(grant) => {
            state.synapse_session_started(&grant).await?;
            Ok(token_response(state, &minted, &grant))
        }
    }
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

//! The token endpoint (`POST /oauth2/token`, RFC 6749 §3.2): the authorization_code,
//! refresh_token and device_code grants.
//!
//! Each grant is one store transaction: load the grant's state, let [`super::model`] decide,
//! mint tokens only when the decision issues them, save what it decided, commit. The grant
//! functions ([`redeem_code`], [`exchange_refresh`], [`poll_device`]) take the minting as a
//! closure, so they are the same for the endpoint and for tests driving a store directly.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::client::DEVICE_CODE_GRANT;
use super::endpoints::{Params, form, require_client};
use super::model::Grant;
use super::model::auth_code::{CodeError, Presented, Redemption};
use super::model::device_grant::{Poll, PollError};
use super::model::refresh::{Exchange, RefreshError};
use super::tokens::{self, Kind};
use super::{Minted, OAuthError, OAuthState, ms};
use crate::accounts::{DbResult, SqlDb};
use crate::client_ip::ClientIp;
use crate::response::json as json_response;

/// Tokens a grant issued: who they are for, and the secrets for the client.
pub struct Issued {
    /// Who the new session belongs to.
    pub grant: Grant,
    /// The pair, already stored.
    pub minted: Minted,
}

/// Redeems the authorization code `code_hash` at `now` for what the request `presented`;
/// `mint` runs only when the code is good.
pub async fn redeem_code(
    db: &SqlDb,
    code_hash: &str,
    presented: &Presented<'_>,
    now: i64,
    mint: impl FnOnce() -> Minted + Send,
) -> DbResult<Result<Issued, CodeError>> {
    db.run(async move {
        let mut tx = db.begin().await?;
        let Some(code) = tx.load_auth_code(code_hash).await? else {
            return Ok(Err(CodeError::Unknown));
        };
        let result = match code.redeem(presented, now) {
            Redemption::Issue(grant) => {
                let minted = mint();
                let session = tx.save_session(&grant, &minted.stored, now).await?;
                tx.save_code_consumed(code_hash, Some(&session), now)
                    .await?;
                Ok(Issued { grant, minted })
            }
            Redemption::Refuse(err) => {
                tx.save_code_consumed(code_hash, None, now).await?;
                Err(err)
            }
            Redemption::Replay { revoke } => {
                if let Some(session) = &revoke {
                    tx.revoke_session(session, now).await?;
                }
                Err(CodeError::Reused)
            }
        };
        tx.commit().await?;
        Ok(result)
    })
    .await
}

/// Exchanges the refresh token `refresh_hash` at `now` (by `client_id` when the request
/// names one) with the retry window `grace_ms`; `mint` runs only when a pair is due.
pub async fn exchange_refresh(
    db: &SqlDb,
    refresh_hash: &str,
    client_id: Option<&str>,
    now: i64,
    grace_ms: i64,
    mint: impl FnOnce() -> Minted + Send,
) -> DbResult<Result<Issued, RefreshError>> {
    db.run(async move {
        let mut tx = db.begin().await?;
        let Some(token) = tx.load_refresh_token(refresh_hash).await? else {
            return Ok(Err(RefreshError::Invalid));
        };
        let result = match token.exchange(client_id, now, grace_ms) {
            Exchange::Invalid => return Ok(Err(RefreshError::Invalid)),
            Exchange::Replay => {
                tx.revoke_session(&token.session_id, now).await?;
                Err(RefreshError::Reused(token.grant))
            }
            exchange @ (Exchange::Rotate | Exchange::Retry { .. }) => {
                if let Exchange::Retry { lost } = &exchange {
                    tx.save_pair_revoked(lost, now).await?;
                }
                let minted = mint();
                tx.save_rotation(&token, refresh_hash, &minted.stored, now)
                    .await?;
                Ok(Issued {
                    grant: token.grant,
                    minted,
                })
            }
        };
        tx.commit().await?;
        Ok(result)
    })
    .await
}

/// One poll of the device grant `device_code_hash` by `client_id` at `now`; `mint` runs only
/// when the grant is approved and not yet redeemed.
pub async fn poll_device(
    db: &SqlDb,
    device_code_hash: &str,
    client_id: &str,
    now: i64,
    mint: impl FnOnce() -> Minted + Send,
) -> DbResult<Result<Issued, PollError>> {
    db.run(async move {
        let mut tx = db.begin().await?;
        let Some(grant) = tx.load_device_grant(device_code_hash).await? else {
            return Ok(Err(PollError::Unknown));
        };
        let result = match grant.poll(client_id, now) {
            Poll::Refuse(err) => return Ok(Err(err)),
            Poll::Wait {
                interval_secs,
                slow_down,
            } => {
                tx.save_device_poll(device_code_hash, interval_secs, now)
                    .await?;
                Err(Poll::wait_error(slow_down))
            }
            Poll::Issue(grant) => {
                let minted = mint();
                let session = tx.save_session(&grant, &minted.stored, now).await?;
                tx.save_device_grant_redeemed(device_code_hash, &session)
                    .await?;
                Ok(Issued { grant, minted })
            }
        };
        tx.commit().await?;
        Ok(result)
    })
    .await
}

fn token_response(state: &OAuthState, issued: &Issued) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": issued.minted.access_token,
            "token_type": "Bearer",
            "expires_in": state.lifetimes().access_token.as_secs(),
            "refresh_token": issued.minted.refresh_token,
            "scope": issued.grant.scope,
        }),
    )
}

/// `POST /oauth2/token`: authorization_code, refresh_token and device_code grants.
pub(crate) async fn token(
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
        return Err(CodeError::Unknown.into());
    }
    let challenge = tokens::s256(verifier);
    let presented = Presented {
        client_id,
        redirect_uri,
        verifier_challenge: &challenge,
    };
    let issued = redeem_code(
        state.db(),
        &tokens::hash(code),
        &presented,
        state.now_ms(),
        || state.mint(),
    )
    .await??;
    state.synapse_session_started(&issued.grant).await?;
    Ok(token_response(state, &issued))
}

async fn refresh_grant(state: &OAuthState, params: &Params) -> Result<Response, OAuthError> {
    let refresh = params.require("refresh_token")?;
    if !tokens::well_formed(Kind::Refresh, refresh) {
        return Err(OAuthError::InvalidGrant("unknown refresh token".into()));
    }
    let grace = ms(state.lifetimes().refresh_grace);
    let exchanged = exchange_refresh(
        state.db(),
        &tokens::hash(refresh),
        params.get("client_id"),
        state.now_ms(),
        grace,
        || state.mint(),
    )
    .await?;
    match exchanged {
        Ok(issued) => Ok(token_response(state, &issued)),
        Err(RefreshError::Reused(grant)) => {
            // RFC 9700 §4.14: a replayed refresh token means the grant leaked. The session is
            // revoked; the device goes too, with every other token of it.
            state
                .db()
                .delete_device(&grant.localpart, &grant.device_id, state.now_ms())
                .await?;
            state
                .synapse_device_ended(&grant.localpart, &grant.device_id)
                .await?;
            Err(RefreshError::Reused(grant).into())
        }
        Err(err) => Err(err.into()),
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
        OAuthError::from(PollError::Unknown)
    };
    if !tokens::well_formed(Kind::DeviceCode, device_code) {
        return Err(unknown(state));
    }
    require_client(state, client_id).await?;
    let hash = tokens::hash(device_code);
    let decisions = state.device_decisions();
    let poll = || {
        poll_device(state.db(), &hash, client_id, state.now_ms(), || {
            state.mint()
        })
    };
    let mut outcome = poll().await?;
    let hold = state.lifetimes().device_poll_hold;
    if matches!(outcome, Err(PollError::Pending))
        && !hold.is_zero()
        && state
            .wait_for_device_decision(&hash, decisions, hold)
            .await?
    {
        // Decided while held: a decided grant answers before the interval check, so this
        // second look is not a `slow_down`.
        outcome = poll().await?;
    }
    match outcome {
        Ok(issued) => {
            state.synapse_session_started(&issued.grant).await?;
            Ok(token_response(state, &issued))
        }
        Err(PollError::Unknown) => Err(unknown(state)),
        Err(err) => Err(err.into()),
    }
}

//! `POST /oauth2/device` (RFC 8628 §3.1): a new device asks for a device code and the user
//! code a person enters on `/link`.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use crate::accounts::{DbError, GrantAdmission, NewDeviceGrant, PendingGrantCaps};
use crate::client_ip::ClientIp;
use crate::oauth::client::DEVICE_CODE_GRANT;
use crate::oauth::endpoints::{form, require_client};
use crate::oauth::tokens::{self, Kind};
use crate::oauth::{OAuthError, OAuthState, ms, scope};
use crate::response::json as json_response;

/// Attempts to find a free user code before giving up (collisions are ~1 in 2^34 each).
const USER_CODE_TRIES: usize = 5;

/// Why a device authorization is refused past a pending-grant cap.
fn pending_cap_reached(state: &OAuthState, retry_at: i64, reason: &'static str) -> OAuthError {
    let wait_ms = u64::try_from(retry_at.saturating_sub(state.now_ms())).unwrap_or(0);
    OAuthError::Throttled {
        retry_after: std::time::Duration::from_millis(wait_ms),
        reason,
    }
}

/// `POST /oauth2/device` (RFC 8628 §3.1), charged to the address's creation bucket; pending
/// grants are capped per address and per client.
pub async fn device_authorization(
    State(state): State<OAuthState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    state.charge_creation(ip)?;
    let params = form(body)?;
    let client_id = params.require("client_id")?;
    let client = require_client(&state, client_id).await?;
    if !client.allows_grant(DEVICE_CODE_GRANT) {
        return Err(OAuthError::UnauthorizedClient(
            "the client did not register the device_code grant type".into(),
        ));
    }
    let requested = scope::parse(params.get("scope").unwrap_or(""))
        .map_err(|e| OAuthError::InvalidScope(e.to_string()))?;
    let life = state.lifetimes().clone();
    let now = state.now_ms();
    let device_code = tokens::generate(Kind::DeviceCode);
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    let mut grant = NewDeviceGrant {
        device_code_hash: tokens::hash(&device_code),
        user_code: String::new(),
        client_id: client_id.to_owned(),
        scope: requested.granted,
        device_id: requested.device_id,
        requester_ip: ip.to_string(),
        requester_key: crate::ratelimit::client_key(ip).to_string(),
        requester_ua: user_agent,
        expires_at: now.saturating_add(ms(life.device_code)),
        interval_secs: i64::try_from(life.device_interval_secs).unwrap_or(5),
    };
    let caps = PendingGrantCaps {
        per_address: state
            .limits_per_address()
            .then_some(life.device_grants_per_address),
        per_client: life.device_grants_per_client,
    };
    let mut tries = 1;
    let admission = loop {
        grant.user_code = tokens::user_code();
        match state.db().create_device_grant(&grant, caps, now).await {
            // The user code is taken: draw another.
            Err(DbError::Conflict) if tries < USER_CODE_TRIES => tries += 1,
            other => break other?,
        }
    };
    match admission {
        GrantAdmission::Stored => {}
        GrantAdmission::AddressFull { retry_at } => {
            let reason = "too many pending device authorizations from this address";
            return Err(pending_cap_reached(&state, retry_at, reason));
        }
        GrantAdmission::ClientFull { retry_at } => {
            let reason = "too many pending device authorizations for this client";
            return Err(pending_cap_reached(&state, retry_at, reason));
        }
    }
    let verification_uri = state.url("link");
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "device_code": device_code,
            "user_code": tokens::display_user_code(&grant.user_code),
            "verification_uri": verification_uri,
            "verification_uri_complete": format!("{verification_uri}?code={}", grant.user_code),
            "expires_in": life.device_code.as_secs(),
            "interval": life.device_interval_secs,
        }),
    ))
}

//! JSON endpoints: server metadata, registration, device authorization, revocation (the token
//! endpoint is `token.rs`).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::client::{ClientMetadata, DEVICE_CODE_GRANT, MetadataError};
use super::tokens::{self, Kind};
use super::{OAuthError, OAuthState, RequestIp, ms, scope};
use crate::db::{GrantAdmission, NewDeviceGrant, PendingGrantCaps};
use crate::response::json as json_response;

/// Account-management actions: the spec's stable names and the MSC4191 names older clients
/// send (both are served by `/account`).
const ACCOUNT_ACTIONS: [&str; 8] = [
    "org.matrix.profile",
    "org.matrix.devices_list",
    "org.matrix.device_view",
    "org.matrix.device_delete",
    "org.matrix.cross_signing_reset",
    "org.matrix.sessions_list",
    "org.matrix.session_view",
    "org.matrix.session_end",
];

/// Attempts to find a free user code before giving up (collisions are ~1 in 2^34 each).
const USER_CODE_TRIES: usize = 5;

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

    pub(super) fn require(&self, key: &str) -> Result<&str, OAuthError> {
        self.get(key)
            .ok_or_else(|| OAuthError::InvalidRequest(format!("{key} is required")))
    }
}

pub(super) fn form(body: Result<Bytes, BytesRejection>) -> Result<Params, OAuthError> {
    let body =
        body.map_err(|_| OAuthError::InvalidRequest("request body could not be read".into()))?;
    Params::parse(&body).map_err(OAuthError::InvalidRequest)
}

/// The registered client, or `invalid_client`.
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

pub(super) async fn require_client(
    state: &OAuthState,
    client_id: &str,
) -> Result<ClientMetadata, OAuthError> {
    load_client(state, client_id)
        .await?
        .ok_or_else(|| OAuthError::InvalidClient("unknown client_id".into()))
}

/// `GET /_matrix/client/v1/auth_metadata` (and the unstable and RFC 8414 paths).
pub async fn metadata(State(state): State<OAuthState>) -> Response {
    let mut body = json!({
        "issuer": state.public_url(),
        "authorization_endpoint": state.url("oauth2/authorize"),
        "token_endpoint": state.url("oauth2/token"),
        "registration_endpoint": state.url("oauth2/registration"),
        "revocation_endpoint": state.url("oauth2/revoke"),
        "device_authorization_endpoint": state.url("oauth2/device"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "fragment"],
        "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_CODE_GRANT],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": [
            "urn:matrix:client:api:*",
            "urn:matrix:org.matrix.msc2967.client:api:*",
        ],
        "account_management_uri": state.url("account"),
        "account_management_actions_supported": ACCOUNT_ACTIONS,
    });
    body["prompt_values_supported"] = if state.registration_enabled() {
        json!(["none", "create"])
    } else {
        json!(["none"])
    };
    json_response(StatusCode::OK, &body)
}

/// `POST /oauth2/registration` (RFC 7591 with the Matrix metadata rules), charged to the
/// address's creation bucket since it needs no account and its rows are kept.
pub async fn register(
    State(state): State<OAuthState>,
    RequestIp(ip): RequestIp,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(err) = state.charge_creation(ip) {
        return axum::response::IntoResponse::into_response(err);
    }
    match register_inner(&state, body).await {
        Ok(response) => response,
        Err(err) => axum::response::IntoResponse::into_response(err),
    }
}

async fn register_inner(
    state: &OAuthState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    let body = body
        .map_err(|_| OAuthError::InvalidClientMetadata("request body could not be read".into()))?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| OAuthError::InvalidClientMetadata(format!("body is not JSON: {e}")))?;
    let metadata = super::client::validate(&value).map_err(|e| match e {
        MetadataError::RedirectUri(m) => OAuthError::InvalidRedirectUri(m),
        MetadataError::Metadata(m) => OAuthError::InvalidClientMetadata(m),
    })?;
    // serde_json maps keep keys sorted: this serialization is canonical.
    let canonical = serde_json::to_string(&metadata.json)
        .map_err(|e| OAuthError::InvalidClientMetadata(e.to_string()))?;
    let candidate = hex::encode(rand::random::<[u8; 12]>());
    let client_id = state
        .db()
        .register_client(
            &tokens::hash(&canonical),
            &canonical,
            &candidate,
            state.now_ms(),
        )
        .await?;
    let mut response = metadata.json;
    response.insert("client_id".into(), Value::String(client_id));
    response.insert(
        "client_id_issued_at".into(),
        Value::from(state.now_ms() / 1000),
    );
    Ok(json_response(StatusCode::CREATED, &response))
}

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
    RequestIp(ip): RequestIp,
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
    let mut stored = false;
    for _ in 0..USER_CODE_TRIES {
        grant.user_code = tokens::user_code();
        match state.db().create_device_grant(&grant, caps, now).await {
            Ok(GrantAdmission::Stored) => {
                stored = true;
                break;
            }
            Ok(GrantAdmission::AddressFull { retry_at }) => {
                return Err(pending_cap_reached(
                    &state,
                    retry_at,
                    "too many pending device authorizations from this address",
                ));
            }
            Ok(GrantAdmission::ClientFull { retry_at }) => {
                return Err(pending_cap_reached(
                    &state,
                    retry_at,
                    "too many pending device authorizations for this client",
                ));
            }
            Err(crate::db::DbError::Conflict) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    if !stored {
        return Err(OAuthError::Unavailable(crate::db::DbError::Conflict));
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

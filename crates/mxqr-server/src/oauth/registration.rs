//! Dynamic client registration (RFC 7591 with the Matrix metadata rules): clients register
//! anonymously, so registrations are rate limited per address and deduplicated by content.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::client::MetadataError;
use super::{OAuthError, OAuthState, tokens};
use crate::client_ip::ClientIp;
use crate::response::json as json_response;

/// `POST /oauth2/registration` (RFC 7591 with the Matrix metadata rules), charged to the
/// address's creation bucket since it needs no account and its rows are kept.
pub async fn register(
    State(state): State<OAuthState>,
    ClientIp(ip): ClientIp,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    state.charge_creation(ip)?;
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

//! Server metadata (RFC 8414, Matrix `auth_metadata`): how clients find every other endpoint.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::OAuthState;
use super::client::DEVICE_CODE_GRANT;
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

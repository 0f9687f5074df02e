//! Client-server API test helpers over the OAuth test server: tokens for devices, JSON calls
//! with a bearer token, and real E2EE keys made with vodozemac and mxqr-keys.

use mxqr_keys::{Account, CrossSigningKeys};
use mxqr_server::accounts::Grant;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::Backend;
pub use crate::oauth::{OAuthServer, scope, unstable_scope};

/// The user every helper here acts as.
pub const USER: &str = "@alice:example.test";

/// The OAuth test server on `backend` with user `alice`.
pub async fn start(backend: Backend) -> OAuthServer {
    let server = OAuthServer::start(backend).await;
    server.add_user("alice").await;
    server
}

/// Issues an access token for `localpart`'s `device_id` with `scope` (creating the device),
/// as a completed OAuth grant would.
pub async fn token_with_scope(
    server: &OAuthServer,
    localpart: &str,
    device_id: &str,
    scope: &str,
) -> String {
    let minted = server.oauth.mint();
    let grant = Grant {
        localpart: localpart.into(),
        device_id: device_id.into(),
        client_id: None,
        scope: scope.into(),
    };
    server
        .db()
        .issue_session(&grant, &minted.stored, server.oauth.now_ms())
        .await
        .unwrap();
    minted.access_token
}

/// A token of `alice` for `device_id` with the stable scopes.
pub async fn token(server: &OAuthServer, device_id: &str) -> String {
    token_with_scope(server, "alice", device_id, &scope(device_id)).await
}

/// Percent-encodes a path segment the way matrix-sdk does for device IDs: `/` and `%`
/// escaped, `+` and `=` literal.
pub fn segment(id: &str) -> String {
    id.replace('%', "%25").replace('/', "%2F")
}

/// One JSON call; the body is sent when given. Returns status and parsed JSON body.
pub async fn call(
    server: &OAuthServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut request = server.http.request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
    (status, value)
}

/// `GET path` with `token`.
pub async fn get(server: &OAuthServer, path: &str, token: &str) -> (StatusCode, Value) {
    call(server, Method::GET, path, Some(token), None).await
}

/// `POST path` with `token` and a JSON `body`.
pub async fn post(
    server: &OAuthServer,
    path: &str,
    token: &str,
    body: &Value,
) -> (StatusCode, Value) {
    call(server, Method::POST, path, Some(token), Some(body)).await
}

/// `PUT path` with `token` and a JSON `body`.
pub async fn put(
    server: &OAuthServer,
    path: &str,
    token: &str,
    body: &Value,
) -> (StatusCode, Value) {
    call(server, Method::PUT, path, Some(token), Some(body)).await
}

/// Sends raw bytes as the body (for not-JSON tests).
pub async fn post_raw(
    server: &OAuthServer,
    path: &str,
    token: &str,
    body: &'static str,
) -> (StatusCode, Value) {
    let response = server
        .http
        .post(server.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// Asserts a Matrix error answer.
#[track_caller]
pub fn assert_error(result: &(StatusCode, Value), status: StatusCode, errcode: &str) {
    assert_eq!(result.0, status, "unexpected answer {}", result.1);
    assert_eq!(
        result.1["errcode"], errcode,
        "unexpected answer {}",
        result.1
    );
    assert!(result.1["error"].is_string(), "no error text: {}", result.1);
}

/// A device with real Olm keys: vodozemac account, its matrix-sdk style device ID (the base64
/// Curve25519 key) and a token of `alice` bound to it.
pub struct TestDevice {
    pub account: Account,
    pub device_id: String,
    pub token: String,
}

impl TestDevice {
    /// A new device of `alice` on `server`.
    pub async fn new(server: &OAuthServer) -> Self {
        let account = Account::new();
        let device_id = mxqr_keys::device_id(&account);
        let token = token(server, &device_id).await;
        Self {
            account,
            device_id,
            token,
        }
    }

    /// The device's self-signed `device_keys`.
    pub fn device_keys(&self) -> Value {
        mxqr_keys::device_keys(&self.account, USER, &self.device_id).unwrap()
    }

    /// A full `/keys/upload` body, also signed by `cross_signing`'s self-signing key if given.
    pub fn upload_body(&mut self, cross_signing: Option<&CrossSigningKeys>, otks: usize) -> Value {
        mxqr_keys::keys_upload_body(&mut self.account, USER, cross_signing, otks).unwrap()
    }
}

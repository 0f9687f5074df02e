//! `/_matrix/client/v3/devices`: list, view, rename and delete the caller's devices.
//!
//! Device IDs are matrix-sdk's base64 Curve25519 keys: `/` arrives as `%2F` and is decoded by
//! the path extractor, `+` stays literal (paths have no form encoding). A device exists from
//! its first token on, so the existing device's pre-consent `GET` is a 404 and turns into a
//! 200 the moment the new device is signed in.
//!
//! Deleting a device: with OAuth the spec moves this to the account page. A device may sign
//! itself out here (like `/logout`); deleting another device answers 401 with the `m.oauth`
//! user-interactive flow pointing at the account page's `org.matrix.device_delete` action,
//! and a retry after the page deleted it succeeds.

use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::bearer::Authed;
use super::{ok, parse_body};
use crate::accounts::Device;
use crate::error::ApiError;
use crate::response::{PathParams, RawBody};

fn device_json(device: &Device) -> Value {
    let mut out = json!({ "device_id": device.device_id });
    if let Some(name) = &device.display_name {
        out["display_name"] = name.as_str().into();
    }
    out
}

const NO_DEVICE: ApiError = ApiError::Missing("no such device");

/// `GET /_matrix/client/v3/devices`.
pub async fn list(auth: Authed) -> Result<Response, ApiError> {
    let devices = auth.oauth.db().devices(auth.localpart()).await?;
    let devices: Vec<Value> = devices.iter().map(device_json).collect();
    ok(json!({ "devices": devices }))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`.
pub async fn get_one(
    auth: Authed,
    PathParams(device_id): PathParams<String>,
) -> Result<Response, ApiError> {
    let device = auth
        .oauth
        .db()
        .device(auth.localpart(), &device_id)
        .await?
        .ok_or(NO_DEVICE)?;
    ok(device_json(&device))
}

#[derive(Deserialize)]
struct UpdateDevice {
    display_name: Option<String>,
}

/// Longest display name kept (Synapse's limit): names are shown to other users.
const MAX_DISPLAY_NAME: usize = 100;

/// `PUT /_matrix/client/v3/devices/{deviceId}`: renames; an absent name changes nothing.
pub async fn update(
    auth: Authed,
    PathParams(device_id): PathParams<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let request: UpdateDevice = parse_body(&body)?;
    let db = auth.oauth.db();
    let Some(name) = request.display_name else {
        db.device(auth.localpart(), &device_id)
            .await?
            .ok_or(NO_DEVICE)?;
        return ok(json!({}));
    };
    if name.chars().count() > MAX_DISPLAY_NAME {
        return Err(ApiError::InvalidParam(
            "display_name is longer than 100 characters",
        ));
    }
    if !db
        .set_device_display_name(auth.localpart(), &device_id, Some(&name))
        .await?
    {
        return Err(NO_DEVICE);
    }
    ok(json!({}))
}

#[derive(Deserialize, Default)]
struct DeleteDevice {
    auth: Option<Map<String, Value>>,
}

/// The UIA stage names the account-page approval is offered under: the spec's, and the one
/// matrix-sdk and Synapse used before it (docs/protocol.md §8).
pub(crate) const OAUTH_STAGES: [&str; 2] = ["m.oauth", "org.matrix.cross_signing_reset"];

/// A 401 user-interactive-auth answer sending the user to `url` (the account page) under
/// each of [`OAUTH_STAGES`]; with `errcode` once the client claimed to have completed it.
pub(crate) fn oauth_uia(url: &str, attempted: bool) -> ApiError {
    let flows: Vec<Value> = OAUTH_STAGES
        .iter()
        .map(|stage| json!({ "stages": [stage] }))
        .collect();
    let params: Map<String, Value> = OAUTH_STAGES
        .iter()
        .map(|stage| ((*stage).to_owned(), json!({ "url": url })))
        .collect();
    let mut body = json!({
        "session": hex::encode(rand::random::<[u8; 16]>()),
        "flows": flows,
        "params": params,
    });
    if attempted {
        body["errcode"] = "M_FORBIDDEN".into();
        body["error"] = "the action has not been approved on the account page yet".into();
    }
    ApiError::AuthRequired(Box::new(body))
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`.
pub async fn delete(
    auth: Authed,
    PathParams(device_id): PathParams<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    // The body is optional (a first attempt usually has none).
    let request: DeleteDevice = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteDevice::default()
    } else {
        parse_body(&body)?
    };
    let db = auth.oauth.db();
    let now = auth.oauth.now_ms();
    let exists = db.device(auth.localpart(), &device_id).await?.is_some();
    let attempted = request.auth.is_some();
    if !exists {
        // A retry after the account page deleted it: what was asked for is done.
        return if attempted {
            ok(json!({}))
        } else {
            Err(NO_DEVICE)
        };
    }
    if device_id != auth.device_id() {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("action", "org.matrix.device_delete")
            .append_pair("device_id", &device_id)
            .finish();
        let url = format!("{}?{query}", auth.oauth.url("account"));
        return Err(oauth_uia(&url, attempted));
    }
    db.delete_device(auth.localpart(), &device_id, now).await?;
    ok(json!({}))
}

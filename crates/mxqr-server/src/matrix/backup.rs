//! Server-side key backup versions (`/_matrix/client/v3/room_keys/version`): what a new device
//! looks up to use the backup key it received in `m.login.secrets`.
//!
//! Only the version metadata is kept; the room-key upload endpoints (`/room_keys/keys`) are
//! not served, so `count` is always 0 and `etag` never changes from its initial value.

use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::bearer::Authed;
use super::{ok, parse_body, stored_json};
use crate::accounts::BackupVersion;
use crate::error::ApiError;
use crate::response::{PathParams, RawBody};

/// The one backup algorithm of the spec.
const MEGOLM_BACKUP_V1: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

const NO_VERSION: ApiError = ApiError::Missing("unknown backup version");

#[derive(Deserialize)]
pub(crate) struct VersionBody {
    pub(crate) algorithm: String,
    pub(crate) auth_data: Map<String, Value>,
    /// Only in `PUT`: must name the version in the path when present.
    version: Option<String>,
}

/// Checks what the algorithm requires of `auth_data`: a `public_key` string.
pub(crate) fn check(body: &VersionBody) -> Result<(), ApiError> {
    if body.algorithm != MEGOLM_BACKUP_V1 {
        return Err(ApiError::Invalid(format!(
            "unsupported backup algorithm {:?}",
            body.algorithm
        )));
    }
    if !body
        .auth_data
        .get("public_key")
        .is_some_and(Value::is_string)
    {
        return Err(ApiError::Invalid(
            "auth_data.public_key must be a string".into(),
        ));
    }
    Ok(())
}

fn version_json(version: &BackupVersion) -> Result<Value, ApiError> {
    Ok(json!({
        "algorithm": version.algorithm,
        "auth_data": stored_json(&version.auth_data, "backup auth_data")?,
        "count": 0,
        "etag": version.etag.to_string(),
        "version": version.version.to_string(),
    }))
}

/// Version numbers are decimal integers here; anything else names no version.
fn parse_version(version: &str) -> Result<i64, ApiError> {
    version.parse().map_err(|_| NO_VERSION)
}

/// `POST /_matrix/client/v3/room_keys/version`: creates the next version.
pub async fn create(auth: Authed, RawBody(body): RawBody) -> Result<Response, ApiError> {
    let request: VersionBody = parse_body(&body)?;
    check(&request)?;
    let auth_data = Value::Object(request.auth_data).to_string();
    let version = auth
        .oauth
        .db()
        .create_backup_version(
            auth.localpart(),
            &request.algorithm,
            &auth_data,
            auth.oauth.now_ms(),
        )
        .await?;
    ok(json!({ "version": version.to_string() }))
}

/// `GET /_matrix/client/v3/room_keys/version`: the current (latest) version.
pub async fn latest(auth: Authed) -> Result<Response, ApiError> {
    let version = auth
        .oauth
        .db()
        .backup_version(auth.localpart(), None)
        .await?
        .ok_or(ApiError::Missing("no current backup version"))?;
    ok(version_json(&version)?)
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`.
pub async fn get_version(
    auth: Authed,
    PathParams(version): PathParams<String>,
) -> Result<Response, ApiError> {
    let number = parse_version(&version)?;
    let version = auth
        .oauth
        .db()
        .backup_version(auth.localpart(), Some(number))
        .await?
        .ok_or(NO_VERSION)?;
    ok(version_json(&version)?)
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`: replaces `auth_data`; the algorithm
/// cannot change.
pub async fn update(
    auth: Authed,
    PathParams(version): PathParams<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let request: VersionBody = parse_body(&body)?;
    if request.version.as_ref().is_some_and(|v| *v != version) {
        return Err(ApiError::InvalidParam(
            "the version in the body does not match the path",
        ));
    }
    let number = parse_version(&version)?;
    let db = auth.oauth.db();
    let stored = db
        .backup_version(auth.localpart(), Some(number))
        .await?
        .ok_or(NO_VERSION)?;
    if stored.algorithm != request.algorithm {
        return Err(ApiError::InvalidParam(
            "the algorithm of a backup version cannot change",
        ));
    }
    check(&request)?;
    let auth_data = Value::Object(request.auth_data).to_string();
    if !db
        .update_backup_version(auth.localpart(), number, &auth_data)
        .await?
    {
        return Err(NO_VERSION);
    }
    ok(json!({}))
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`: the version stops being served
/// (and the latest falls back to the previous one); its number is not reused.
pub async fn delete_version(
    auth: Authed,
    PathParams(version): PathParams<String>,
) -> Result<Response, ApiError> {
    let number = parse_version(&version)?;
    if !auth
        .oauth
        .db()
        .delete_backup_version(auth.localpart(), number, auth.oauth.now_ms())
        .await?
    {
        return Err(NO_VERSION);
    }
    ok(json!({}))
}

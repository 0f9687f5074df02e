//! Discovery, `whoami`, logout and global account data.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::{Value, json};

use super::MatrixState;
use super::bearer::Authed;
use super::{ok, parse_body, stored_json};
use crate::accounts::{AccountDataQuota, AccountDataWrite};
use crate::error::ApiError;
use crate::response::{PathParams, RawBody};

/// `GET /.well-known/matrix/client`: where the client-server API lives. CORS comes from the
/// global layer, as the spec asks for this document.
pub async fn well_known(State(state): State<MatrixState>) -> Json<Value> {
    let base_url = state.public_url.trim_end_matches('/');
    Json(json!({ "m.homeserver": { "base_url": base_url } }))
}

/// `GET /_matrix/client/v3/account/whoami`.
pub async fn whoami(auth: Authed) -> Json<Value> {
    Json(json!({ "user_id": auth.user_id, "device_id": auth.device_id(), "is_guest": false }))
}

/// `POST /_matrix/client/v3/logout`: the spec deletes the token's device with it (and so
/// its keys), which also revokes every token of the device.
pub async fn logout(auth: Authed) -> Result<Response, ApiError> {
    let db = auth.oauth.db();
    let now = auth.oauth.now_ms();
    db.delete_device(auth.localpart(), auth.device_id(), now)
        .await?;
    // The device row may already be gone (deleted elsewhere): still end this token's session.
    db.revoke_token(&auth.token_hash, now).await?;
    ok(json!({}))
}

/// `POST /_matrix/client/v3/logout/all`: every device of the user, every token.
pub async fn logout_all(auth: Authed) -> Result<Response, ApiError> {
    let db = auth.oauth.db();
    let now = auth.oauth.now_ms();
    for device in db.devices(auth.localpart()).await? {
        db.delete_device(auth.localpart(), &device.device_id, now)
            .await?;
    }
    // Sessions whose device row was already deleted.
    db.revoke_user_sessions(auth.localpart(), now).await?;
    ok(json!({}))
}

/// Account data is private: only its owner may read or write it.
fn own_user(auth: &Authed, user_id: &str) -> Result<(), ApiError> {
    if user_id == auth.user_id {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "cannot access another user's account data",
        ))
    }
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`; `M_NOT_FOUND` when unset
/// (matrix-sdk's background fetch of `m.secret_storage.default_key` expects exactly that).
pub async fn get_account_data(
    auth: Authed,
    PathParams((user_id, data_type)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    own_user(&auth, &user_id)?;
    let stored = auth
        .oauth
        .db()
        .account_data(auth.localpart(), &data_type)
        .await?
        .ok_or(ApiError::Missing("account data not found"))?;
    ok(stored_json(&stored, "account data")?)
}

/// Longest account data type name, in bytes (the spec's limit on event types).
const MAX_TYPE_BYTES: usize = 255;

/// What one user may store as account data: far above what clients keep there (a few dozen
/// small entries: secret storage keys, direct-message lists, settings), far below what would
/// let one account fill the disk.
const QUOTA: AccountDataQuota = AccountDataQuota {
    max_entries: 1_000,
    max_bytes: 1024 * 1024,
};

/// Types the server manages through other endpoints: the spec refuses them here with 405.
const SERVER_MANAGED_TYPES: [&str; 2] = ["m.fully_read", "m.push_rules"];

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`: stores any JSON object.
pub async fn put_account_data(
    auth: Authed,
    PathParams((user_id, data_type)): PathParams<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    own_user(&auth, &user_id)?;
    // A wrong value of a path parameter: 400 `M_INVALID_PARAM`.
    if data_type.len() > MAX_TYPE_BYTES {
        return Err(ApiError::InvalidParam(
            "the account data type is longer than 255 bytes",
        ));
    }
    if SERVER_MANAGED_TYPES.contains(&data_type.as_str()) {
        return Err(ApiError::ServerManaged(data_type));
    }
    let content: serde_json::Map<String, Value> = parse_body(&body)?;
    let text = Value::Object(content).to_string();
    // Over quota: 413 `M_TOO_LARGE` (the user's account data would be too large). Not 429
    // `M_LIMIT_EXCEEDED`, which clients retry, nor `M_RESOURCE_LIMIT_EXCEEDED`, which is
    // about the server's own limits and needs an admin contact.
    match auth
        .oauth
        .db()
        .put_account_data(
            auth.localpart(),
            &data_type,
            &text,
            auth.oauth.now_ms(),
            QUOTA,
        )
        .await?
    {
        AccountDataWrite::Stored => ok(json!({})),
        AccountDataWrite::TooManyEntries => Err(ApiError::TooLarge(
            "account data quota reached: at most 1000 types per user",
        )),
        AccountDataWrite::TooManyBytes => Err(ApiError::TooLarge(
            "account data quota reached: at most 1 MiB per user",
        )),
    }
}

//! Encryption requests: the first sign-in of an existing device (device keys, cross-signing
//! and key backup, so that it holds the secrets a QR sign-in hands over), and what a new
//! device asks of the homeserver to check the secrets it receives.

use mxqr_keys::{Account, BackupKey, CrossSigningKeys};
use mxqr_proto::messages::SecretsMessage;
use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;

use crate::ClientError;
use crate::rendezvous::join;

/// Who a token belongs to (`/whoami`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    pub user_id: String,
    pub device_id: Option<String>,
}

pub async fn whoami(
    http: &reqwest::Client,
    homeserver: &Url,
    access_token: &str,
) -> Result<WhoAmI, ClientError> {
    let v = get(
        http,
        homeserver,
        "_matrix/client/v3/account/whoami",
        access_token,
    )
    .await?;
    let user_id = v
        .get("user_id")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::Protocol("whoami has no user_id".into()))?;
    Ok(WhoAmI {
        user_id: user_id.to_owned(),
        device_id: v
            .get("device_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

async fn get(
    http: &reqwest::Client,
    homeserver: &Url,
    path: &str,
    token: &str,
) -> Result<Value, ClientError> {
    let response = http
        .get(join(homeserver, path)?)
        .bearer_auth(token)
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(ClientError::from_response(response).await);
    }
    crate::body::json(response, path).await
}

async fn post(
    http: &reqwest::Client,
    homeserver: &Url,
    path: &str,
    token: &str,
    body: &Value,
) -> Result<Value, ClientError> {
    let response = http
        .post(join(homeserver, path)?)
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(ClientError::from_response(response).await);
    }
    crate::body::json(response, path).await
}

/// The user's keys as the homeserver shows them to the user (`POST /keys/query`): the
/// cross-signing keys, and the device keys of `device_id` (of every device when `None`).
pub async fn query_own_keys(
    http: &reqwest::Client,
    homeserver: &Url,
    access_token: &str,
    user_id: &str,
    device_id: Option<&str>,
) -> Result<Value, ClientError> {
    let devices: Vec<&str> = device_id.into_iter().collect();
    let body = json!({ "device_keys": { user_id: devices } });
    post(
        http,
        homeserver,
        "_matrix/client/v3/keys/query",
        access_token,
        &body,
    )
    .await
}

/// The current key backup version (`GET /room_keys/version`), `None` when there is none.
pub async fn current_backup_version(
    http: &reqwest::Client,
    homeserver: &Url,
    access_token: &str,
) -> Result<Option<Value>, ClientError> {
    match get(
        http,
        homeserver,
        "_matrix/client/v3/room_keys/version",
        access_token,
    )
    .await
    {
        Ok(version) => Ok(Some(version)),
        Err(ClientError::Status {
            status: StatusCode::NOT_FOUND,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `POST /keys/upload` with `body`.
pub async fn upload_keys(
    http: &reqwest::Client,
    homeserver: &Url,
    access_token: &str,
    body: &Value,
) -> Result<(), ClientError> {
    post(
        http,
        homeserver,
        "_matrix/client/v3/keys/upload",
        access_token,
        body,
    )
    .await
    .map(drop)
}

fn build<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, ClientError> {
    r.map_err(|e| ClientError::Protocol(format!("{what}: {e}")))
}

/// What a bootstrapped existing device holds.
pub struct Bootstrapped {
    pub user_id: String,
    pub device_id: String,
    pub cross_signing: CrossSigningKeys,
    pub backup: BackupKey,
    pub backup_version: String,
}

impl std::fmt::Debug for Bootstrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrapped")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("backup_version", &self.backup_version)
            .finish_non_exhaustive()
    }
}

impl Bootstrapped {
    /// The `m.login.secrets` this device hands to a new device.
    pub fn secrets(&self) -> SecretsMessage {
        SecretsMessage {
            cross_signing: self.cross_signing.to_secrets(),
            backup: Some(self.backup.to_backup_secrets(self.backup_version.clone())),
        }
    }
}

/// Uploads this device's keys, creates and uploads cross-signing keys (the account must
/// have none yet: replacing them needs the person's approval on the account page), signs
/// this device with the self-signing key and the master key with this device, and creates
/// a key backup version.
pub async fn bootstrap(
    http: &reqwest::Client,
    homeserver: &Url,
    access_token: &str,
    account: &mut Account,
) -> Result<Bootstrapped, ClientError> {
    let who = whoami(http, homeserver, access_token).await?;
    let device_id = who
        .device_id
        .ok_or_else(|| ClientError::Protocol("whoami has no device_id".into()))?;
    let user_id = who.user_id;

    let body = build(
        "device keys",
        mxqr_keys::keys_upload_body(account, &user_id, None, 20),
    )?;
    post(
        http,
        homeserver,
        "_matrix/client/v3/keys/upload",
        access_token,
        &body,
    )
    .await?;
    account.mark_keys_as_published();

    let cross_signing = CrossSigningKeys::new();
    let body = build(
        "cross-signing keys",
        cross_signing.device_signing_upload_body(&user_id),
    )?;
    let response = http
        .post(join(
            homeserver,
            "_matrix/client/v3/keys/device_signing/upload",
        )?)
        .bearer_auth(access_token)
        .json(&body)
        .send()
        .await?;
    if response.status() == StatusCode::UNAUTHORIZED {
        return Err(ClientError::Protocol(
            "the account already has cross-signing keys; approve a reset on the account page first"
                .into(),
        ));
    }
    if !response.status().is_success() {
        return Err(ClientError::from_response(response).await);
    }

    let mut own = build(
        "device keys",
        mxqr_keys::device_keys(account, &user_id, &device_id),
    )?;
    build(
        "self-signature",
        cross_signing.sign_device_keys(&mut own, &user_id),
    )?;
    let master = build(
        "master signature",
        cross_signing.master_key_signed_by_device(account, &user_id, &device_id),
    )?;
    let master_id = cross_signing.public_keys().master.to_base64();
    let body = mxqr_keys::signatures_upload_body([
        (user_id.as_str(), device_id.as_str(), own),
        (user_id.as_str(), master_id.as_str(), master),
    ]);
    let answer = post(
        http,
        homeserver,
        "_matrix/client/v3/keys/signatures/upload",
        access_token,
        &body,
    )
    .await?;
    if answer
        .get("failures")
        .and_then(Value::as_object)
        .is_some_and(|f| !f.is_empty())
    {
        return Err(ClientError::Protocol(format!(
            "signatures refused: {}",
            answer["failures"]
        )));
    }

    let backup = BackupKey::new();
    let body = build(
        "backup version",
        backup.create_version_body(&user_id, &cross_signing, Some((account, &device_id))),
    )?;
    let created = post(
        http,
        homeserver,
        "_matrix/client/v3/room_keys/version",
        access_token,
        &body,
    )
    .await?;
    let backup_version = created
        .get("version")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::Protocol("room_keys/version answer has no version".into()))?
        .to_owned();
    Ok(Bootstrapped {
        user_id,
        device_id,
        cross_signing,
        backup,
        backup_version,
    })
}

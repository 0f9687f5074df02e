//! Checks of the secrets a new device receives in `m.login.secrets` against what the
//! homeserver publishes for the user, as matrix-sdk-crypto does before importing them.
//!
//! A private key says nothing about whose key it is: an existing device (or whoever speaks
//! for it) could hand over keys of its own making. The new device signs itself with the
//! self-signing key, keeps the secrets and hands them on to further devices, so each secret is
//! used only once its public half is the one the user's other devices already trust:
//!
//! - cross-signing: the three public halves must be the published master, self-signing and
//!   user-signing keys, and the published self-signing and user-signing keys must carry the
//!   published master key's signature. The three keys are one secret: one mismatch refuses
//!   all three.
//! - backup: the key's public half must be the `auth_data.public_key` of the server's
//!   current backup version, and the version must be that one.
//!
//! The two are decided apart: a wrong backup key does not refuse correct cross-signing keys,
//! nor the other way round.

use mxqr_proto::messages::{BackupSecrets, CrossSigningSecrets};
use serde_json::Value;

use crate::b64::curve25519_public_key_from_base64;
use crate::backup::{BACKUP_ALGORITHM, BackupImportError, BackupKey};
use crate::cross_signing::{CrossSigningKeys, CrossSigningPublicKeys, KeyUsage, SeedImportError};
use crate::verify::{VerifyError, cross_signing_public_key, verify_cross_signing_key};

/// Why received cross-signing keys are not used. Values from the server or the other device
/// are shown with `{:?}`, so no control character reaches a terminal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrossSigningRefusal {
    /// The user has no published key of this usage, so nothing vouches for the received one.
    #[error("the homeserver publishes no {0} key for the user")]
    NotPublished(KeyUsage),
    /// The published key is malformed, or (self-signing, user-signing) not signed by the
    /// published master key.
    #[error("the published {usage} key is not valid: {source}")]
    InvalidPublished {
        usage: KeyUsage,
        #[source]
        source: VerifyError,
    },
    #[error("the received keys cannot be read: {0}")]
    Unreadable(#[from] SeedImportError),
    /// The received private key's public half is not the published key.
    #[error("the received {0} key is not the one the homeserver publishes for the user")]
    Mismatch(KeyUsage),
}

/// Why a received backup key is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupRefusal {
    #[error("the homeserver has no key backup")]
    NoBackup,
    #[error("the received key is for backup version {received:?}, the current one is {current:?}")]
    VersionMismatch { received: String, current: String },
    #[error("the current backup version uses {0:?}, not {BACKUP_ALGORITHM}")]
    UnsupportedAlgorithm(String),
    #[error("the current backup version is not valid: {0}")]
    InvalidPublished(#[source] VerifyError),
    #[error("the received backup key cannot be read: {0}")]
    Unreadable(#[from] BackupImportError),
    /// The received key's public half is not the current version's `auth_data.public_key`.
    #[error("the received backup key is not the current backup version's key")]
    Mismatch,
}

/// The user's published cross-signing keys in a `/keys/query` answer, checked: each
/// well-formed and the user's, the self-signing and user-signing keys signed by the master
/// key. The user-signing key is published to the user alone, which is who asks here.
pub fn published_cross_signing_keys(
    keys_query: &Value,
    user_id: &str,
) -> Result<CrossSigningPublicKeys, CrossSigningRefusal> {
    let published = |usage: KeyUsage| {
        let member = match usage {
            KeyUsage::Master => "master_keys",
            KeyUsage::SelfSigning => "self_signing_keys",
            KeyUsage::UserSigning => "user_signing_keys",
        };
        keys_query
            .get(member)
            .and_then(|by_user| by_user.get(user_id))
            .ok_or(CrossSigningRefusal::NotPublished(usage))
    };
    let invalid =
        |usage: KeyUsage| move |source| CrossSigningRefusal::InvalidPublished { usage, source };
    let master = cross_signing_public_key(published(KeyUsage::Master)?, user_id, KeyUsage::Master)
        .map_err(invalid(KeyUsage::Master))?;
    let signed_by_master = |usage: KeyUsage| {
        verify_cross_signing_key(published(usage)?, user_id, usage, &master).map_err(invalid(usage))
    };
    Ok(CrossSigningPublicKeys {
        master,
        self_signing: signed_by_master(KeyUsage::SelfSigning)?,
        user_signing: signed_by_master(KeyUsage::UserSigning)?,
    })
}

/// Imports the received cross-signing keys if they are the user's published ones (see
/// [`published_cross_signing_keys`]); `keys_query` is the homeserver's `/keys/query` answer
/// for `user_id`.
pub fn check_received_cross_signing(
    received: &CrossSigningSecrets,
    keys_query: &Value,
    user_id: &str,
) -> Result<CrossSigningKeys, CrossSigningRefusal> {
    let published = published_cross_signing_keys(keys_query, user_id)?;
    let keys = CrossSigningKeys::from_secrets(received)?;
    let own = keys.public_keys();
    for (usage, mine, theirs) in [
        (KeyUsage::Master, own.master, published.master),
        (
            KeyUsage::SelfSigning,
            own.self_signing,
            published.self_signing,
        ),
        (
            KeyUsage::UserSigning,
            own.user_signing,
            published.user_signing,
        ),
    ] {
        if mine != theirs {
            return Err(CrossSigningRefusal::Mismatch(usage));
        }
    }
    Ok(keys)
}

/// Imports the received backup key if it is the key of the server's current backup version;
/// `current_version` is the answer of `GET /room_keys/version`, `None` when the server has
/// no backup (404).
pub fn check_received_backup(
    received: &BackupSecrets,
    current_version: Option<&Value>,
) -> Result<BackupKey, BackupRefusal> {
    let current = current_version.ok_or(BackupRefusal::NoBackup)?;
    let string = |field: &'static str| match current.get(field) {
        None => Err(BackupRefusal::InvalidPublished(VerifyError::MissingField(
            field,
        ))),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(BackupRefusal::InvalidPublished(VerifyError::WrongType(
            field,
        ))),
    };
    let version = string("version")?;
    if received.backup_version != version {
        return Err(BackupRefusal::VersionMismatch {
            received: received.backup_version.clone(),
            current: version.to_owned(),
        });
    }
    let algorithm = string("algorithm")?;
    if algorithm != BACKUP_ALGORITHM {
        return Err(BackupRefusal::UnsupportedAlgorithm(algorithm.to_owned()));
    }
    let public_key = match current.pointer("/auth_data/public_key") {
        None => Err(VerifyError::MissingField("public_key")),
        Some(Value::String(s)) => {
            curve25519_public_key_from_base64(s).map_err(|reason| VerifyError::InvalidKey {
                key_id: "public_key".to_owned(),
                reason,
            })
        }
        Some(_) => Err(VerifyError::WrongType("public_key")),
    }
    .map_err(BackupRefusal::InvalidPublished)?;
    let key = BackupKey::from_backup_secrets(received)?;
    if key.public_key() != public_key {
        return Err(BackupRefusal::Mismatch);
    }
    Ok(key)
}

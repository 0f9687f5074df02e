//! Server-side key backup, `m.megolm_backup.v1.curve25519-aes-sha2`: room keys are encrypted
//! to a Curve25519 public key published in the backup version's `auth_data`, which the master
//! key signs so that other devices can trust the backup.

use mxqr_proto::messages::{BackupSecrets, Secret};
use serde_json::{Value, json};
use vodozemac::olm::Account;
use vodozemac::{Curve25519PublicKey, Curve25519SecretKey, Ed25519PublicKey};
use zeroize::Zeroize;

use crate::b64::{self, KeyDecodeError, curve25519_public_key_from_base64};
use crate::cross_signing::{CrossSigningKeys, cross_signing_key_id};
use crate::signing::{ed25519_key_id, sign_json, verify_json};
use crate::verify::VerifyError;

/// The backup algorithm this module implements.
pub const BACKUP_ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

/// Why the backup secret of `m.login.secrets` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupImportError {
    #[error("unsupported backup algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("invalid backup key: {0}")]
    Key(#[from] KeyDecodeError),
}

/// The backup decryption key (a Curve25519 private key).
///
/// `Debug` shows only the public key; the private key is wiped on drop (vodozemac's
/// `Curve25519SecretKey` wraps an x25519 `StaticSecret`, which zeroizes on drop).
#[derive(Clone)]
pub struct BackupKey(Curve25519SecretKey);

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl Default for BackupKey {
    fn default() -> Self {
        Self::new()
    }
}

impl BackupKey {
    /// A fresh random key, for creating a new backup version.
    pub fn new() -> Self {
        Self(Curve25519SecretKey::new())
    }

    /// Imports the unpadded base64 key of `m.login.secrets` `backup.key`.
    pub fn from_secret(secret: &Secret) -> Result<Self, KeyDecodeError> {
        let bytes = b64::decode_array::<32>(secret.expose())?;
        Ok(Self(Curve25519SecretKey::from_slice(&bytes)))
    }

    /// Imports `m.login.secrets` `backup`, refusing algorithms whose keys are not this kind.
    pub fn from_backup_secrets(backup: &BackupSecrets) -> Result<Self, BackupImportError> {
        if backup.algorithm != BACKUP_ALGORITHM {
            return Err(BackupImportError::UnsupportedAlgorithm(
                backup.algorithm.clone(),
            ));
        }
        Ok(Self::from_secret(&backup.key)?)
    }

    /// Exports the key as the unpadded base64 `m.login.secrets` carries.
    pub fn to_secret(&self) -> Secret {
        let mut bytes = self.0.to_bytes();
        let encoded = Secret::new(b64::encode(&bytes[..]));
        bytes.zeroize();
        encoded
    }

    /// `m.login.secrets` `backup` for this key and version.
    pub fn to_backup_secrets(&self, backup_version: impl Into<String>) -> BackupSecrets {
        BackupSecrets {
            algorithm: BACKUP_ALGORITHM.to_owned(),
            key: self.to_secret(),
            backup_version: backup_version.into(),
        }
    }

    /// The public key, `auth_data.public_key`.
    pub fn public_key(&self) -> Curve25519PublicKey {
        Curve25519PublicKey::from(&self.0)
    }

    /// `auth_data` with the public key, signed by the master key and, if given, also by a
    /// device (`(account, device_id)`) as matrix-sdk does.
    pub fn auth_data(
        &self,
        user_id: &str,
        cross_signing: &CrossSigningKeys,
        device: Option<(&Account, &str)>,
    ) -> Result<Value, crate::SignError> {
        let mut auth_data = json!({ "public_key": self.public_key().to_base64() });
        cross_signing.sign_with_master(&mut auth_data, user_id)?;
        if let Some((account, device_id)) = device {
            sign_json(&mut auth_data, user_id, &ed25519_key_id(device_id), account)?;
        }
        Ok(auth_data)
    }

    /// Body of `POST /room_keys/version`: `{algorithm, auth_data}`.
    pub fn create_version_body(
        &self,
        user_id: &str,
        cross_signing: &CrossSigningKeys,
        device: Option<(&Account, &str)>,
    ) -> Result<Value, crate::SignError> {
        Ok(json!({
            "algorithm": BACKUP_ALGORITHM,
            "auth_data": self.auth_data(user_id, cross_signing, device)?,
        }))
    }
}

/// Checks a backup version's `auth_data` against `user_id`'s master key and returns the
/// backup public key, so a device only trusts (and uploads to) a backup its user created.
pub fn verify_backup_auth_data(
    auth_data: &Value,
    user_id: &str,
    master: &Ed25519PublicKey,
) -> Result<Curve25519PublicKey, VerifyError> {
    let map = auth_data.as_object().ok_or(VerifyError::NotAnObject)?;
    let encoded = match map.get("public_key") {
        None => return Err(VerifyError::MissingField("public_key")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(VerifyError::WrongType("public_key")),
    };
    let public_key =
        curve25519_public_key_from_base64(encoded).map_err(|reason| VerifyError::InvalidKey {
            key_id: "public_key".to_owned(),
            reason,
        })?;
    verify_json(auth_data, user_id, &cross_signing_key_id(master), master)?;
    Ok(public_key)
}

//! Cross-signing: the user's master key vouches for a self-signing key (which vouches for the
//! user's own devices) and a user-signing key (which vouches for other users' master keys).
//!
//! The private keys travel between devices in `m.login.secrets` as unpadded base64 32-byte
//! Ed25519 seeds; here they are imported, used to sign, and exported back.

use mxqr_proto::messages::{CrossSigningSecrets, Secret};
use serde_json::{Map, Value, json};
use vodozemac::olm::Account;
use vodozemac::{Ed25519PublicKey, Ed25519SecretKey};
use zeroize::Zeroize;

use crate::b64::{self, KeyDecodeError};
use crate::signing::{SignError, ed25519_key_id, sign_json};

/// What a cross-signing key is for (its `usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    Master,
    SelfSigning,
    UserSigning,
}

impl KeyUsage {
    /// The `usage` string on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyUsage::Master => "master",
            KeyUsage::SelfSigning => "self_signing",
            KeyUsage::UserSigning => "user_signing",
        }
    }

    /// The member of `/keys/device_signing/upload` (and of `m.login.secrets`) holding it.
    pub const fn field(self) -> &'static str {
        match self {
            KeyUsage::Master => "master_key",
            KeyUsage::SelfSigning => "self_signing_key",
            KeyUsage::UserSigning => "user_signing_key",
        }
    }
}

/// The key's name for people: `master`, `self-signing`, `user-signing`.
impl std::fmt::Display for KeyUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyUsage::Master => "master",
            KeyUsage::SelfSigning => "self-signing",
            KeyUsage::UserSigning => "user-signing",
        })
    }
}

/// `ed25519:<unpadded base64 public key>`: cross-signing keys are named by their public key.
pub fn cross_signing_key_id(public_key: &Ed25519PublicKey) -> String {
    ed25519_key_id(&public_key.to_base64())
}

/// Imports an Ed25519 private key from the unpadded base64 32-byte seed of `m.login.secrets`.
///
/// Decoded here rather than by vodozemac's `from_base64`, which panics on a 44-character
/// unpadded input.
pub fn seed_from_secret(secret: &Secret) -> Result<Ed25519SecretKey, KeyDecodeError> {
    let seed = b64::decode_array::<32>(secret.expose())?;
    Ok(Ed25519SecretKey::from_slice(&seed))
}

/// Exports an Ed25519 private key as the unpadded base64 seed `m.login.secrets` carries.
pub fn seed_to_secret(key: &Ed25519SecretKey) -> Secret {
    let mut seed = key.to_bytes();
    let encoded = Secret::new(b64::encode(&seed[..]));
    seed.zeroize();
    encoded
}

/// Which key of `m.login.secrets` could not be imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot import the {} private key: {reason}", usage.as_str())]
pub struct SeedImportError {
    pub usage: KeyUsage,
    pub reason: KeyDecodeError,
}

/// The three public cross-signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossSigningPublicKeys {
    pub master: Ed25519PublicKey,
    pub self_signing: Ed25519PublicKey,
    pub user_signing: Ed25519PublicKey,
}

/// The user's three private cross-signing keys.
///
/// `Debug` shows only the public keys; the private keys are wiped when dropped (vodozemac's
/// `Ed25519SecretKey` zeroizes on drop).
pub struct CrossSigningKeys {
    pub master: Ed25519SecretKey,
    pub self_signing: Ed25519SecretKey,
    pub user_signing: Ed25519SecretKey,
}

impl std::fmt::Debug for CrossSigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrossSigningKeys")
            .field("master", &self.master.public_key())
            .field("self_signing", &self.self_signing.public_key())
            .field("user_signing", &self.user_signing.public_key())
            .finish_non_exhaustive()
    }
}

impl Default for CrossSigningKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl CrossSigningKeys {
    /// Three fresh random keys, for a user bootstrapping cross-signing.
    pub fn new() -> Self {
        Self {
            master: Ed25519SecretKey::new(),
            self_signing: Ed25519SecretKey::new(),
            user_signing: Ed25519SecretKey::new(),
        }
    }

    /// Imports the keys the existing device sent in `m.login.secrets`.
    ///
    /// The caller should still compare [`Self::public_keys`] with the keys the homeserver
    /// publishes for the user: a seed says nothing about whose key it is.
    pub fn from_secrets(secrets: &CrossSigningSecrets) -> Result<Self, SeedImportError> {
        let import = |usage: KeyUsage, secret: &Secret| {
            seed_from_secret(secret).map_err(|reason| SeedImportError { usage, reason })
        };
        Ok(Self {
            master: import(KeyUsage::Master, &secrets.master_key)?,
            self_signing: import(KeyUsage::SelfSigning, &secrets.self_signing_key)?,
            user_signing: import(KeyUsage::UserSigning, &secrets.user_signing_key)?,
        })
    }

    /// Exports the keys for `m.login.secrets`.
    pub fn to_secrets(&self) -> CrossSigningSecrets {
        CrossSigningSecrets {
            master_key: seed_to_secret(&self.master),
            self_signing_key: seed_to_secret(&self.self_signing),
            user_signing_key: seed_to_secret(&self.user_signing),
        }
    }

    /// The public halves.
    pub fn public_keys(&self) -> CrossSigningPublicKeys {
        CrossSigningPublicKeys {
            master: self.master.public_key(),
            self_signing: self.self_signing.public_key(),
            user_signing: self.user_signing.public_key(),
        }
    }

    fn secret(&self, usage: KeyUsage) -> &Ed25519SecretKey {
        match usage {
            KeyUsage::Master => &self.master,
            KeyUsage::SelfSigning => &self.self_signing,
            KeyUsage::UserSigning => &self.user_signing,
        }
    }

    /// The unsigned public key object for one usage:
    /// `{user_id, usage: [usage], keys: {"ed25519:<pub>": "<pub>"}}`.
    pub fn key_object(&self, user_id: &str, usage: KeyUsage) -> Value {
        let public_key = self.secret(usage).public_key();
        let mut keys = Map::new();
        keys.insert(
            cross_signing_key_id(&public_key),
            Value::String(public_key.to_base64()),
        );
        json!({
            "user_id": user_id,
            "usage": [usage.as_str()],
            "keys": keys,
        })
    }

    /// Signs `value` as `user_id` with the master key.
    pub fn sign_with_master(&self, value: &mut Value, user_id: &str) -> Result<(), SignError> {
        let key_id = cross_signing_key_id(&self.master.public_key());
        sign_json(value, user_id, &key_id, &self.master)
    }

    /// Body of `POST /keys/device_signing/upload`: the three public keys, the self-signing and
    /// user-signing keys signed by the master key.
    pub fn device_signing_upload_body(&self, user_id: &str) -> Result<Value, SignError> {
        let master = self.key_object(user_id, KeyUsage::Master);
        let mut self_signing = self.key_object(user_id, KeyUsage::SelfSigning);
        self.sign_with_master(&mut self_signing, user_id)?;
        let mut user_signing = self.key_object(user_id, KeyUsage::UserSigning);
        self.sign_with_master(&mut user_signing, user_id)?;
        let mut body = Map::new();
        body.insert(KeyUsage::Master.field().to_owned(), master);
        body.insert(KeyUsage::SelfSigning.field().to_owned(), self_signing);
        body.insert(KeyUsage::UserSigning.field().to_owned(), user_signing);
        Ok(Value::Object(body))
    }

    /// Adds the self-signing key's signature to one of the user's own `device_keys` objects:
    /// what the new device does to itself once it has the secrets.
    pub fn sign_device_keys(
        &self,
        device_keys: &mut Value,
        user_id: &str,
    ) -> Result<(), SignError> {
        let key_id = cross_signing_key_id(&self.self_signing.public_key());
        sign_json(device_keys, user_id, &key_id, &self.self_signing)
    }

    /// Adds the user-signing key's signature (as `user_id`) to another user's master key
    /// object, marking that user as verified.
    pub fn sign_other_master_key(
        &self,
        other_master_key: &mut Value,
        user_id: &str,
    ) -> Result<(), SignError> {
        let key_id = cross_signing_key_id(&self.user_signing.public_key());
        sign_json(other_master_key, user_id, &key_id, &self.user_signing)
    }

    /// The master key object signed by a device of the user, for `/keys/signatures/upload`:
    /// it lets other clients see that this device trusts the master key.
    pub fn master_key_signed_by_device(
        &self,
        account: &Account,
        user_id: &str,
        device_id: &str,
    ) -> Result<Value, SignError> {
        let mut master = self.key_object(user_id, KeyUsage::Master);
        sign_json(&mut master, user_id, &ed25519_key_id(device_id), account)?;
        Ok(master)
    }
}

/// Body of `POST /keys/signatures/upload`: `{user_id: {device ID or base64 public key:
/// signed object}}`, from `(user_id, id, signed object)` triples.
pub fn signatures_upload_body<'a>(
    signed: impl IntoIterator<Item = (&'a str, &'a str, Value)>,
) -> Value {
    let mut body = Map::new();
    for (user_id, id, object) in signed {
        let by_user = body
            .entry(user_id)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(by_user) = by_user {
            by_user.insert(id.to_owned(), object);
        }
    }
    Value::Object(body)
}

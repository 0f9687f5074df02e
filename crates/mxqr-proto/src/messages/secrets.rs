//! `m.login.secrets`: the private keys the existing device hands to the new one.
//!
//! Every secret value is a [`Secret`]: it never shows up in `Debug` output (logs, panics,
//! test failures) and its bytes are wiped when it is dropped.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret string (an unpadded base64 private key): redacted in `Debug`, zeroized on drop,
/// compared in constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it (importing the key).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// The three private cross-signing keys (unpadded base64 Ed25519 seeds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossSigningSecrets {
    pub master_key: Secret,
    pub self_signing_key: Secret,
    pub user_signing_key: Secret,
}

/// The server-side key backup the new device may enable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSecrets {
    /// e.g. `m.megolm_backup.v1.curve25519-aes-sha2`.
    pub algorithm: String,
    pub key: Secret,
    pub backup_version: String,
}

/// Body of `m.login.secrets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsMessage {
    pub cross_signing: CrossSigningSecrets,
    /// matrix-sdk writes `null` when there is no backup; we do the same, and accept an
    /// absent field too.
    #[serde(default)]
    pub backup: Option<BackupSecrets>,
}

//! Curve25519 public keys as they appear in QR codes and on the wire.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;

/// A raw 32-byte X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

/// Why a public key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("public key is not valid unpadded base64")]
    Base64,
    #[error("public key must be 32 bytes, got {0}")]
    Length(usize),
}

impl PublicKey {
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Unpadded standard base64, the form used everywhere in the protocol.
    pub fn to_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.0)
    }

    /// Accepts unpadded or padded standard base64.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| KeyError::Base64)?;
        Self::from_slice(&bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        Ok(Self(arr))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

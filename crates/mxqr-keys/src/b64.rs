//! Unpadded base64 as the Matrix spec uses it for keys and signatures.
//!
//! We decode ourselves rather than through vodozemac's `from_base64` helpers: those copy the
//! decoded bytes into a fixed array without checking the length first, so a 44-character
//! unpadded string (33 bytes) from an untrusted upload would panic the server.

use base64::Engine;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};
use zeroize::Zeroizing;

/// Standard alphabet, no padding written; padding accepted on input because the spec
/// appendix says decoders SHOULD accept both. Non-zero trailing bits are accepted as most
/// Matrix implementations (Python's base64, libolm) do: the spec's own test-vector seed
/// `…XA1` has them.
const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Why a base64 key could not be turned into key bytes.
///
/// Deliberately carries no input bytes: the input may be a private key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyDecodeError {
    #[error("key is not valid base64")]
    Base64,
    #[error("key is {actual} bytes long, expected {expected}")]
    Length { expected: usize, actual: usize },
    #[error("bytes are not a valid Ed25519 public key")]
    InvalidEd25519,
}

/// Encodes bytes as unpadded standard base64.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    ENGINE.encode(bytes)
}

/// Decodes unpadded (or padded) base64; the result is wiped on drop since it may be a secret.
pub(crate) fn decode(input: &str) -> Option<Zeroizing<Vec<u8>>> {
    ENGINE.decode(input).ok().map(Zeroizing::new)
}

/// Decodes base64 that must hold exactly `N` bytes, wiping every intermediate copy.
pub(crate) fn decode_array<const N: usize>(
    input: &str,
) -> Result<Zeroizing<[u8; N]>, KeyDecodeError> {
    let bytes = decode(input).ok_or(KeyDecodeError::Base64)?;
    if bytes.len() != N {
        return Err(KeyDecodeError::Length {
            expected: N,
            actual: bytes.len(),
        });
    }
    let mut out = Zeroizing::new([0u8; N]);
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// Parses an Ed25519 public key from (un)padded base64, refusing wrong lengths and bytes that
/// are not a curve point instead of panicking on them.
pub fn ed25519_public_key_from_base64(input: &str) -> Result<Ed25519PublicKey, KeyDecodeError> {
    let bytes = decode_array::<32>(input)?;
    Ed25519PublicKey::from_slice(&bytes).map_err(|_| KeyDecodeError::InvalidEd25519)
}

/// Parses a Curve25519 public key from (un)padded base64; any 32 bytes are a valid key.
pub fn curve25519_public_key_from_base64(
    input: &str,
) -> Result<Curve25519PublicKey, KeyDecodeError> {
    let bytes = decode_array::<32>(input)?;
    Ok(Curve25519PublicKey::from_bytes(*bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_appendix_examples() {
        let cases = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(encode(plain), encoded);
            assert_eq!(
                decode(encoded).as_deref().map(Vec::as_slice),
                Some(plain.as_bytes())
            );
        }
    }

    #[test]
    fn accepts_padding_on_input() {
        assert_eq!(
            decode("Zg==").as_deref().map(Vec::as_slice),
            Some(&b"f"[..])
        );
    }

    #[test]
    fn wrong_length_is_an_error_not_a_panic() {
        // 44 characters without padding decode to 33 bytes.
        let long = "A".repeat(44);
        assert_eq!(
            decode_array::<32>(&long).map(|_| ()),
            Err(KeyDecodeError::Length {
                expected: 32,
                actual: 33
            })
        );
        assert_eq!(
            decode_array::<32>("not base64!").map(|_| ()),
            Err(KeyDecodeError::Base64)
        );
    }
}

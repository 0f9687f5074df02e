//! Device IDs as the new device announces them in `m.login.protocol`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest device ID accepted; matrix-sdk's are 43 characters, Synapse's 10.
const MAX_LEN: usize = 255;

/// A Matrix device ID.
///
/// Only the characters device IDs are made of: letters, digits and `._~+/=-`. That covers
/// Synapse's upper-case IDs and base64 in both alphabets, padded or not (matrix-sdk uses
/// the unpadded Curve25519 identity key, so `+` and `/` must pass). Refused is what would
/// break the places the ID goes: whitespace (scopes are space-separated), control
/// characters and non-ASCII (HTTP paths and logs), URL syntax (`%`, `?`, `#`, `\`),
/// the dot segments `.` and `..` (which a URL path resolves away), and empty or overlong
/// IDs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

/// Why a string is not a usable device ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device ID is empty")]
    Empty,
    #[error("device ID is {0} bytes long, at most {MAX_LEN} are allowed")]
    TooLong(usize),
    #[error("device ID contains a character other than letters, digits and `._~+/=-` at byte {0}")]
    BadCharacter(usize),
    #[error("`.` and `..` are not device IDs")]
    DotSegment,
}

/// The characters of a device ID besides ASCII letters and digits.
const PUNCTUATION: &[u8] = b"._~+/=-";

impl DeviceId {
    pub fn new(id: impl Into<String>) -> Result<Self, DeviceIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if id.len() > MAX_LEN {
            return Err(DeviceIdError::TooLong(id.len()));
        }
        if let Some(at) = id
            .bytes()
            .position(|b| !b.is_ascii_alphanumeric() && !PUNCTUATION.contains(&b))
        {
            return Err(DeviceIdError::BadCharacter(at));
        }
        if id == "." || id == ".." {
            return Err(DeviceIdError::DotSegment);
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = String::deserialize(deserializer)?;
        DeviceId::new(id).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_base64_curve25519_key() {
        let id = "wMMTDKJ5CYj0aC9Wj0pjB0gx1/tG+c8Ie2XyHcD8eWg";
        assert_eq!(id.len(), 43);
        assert_eq!(DeviceId::new(id).unwrap().as_str(), id);
    }

    #[test]
    fn refuses_what_breaks_scopes_and_paths() {
        assert_eq!(DeviceId::new(""), Err(DeviceIdError::Empty));
        assert_eq!(DeviceId::new("AB CD"), Err(DeviceIdError::BadCharacter(2)));
        assert_eq!(DeviceId::new("AB\nCD"), Err(DeviceIdError::BadCharacter(2)));
        assert_eq!(DeviceId::new("ABé"), Err(DeviceIdError::BadCharacter(2)));
        assert_eq!(
            DeviceId::new("A".repeat(256)),
            Err(DeviceIdError::TooLong(256))
        );
        assert!(DeviceId::new("A".repeat(255)).is_ok());
    }

    #[test]
    fn dot_segments_are_not_device_ids() {
        assert_eq!(DeviceId::new("."), Err(DeviceIdError::DotSegment));
        assert_eq!(DeviceId::new(".."), Err(DeviceIdError::DotSegment));
        assert!(DeviceId::new("...").is_ok());
        assert!(DeviceId::new(".A").is_ok());
    }

    #[test]
    fn only_the_characters_clients_use() {
        // Synapse's IDs, standard and URL-safe unpadded and padded base64.
        for id in ["ABCDEFGHIJ", "a+b/c=", "a-b_c~d.e", "0123456789"] {
            assert!(DeviceId::new(id).is_ok(), "{id}");
        }
        for (id, at) in [
            ("AB%2e", 2),
            ("AB?x", 2),
            ("AB#x", 2),
            ("A\\B", 1),
            ("A&B", 1),
            ("A;B", 1),
            ("A:B", 1),
            ("A\"B", 1),
            ("A<B", 1),
            ("A@B", 1),
        ] {
            assert_eq!(
                DeviceId::new(id),
                Err(DeviceIdError::BadCharacter(at)),
                "{id}"
            );
        }
    }
}

//! Argon2id password hashes (PHC strings) and Matrix localpart rules.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Shortest password accepted when an account is created or registered.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// Argon2id hash of `password` with a fresh 128-bit salt and the crate's default parameters
/// (19 MiB, 2 passes: OWASP's minimum for argon2id).
pub fn hash(password: &str) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| HashError(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches the PHC string `stored` (constant-time inside argon2).
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash of a random password, verified against when the user does not exist so that the
/// response time does not reveal which usernames exist.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        hash(&hex::encode(rand::random::<[u8; 16]>())).unwrap_or_default()
    });
    &DUMMY
}

/// Matrix user ID grammar for new localparts: `[a-z0-9._=/+-]`, 1–255 bytes.
pub fn valid_localpart(localpart: &str) -> bool {
    !localpart.is_empty()
        && localpart.len() <= 255
        && localpart
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/+".contains(&b))
}

/// `alice`, `@alice` or `@alice:server` → `alice` (for the sign-in form).
pub fn localpart_of(input: &str, server_name: &str) -> String {
    let trimmed = input.trim();
    let without_at = trimmed.strip_prefix('@').unwrap_or(trimmed);
    let local = match without_at.rsplit_once(':') {
        Some((local, server)) if server == server_name || without_at.len() != trimmed.len() => {
            local
        }
        _ => without_at,
    };
    local.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        assert!(!verify("x", "not a phc string"));
    }

    #[test]
    fn localparts() {
        assert!(valid_localpart("alice.b-c_d=e/f+g"));
        assert!(!valid_localpart("Alice"));
        assert!(!valid_localpart(""));
        assert!(!valid_localpart("a b"));
        assert_eq!(localpart_of("@alice:example.org", "example.org"), "alice");
        assert_eq!(localpart_of(" Alice ", "example.org"), "alice");
    }
}

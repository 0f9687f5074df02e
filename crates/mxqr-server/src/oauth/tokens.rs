//! Secrets handed to clients and browsers: tokens, codes, user codes, PKCE.
//!
//! Tokens look like `mxqr_at_<43 base62 chars>_<6 base62 chars>`: 43 base62 characters carry
//! 256 random bits, the prefix tells what leaked when one shows up in a log or a secret
//! scanner, and the CRC-32 suffix lets malformed tokens be refused without a database lookup.
//! Only SHA-256 digests are stored.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt;
use sha2::{Digest, Sha256};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Random characters in a token: 43 × log2(62) ≈ 256 bits.
const RANDOM_CHARS: usize = 43;

/// Characters of the checksum: 62^6 > 2^32.
const CHECKSUM_CHARS: usize = 6;

/// RFC 8628 §6.1: 20 consonants, no vowels (no words), no easily confused letters.
pub const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";

/// Letters in a user code: 20^8 ≈ 2^34.6, with attempt caps and rate limits on entry.
pub const USER_CODE_LEN: usize = 8;

/// What a token is for; the prefix is part of the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Access token.
    Access,
    /// Refresh token.
    Refresh,
    /// Authorization code.
    AuthCode,
    /// Device code (RFC 8628).
    DeviceCode,
    /// Browser session cookie.
    BrowserSession,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Access => "mxqr_at_",
            Kind::Refresh => "mxqr_rt_",
            Kind::AuthCode => "mxqr_ac_",
            Kind::DeviceCode => "mxqr_dc_",
            Kind::BrowserSession => "mxqr_bs_",
        }
    }
}

/// `len` characters drawn uniformly from `alphabet`.
fn random_chars(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

fn checksum(body: &str) -> String {
    let mut value = crc32fast::hash(body.as_bytes());
    let mut out = [b'0'; CHECKSUM_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A fresh random token of `kind`.
pub fn generate(kind: Kind) -> String {
    let body = format!("{}{}", kind.prefix(), random_chars(BASE62, RANDOM_CHARS));
    let sum = checksum(&body);
    format!("{body}_{sum}")
}

/// Whether `token` has the shape and checksum of a token of `kind`.
pub fn well_formed(kind: Kind, token: &str) -> bool {
    let Some(rest) = token.strip_prefix(kind.prefix()) else {
        return false;
    };
    let Some((random, sum)) = rest.split_once('_') else {
        return false;
    };
    random.len() == RANDOM_CHARS
        && sum.len() == CHECKSUM_CHARS
        && random.bytes().all(|b| b.is_ascii_alphanumeric())
        && checksum(&token[..token.len() - CHECKSUM_CHARS - 1]) == sum
}

/// Lowercase hex SHA-256 of a secret: what the database stores and looks up.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A random value for the CSRF nonce cookie (not stored server-side).
pub fn csrf_token() -> String {
    random_chars(BASE62, RANDOM_CHARS)
}

/// A fresh user code, normalized (8 letters, no dash).
pub fn user_code() -> String {
    random_chars(USER_CODE_ALPHABET, USER_CODE_LEN)
}

/// `WDJBMJHT` → `WDJB-MJHT`, the form shown to people.
pub fn display_user_code(code: &str) -> String {
    if code.len() == USER_CODE_LEN && code.is_ascii() {
        format!("{}-{}", &code[..4], &code[4..])
    } else {
        code.to_owned()
    }
}

/// What a person typed → the normalized code: case, spaces and dashes do not matter.
/// `None` when it cannot be a user code.
pub fn normalize_user_code(input: &str) -> Option<String> {
    let code: String = input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)))
        .then_some(code)
}

/// RFC 7636 S256: BASE64URL(SHA-256(verifier)), unpadded.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.1: 43–128 characters of `[A-Za-z0-9-._~]`. The same grammar bounds a
/// `code_challenge` (an S256 challenge is always 43 characters).
pub fn valid_pkce_string(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_prefix_checksum_and_differ() {
        let a = generate(Kind::Access);
        let b = generate(Kind::Access);
        assert_ne!(a, b);
        assert!(a.starts_with("mxqr_at_"));
        assert_eq!(a.len(), "mxqr_at_".len() + 43 + 1 + 6);
        assert!(well_formed(Kind::Access, &a));
        assert!(!well_formed(Kind::Refresh, &a));
        // One changed character breaks the checksum.
        let mut broken = a.clone().into_bytes();
        broken[10] = if broken[10] == b'A' { b'B' } else { b'A' };
        assert!(!well_formed(
            Kind::Access,
            &String::from_utf8(broken).unwrap()
        ));
        assert!(!well_formed(Kind::Access, "mxqr_at_short_000000"));
    }

    #[test]
    fn user_codes_normalize_and_display() {
        let code = user_code();
        assert_eq!(code.len(), 8);
        assert!(code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)));
        assert_eq!(display_user_code("WDJBMJHT"), "WDJB-MJHT");
        assert_eq!(normalize_user_code(" wdjb-mjht "), Some("WDJBMJHT".into()));
        assert_eq!(normalize_user_code("WDJB MJHT"), Some("WDJBMJHT".into()));
        assert_eq!(normalize_user_code("WDJB-MJHA"), None, "vowel");
        assert_eq!(normalize_user_code("WDJB-MJH"), None, "short");
    }

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(valid_pkce_string(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        ));
        assert!(!valid_pkce_string("too-short"));
        assert!(!valid_pkce_string(&"a+".repeat(30)));
    }
}

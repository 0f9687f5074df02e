//! Session IDs and sequence tokens: compact integers in memory, Crockford base32 on the wire.
//!
//! IDs are 128 random bits (the ID is the capability to read a session, so it must be
//! unguessable); tokens are 64 random bits, redrawn until they differ from the ones a session
//! currently holds, so every write yields a new token even when the data is identical.

use std::fmt;
use std::str::FromStr;

use rand::RngExt;

/// Crockford base32 alphabet (no I, L, O, U): URL-safe and case-insensitive on input.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters in a rendered [`SessionId`] (26 × 5 bits ≥ 128 bits, as in a ULID).
const ID_CHARS: usize = 26;
/// Characters in a rendered [`SequenceToken`] (13 × 5 bits ≥ 64 bits).
const TOKEN_CHARS: usize = 13;

/// Writes `value` as its last `N` base32 digits.
fn render<const N: usize>(mut value: u128, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut buf = [0u8; N];
    for slot in buf.iter_mut().rev() {
        *slot = ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    // The alphabet is ASCII, so this cannot fail.
    f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
}

fn decode(text: &str, chars: usize, bits: u32) -> Option<u128> {
    if text.len() != chars {
        return None;
    }
    let mut value: u128 = 0;
    for byte in text.bytes() {
        let digit = match byte.to_ascii_uppercase() {
            b @ b'0'..=b'9' => b - b'0',
            b'O' => 0,
            b'I' | b'L' => 1,
            b => ALPHABET.iter().position(|&a| a == b)? as u8,
        };
        if value >> (128 - 5) != 0 {
            return None; // would not fit in 128 bits
        }
        value = (value << 5) | u128::from(digit);
    }
    // Reject renderings whose leading padding bits are set: each value has one spelling.
    if bits < 128 && (value >> bits) != 0 {
        return None;
    }
    Some(value)
}

/// Identifier of one rendezvous session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SessionId(pub(crate) u128);

impl SessionId {
    /// A fresh random ID.
    pub fn random() -> Self {
        Self(rand::rng().random())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render::<ID_CHARS>(self.0, f)
    }
}

impl FromStr for SessionId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode(s, ID_CHARS, 128).map(Self).ok_or(InvalidId)
    }
}

/// Text that is not an ID or token this server could have issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an identifier issued by this server")]
pub struct InvalidId;

/// Version of a session's payload (`sequence_token` in MSC4388, the ETag in MSC4108).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SequenceToken(pub(crate) u64);

impl SequenceToken {
    /// A random token different from every token in `avoid` (and from zero, which the memory
    /// store uses for "no previous token").
    pub fn fresh(avoid: &[u64]) -> Self {
        let mut rng = rand::rng();
        loop {
            let candidate: u64 = rng.random();
            if candidate != 0 && !avoid.contains(&candidate) {
                return Self(candidate);
            }
        }
    }
}

impl fmt::Display for SequenceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render::<TOKEN_CHARS>(u128::from(self.0), f)
    }
}

impl FromStr for SequenceToken {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode(s, TOKEN_CHARS, 64)
            .and_then(|v| u64::try_from(v).ok())
            .map(Self)
            .ok_or(InvalidId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_foreign_text() {
        for value in [
            0u128,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            let id = SessionId(value);
            let text = id.to_string();
            assert_eq!(text.len(), 26);
            assert_eq!(text.parse::<SessionId>(), Ok(id));
            assert_eq!(text.to_ascii_lowercase().parse::<SessionId>(), Ok(id));
        }
        assert!("".parse::<SessionId>().is_err());
        assert!("01ARZ3NDEKTSV4RRFFQ69G5FA".parse::<SessionId>().is_err());
        assert!("01ARZ3NDEKTSV4RRFFQ69G5FAV!".parse::<SessionId>().is_err());
        assert!("0000000000000000000000000U".parse::<SessionId>().is_err());
        // 26 chars carry 130 bits: a set top bit is not a 128-bit value.
        assert!("Z0000000000000000000000000".parse::<SessionId>().is_err());
    }

    #[test]
    fn tokens_round_trip_and_avoid_given_values() {
        for value in [1u64, u64::MAX, 42] {
            let token = SequenceToken(value);
            assert_eq!(token.to_string().parse::<SequenceToken>(), Ok(token));
        }
        assert!("ZZZZZZZZZZZZZ".parse::<SequenceToken>().is_err());
        let a = SequenceToken::fresh(&[]);
        let b = SequenceToken::fresh(&[a.0]);
        assert_ne!(a, b);
        assert_ne!(a.0, 0);
    }
}

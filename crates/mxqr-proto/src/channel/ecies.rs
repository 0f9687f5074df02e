//! MSC4108 (2024) ECIES key derivation, as vodozemac 0.11.1 does it: HKDF-SHA512 over the
//! X25519 shared secret, no salt, info strings naming G's then S's base64 public key.
//! (The proposal text says HKDF-SHA256; every shipping client uses SHA-512, and interop wins.)

use hkdf::Hkdf;
use sha2::Sha512;
use x25519_dalek::{PublicKey as XPublicKey, StaticSecret};

use super::APP_INFO;
use super::check_code::{CheckCode, DigitRule};
use super::stream::{Direction, NonceRule};
use crate::PublicKey;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    G,
    S,
}

pub(super) struct Keys {
    pub(super) send: Direction,
    pub(super) recv: Direction,
    pub(super) check_code: CheckCode,
}

impl Keys {
    /// `None` when the peer's key is a low-order point (no contributory shared secret).
    pub(super) fn derive(
        secret: &StaticSecret,
        ours: PublicKey,
        theirs: PublicKey,
        side: Side,
    ) -> Option<Self> {
        let shared = secret.diffie_hellman(&XPublicKey::from(theirs.0));
        if !shared.was_contributory() {
            return None;
        }
        let (g, s) = match side {
            Side::G => (ours, theirs),
            Side::S => (theirs, ours),
        };
        let hk = Hkdf::<Sha512>::new(None, shared.as_bytes());
        let info = |label: &str| format!("{APP_INFO}_{label}|{}|{}", g.to_base64(), s.to_base64());
        let key = |label: &str| {
            let mut k = [0u8; 32];
            // 32 bytes is far below HKDF-SHA512's output limit.
            let _ = hk.expand(info(label).as_bytes(), &mut k);
            Direction::new(k, NonceRule::LittleEndianCounter)
        };
        let (to_g, to_s) = (key("ENCKEY_S"), key("ENCKEY_G"));
        let mut code = [0u8; 2];
        let _ = hk.expand(info("CHECKCODE").as_bytes(), &mut code);
        let check_code = CheckCode::new(code, DigitRule::AllowLeadingZero);
        let (send, recv) = match side {
            Side::S => (to_g, to_s),
            Side::G => (to_s, to_g),
        };
        Some(Self {
            send,
            recv,
            check_code,
        })
    }
}

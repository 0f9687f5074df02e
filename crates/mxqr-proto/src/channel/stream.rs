//! One direction of a channel: ChaCha20-Poly1305 with an explicit message position.
//!
//! Both generations seal message `n` of a direction under a nonce derived from `n`. Keeping the
//! position ourselves (instead of inside an opaque AEAD context) lets a failed open be named
//! when, and only when, the payload authenticates somewhere else: at an earlier position it
//! was replayed, at a later one (same binding) it arrived out of order. Everything else is
//! one generic failure. Bytes that did not authenticate are never decrypted to tell more
//! (a "wrong binding" from "tampered", say): what they decrypt to is the attacker's choice,
//! and a diagnosis that depends on it is an oracle.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of the Poly1305 tag appended to every ciphertext.
pub(crate) const TAG_LEN: usize = 16;

/// How far ahead of the expected position a payload is still recognised as out of order.
const LOOKAHEAD: u64 = 8;

/// How the 12-byte nonce of position `n` is formed.
#[derive(Clone, Copy)]
pub(crate) enum NonceRule {
    /// MSC4108 2024 (ECIES): the low 12 bytes of the little-endian 128-bit counter.
    LittleEndianCounter,
    /// RFC 9180: `base_nonce XOR I2OSP(n, 12)`.
    XorBase([u8; 12]),
}

impl NonceRule {
    fn nonce(self, position: u64) -> [u8; 12] {
        match self {
            NonceRule::LittleEndianCounter => {
                let mut n = [0u8; 12];
                n[..8].copy_from_slice(&position.to_le_bytes());
                n
            }
            NonceRule::XorBase(mut base) => {
                for (b, p) in base[4..].iter_mut().zip(position.to_be_bytes()) {
                    *b ^= p;
                }
                base
            }
        }
    }
}

/// Why a payload was refused by [`Direction::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenFailure {
    Truncated,
    /// It authenticates at a position already opened.
    Replayed,
    /// It authenticates at a later position, with the expected binding.
    OutOfOrder,
    /// It authenticates nowhere we can check: tampered, sealed with other keys or for
    /// another binding. Deliberately not told apart.
    Tampered,
}

#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct Direction {
    key: [u8; 32],
    #[zeroize(skip)]
    rule: NonceRule,
    #[zeroize(skip)]
    next: u64,
    /// The associated data each already opened position was authenticated with, so that a
    /// replay can be recognised exactly even when it carries an old binding.
    #[zeroize(skip)]
    opened_aad: Vec<Vec<u8>>,
}

/// An inert direction, only to move a real one out of a borrowed state.
impl Default for Direction {
    fn default() -> Self {
        Self::new([0; 32], NonceRule::LittleEndianCounter)
    }
}

impl Direction {
    pub(crate) fn new(key: [u8; 32], rule: NonceRule) -> Self {
        Self {
            key,
            rule,
            next: 0,
            opened_aad: Vec::new(),
        }
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.key.into())
    }

    pub(crate) fn seal(&mut self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = self.rule.nonce(self.next);
        self.next += 1;
        self.cipher()
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // ChaCha20-Poly1305 fails only for plaintexts beyond 256 GiB.
            .unwrap_or_default()
    }

    fn try_open(&self, position: u64, ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let nonce = self.rule.nonce(position);
        self.cipher()
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }

    /// Opens the payload expected next. `aad` is the binding the receiver expects.
    pub(crate) fn open(&mut self, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenFailure> {
        if ciphertext.len() < TAG_LEN {
            return Err(OpenFailure::Truncated);
        }
        if let Some(plaintext) = self.try_open(self.next, ciphertext, aad) {
            self.next += 1;
            self.opened_aad.push(aad.to_vec());
            return Ok(plaintext);
        }
        Err(self.diagnose(ciphertext, aad))
    }

    /// Names a failed open from authenticated opens only.
    fn diagnose(&self, ciphertext: &[u8], aad: &[u8]) -> OpenFailure {
        // A payload already opened, presented again (with the binding it had then, or ours).
        for (position, old_aad) in self.opened_aad.iter().enumerate() {
            let position = position as u64;
            if self.try_open(position, ciphertext, old_aad).is_some()
                || self.try_open(position, ciphertext, aad).is_some()
            {
                return OpenFailure::Replayed;
            }
        }
        // A payload from later in the conversation. Only where the binding does not change
        // from one payload to the next (ECIES binds nothing) can this authenticate.
        for position in self.next + 1..=self.next + LOOKAHEAD {
            if self.try_open(position, ciphertext, aad).is_some() {
                return OpenFailure::OutOfOrder;
            }
        }
        OpenFailure::Tampered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(rule: NonceRule) -> (Direction, Direction) {
        (Direction::new([7; 32], rule), Direction::new([7; 32], rule))
    }

    #[test]
    fn xor_nonce_puts_the_position_in_the_low_bytes() {
        let rule = NonceRule::XorBase([0xff; 12]);
        let n = rule.nonce(1);
        assert_eq!(&n[..11], &[0xff; 11]);
        assert_eq!(n[11], 0xfe);
        assert_eq!(NonceRule::LittleEndianCounter.nonce(258)[..2], [2, 1]);
    }

    #[test]
    fn in_order_messages_open() {
        for rule in [NonceRule::LittleEndianCounter, NonceRule::XorBase([3; 12])] {
            let (mut a, mut b) = pair(rule);
            for i in 0..5u8 {
                let ct = a.seal(&[b'm', b's', b'g', i], b"ad");
                assert_eq!(b.open(&ct, b"ad").unwrap(), [b'm', b's', b'g', i]);
            }
        }
    }

    #[test]
    fn each_authenticated_failure_is_named() {
        let (mut a, mut b) = pair(NonceRule::XorBase([9; 12]));
        let first = a.seal(b"msg one", b"t0");
        assert_eq!(b.open(&first, b"t0").unwrap(), b"msg one");
        assert_eq!(b.open(&first, b"t1"), Err(OpenFailure::Replayed));

        let (mut a, mut b) = pair(NonceRule::LittleEndianCounter);
        let _skipped = a.seal(b"msg two", b"");
        let third = a.seal(b"msg three", b"");
        assert_eq!(b.open(&third, b""), Err(OpenFailure::OutOfOrder));

        let mut ct = a.seal(b"msg", b"");
        ct[0] ^= 0x80;
        assert_eq!(b.open(&ct, b""), Err(OpenFailure::Tampered));
        assert_eq!(b.open(&ct[..TAG_LEN - 1], b""), Err(OpenFailure::Truncated));
    }

    #[test]
    fn what_does_not_authenticate_is_not_told_apart() {
        let (mut a, mut b) = pair(NonceRule::XorBase([9; 12]));
        let _skipped = a.seal(b"msg two", b"t1");
        let later = a.seal(b"msg three", b"t2");
        // Later, but under a binding the receiver cannot know yet.
        assert_eq!(b.open(&later, b"t1"), Err(OpenFailure::Tampered));
        let (mut a, mut b) = pair(NonceRule::XorBase([9; 12]));
        let other = a.seal(b"msg", b"another rendezvous");
        assert_eq!(
            b.open(&other, b"this rendezvous"),
            Err(OpenFailure::Tampered)
        );
        let mut tag = a.seal(b"msg", b"this rendezvous");
        *tag.last_mut().unwrap() ^= 1;
        assert_eq!(b.open(&tag, b"this rendezvous"), Err(OpenFailure::Tampered));
    }

    #[test]
    fn failures_do_not_advance_the_position() {
        let (mut a, mut b) = pair(NonceRule::LittleEndianCounter);
        let ct = a.seal(b"msg", b"");
        let mut bad = ct.clone();
        bad[1] ^= 1;
        assert!(b.open(&bad, b"").is_err());
        assert_eq!(b.open(&ct, b"").unwrap(), b"msg");
    }
}

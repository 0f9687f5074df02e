//! RFC 9180 HPKE, base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305,
//! and the response direction MSC4388 adds on top of it.
//!
//! The key schedule is written out (rather than taken from an AEAD context that hides its
//! sequence number) so that [`super::stream::Direction`] can recognise replays. It is
//! checked against vodozemac's `hpke` module and the `hpke` crate in the tests.

use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey as XPublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::stream::{Direction, NonceRule};

const KEM_SUITE: &[u8] = b"KEM\x00\x20";
const HPKE_SUITE: &[u8] = b"HPKE\x00\x20\x00\x01\x00\x03";
const VERSION: &[u8] = b"HPKE-v1";

fn labeled_extract(suite: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> [u8; 32] {
    let labeled_ikm = [VERSION, suite, label, ikm].concat();
    let (prk, _) = Hkdf::<Sha256>::extract(Some(salt), &labeled_ikm);
    prk.into()
}

fn labeled_expand(suite: &[u8], prk: &[u8; 32], label: &[u8], info: &[u8], out: &mut [u8]) {
    let len = (out.len() as u16).to_be_bytes();
    let labeled_info = [&len[..], VERSION, suite, label, info].concat();
    // A 32-byte PRK is always valid and every caller asks for at most 32 bytes.
    if let Ok(hk) = Hkdf::<Sha256>::from_prk(prk) {
        let _ = hk.expand(&labeled_info, out);
    }
}

/// DHKEM ExtractAndExpand: the KEM shared secret from the DH output and `enc || pkR`.
fn kem_shared_secret(dh: &[u8; 32], enc: &[u8; 32], pk_r: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let eae_prk = Zeroizing::new(labeled_extract(KEM_SUITE, b"", b"eae_prk", dh));
    let context = [&enc[..], &pk_r[..]].concat();
    let mut out = Zeroizing::new([0u8; 32]);
    labeled_expand(
        KEM_SUITE,
        &eae_prk,
        b"shared_secret",
        &context,
        &mut out[..],
    );
    out
}

/// The sender→recipient context of RFC 9180 section 5.1 (base mode, no PSK).
pub(crate) struct Context {
    pub(crate) key: Zeroizing<[u8; 32]>,
    pub(crate) base_nonce: [u8; 12],
    exporter_secret: Zeroizing<[u8; 32]>,
}

impl Context {
    fn key_schedule(shared_secret: &[u8; 32], info: &[u8]) -> Self {
        let psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"");
        let info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info);
        let context = [&[0u8][..], &psk_id_hash, &info_hash].concat();
        let secret = Zeroizing::new(labeled_extract(HPKE_SUITE, shared_secret, b"secret", b""));

        let mut key = Zeroizing::new([0u8; 32]);
        let mut base_nonce = [0u8; 12];
        let mut exporter_secret = Zeroizing::new([0u8; 32]);
        labeled_expand(HPKE_SUITE, &secret, b"key", &context, &mut key[..]);
        labeled_expand(
            HPKE_SUITE,
            &secret,
            b"base_nonce",
            &context,
            &mut base_nonce,
        );
        labeled_expand(
            HPKE_SUITE,
            &secret,
            b"exp",
            &context,
            &mut exporter_secret[..],
        );
        Self {
            key,
            base_nonce,
            exporter_secret,
        }
    }

    /// RFC 9180 `Context.Export`.
    pub(crate) fn export(&self, exporter_context: &[u8], out: &mut [u8]) {
        labeled_expand(
            HPKE_SUITE,
            &self.exporter_secret,
            b"sec",
            exporter_context,
            out,
        );
    }

    pub(crate) fn direction(&self) -> Direction {
        Direction::new(*self.key, NonceRule::XorBase(self.base_nonce))
    }

    /// `SetupBaseS`: encapsulate to `pk_r` with the ephemeral `sk_e`.
    pub(crate) fn setup_sender(
        sk_e: &StaticSecret,
        pk_r: &[u8; 32],
        info: &[u8],
    ) -> Option<(Self, [u8; 32])> {
        let enc = XPublicKey::from(sk_e).to_bytes();
        let dh = sk_e.diffie_hellman(&XPublicKey::from(*pk_r));
        if !dh.was_contributory() {
            return None;
        }
        let shared = kem_shared_secret(dh.as_bytes(), &enc, pk_r);
        Some((Self::key_schedule(&shared, info), enc))
    }

    /// `SetupBaseR`: decapsulate `enc` with the recipient's `sk_r`.
    pub(crate) fn setup_receiver(sk_r: &StaticSecret, enc: &[u8; 32], info: &[u8]) -> Option<Self> {
        let pk_r = XPublicKey::from(sk_r).to_bytes();
        let dh = sk_r.diffie_hellman(&XPublicKey::from(*enc));
        if !dh.was_contributory() {
            return None;
        }
        let shared = kem_shared_secret(dh.as_bytes(), enc, &pk_r);
        Some(Self::key_schedule(&shared, info))
    }

    /// The G→S direction of MSC4388: keyed from an export of this context, salted with the
    /// encapsulated key and G's random response nonce.
    pub(crate) fn response_direction(
        &self,
        info_prefix: &str,
        enc: &[u8; 32],
        response_nonce: &[u8; 32],
    ) -> Direction {
        let mut secret = Zeroizing::new([0u8; 32]);
        self.export(
            format!("{info_prefix}_RESPONSE").as_bytes(),
            &mut secret[..],
        );
        let salt = [&enc[..], &response_nonce[..]].concat();
        let hk = Hkdf::<Sha256>::new(Some(&salt), &secret[..]);
        let mut key = [0u8; 32];
        let mut nonce = [0u8; 12];
        // Lengths of 32 and 12 bytes are far below HKDF-SHA256's limit.
        let _ = hk.expand(b"key", &mut key);
        let _ = hk.expand(b"nonce", &mut nonce);
        Direction::new(key, NonceRule::XorBase(nonce))
    }
}

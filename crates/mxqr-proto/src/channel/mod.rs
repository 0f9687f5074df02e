//! The secure channel between the two devices (docs/protocol.md §4).
//!
//! G shows the QR code with its ephemeral public key; S scans it and speaks first. The
//! handshake is S's `MATRIX_QR_CODE_LOGIN_INITIATE` and G's `MATRIX_QR_CODE_LOGIN_OK`; S then
//! shows a two-digit check code that the user types on G, and only then does G trust the
//! channel. The typestates below make that order the only one that compiles:
//!
//! ```text
//! G: GeneratorChannel --receive_initiate--> UnconfirmedChannel --seal_ok, confirm--> EstablishedChannel
//! S: ScannerChannel::initiate --receive_ok--> EstablishedChannel (shows check_code)
//! ```
//!
//! MSC4108 (2024) uses ECIES (X25519, HKDF-SHA512, ChaCha20-Poly1305); MSC4388 uses HPKE
//! (RFC 9180) with a response direction, each payload bound to its rendezvous by
//! [`Binding`]. Both are byte-compatible with vodozemac 0.11.1's `ecies` and `hpke`.

mod binding;
mod check_code;
mod ecies;
mod hpke;
mod stream;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use rand_core::CryptoRng;
use x25519_dalek::{PublicKey as XPublicKey, StaticSecret};

pub use binding::{AAD_LAYOUT, AadLayout, Binding};
pub use check_code::{CheckCode, DigitRule};

use crate::{Generation, PublicKey};
use stream::{Direction, OpenFailure, TAG_LEN};

/// Prefix of every HKDF/HPKE info string of the protocol.
pub const APP_INFO: &str = "MATRIX_QR_CODE_LOGIN";
/// S's first plaintext.
pub const INITIATE: &[u8] = b"MATRIX_QR_CODE_LOGIN_INITIATE";
/// G's first plaintext.
pub const OK: &[u8] = b"MATRIX_QR_CODE_LOGIN_OK";

/// Why a payload or a handshake step was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    #[error("payload is not in the channel's wire format (base64, separators, key)")]
    Malformed,
    #[error("payload is too short to hold a sealed message")]
    Truncated,
    #[error("the handshake message is not the one expected at this step")]
    UnexpectedHandshake,
    #[error("the check code entered does not match the one shown on the other device")]
    CheckCodeMismatch,
    #[error("payload was already received once (replayed)")]
    Replayed,
    #[error("payload belongs later in the conversation: a message was skipped or reordered")]
    OutOfOrder,
    /// Every payload that authenticates nowhere: altered, sealed with other keys, or for
    /// another rendezvous or point of this one. Telling these apart would take decrypting
    /// bytes that failed authentication, so they are one error.
    #[error(
        "payload failed authentication (tampered, sealed with other keys, or for another place)"
    )]
    Tampered,
    #[error("the peer's public key is a low-order point")]
    NonContributoryKey,
    #[error("the OK message must be sealed before the check code is confirmed")]
    HandshakeIncomplete,
}

impl From<OpenFailure> for ChannelError {
    fn from(f: OpenFailure) -> Self {
        match f {
            OpenFailure::Truncated => ChannelError::Truncated,
            OpenFailure::Replayed => ChannelError::Replayed,
            OpenFailure::OutOfOrder => ChannelError::OutOfOrder,
            OpenFailure::Tampered => ChannelError::Tampered,
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

/// Unpadded standard base64 as sent by every client; padded input is accepted too.
fn unb64(s: &str) -> Result<Vec<u8>, ChannelError> {
    let s = s.trim();
    if s.ends_with('=') {
        STANDARD.decode(s)
    } else {
        STANDARD_NO_PAD.decode(s)
    }
    .map_err(|_| ChannelError::Malformed)
}

fn aad_for(generation: Generation, binding: &Binding) -> Vec<u8> {
    match generation {
        // The 2024 generation seals without associated data.
        Generation::Msc4108v2024 => Vec::new(),
        Generation::Msc4388 => binding.aad(),
    }
}

fn open_expecting(
    dir: &mut Direction,
    ciphertext: &[u8],
    aad: &[u8],
    expected: &[u8],
) -> Result<(), ChannelError> {
    let plaintext = dir.open(ciphertext, aad)?;
    if plaintext == expected {
        Ok(())
    } else {
        Err(ChannelError::UnexpectedHandshake)
    }
}

fn split_prefix(bytes: &[u8]) -> Result<([u8; 32], &[u8]), ChannelError> {
    if bytes.len() < 32 + TAG_LEN {
        return Err(ChannelError::Truncated);
    }
    let (head, rest) = bytes.split_at(32);
    let mut arr = [0u8; 32];
    arr.copy_from_slice(head);
    Ok((arr, rest))
}

/// G before S has spoken: holds the ephemeral secret whose public key is in the QR code.
pub struct GeneratorChannel {
    generation: Generation,
    secret: StaticSecret,
    public_key: PublicKey,
}

impl std::fmt::Debug for GeneratorChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratorChannel")
            .field("generation", &self.generation)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl GeneratorChannel {
    pub fn new<R: CryptoRng + ?Sized>(generation: Generation, rng: &mut R) -> Self {
        Self::from_secret(generation, StaticSecret::random_from_rng(rng))
    }

    /// For known-answer tests: a channel from a fixed secret.
    pub fn from_secret_bytes(generation: Generation, secret: [u8; 32]) -> Self {
        Self::from_secret(generation, StaticSecret::from(secret))
    }

    fn from_secret(generation: Generation, secret: StaticSecret) -> Self {
        let public_key = PublicKey(XPublicKey::from(&secret).to_bytes());
        Self {
            generation,
            secret,
            public_key,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Opens S's first payload, which must be `MATRIX_QR_CODE_LOGIN_INITIATE`.
    pub fn receive_initiate(
        self,
        payload: &str,
        binding: &Binding,
    ) -> Result<UnconfirmedChannel, ChannelError> {
        let aad = aad_for(self.generation, binding);
        let pending = match self.generation {
            Generation::Msc4108v2024 => {
                let (ciphertext, their_key) =
                    payload.split_once('|').ok_or(ChannelError::Malformed)?;
                let their_key = PublicKey(split_key(&unb64(their_key)?)?);
                let ciphertext = unb64(ciphertext)?;
                let keys =
                    ecies::Keys::derive(&self.secret, self.public_key, their_key, ecies::Side::G)
                        .ok_or(ChannelError::NonContributoryKey)?;
                let ecies::Keys {
                    send,
                    mut recv,
                    check_code,
                } = keys;
                open_expecting(&mut recv, &ciphertext, &aad, INITIATE)?;
                PendingOk::Ecies {
                    send,
                    recv,
                    check_code,
                }
            }
            Generation::Msc4388 => {
                let bytes = unb64(payload)?;
                let (enc, ciphertext) = split_prefix(&bytes)?;
                let ctx = hpke::Context::setup_receiver(&self.secret, &enc, APP_INFO.as_bytes())
                    .ok_or(ChannelError::NonContributoryKey)?;
                let mut recv = ctx.direction();
                open_expecting(&mut recv, ciphertext, &aad, INITIATE)?;
                let check_code = check_code::hpke(&ctx, &self.public_key.0, &enc);
                PendingOk::Hpke {
                    ctx,
                    enc,
                    recv,
                    check_code,
                }
            }
        };
        Ok(UnconfirmedChannel {
            generation: self.generation,
            pending,
            sent: None,
        })
    }
}

fn split_key(bytes: &[u8]) -> Result<[u8; 32], ChannelError> {
    bytes.try_into().map_err(|_| ChannelError::Malformed)
}

enum PendingOk {
    Ecies {
        send: Direction,
        recv: Direction,
        check_code: CheckCode,
    },
    Hpke {
        ctx: hpke::Context,
        enc: [u8; 32],
        recv: Direction,
        check_code: CheckCode,
    },
}

/// G after a valid INITIATE: it sends OK, then waits for the user to type S's check code.
pub struct UnconfirmedChannel {
    generation: Generation,
    pending: PendingOk,
    /// G's OK payload and the send direction after it, once sealed; resending returns the
    /// same payload so a lost PUT can be retried.
    sent: Option<(String, Direction)>,
}

impl std::fmt::Debug for UnconfirmedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnconfirmedChannel")
            .field("generation", &self.generation)
            .field("ok_sealed", &self.sent.is_some())
            .finish_non_exhaustive()
    }
}

impl UnconfirmedChannel {
    /// G's `MATRIX_QR_CODE_LOGIN_OK` payload. Idempotent: later calls return the first payload.
    pub fn seal_ok<R: CryptoRng + ?Sized>(&mut self, binding: &Binding, rng: &mut R) -> String {
        if let Some((payload, _)) = &self.sent {
            return payload.clone();
        }
        let aad = aad_for(self.generation, binding);
        let (payload, send) = match &mut self.pending {
            PendingOk::Ecies { send, .. } => {
                let mut send = std::mem::take(send);
                (b64(&send.seal(OK, &aad)), send)
            }
            PendingOk::Hpke { ctx, enc, .. } => {
                let mut response_nonce = [0u8; 32];
                rng.fill_bytes(&mut response_nonce);
                let mut send = ctx.response_direction(APP_INFO, enc, &response_nonce);
                let ciphertext = send.seal(OK, &aad);
                (b64(&[&response_nonce[..], &ciphertext].concat()), send)
            }
        };
        self.sent = Some((payload.clone(), send));
        payload
    }

    /// Compares the code the user typed with ours in constant time; a match makes the
    /// channel trusted.
    pub fn confirm(self, entered: u8) -> Result<EstablishedChannel, ChannelError> {
        let (recv, check_code) = match self.pending {
            PendingOk::Ecies {
                recv, check_code, ..
            } => (recv, check_code),
            PendingOk::Hpke {
                recv, check_code, ..
            } => (recv, check_code),
        };
        let (_, send) = self.sent.ok_or(ChannelError::HandshakeIncomplete)?;
        if !check_code.matches(entered) {
            return Err(ChannelError::CheckCodeMismatch);
        }
        Ok(EstablishedChannel {
            generation: self.generation,
            send,
            recv,
            check_code,
        })
    }
}

/// S after sending INITIATE, waiting for G's OK.
pub struct ScannerChannel {
    generation: Generation,
    state: ScannerState,
}

enum ScannerState {
    Ecies {
        send: Direction,
        recv: Direction,
        check_code: CheckCode,
    },
    Hpke {
        ctx: hpke::Context,
        enc: [u8; 32],
        send: Direction,
        check_code: CheckCode,
    },
}

impl std::fmt::Debug for ScannerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScannerChannel")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl ScannerChannel {
    /// S's state and its INITIATE payload for G's public key from the QR code.
    pub fn initiate<R: CryptoRng + ?Sized>(
        generation: Generation,
        their_key: PublicKey,
        binding: &Binding,
        rng: &mut R,
    ) -> Result<(ScannerChannel, String), ChannelError> {
        Self::initiate_with_secret(
            generation,
            their_key,
            binding,
            StaticSecret::random_from_rng(rng),
        )
    }

    /// For known-answer tests: S's ephemeral secret given.
    pub fn initiate_with_secret_bytes(
        generation: Generation,
        their_key: PublicKey,
        binding: &Binding,
        secret: [u8; 32],
    ) -> Result<(ScannerChannel, String), ChannelError> {
        Self::initiate_with_secret(generation, their_key, binding, StaticSecret::from(secret))
    }

    fn initiate_with_secret(
        generation: Generation,
        their_key: PublicKey,
        binding: &Binding,
        secret: StaticSecret,
    ) -> Result<(ScannerChannel, String), ChannelError> {
        let aad = aad_for(generation, binding);
        match generation {
            Generation::Msc4108v2024 => {
                let ours = PublicKey(XPublicKey::from(&secret).to_bytes());
                let ecies::Keys {
                    mut send,
                    recv,
                    check_code,
                } = ecies::Keys::derive(&secret, ours, their_key, ecies::Side::S)
                    .ok_or(ChannelError::NonContributoryKey)?;
                let payload = format!("{}|{}", b64(&send.seal(INITIATE, &aad)), ours.to_base64());
                Ok((
                    Self {
                        generation,
                        state: ScannerState::Ecies {
                            send,
                            recv,
                            check_code,
                        },
                    },
                    payload,
                ))
            }
            Generation::Msc4388 => {
                let (ctx, enc) =
                    hpke::Context::setup_sender(&secret, &their_key.0, APP_INFO.as_bytes())
                        .ok_or(ChannelError::NonContributoryKey)?;
                let mut send = ctx.direction();
                let ciphertext = send.seal(INITIATE, &aad);
                let check_code = check_code::hpke(&ctx, &their_key.0, &enc);
                let payload = b64(&[&enc[..], &ciphertext].concat());
                Ok((
                    Self {
                        generation,
                        state: ScannerState::Hpke {
                            ctx,
                            enc,
                            send,
                            check_code,
                        },
                    },
                    payload,
                ))
            }
        }
    }

    /// Opens G's OK; afterwards S shows [`EstablishedChannel::check_code`] to the user.
    pub fn receive_ok(
        self,
        payload: &str,
        binding: &Binding,
    ) -> Result<EstablishedChannel, ChannelError> {
        let aad = aad_for(self.generation, binding);
        let bytes = unb64(payload)?;
        let (send, recv, check_code) = match self.state {
            ScannerState::Ecies {
                send,
                mut recv,
                check_code,
            } => {
                open_expecting(&mut recv, &bytes, &aad, OK)?;
                (send, recv, check_code)
            }
            ScannerState::Hpke {
                ctx,
                enc,
                send,
                check_code,
            } => {
                let (response_nonce, ciphertext) = split_prefix(&bytes)?;
                let mut recv = ctx.response_direction(APP_INFO, &enc, &response_nonce);
                open_expecting(&mut recv, ciphertext, &aad, OK)?;
                (send, recv, check_code)
            }
        };
        Ok(EstablishedChannel {
            generation: self.generation,
            send,
            recv,
            check_code,
        })
    }
}

/// A channel after the handshake: on S as soon as OK arrived, on G once the code matched.
pub struct EstablishedChannel {
    generation: Generation,
    send: Direction,
    recv: Direction,
    check_code: CheckCode,
}

impl std::fmt::Debug for EstablishedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EstablishedChannel")
            .field("generation", &self.generation)
            .field("check_code", &self.check_code)
            .finish_non_exhaustive()
    }
}

impl EstablishedChannel {
    pub fn generation(&self) -> Generation {
        self.generation
    }

    pub fn check_code(&self) -> CheckCode {
        self.check_code
    }

    /// Seals the next message for the peer; `binding` names the PUT that will carry it.
    pub fn seal(&mut self, plaintext: &[u8], binding: &Binding) -> String {
        let aad = aad_for(self.generation, binding);
        b64(&self.send.seal(plaintext, &aad))
    }

    /// Opens the next message from the peer; `binding` is where the receiver found it.
    pub fn open(&mut self, payload: &str, binding: &Binding) -> Result<Vec<u8>, ChannelError> {
        let aad = aad_for(self.generation, binding);
        let bytes = unb64(payload)?;
        Ok(self.recv.open(&bytes, &aad)?)
    }
}

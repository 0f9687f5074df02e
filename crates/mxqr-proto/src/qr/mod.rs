//! QR payloads of both generations (PROTOCOL.md section 2).
//!
//! OWNER NOTE (remove when implemented): codec in `codec.rs`, rendering and image decoding in
//! `render.rs` (feature `image`). The types below are the contract other modules build on.

use crate::{Generation, PublicKey};

/// What the device that *shows* the QR code is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QrIntent {
    /// The new device shows the code (MSC4108 mode 0x03, MSC4388 intent 0x00).
    Login,
    /// The existing device shows the code (MSC4108 mode 0x04, MSC4388 intent 0x01).
    Reciprocate,
}

/// The two prefixes of MSC4388 QR codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Msc4388Prefix {
    /// `MATRIX`
    Stable,
    /// `IO_ELEMENT_MSC4388`, what clients emit today.
    Unstable,
}

/// Where the two devices meet, as named by the QR code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QrRendezvous {
    /// MSC4108 (2024): the absolute session URL, and, in mode 0x04 only, the homeserver as
    /// written (a server name or, as matrix-sdk writes it, a base URL).
    Msc4108 { rendezvous_url: String, homeserver: Option<String> },
    /// MSC4388: the session ID on the homeserver's rendezvous API, and that homeserver's base URL.
    Msc4388 { prefix: Msc4388Prefix, rendezvous_id: String, base_url: String },
}

/// A decoded login QR code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QrCode {
    pub intent: QrIntent,
    /// G's ephemeral public key.
    pub public_key: PublicKey,
    pub rendezvous: QrRendezvous,
}

impl QrCode {
    pub fn generation(&self) -> Generation {
        match self.rendezvous {
            QrRendezvous::Msc4108 { .. } => Generation::Msc4108v2024,
            QrRendezvous::Msc4388 { .. } => Generation::Msc4388,
        }
    }
}

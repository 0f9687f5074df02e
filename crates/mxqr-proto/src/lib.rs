//! Sans-IO core of Matrix *sign in with QR code*.
//!
//! Nothing here opens a socket, reads a clock or keeps global state: callers feed bytes and
//! events in and carry out the actions that come back. This keeps every protocol decision
//! testable without a network, and lets the same core drive a CLI, a server test harness or
//! an embedding client.
//!
//! - [`qr`]: the QR payloads of both generations (MSC4108 2024 and MSC4388), rendering and
//!   image decoding.
//! - [`channel`]: the secure channels (ECIES for MSC4108 2024, HPKE for MSC4388) with their
//!   check codes.
//! - [`messages`]: the `m.login.*` messages carried inside the channel.
//! - [`machine`]: the state machines of the new and the existing device.

pub mod channel;
pub mod keys;
pub mod machine;
pub mod messages;
pub mod qr;
pub mod token_poll;

/// The instant type of every deadline here: `std::time::Instant`, except in browsers
/// (wasm32-unknown-unknown), where `std` has no clock and `web_time::Instant` stands in.
/// The core never reads a clock: the driver passes `now` in.
pub mod time {
    #[cfg(not(all(target_family = "wasm", target_os = "unknown")))]
    pub use std::time::Instant;
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    pub use web_time::Instant;
}

pub use keys::PublicKey;

/// The two protocol generations mxqr speaks side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Generation {
    /// MSC4108 (2024 revision): QR version 0x02, ETag rendezvous, ECIES channel.
    #[serde(rename = "msc4108-2024")]
    Msc4108v2024,
    /// MSC4388: QR type 0x03, JSON rendezvous with `sequence_token`, HPKE channel.
    #[serde(rename = "msc4388")]
    Msc4388,
}

impl Generation {
    /// The name used in JSON output and test vectors.
    pub const fn as_str(self) -> &'static str {
        match self {
            Generation::Msc4108v2024 => "msc4108-2024",
            Generation::Msc4388 => "msc4388",
        }
    }
}

/// Which device is which, independently of who shows the QR code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// The device that wants to sign in.
    New,
    /// The device that is already signed in and holds the cross-signing keys.
    Existing,
}

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
//! - [`token_poll`]: the pacing of the device authorization grant's token polls.
//!
//! # Who owns time
//!
//! The core does: every deadline of the protocol (when to poll the token endpoint, how long
//! to wait for the new device to appear, how long one rendezvous read lasts) is decided
//! here, from the `now` the caller passes in with each input; nothing here reads a clock.
//! A driver asks a machine for its next deadline (`poll_timeout`), sleeps or reads until
//! then, and hands it back (`handle_timeout(now)`), in the manner of quinn-proto's
//! connections. So a second driver (a mobile app, a browser through WASM) carries out
//! requests and reports their answers, without re-implementing any protocol timing.

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

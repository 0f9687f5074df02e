//! QR payloads of both generations (docs/protocol.md §2).
//!
//! The codec ([`QrCode::decode`], [`QrCode::encode`]) lives in `codec.rs`; rendering to a
//! terminal or PNG and reading QR codes back from images live in [`render`] (feature `image`),
//! so that the sans-IO core does not pull in image libraries for callers that only parse bytes.

mod codec;

pub(crate) use codec::is_loopback;
#[cfg(feature = "image")]
pub mod render;

pub use codec::{
    EncodeError, EncodeSettings, Msc4388IdLength, QrError, QrField, UrlProblem, is_secure_url,
    msc4108, msc4388,
};

use crate::{DeviceKind, Generation, PublicKey};

/// What the device that *shows* the QR code is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QrIntent {
    /// The new device shows the code (MSC4108 mode 0x03, MSC4388 intent 0x00).
    Login,
    /// The existing device shows the code (MSC4108 mode 0x04, MSC4388 intent 0x01).
    Reciprocate,
}

impl QrIntent {
    /// The name used in JSON output and test vectors.
    pub const fn as_str(self) -> &'static str {
        match self {
            QrIntent::Login => "login",
            QrIntent::Reciprocate => "reciprocate",
        }
    }

    /// The kind of device that shows a code with this intent.
    pub const fn shown_by(self) -> DeviceKind {
        match self {
            QrIntent::Login => DeviceKind::New,
            QrIntent::Reciprocate => DeviceKind::Existing,
        }
    }

    /// The intent a device of `kind` writes into the code it shows.
    pub const fn of_shower(kind: DeviceKind) -> Self {
        match kind {
            DeviceKind::New => QrIntent::Login,
            DeviceKind::Existing => QrIntent::Reciprocate,
        }
    }
}

/// The two prefixes of MSC4388 QR codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Msc4388Prefix {
    /// `MATRIX`
    Stable,
    /// `IO_ELEMENT_MSC4388`, what clients emit today.
    Unstable,
}

impl Msc4388Prefix {
    /// The ASCII bytes that start the payload.
    pub const fn as_bytes(self) -> &'static [u8] {
        match self {
            Msc4388Prefix::Stable => msc4388::STABLE_PREFIX,
            Msc4388Prefix::Unstable => msc4388::UNSTABLE_PREFIX,
        }
    }

    /// The prefix as text, as shown in JSON output and test vectors.
    pub const fn as_str(self) -> &'static str {
        match self {
            Msc4388Prefix::Stable => "MATRIX",
            Msc4388Prefix::Unstable => "IO_ELEMENT_MSC4388",
        }
    }
}

/// Where the two devices meet, as named by the QR code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QrRendezvous {
    /// MSC4108 (2024): the absolute session URL, and, in mode 0x04 only, the homeserver as
    /// written (a server name or, as matrix-sdk writes it, a base URL).
    Msc4108 {
        rendezvous_url: String,
        homeserver: Option<String>,
    },
    /// MSC4388: the session ID on the homeserver's rendezvous API, and that homeserver's base URL.
    Msc4388 {
        prefix: Msc4388Prefix,
        rendezvous_id: String,
        base_url: String,
    },
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

    /// Refuses a code that a device of kind `scanner` must not act on: one shown by a device
    /// of its own kind. Two new devices (or two signed-in ones) cannot complete a sign-in, and
    /// telling the user so up front beats a protocol failure half-way through.
    pub fn check_scannable_by(&self, scanner: DeviceKind) -> Result<(), QrError> {
        match (self.intent.shown_by(), scanner) {
            (DeviceKind::New, DeviceKind::New) => Err(QrError::BothNewDevices),
            (DeviceKind::Existing, DeviceKind::Existing) => Err(QrError::BothExistingDevices),
            _ => Ok(()),
        }
    }

    /// A JSON view for humans and tools: `generation`, `prefix`, `intent`, `public_key`
    /// (unpadded base64), `rendezvous_url` (MSC4108) or `rendezvous_id` (MSC4388), and
    /// `homeserver` (the MSC4388 base URL, or the MSC4108 mode 0x04 homeserver field; absent
    /// when the code carries none).
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert("generation".into(), self.generation().as_str().into());
        let prefix = match &self.rendezvous {
            QrRendezvous::Msc4108 { .. } => "MATRIX",
            QrRendezvous::Msc4388 { prefix, .. } => prefix.as_str(),
        };
        map.insert("prefix".into(), prefix.into());
        map.insert("intent".into(), self.intent.as_str().into());
        map.insert("public_key".into(), self.public_key.to_base64().into());
        match &self.rendezvous {
            QrRendezvous::Msc4108 {
                rendezvous_url,
                homeserver,
            } => {
                map.insert("rendezvous_url".into(), rendezvous_url.as_str().into());
                if let Some(homeserver) = homeserver {
                    map.insert("homeserver".into(), homeserver.as_str().into());
                }
            }
            QrRendezvous::Msc4388 {
                rendezvous_id,
                base_url,
                ..
            } => {
                map.insert("rendezvous_id".into(), rendezvous_id.as_str().into());
                map.insert("homeserver".into(), base_url.as_str().into());
            }
        }
        serde_json::Value::Object(map)
    }
}

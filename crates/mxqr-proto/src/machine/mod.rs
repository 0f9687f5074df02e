//! Sans-IO state machines of the new and the existing device (docs/protocol.md §§ 1, 4, 5).
//!
//! [`NewDevice`] and [`ExistingDevice`] each start either as G (they created a rendezvous
//! and show the QR code) or as S (they scanned one), in either generation. The driver feeds
//! [`Event`]s to `handle` and carries out the [`Action`]s it returns, in order. Nothing
//! here touches the network or a clock.
//!
//! # Time
//!
//! The machines own the protocol's timing, in the manner of a sans-IO transport: the pace
//! of the token polls (RFC 8628 `interval`, `slow_down`, `expires_in`, see
//! [`crate::token_poll`]), the existing device's wait for the new device ([`DEVICE_WAIT`],
//! looking every [`DEVICE_CHECK_EVERY`]) and how long one rendezvous read lasts
//! ([`RECEIVE_SLICE`]). Every input carries `now`, the driver's clock; `poll_timeout` says
//! when the machine next needs to act, and `handle_timeout(now)` lets it. A driver keeps
//! no timer of its own: it sleeps until `poll_timeout` (or reads until [`Read::until`]),
//! then calls `handle_timeout`. Tests move `now` by hand.
//!
//! # Driver contract
//!
//! - While the machine is not finished, make the read `read(now)` asks for: against its
//!   `sequence_token` (`If-None-Match` in the 2024 generation), until [`Read::until`]. Report
//!   every read whose token differs from it as [`Event::PayloadReceived`]; when `until`
//!   passes first, call `handle_timeout`. Re-reporting an already seen token, or a stale
//!   read, is harmless: it is ignored.
//! - Carry out [`Action::PollToken`] and [`Action::LookForDevice`] once each, when asked
//!   (they may run while the rendezvous is read), and report the answer. The machine asks
//!   again when it is time.
//! - [`Action::Send`] is a PUT of `payload` replacing `sequence_token` (`If-Match` in 2024,
//!   the JSON `sequence_token` in MSC4388); report [`Event::PayloadSent`] with the new token,
//!   or [`Event::TransportFailed`]. Events that arrive meanwhile are queued by the machine
//!   and handled after the PUT's outcome, so that each payload is sealed against the token
//!   it will really replace.
//! - Events that make no sense in the current state (a duplicate, or one for the other kind
//!   of device) are ignored and produce no actions.
//! - The last action is always [`Action::Done`] or [`Action::Failed`].
//!
//! # Choices where the protocol text is silent
//!
//! - **Who deletes the rendezvous.** The device that reads the last message of the
//!   conversation deletes it, as does a device that stops without telling its peer (which
//!   then sees the rendezvous vanish instead of waiting for it to expire). A device that
//!   ends by writing a message (`m.login.failure`, `m.login.declined`, `m.login.secrets`)
//!   leaves the rendezvous alone: a DELETE right after that PUT would race the peer's next
//!   GET and replace the reason with a bare 404.
//! - **A wrong check code on G** fails G locally without a word to S: until the code
//!   matches, nothing sealed by G can be trusted by S nor anything from S by G, so G just
//!   deletes the rendezvous. S learns of it as a transport failure.
//! - **G before the code is confirmed** keeps S's payloads unopened (at most
//!   [`MAX_HELD_PAYLOADS`]) and handles them in order once the code matches. This is what
//!   lets the existing device, as G, not act on `m.login.protocol` before confirmation.
//! - **A payload that fails to open on a trusted channel** (tampered, replayed, reordered)
//!   is answered with `m.login.failure unexpected_message_received`: our own sealed
//!   messages still reach only the real peer, and telling it beats leaving it waiting.
//! - **The new device's user code** is shown once `m.login.protocol_accepted` arrives,
//!   together with the start of token polling, as matrix-sdk does.
//! - **A token endpoint that stays unreachable** (no answer or 503 for
//!   [`UNAVAILABLE_FOR`](crate::token_poll::UNAVAILABLE_FOR)) ends the new device's part as
//!   a cancellation does, with `user_cancelled`: no reason names a server failure.
//! - **The wait for the new device** ends at its deadline even with a look-up unanswered:
//!   a homeserver that does not answer cannot hold the sign-in open.
//! - **The consent page** the new device names is opened only if it is on the origin of
//!   the existing device's own homeserver's `device_authorization_endpoint`
//!   ([`ConsentOrigin`]); otherwise the existing device stops at once, before the device
//!   lookup, with `m.login.failure unsupported_protocol`: the grant as offered is not one it
//!   takes part in, which fits that reason better than blaming order or encoding.
//! - **`m.login.declined`** is accepted only where the table of section 5 allows it: from
//!   the new device, after `m.login.protocol_accepted`.

mod consent;
mod conversation;
mod existing_device;
mod new_device;

pub use consent::{ConsentOrigin, ConsentOriginError, UntrustedConsentPage};
pub use existing_device::ExistingDevice;
pub use new_device::NewDevice;

pub use crate::time::Instant;
pub use crate::token_poll::{TokenAnswer, TokenOutcome};

use std::time::Duration;

use crate::Generation;
use crate::channel::{ChannelError, CheckCode};
use crate::messages::{DeviceId, FailureReason, MessageError, MessageType, SecretsMessage};
use crate::qr::{EncodeError, EncodeSettings, Msc4388Prefix, QrCode, QrError, QrRendezvous};
use conversation::Place;

/// Payloads G keeps unopened while the user types the check code. An honest S sends at
/// most two before it hears back; the cap only bounds what a hostile writer can make G
/// store.
pub const MAX_HELD_PAYLOADS: usize = 8;

/// How long the existing device waits for the new device to appear in the account's device
/// list after `m.login.success`, and how often it looks (as matrix-sdk: 10 s, every 500 ms).
/// The new device signed in just before saying so, so a device that is still missing after
/// that is not coming.
pub const DEVICE_WAIT: Duration = Duration::from_secs(10);
pub const DEVICE_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Longest a single read of the rendezvous waits before the driver comes back to the
/// machine (see [`NewDevice::read`]). Nothing is lost when it ends: the driver just reads
/// again. It bounds each long-poll request and lets a driver that cannot wait on two things
/// at once still come back regularly.
pub const RECEIVE_SLICE: Duration = Duration::from_secs(30);

/// A read of the rendezvous the machine asks for: against `sequence_token` (`If-None-Match`
/// in the 2024 generation), waiting at most until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read<'a> {
    pub sequence_token: &'a str,
    /// [`RECEIVE_SLICE`] from now, or the machine's next deadline if that comes first: when
    /// it passes with nothing read, call `handle_timeout` and read again.
    pub until: Instant,
}

/// The rendezvous G created, as the server described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreatedRendezvous {
    /// MSC4108 (2024): the absolute session URL from the POST and the `ETag` it returned.
    Msc4108 { url: String, etag: String },
    /// MSC4388: the homeserver base URL the rendezvous API was called on, the session ID,
    /// the first `sequence_token`, and which QR prefix to write.
    Msc4388 {
        prefix: Msc4388Prefix,
        base_url: String,
        rendezvous_id: String,
        sequence_token: String,
    },
}

/// What the new device learned from starting the device authorization grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuthorization {
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    /// The server's `expires_in`, as sent: the machine holds it to
    /// [`MAX_GRANT_LIFETIME`](crate::token_poll::MAX_GRANT_LIFETIME).
    pub expires_in: Duration,
    /// The server's `interval`, as sent (`None`: it sent none): the machine applies the
    /// default and the bounds of [`crate::token_poll`].
    pub interval: Option<Duration>,
}

/// Result of the existing device's `GET /_matrix/client/v3/devices/<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceLookup {
    /// 404: the ID is free, as it must be before consent.
    NotFound,
    /// Any other answer: matrix-sdk treats every non-404 as "already exists", so do we.
    Found,
}

/// Something that happened, reported by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A read of the rendezvous brought `data` under a token the machine has not seen.
    PayloadReceived {
        data: String,
        sequence_token: String,
    },
    /// The PUT of the last [`Action::Send`] succeeded and the server gave this token.
    PayloadSent { sequence_token: String },
    /// G: the user typed the check code shown on the other device.
    CheckCodeEntered(u8),
    /// New device: metadata fetched, client registered, device authorization started.
    DeviceAuthorizationStarted(DeviceAuthorization),
    /// New device: its homeserver does not offer the device authorization grant.
    DeviceAuthorizationUnsupported,
    /// New device: the answer to the last [`Action::PollToken`].
    TokenPolled(TokenAnswer),
    /// Existing device: outcome of the device lookup.
    DeviceLookup(DeviceLookup),
    /// Existing device: the last [`Action::LookForDevice`] found the new device (200).
    DeviceAppeared,
    /// Existing device: the last [`Action::LookForDevice`] did not find it (any other
    /// answer, or none). The machine decides when to look again and when to give up.
    DeviceNotSeen,
    /// Existing device: the secrets to send, read from the local crypto store.
    SecretsObtained(SecretsMessage),
    /// The user cancelled on this device.
    Cancelled,
    /// A rendezvous request failed for good (including a 404 of a deleted session, or a
    /// 409/412 conflict).
    TransportFailed,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// G: show this QR code.
    ShowQrCode(QrCode),
    /// PUT `payload` to the rendezvous, replacing `sequence_token`.
    Send {
        payload: String,
        sequence_token: String,
    },
    /// S: show the check code for the user to type on the other device.
    ShowCheckCode(CheckCode),
    /// G: ask the user for the check code shown on the other device.
    AskCheckCode,
    /// New device: fetch the auth metadata, register a client and start the device
    /// authorization grant on `homeserver` with the scope for `device_id`. `homeserver` is
    /// a base URL, or, from a 2024 QR code, possibly a server name (resolve it with
    /// `.well-known`).
    StartDeviceAuthorization {
        homeserver: String,
        device_id: DeviceId,
    },
    /// New device: show the user code (and where to type it, should the other device not
    /// open the page itself).
    ShowUserCode {
        user_code: String,
        verification_uri: String,
    },
    /// New device: poll the token endpoint once, now, and report the answer as
    /// [`Event::TokenPolled`]. The machine paces the polls (RFC 8628 `interval` and
    /// `slow_down`) and stops them when the grant expires.
    PollToken,
    /// New device: store these secrets, sign the device keys with the self-signing key,
    /// upload keys and signature, enable the backup if present.
    ImportSecrets(SecretsMessage),
    /// Existing device: `GET /_matrix/client/v3/devices/<device_id>`; it must 404.
    LookUpDevice { device_id: DeviceId },
    /// Existing device: open this consent page in a browser. It is an https URL (http only
    /// on loopback) on the origin given to the machine as its [`ConsentOrigin`].
    OpenVerificationUri { uri: String },
    /// Existing device: `GET /_matrix/client/v3/devices/<device_id>` once, now, and report
    /// [`Event::DeviceAppeared`] or [`Event::DeviceNotSeen`]. The machine repeats it every
    /// [`DEVICE_CHECK_EVERY`] until the device appears or [`DEVICE_WAIT`] passed.
    LookForDevice { device_id: DeviceId },
    /// Existing device: read the cross-signing keys (and backup key) from the local store.
    ExportSecrets,
    /// DELETE the rendezvous; failures of this request can be ignored.
    DeleteRendezvous,
    /// The sign-in completed on this side.
    Done,
    /// The sign-in failed; `told_peer` says whether the peer was sent a message saying so.
    Failed { failure: Failure, told_peer: bool },
}

/// Why a payload from the peer was not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unexpected {
    #[error("undecodable message: {0}")]
    Undecodable(MessageError),
    #[error("{0} is not expected at this point")]
    OutOfOrder(MessageType),
}

/// Why a sign-in failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The peer sent `m.login.failure`.
    #[error("the other device stopped: {0}")]
    PeerFailed(FailureReason),
    /// The new device sent `m.login.declined`: consent was refused.
    #[error("the sign-in was declined")]
    PeerDeclined,
    /// This device stopped for a protocol reason (sent to the peer if `told_peer`).
    #[error("stopped: {0}")]
    Local(FailureReason),
    /// The new device's authorization was denied; it sent `m.login.declined`.
    #[error("the sign-in was declined on the consent page")]
    Declined,
    /// The peer sent something that does not fit; this device sent
    /// `unexpected_message_received`.
    #[error("{0}")]
    Unexpected(Unexpected),
    /// G: the typed check code did not match; the channel may be intercepted.
    #[error("the check code did not match")]
    CheckCodeMismatch,
    /// A payload could not be opened (or the handshake failed).
    #[error("secure channel: {0}")]
    Channel(ChannelError),
    /// G: the peer wrote more than [`MAX_HELD_PAYLOADS`] payloads before confirmation.
    #[error("too many payloads before the check code was confirmed")]
    Flooded,
    /// The driver reported a transport failure.
    #[error("the rendezvous transport failed")]
    Transport,
    /// Existing device: the new device named a consent page outside the account's own OAuth
    /// server; nothing was opened, and the peer was sent `unsupported_protocol`.
    #[error("{0}")]
    UntrustedConsentPage(UntrustedConsentPage),
}

impl Failure {
    /// The `m.login.failure` reason involved, when there is one.
    pub fn reason(&self) -> Option<&FailureReason> {
        match self {
            Failure::PeerFailed(reason) | Failure::Local(reason) => Some(reason),
            Failure::Unexpected(_) => Some(&FailureReason::UnexpectedMessageReceived),
            Failure::UntrustedConsentPage(_) => Some(&FailureReason::UnsupportedProtocol),
            _ => None,
        }
    }
}

/// Why a machine could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The scanned code is not for a device of this kind.
    #[error(transparent)]
    Qr(#[from] QrError),
    #[error("`{url}` is not a valid {what} URL")]
    InvalidUrl { what: &'static str, url: String },
    /// A 2024 code shown by an existing device must carry the homeserver.
    #[error("the QR code does not name the homeserver")]
    MissingHomeserver,
    /// MSC4388 puts one URL in the code for both the rendezvous and the homeserver, so the
    /// existing device must create the rendezvous on its own homeserver.
    #[error("rendezvous is on {rendezvous}, but the account is on {homeserver}")]
    HomeserverMismatch {
        homeserver: String,
        rendezvous: String,
    },
    /// The code to show cannot be written (a URL or ID too long for its length prefix).
    #[error("the QR code cannot be written: {0}")]
    QrEncode(#[from] EncodeError),
    /// The QR code's key cannot be used (e.g. a low-order point).
    #[error("secure channel: {0}")]
    Channel(ChannelError),
}

/// Parses a URL the way every [`crate::channel::Binding`] spells it: `https://hs` becomes
/// `https://hs/`, so both sides bind to the same string whichever form they were given.
fn parse_url(url: &str, what: &'static str) -> Result<url::Url, StartError> {
    url::Url::parse(url).map_err(|_| StartError::InvalidUrl {
        what,
        url: url.to_owned(),
    })
}

/// MSC4388 codes carry the base URL without the trailing `/` of an empty path.
fn qr_base_url(url: &url::Url) -> String {
    let text = url.as_str();
    match text.strip_suffix('/') {
        Some(stripped)
            if url.path() == "/" && url.query().is_none() && url.fragment().is_none() =>
        {
            stripped.to_owned()
        }
        _ => text.to_owned(),
    }
}

/// G: where the conversation takes place, and the rendezvous part of its QR code.
/// `homeserver` goes into 2024 codes of the existing device (mode 0x04).
fn place_of_created(
    rendezvous: CreatedRendezvous,
    homeserver: Option<String>,
) -> Result<(Place, QrRendezvous), StartError> {
    Ok(match rendezvous {
        CreatedRendezvous::Msc4108 { url, etag } => (
            Place {
                generation: Generation::Msc4108v2024,
                base_url: url.clone(),
                rendezvous_id: String::new(),
                sequence_token: etag,
            },
            QrRendezvous::Msc4108 {
                rendezvous_url: url,
                homeserver,
            },
        ),
        CreatedRendezvous::Msc4388 {
            prefix,
            base_url,
            rendezvous_id,
            sequence_token,
        } => {
            let base_url = parse_url(&base_url, "rendezvous base")?;
            (
                Place {
                    generation: Generation::Msc4388,
                    base_url: base_url.to_string(),
                    rendezvous_id: rendezvous_id.clone(),
                    sequence_token,
                },
                QrRendezvous::Msc4388 {
                    prefix,
                    rendezvous_id,
                    base_url: qr_base_url(&base_url),
                },
            )
        }
    })
}

/// S: where the conversation named by `qr` takes place; `sequence_token` is from S's first
/// read of the rendezvous.
fn place_of_scanned(qr: &QrCode, sequence_token: String) -> Result<Place, StartError> {
    Ok(match &qr.rendezvous {
        // The 2024 channel binds nothing; the URL is kept for uniformity.
        QrRendezvous::Msc4108 { rendezvous_url, .. } => Place {
            generation: Generation::Msc4108v2024,
            base_url: rendezvous_url.clone(),
            rendezvous_id: String::new(),
            sequence_token,
        },
        QrRendezvous::Msc4388 {
            rendezvous_id,
            base_url,
            ..
        } => Place {
            generation: Generation::Msc4388,
            base_url: parse_url(base_url, "rendezvous base")?.to_string(),
            rendezvous_id: rendezvous_id.clone(),
            sequence_token,
        },
    })
}

/// Refuses to start showing a code that [`QrCode::encode`] could not write.
fn check_encodable(qr: &QrCode) -> Result<(), StartError> {
    qr.encode_with(EncodeSettings::DEFAULT)?;
    Ok(())
}

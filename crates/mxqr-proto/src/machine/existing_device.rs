//! The signed-in device that holds the cross-signing keys.

use rand_core::CryptoRng;

use super::conversation::{Conduct, Conversation, Ending, Next};
use super::{
    Action, ConsentOrigin, CreatedRendezvous, DEVICE_CHECK_EVERY, DEVICE_WAIT, DeviceLookup, Event,
    Failure, Read, StartError, Unexpected, UntrustedConsentPage, parse_url, place_of_created,
    place_of_scanned,
};
use crate::channel::GeneratorChannel;
use crate::messages::{
    DeviceAuthorizationGrant, DeviceId, FailureMessage, FailureReason, HomeserverField,
    LoginMessage, LoginProtocol, Protocol, ProtocolsMessage,
};
use crate::qr::{QrCode, QrIntent, QrRendezvous};
use crate::time::Instant;
use crate::{DeviceKind, Generation};

/// The existing device's side of a QR sign-in.
///
/// Order (docs/protocol.md §5): as S, send `m.login.protocols` (as G the homeserver is in the QR
/// code, and nothing is done before the check code matched) → receive `m.login.protocol`
/// → the device ID must be unknown (404) → open the consent page and send
/// `m.login.protocol_accepted` → on `m.login.success` wait for the device to appear (the
/// machine times the look-ups and gives up after [`DEVICE_WAIT`]) →
/// send `m.login.secrets`.
pub struct ExistingDevice {
    conversation: Conversation<ExistingConduct>,
}

impl std::fmt::Debug for ExistingDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExistingDevice")
            .field("generation", &self.conversation.generation())
            .field("finished", &self.conversation.is_finished())
            .finish_non_exhaustive()
    }
}

impl ExistingDevice {
    /// As G: the driver created `rendezvous`; show the returned QR code and wait for the
    /// new device to scan it. `homeserver` is the account's homeserver base URL; in MSC4388
    /// the rendezvous must have been created there, since the code names one URL for both.
    /// `consent` is the origin of that homeserver's device authorization endpoint: the only
    /// consent pages opened are there.
    pub fn show_qr<R: CryptoRng + ?Sized>(
        rendezvous: CreatedRendezvous,
        homeserver: &str,
        consent: ConsentOrigin,
        rng: &mut R,
    ) -> Result<(Self, Vec<Action>), StartError> {
        let homeserver = parse_url(homeserver, "homeserver")?;
        // matrix-sdk writes the base URL (with its trailing `/`) into 2024 codes.
        let (place, qr_rendezvous) = place_of_created(rendezvous, Some(homeserver.to_string()))?;
        if place.generation == Generation::Msc4388 && place.base_url != homeserver.as_str() {
            return Err(StartError::HomeserverMismatch {
                homeserver: homeserver.to_string(),
                rendezvous: place.base_url,
            });
        }
        let channel = GeneratorChannel::new(place.generation, rng);
        let qr = QrCode {
            intent: QrIntent::Reciprocate,
            public_key: channel.public_key(),
            rendezvous: qr_rendezvous,
        };
        super::check_encodable(&qr)?;
        let conduct = ExistingConduct {
            generation: place.generation,
            announce: None,
            consent,
        };
        let conversation = Conversation::generator(conduct, place, channel);
        Ok((Self { conversation }, vec![Action::ShowQrCode(qr)]))
    }

    /// As S: the user scanned `qr` (shown by the new device), and a read of its rendezvous
    /// returned `sequence_token` (the 2024 `ETag`). `homeserver` is the account's
    /// homeserver base URL, announced in `m.login.protocols`; `consent` as in
    /// [`ExistingDevice::show_qr`].
    pub fn scan<R: CryptoRng + ?Sized>(
        qr: &QrCode,
        sequence_token: String,
        homeserver: &str,
        consent: ConsentOrigin,
        rng: &mut R,
    ) -> Result<(Self, Vec<Action>), StartError> {
        qr.check_scannable_by(DeviceKind::Existing)?;
        let homeserver = parse_url(homeserver, "homeserver")?;
        let place = place_of_scanned(qr, sequence_token)?;
        let generation = match qr.rendezvous {
            QrRendezvous::Msc4108 { .. } => Generation::Msc4108v2024,
            QrRendezvous::Msc4388 { .. } => Generation::Msc4388,
        };
        let conduct = ExistingConduct {
            generation,
            announce: Some(homeserver.to_string()),
            consent,
        };
        let (conversation, actions) = Conversation::scanner(conduct, place, qr.public_key, rng)
            .map_err(StartError::Channel)?;
        Ok((Self { conversation }, actions))
    }

    /// Feeds one event that happened at `now`; returns what to do, in order. `rng` is used
    /// only by G, to seal its OK.
    pub fn handle<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        event: Event,
        rng: &mut R,
    ) -> Vec<Action> {
        self.conversation.handle(now, event, rng)
    }

    /// The rendezvous read to make at `now`; `None` while a PUT is in flight or once
    /// finished. A payload read is reported as [`Event::PayloadReceived`]; when `until`
    /// passes first, call [`handle_timeout`](Self::handle_timeout) and ask again.
    pub fn read(&self, now: Instant) -> Option<Read<'_>> {
        self.conversation.read(now)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called; `None` while
    /// nothing is timed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conversation.poll_timeout()
    }

    /// Time passed: acts on every deadline due at `now`. Calling it early, late or twice
    /// is harmless.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        self.conversation.handle_timeout(now)
    }

    /// The token to read the rendezvous against; `None` while a PUT is in flight or once
    /// finished.
    pub fn sequence_token(&self) -> Option<&str> {
        self.conversation.sequence_token()
    }

    pub fn is_finished(&self) -> bool {
        self.conversation.is_finished()
    }

    pub fn generation(&self) -> Generation {
        self.conversation.generation()
    }
}

struct ExistingConduct {
    generation: Generation,
    /// As S: the homeserver to announce in `m.login.protocols`. As G the QR code carried
    /// it, and matrix-sdk's new device expects no `m.login.protocols` then.
    announce: Option<String>,
    /// Where the account's consent pages live.
    consent: ConsentOrigin,
}

/// The existing device's steps once the channel is trusted.
enum ExistingStep {
    /// Waiting for the new device's `m.login.protocol`.
    AwaitingProtocol,
    /// The driver checks that the device ID is free.
    LookingUpDevice {
        device_id: DeviceId,
        /// The consent page, already checked against [`ConsentOrigin`].
        page: url::Url,
    },
    /// `m.login.protocol_accepted` sent; waiting for `m.login.success`.
    AwaitingSuccess { device_id: DeviceId },
    /// Looking for the device in the account's device list.
    WaitingForDevice {
        device_id: DeviceId,
        /// When to give up: [`DEVICE_WAIT`] after `m.login.success`.
        deadline: Instant,
        /// When to look next; `None` while a look-up is in flight.
        next_check: Option<Instant>,
    },
    /// The driver reads the secrets.
    ExportingSecrets,
}

impl Conduct for ExistingConduct {
    type Step = ExistingStep;

    fn secured(&mut self, _now: Instant, _out: &mut Vec<Action>) -> Next<ExistingStep> {
        match self.announce.take() {
            Some(homeserver) => {
                let protocols = ProtocolsMessage {
                    protocols: vec![Protocol::DeviceAuthorizationGrant],
                    homeserver: HomeserverField::for_generation(self.generation, homeserver),
                };
                Next::send(ExistingStep::AwaitingProtocol, protocols)
            }
            None => Next::stay(ExistingStep::AwaitingProtocol),
        }
    }

    fn message(
        &mut self,
        step: ExistingStep,
        message: LoginMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Next<ExistingStep> {
        match (step, message) {
            (ExistingStep::AwaitingProtocol, LoginMessage::Protocol(protocol)) => {
                match protocol.protocol {
                    LoginProtocol::DeviceAuthorizationGrant(grant) => {
                        let page = match self.consent_page(&grant) {
                            Ok(page) => page,
                            Err(why) => return refuse_consent_page(why),
                        };
                        out.push(Action::LookUpDevice {
                            device_id: protocol.device_id.clone(),
                        });
                        Next::stay(ExistingStep::LookingUpDevice {
                            device_id: protocol.device_id,
                            page,
                        })
                    }
                    LoginProtocol::Unsupported(_) => Next::fail(FailureReason::UnsupportedProtocol),
                }
            }
            (ExistingStep::AwaitingSuccess { device_id }, LoginMessage::Success) => {
                out.push(Action::LookForDevice {
                    device_id: device_id.clone(),
                });
                Next::stay(ExistingStep::WaitingForDevice {
                    device_id,
                    deadline: now.checked_add(DEVICE_WAIT).unwrap_or(now),
                    next_check: None,
                })
            }
            (ExistingStep::AwaitingSuccess { .. }, LoginMessage::Declined) => {
                Next::End(Ending::Failed(Failure::PeerDeclined))
            }
            (_, message) => Next::unexpected(Unexpected::OutOfOrder(message.message_type())),
        }
    }

    fn event(
        &mut self,
        step: ExistingStep,
        event: Event,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Next<ExistingStep> {
        match (step, event) {
            (ExistingStep::LookingUpDevice { device_id, page }, Event::DeviceLookup(lookup)) => {
                match lookup {
                    DeviceLookup::NotFound => {
                        out.push(Action::OpenVerificationUri { uri: page.into() });
                        Next::send(
                            ExistingStep::AwaitingSuccess { device_id },
                            LoginMessage::ProtocolAccepted,
                        )
                    }
                    DeviceLookup::Found => Next::fail(FailureReason::DeviceAlreadyExists),
                }
            }
            (ExistingStep::WaitingForDevice { .. }, Event::DeviceAppeared) => {
                out.push(Action::ExportSecrets);
                Next::stay(ExistingStep::ExportingSecrets)
            }
            (
                ExistingStep::WaitingForDevice {
                    device_id,
                    deadline,
                    next_check: None,
                },
                Event::DeviceNotSeen,
            ) => {
                if now >= deadline {
                    return Next::fail(FailureReason::DeviceNotFound);
                }
                Next::stay(ExistingStep::WaitingForDevice {
                    device_id,
                    deadline,
                    next_check: Some(now.checked_add(DEVICE_CHECK_EVERY).unwrap_or(deadline)),
                })
            }
            (ExistingStep::ExportingSecrets, Event::SecretsObtained(secrets)) => Next::Tell {
                message: LoginMessage::Secrets(secrets),
                ending: Ending::Done,
            },
            (step, _) => Next::stay(step),
        }
    }

    fn poll_timeout(step: &ExistingStep) -> Option<Instant> {
        match step {
            ExistingStep::WaitingForDevice {
                deadline,
                next_check,
                ..
            } => Some(next_check.map_or(*deadline, |at| at.min(*deadline))),
            _ => None,
        }
    }

    /// The wait for the device ends at its deadline even with a look-up in flight: a server
    /// that does not answer cannot hold the sign-in open.
    fn timeout(
        &mut self,
        step: ExistingStep,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Next<ExistingStep> {
        match step {
            ExistingStep::WaitingForDevice { deadline, .. } if now >= deadline => {
                Next::fail(FailureReason::DeviceNotFound)
            }
            ExistingStep::WaitingForDevice {
                device_id,
                deadline,
                next_check: Some(at),
            } if at <= now => {
                out.push(Action::LookForDevice {
                    device_id: device_id.clone(),
                });
                Next::stay(ExistingStep::WaitingForDevice {
                    device_id,
                    deadline,
                    next_check: None,
                })
            }
            step => Next::stay(step),
        }
    }
}

impl ExistingConduct {
    /// The page to open, if every page the new device named is on the account's own
    /// consent origin: an honest peer names none elsewhere, so one foreign field is enough
    /// to stop.
    fn consent_page(
        &self,
        grant: &DeviceAuthorizationGrant,
    ) -> Result<url::Url, UntrustedConsentPage> {
        let plain = self.consent.check(&grant.verification_uri)?;
        match &grant.verification_uri_complete {
            Some(complete) => self.consent.check(complete),
            None => Ok(plain),
        }
    }
}

/// Stops before anything is opened or accepted, telling the peer `unsupported_protocol`.
///
/// Of the reasons the protocol defines, this one fits: the device authorization grant as
/// the new device offers it, pointing outside the account's OAuth server, is not one this
/// device takes part in. `unexpected_message_received` would blame the order or encoding
/// of a message that was well-formed and in its place; `user_cancelled` would blame the
/// person; the others name unrelated events.
fn refuse_consent_page(why: UntrustedConsentPage) -> Next<ExistingStep> {
    Next::Tell {
        message: FailureMessage::new(FailureReason::UnsupportedProtocol).into(),
        ending: Ending::Failed(Failure::UntrustedConsentPage(why)),
    }
}

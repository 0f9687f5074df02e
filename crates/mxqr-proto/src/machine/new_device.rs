//! The device that wants to sign in.

use rand_core::CryptoRng;

use super::conversation::{Conduct, Conversation, Ending, Next};
use super::{
    Action, CreatedRendezvous, DeviceAuthorization, Event, Read, StartError, TokenOutcome,
    Unexpected, place_of_created, place_of_scanned,
};
use crate::channel::GeneratorChannel;
use crate::messages::{
    DeviceAuthorizationGrant, DeviceId, FailureReason, LoginMessage, LoginProtocol, ProtocolMessage,
};
use crate::qr::{QrCode, QrIntent, QrRendezvous};
use crate::time::Instant;
use crate::token_poll::{TokenPoll, TokenPollStep};
use crate::{DeviceKind, Generation};

/// The new device's side of a QR sign-in.
///
/// Order (docs/protocol.md §5): learn the homeserver (from the QR code as S, from
/// `m.login.protocols` as G) → start the device authorization grant → `m.login.protocol` →
/// on `m.login.protocol_accepted` show the user code and poll for the token, paced by the
/// machine ([`crate::token_poll`]) →
/// `m.login.success` / `m.login.declined` / `m.login.failure authorization_expired` →
/// receive `m.login.secrets` and hand them to the driver.
pub struct NewDevice {
    conversation: Conversation<NewConduct>,
}

impl std::fmt::Debug for NewDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDevice")
            .field("generation", &self.conversation.generation())
            .field("finished", &self.conversation.is_finished())
            .finish_non_exhaustive()
    }
}

impl NewDevice {
    /// As G: the driver created `rendezvous`; show the returned QR code
    /// ([`Action::ShowQrCode`]) and wait for the existing device to scan it.
    pub fn show_qr<R: CryptoRng + ?Sized>(
        rendezvous: CreatedRendezvous,
        device_id: DeviceId,
        rng: &mut R,
    ) -> Result<(Self, Vec<Action>), StartError> {
        let (place, qr_rendezvous) = place_of_created(rendezvous, None)?;
        let channel = GeneratorChannel::new(place.generation, rng);
        let qr = QrCode {
            intent: QrIntent::Login,
            public_key: channel.public_key(),
            rendezvous: qr_rendezvous,
        };
        super::check_encodable(&qr)?;
        let conduct = NewConduct {
            device_id,
            homeserver: None,
        };
        let conversation = Conversation::generator(conduct, place, channel);
        Ok((Self { conversation }, vec![Action::ShowQrCode(qr)]))
    }

    /// As S: the user scanned `qr` (shown by the existing device), and a read of its
    /// rendezvous returned `sequence_token` (the 2024 `ETag`).
    pub fn scan<R: CryptoRng + ?Sized>(
        qr: &QrCode,
        sequence_token: String,
        device_id: DeviceId,
        rng: &mut R,
    ) -> Result<(Self, Vec<Action>), StartError> {
        qr.check_scannable_by(DeviceKind::New)?;
        let place = place_of_scanned(qr, sequence_token)?;
        let homeserver = match &qr.rendezvous {
            QrRendezvous::Msc4108 { homeserver, .. } => {
                homeserver.clone().ok_or(StartError::MissingHomeserver)?
            }
            // The base URL as parsed, like every other URL handed to the driver.
            QrRendezvous::Msc4388 { .. } => place.base_url.clone(),
        };
        let conduct = NewConduct {
            device_id,
            homeserver: Some(homeserver),
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

    /// When [`handle_timeout`](Self::handle_timeout) must next be called (the next token
    /// poll, or the grant's expiry); `None` while nothing is timed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conversation.poll_timeout()
    }

    /// Time passed: acts on every deadline due at `now`. Calling it early, late or twice
    /// is harmless.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        self.conversation.handle_timeout(now)
    }

    /// The token to read the rendezvous against; `None` while a PUT is in flight or once
    /// finished (then there is nothing to read for).
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

struct NewConduct {
    device_id: DeviceId,
    /// As S, from the QR code; as G it arrives in `m.login.protocols` instead.
    homeserver: Option<String>,
}

/// The new device's steps once the channel is trusted.
enum NewStep {
    /// G: waiting for the existing device's `m.login.protocols`.
    AwaitingProtocols,
    /// The driver is fetching metadata, registering and starting the grant.
    Authorizing,
    /// `m.login.protocol` sent; waiting for `m.login.protocol_accepted`.
    AwaitingAccepted {
        grant: DeviceAuthorizationGrant,
        user_code: String,
        /// The grant's pacing, from when it was issued; the first poll is due at once.
        poll: TokenPoll,
    },
    /// Polling the token endpoint.
    PollingToken(TokenPoll),
    /// `m.login.success` sent; waiting for `m.login.secrets`.
    AwaitingSecrets,
}

impl NewConduct {
    fn start_authorization(&self, homeserver: String, out: &mut Vec<Action>) -> Next<NewStep> {
        out.push(Action::StartDeviceAuthorization {
            homeserver,
            device_id: self.device_id.clone(),
        });
        Next::stay(NewStep::Authorizing)
    }
}

/// Asks for the poll that is due, or ends polling.
fn poll_when_due(mut poll: TokenPoll, now: Instant, out: &mut Vec<Action>) -> Next<NewStep> {
    match poll.handle_timeout(now) {
        Some(TokenPollStep::PollNow) => {
            out.push(Action::PollToken);
            Next::stay(NewStep::PollingToken(poll))
        }
        Some(TokenPollStep::Ended(outcome)) => polled(outcome),
        None => Next::stay(NewStep::PollingToken(poll)),
    }
}

/// How the conversation goes on once polling ended.
///
/// A token endpoint that stays unreachable ends this device's part as a cancellation does
/// (`user_cancelled` to the peer): the sign-in is abandoned here, and no reason the
/// protocol defines names a server failure.
fn polled(outcome: TokenOutcome) -> Next<NewStep> {
    match outcome {
        TokenOutcome::Granted => Next::send(NewStep::AwaitingSecrets, LoginMessage::Success),
        TokenOutcome::Denied => Next::Tell {
            message: LoginMessage::Declined,
            ending: Ending::Failed(super::Failure::Declined),
        },
        TokenOutcome::Expired => Next::fail(FailureReason::AuthorizationExpired),
        TokenOutcome::Unreachable => Next::fail(FailureReason::UserCancelled),
    }
}

impl Conduct for NewConduct {
    type Step = NewStep;

    fn secured(&mut self, _now: Instant, out: &mut Vec<Action>) -> Next<NewStep> {
        match self.homeserver.take() {
            Some(homeserver) => self.start_authorization(homeserver, out),
            None => Next::stay(NewStep::AwaitingProtocols),
        }
    }

    fn message(
        &mut self,
        step: NewStep,
        message: LoginMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Next<NewStep> {
        match (step, message) {
            (NewStep::AwaitingProtocols, LoginMessage::Protocols(protocols)) => {
                if !protocols.offers_device_authorization_grant() {
                    return Next::fail(FailureReason::UnsupportedProtocol);
                }
                self.start_authorization(protocols.homeserver.url().to_owned(), out)
            }
            (
                NewStep::AwaitingAccepted {
                    grant,
                    user_code,
                    poll,
                },
                LoginMessage::ProtocolAccepted,
            ) => {
                out.push(Action::ShowUserCode {
                    user_code,
                    verification_uri: grant.verification_uri,
                });
                poll_when_due(poll, now, out)
            }
            (NewStep::AwaitingSecrets, LoginMessage::Secrets(secrets)) => {
                out.push(Action::ImportSecrets(secrets));
                Next::End(Ending::Done)
            }
            (_, message) => Next::unexpected(Unexpected::OutOfOrder(message.message_type())),
        }
    }

    fn event(
        &mut self,
        step: NewStep,
        event: Event,
        now: Instant,
        _out: &mut Vec<Action>,
    ) -> Next<NewStep> {
        match (step, event) {
            (NewStep::Authorizing, Event::DeviceAuthorizationStarted(authorization)) => {
                let DeviceAuthorization {
                    verification_uri,
                    verification_uri_complete,
                    user_code,
                    expires_in,
                    interval,
                } = authorization;
                let poll = TokenPoll::new(now, expires_in, interval);
                let grant = DeviceAuthorizationGrant {
                    verification_uri,
                    verification_uri_complete,
                };
                let protocol = ProtocolMessage {
                    protocol: LoginProtocol::DeviceAuthorizationGrant(grant.clone()),
                    device_id: self.device_id.clone(),
                };
                Next::send(
                    NewStep::AwaitingAccepted {
                        grant,
                        user_code,
                        poll,
                    },
                    protocol,
                )
            }
            (NewStep::Authorizing, Event::DeviceAuthorizationUnsupported) => {
                Next::fail(FailureReason::UnsupportedProtocol)
            }
            (NewStep::PollingToken(mut poll), Event::TokenPolled(answer)) => {
                match poll.handle_answer(now, answer) {
                    Some(outcome) => polled(outcome),
                    None => Next::stay(NewStep::PollingToken(poll)),
                }
            }
            (step, _) => Next::stay(step),
        }
    }

    fn poll_timeout(step: &NewStep) -> Option<Instant> {
        match step {
            NewStep::PollingToken(poll) => poll.poll_timeout(),
            _ => None,
        }
    }

    fn timeout(&mut self, step: NewStep, now: Instant, out: &mut Vec<Action>) -> Next<NewStep> {
        match step {
            NewStep::PollingToken(poll) => poll_when_due(poll, now, out),
            step => Next::stay(step),
        }
    }
}

//! What both devices share: rendezvous tokens, the channel handshake, the check-code gate,
//! and how a conversation ends. The device-specific steps plug in through [`Conduct`].

use std::collections::VecDeque;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{Action, Event, Failure, MAX_HELD_PAYLOADS, RECEIVE_SLICE, Read, Unexpected};
use crate::Generation;
use crate::channel::{
    Binding, ChannelError, EstablishedChannel, GeneratorChannel, ScannerChannel, UnconfirmedChannel,
};
use crate::messages::{FailureMessage, FailureReason, LoginMessage};
use crate::time::Instant;

/// Tokens remembered to recognise reads already handled. A conversation has about ten
/// writes; the bound only limits what a misbehaving server can make us store.
const SEEN_TOKENS: usize = 32;

/// How a conversation ends.
#[derive(Debug)]
pub(super) enum Ending {
    Done,
    Failed(Failure),
}

/// What a device step decided.
pub(super) enum Next<S> {
    /// Go on in `step`, after sending `send` if given.
    Continue { step: S, send: Option<LoginMessage> },
    /// Send `message` (the last one of this side), then end once the PUT went through.
    Tell {
        message: LoginMessage,
        ending: Ending,
    },
    /// End now, sending nothing more; the rendezvous is deleted.
    End(Ending),
}

impl<S> Next<S> {
    pub(super) fn stay(step: S) -> Self {
        Next::Continue { step, send: None }
    }

    pub(super) fn send(step: S, message: impl Into<LoginMessage>) -> Self {
        Next::Continue {
            step,
            send: Some(message.into()),
        }
    }

    /// Stop for `reason` and tell the peer.
    pub(super) fn fail(reason: FailureReason) -> Self {
        Next::Tell {
            message: FailureMessage::new(reason.clone()).into(),
            ending: Ending::Failed(Failure::Local(reason)),
        }
    }

    /// Answer a message that does not fit with `unexpected_message_received`.
    pub(super) fn unexpected(why: Unexpected) -> Self {
        Next::Tell {
            message: FailureMessage::new(FailureReason::UnexpectedMessageReceived).into(),
            ending: Ending::Failed(Failure::Unexpected(why)),
        }
    }
}

/// The device-specific part of a machine: its steps once the channel is trusted. Every
/// input comes with `now`, the driver's clock when it was handled; deadlines live in the
/// steps.
pub(super) trait Conduct {
    type Step;

    /// The channel just became trusted (S: G's OK opened; G: the check code matched).
    fn secured(&mut self, now: Instant, out: &mut Vec<Action>) -> Next<Self::Step>;

    /// A message from the peer other than `m.login.failure` (handled for both devices).
    fn message(
        &mut self,
        step: Self::Step,
        message: LoginMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Next<Self::Step>;

    /// A device-specific event from the driver; return `Next::stay(step)` to ignore it.
    fn event(
        &mut self,
        step: Self::Step,
        event: Event,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Next<Self::Step>;

    /// The next deadline of `step`, if it has one.
    fn poll_timeout(step: &Self::Step) -> Option<Instant>;

    /// Time passed: act on the deadlines of `step` that are due at `now` (none may be).
    fn timeout(
        &mut self,
        step: Self::Step,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Next<Self::Step>;
}

/// Where this side is in the handshake, then in the conversation.
enum Phase<S> {
    /// G: waiting for S's INITIATE.
    AwaitingInitiate(GeneratorChannel),
    /// G: OK sent; S's payloads are kept unopened until the user typed a matching code.
    AwaitingCheckCode {
        channel: UnconfirmedChannel,
        held: Vec<Held>,
    },
    /// S: INITIATE sent, waiting for G's OK.
    AwaitingOk(ScannerChannel),
    /// The channel is trusted; the device is at `step`.
    Secure {
        channel: EstablishedChannel,
        step: S,
    },
    /// Our last message is being PUT; then the conversation ends this way.
    Closing(Ending),
    Finished,
}

/// A payload G received before confirmation, with the binding it has to be opened with.
struct Held {
    data: String,
    binding: Binding,
}

enum Input {
    Event(Event),
    Held(Held),
}

/// The token this side last saw, or the one a PUT in flight replaces.
enum Token {
    Known(String),
    Writing { replaces: String },
}

/// One side of a conversation.
pub(super) struct Conversation<D: Conduct> {
    pub(super) device: D,
    generation: Generation,
    /// `base_url` and `rendezvous_id` of every [`Binding`].
    base_url: String,
    rendezvous_id: String,
    token: Token,
    seen: VecDeque<String>,
    queue: VecDeque<Input>,
    out: Vec<Action>,
    phase: Phase<D::Step>,
}

/// Where a conversation takes place, fixed at start.
pub(super) struct Place {
    pub(super) generation: Generation,
    pub(super) base_url: String,
    pub(super) rendezvous_id: String,
    pub(super) sequence_token: String,
}

impl<D: Conduct> Conversation<D> {
    fn with_phase(device: D, place: Place, phase: Phase<D::Step>) -> Self {
        Self {
            device,
            generation: place.generation,
            base_url: place.base_url,
            rendezvous_id: place.rendezvous_id,
            seen: VecDeque::from([place.sequence_token.clone()]),
            token: Token::Known(place.sequence_token),
            queue: VecDeque::new(),
            out: Vec::new(),
            phase,
        }
    }

    /// G: the QR code with `channel`'s key is shown; wait for S.
    pub(super) fn generator(device: D, place: Place, channel: GeneratorChannel) -> Self {
        Self::with_phase(device, place, Phase::AwaitingInitiate(channel))
    }

    /// S: sends INITIATE to the key in the QR code. Returns the first actions.
    pub(super) fn scanner<R: CryptoRng + ?Sized>(
        device: D,
        place: Place,
        their_key: crate::PublicKey,
        rng: &mut R,
    ) -> Result<(Self, Vec<Action>), ChannelError> {
        let binding = Binding::new(
            place.base_url.clone(),
            place.rendezvous_id.clone(),
            place.sequence_token.clone(),
        );
        let (channel, initiate) =
            ScannerChannel::initiate(place.generation, their_key, &binding, rng)?;
        let mut conversation = Self::with_phase(device, place, Phase::AwaitingOk(channel));
        conversation.put(initiate);
        let actions = std::mem::take(&mut conversation.out);
        Ok((conversation, actions))
    }

    pub(super) fn generation(&self) -> Generation {
        self.generation
    }

    /// The token to read against; `None` while a PUT is in flight or once finished.
    pub(super) fn sequence_token(&self) -> Option<&str> {
        match (&self.phase, &self.token) {
            (Phase::Finished, _) | (_, Token::Writing { .. }) => None,
            (_, Token::Known(token)) => Some(token),
        }
    }

    pub(super) fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    pub(super) fn handle<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        event: Event,
        rng: &mut R,
    ) -> Vec<Action> {
        self.queue.push_back(Input::Event(event));
        while let Some(input) = self.next_input() {
            self.process(input, now, rng);
        }
        if self.is_finished() {
            self.queue.clear();
        }
        std::mem::take(&mut self.out)
    }

    /// The read to make at `now`: against the current token, until the end of a receive
    /// slice or the next deadline, whichever comes first.
    pub(super) fn read(&self, now: Instant) -> Option<Read<'_>> {
        let sequence_token = self.sequence_token()?;
        let slice_end = now.checked_add(RECEIVE_SLICE).unwrap_or(now);
        let until = self
            .poll_timeout()
            .map_or(slice_end, |deadline| deadline.min(slice_end));
        Some(Read {
            sequence_token,
            until,
        })
    }

    /// The next deadline; `None` while a PUT is in flight (its outcome comes first) or once
    /// finished.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match (&self.phase, &self.token) {
            (_, Token::Writing { .. }) => None,
            (Phase::Secure { step, .. }, Token::Known(_)) => D::poll_timeout(step),
            _ => None,
        }
    }

    /// Acts on the deadlines due at `now`. Nothing happens while a PUT is in flight: the
    /// deadlines stay due and are looked at again once its outcome was handled.
    pub(super) fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        if matches!(self.token, Token::Known(_)) {
            match std::mem::replace(&mut self.phase, Phase::Finished) {
                Phase::Secure { channel, step } => {
                    let next = self.device.timeout(step, now, &mut self.out);
                    self.apply(channel, next);
                }
                other => self.phase = other,
            }
        }
        if self.is_finished() {
            self.queue.clear();
        }
        std::mem::take(&mut self.out)
    }

    /// While a PUT is in flight only its outcome may be handled: anything else could
    /// trigger a payload sealed against a token that is about to change.
    fn next_input(&mut self) -> Option<Input> {
        if self.is_finished() {
            return None;
        }
        match self.token {
            Token::Known(_) => self.queue.pop_front(),
            Token::Writing { .. } => {
                let at = self.queue.iter().position(|input| {
                    matches!(
                        input,
                        Input::Event(Event::PayloadSent { .. } | Event::TransportFailed)
                    )
                })?;
                self.queue.remove(at)
            }
        }
    }

    fn binding(&self, sequence_token: &str) -> Binding {
        Binding::new(
            self.base_url.clone(),
            self.rendezvous_id.clone(),
            sequence_token,
        )
    }

    /// Queues the PUT of `payload`. Only called with a known token: `next_input` holds back
    /// every event while writing, and each step sends at most one payload.
    fn put(&mut self, payload: String) {
        let replaces = match &self.token {
            Token::Known(token) | Token::Writing { replaces: token } => token.clone(),
        };
        self.out.push(Action::Send {
            payload,
            sequence_token: replaces.clone(),
        });
        self.token = Token::Writing { replaces };
    }

    fn current_binding(&self) -> Binding {
        match &self.token {
            Token::Known(token) | Token::Writing { replaces: token } => self.binding(token),
        }
    }

    fn remember(&mut self, token: String) {
        if self.seen.len() == SEEN_TOKENS {
            self.seen.pop_front();
        }
        self.seen.push_back(token.clone());
        self.token = Token::Known(token);
    }

    fn process<R: CryptoRng + ?Sized>(&mut self, input: Input, now: Instant, rng: &mut R) {
        match input {
            Input::Held(Held { data, binding }) => self.receive(data, binding, now, rng),
            Input::Event(Event::PayloadSent { sequence_token }) => {
                if matches!(self.token, Token::Writing { .. }) {
                    self.remember(sequence_token);
                    match std::mem::replace(&mut self.phase, Phase::Finished) {
                        Phase::Closing(ending) => self.finish(ending, true),
                        other => self.phase = other,
                    }
                }
            }
            Input::Event(Event::PayloadReceived {
                data,
                sequence_token,
            }) => {
                if self.seen.contains(&sequence_token) {
                    return;
                }
                let binding = self.current_binding();
                self.remember(sequence_token);
                self.receive(data, binding, now, rng);
            }
            Input::Event(Event::TransportFailed) => {
                let failure = match std::mem::replace(&mut self.phase, Phase::Finished) {
                    Phase::Closing(Ending::Failed(failure)) => failure,
                    _ => Failure::Transport,
                };
                self.end_silently(Ending::Failed(failure));
            }
            Input::Event(Event::CheckCodeEntered(code)) => self.check_code_entered(code, now),
            Input::Event(Event::Cancelled) => {
                let cancelled = Next::fail(FailureReason::UserCancelled);
                match std::mem::replace(&mut self.phase, Phase::Finished) {
                    Phase::Secure { channel, .. } => self.apply(channel, cancelled),
                    Phase::Closing(ending) => self.phase = Phase::Closing(ending),
                    Phase::Finished => {}
                    // No trusted channel to say it on: leave, and let the peer see the
                    // rendezvous vanish.
                    _ => self
                        .end_silently(Ending::Failed(Failure::Local(FailureReason::UserCancelled))),
                }
            }
            Input::Event(event) => match std::mem::replace(&mut self.phase, Phase::Finished) {
                Phase::Secure { channel, step } => {
                    let next = self.device.event(step, event, now, &mut self.out);
                    self.apply(channel, next);
                }
                other => self.phase = other,
            },
        }
    }

    fn check_code_entered(&mut self, code: u8, now: Instant) {
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::AwaitingCheckCode { channel, held } => match channel.confirm(code) {
                Ok(channel) => {
                    // S's payloads so far come first, in the order they arrived.
                    for held in held.into_iter().rev() {
                        self.queue.push_front(Input::Held(held));
                    }
                    let next = self.device.secured(now, &mut self.out);
                    self.apply(channel, next);
                }
                Err(ChannelError::CheckCodeMismatch) => {
                    self.end_silently(Ending::Failed(Failure::CheckCodeMismatch));
                }
                Err(other) => self.end_silently(Ending::Failed(Failure::Channel(other))),
            },
            other => self.phase = other,
        }
    }

    /// A payload from the peer, with the binding it was sealed under.
    fn receive<R: CryptoRng + ?Sized>(
        &mut self,
        data: String,
        binding: Binding,
        now: Instant,
        rng: &mut R,
    ) {
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::AwaitingInitiate(channel) => match channel.receive_initiate(&data, &binding) {
                Ok(mut channel) => {
                    let ok = channel.seal_ok(&self.current_binding(), rng);
                    self.put(ok);
                    self.out.push(Action::AskCheckCode);
                    self.phase = Phase::AwaitingCheckCode {
                        channel,
                        held: Vec::new(),
                    };
                }
                Err(error) => self.end_silently(Ending::Failed(Failure::Channel(error))),
            },
            Phase::AwaitingCheckCode { channel, mut held } => {
                if held.len() >= MAX_HELD_PAYLOADS {
                    self.end_silently(Ending::Failed(Failure::Flooded));
                } else {
                    held.push(Held { data, binding });
                    self.phase = Phase::AwaitingCheckCode { channel, held };
                }
            }
            Phase::AwaitingOk(channel) => match channel.receive_ok(&data, &binding) {
                Ok(channel) => {
                    self.out.push(Action::ShowCheckCode(channel.check_code()));
                    let next = self.device.secured(now, &mut self.out);
                    self.apply(channel, next);
                }
                Err(error) => self.end_silently(Ending::Failed(Failure::Channel(error))),
            },
            Phase::Secure { mut channel, step } => {
                let next = match channel.open(&data, &binding) {
                    Ok(plaintext) => {
                        let plaintext = Zeroizing::new(plaintext);
                        match LoginMessage::from_json(&plaintext) {
                            Ok(LoginMessage::Failure(failure)) => {
                                Next::End(Ending::Failed(Failure::PeerFailed(failure.reason)))
                            }
                            Ok(message) => self.device.message(step, message, now, &mut self.out),
                            Err(error) => Next::unexpected(Unexpected::Undecodable(error)),
                        }
                    }
                    // Our direction is unharmed: tell the real peer why we stop.
                    Err(error) => Next::Tell {
                        message: FailureMessage::new(FailureReason::UnexpectedMessageReceived)
                            .into(),
                        ending: Ending::Failed(Failure::Channel(error)),
                    },
                };
                self.apply(channel, next);
            }
            // Already ending: nothing the peer says changes that.
            other @ (Phase::Closing(_) | Phase::Finished) => self.phase = other,
        }
    }

    /// Carries out a device step's decision on the trusted channel.
    fn apply(&mut self, mut channel: EstablishedChannel, next: Next<D::Step>) {
        match next {
            Next::Continue { step, send } => {
                if let Some(message) = send {
                    self.seal_and_put(&mut channel, &message);
                }
                self.phase = Phase::Secure { channel, step };
            }
            Next::Tell { message, ending } => {
                self.seal_and_put(&mut channel, &message);
                self.phase = Phase::Closing(ending);
            }
            Next::End(ending) => self.end_silently(ending),
        }
    }

    fn seal_and_put(&mut self, channel: &mut EstablishedChannel, message: &LoginMessage) {
        let plaintext = message.to_json();
        let payload = channel.seal(&plaintext, &self.current_binding());
        self.put(payload);
    }

    /// Ends without a further message of ours: delete the rendezvous (we read the last
    /// message, or the peer must learn we are gone), then report.
    fn end_silently(&mut self, ending: Ending) {
        self.out.push(Action::DeleteRendezvous);
        self.finish(ending, false);
    }

    fn finish(&mut self, ending: Ending, told_peer: bool) {
        self.phase = Phase::Finished;
        self.out.push(match ending {
            Ending::Done => Action::Done,
            Ending::Failed(failure) => Action::Failed { failure, told_peer },
        });
    }
}

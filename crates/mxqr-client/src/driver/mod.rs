//! Drivers: the sans-IO state machines of [`mxqr_proto::machine`] connected to real HTTP.
//!
//! A driver carries out each [`Action`] a machine returns and feeds back the [`Event`] that
//! came of it: rendezvous reads and writes, the OAuth calls of the new device, the device
//! look-ups of the existing device, and what the person sees and types ([`Ui`]). The
//! protocol's timing is the machine's: the driver sleeps until the machine's next deadline
//! ([`poll_timeout`](NewDevice::poll_timeout)) and hands it over
//! ([`handle_timeout`](NewDevice::handle_timeout)), passing the clock in with every input.
//! Requests that may take long (a token poll the server holds) run while the rendezvous is
//! watched, so a failure sent by the other device is seen at once.

mod existing;
mod new;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use mxqr_proto::channel::CheckCode;
use mxqr_proto::machine::{Action, Event, ExistingDevice, Failure, Instant, NewDevice, StartError};
use mxqr_proto::qr::QrCode;

pub use existing::{ExistingSession, GrantOutcome, TokenRefresh, grant_scan, grant_show_qr};
pub use new::{
    BackupStatus, CrossSigningStatus, E2eeReport, E2eeSetup, EncryptionSetUp, LoginOutcome,
    NewDeviceOptions, SignedInDevice, login_scan, login_show_qr, set_up_encryption,
};

use crate::ClientError;
use crate::rendezvous::Rendezvous;

/// What a person is shown while a sign-in runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UiEvent {
    /// Show this QR code for the other device to scan.
    ShowQrCode(QrCode),
    /// Show this check code; the person types it on the other device.
    ShowCheckCode(CheckCode),
    /// New device: the code to confirm on the consent page.
    ShowUserCode {
        user_code: String,
        verification_uri: String,
    },
    /// Existing device: open the consent page (in a browser, or print the link).
    OpenVerificationUri(String),
    /// A step began; long waits say so, so a progress indicator can run.
    Step(Step),
}

/// Steps of a sign-in, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    WaitingForOtherDevice,
    StartingAuthorization,
    WaitingForConsent,
    WaitingForNewDevice,
    SettingUpEncryption,
}

/// The person's side of a sign-in.
pub trait Ui: Send {
    fn show(&mut self, event: UiEvent);
    /// G: the two digits shown on the other device, or `None` if the person cancelled.
    fn ask_check_code(&mut self) -> impl Future<Output = Option<u8>> + Send;
    /// Completes when the person cancels (Ctrl-C, a Cancel button). The driver then tells
    /// the other device over the secure channel when there is one, deletes the rendezvous
    /// and ends with [`Failure::Local`] `UserCancelled`. Never completes by default.
    fn cancelled(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// Why a sign-in did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot start: {0}")]
    Start(#[from] StartError),
    #[error("{failure}")]
    Failed {
        failure: Failure,
        /// Whether the other device was told.
        told_peer: bool,
        /// The request error behind a transport or local failure, when there was one.
        cause: Option<ClientError>,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The sign-in itself went through, but setting up encryption on the new device did not.
    /// The device is signed in: `device` holds its tokens, so the app can keep a record of it
    /// (or sign it out) rather than leave it behind unknown.
    #[error("signed in, but end-to-end encryption could not be set up: {source}")]
    E2ee {
        device: Box<SignedInDevice>,
        #[source]
        source: ClientError,
    },
}

/// The two machines, driven alike.
pub(crate) trait Machine {
    fn handle(&mut self, now: Instant, event: Event) -> Vec<Action>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant) -> Vec<Action>;
    /// The rendezvous read the machine asks for at `now`: its token, and until when.
    fn read(&self, now: Instant) -> Option<(String, Instant)>;
}

impl Machine for NewDevice {
    fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        NewDevice::handle(self, now, event, &mut rand::rng())
    }
    fn poll_timeout(&self) -> Option<Instant> {
        NewDevice::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        NewDevice::handle_timeout(self, now)
    }
    fn read(&self, now: Instant) -> Option<(String, Instant)> {
        NewDevice::read(self, now).map(|read| (read.sequence_token.to_owned(), read.until))
    }
}

impl Machine for ExistingDevice {
    fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        ExistingDevice::handle(self, now, event, &mut rand::rng())
    }
    fn poll_timeout(&self) -> Option<Instant> {
        ExistingDevice::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        ExistingDevice::handle_timeout(self, now)
    }
    fn read(&self, now: Instant) -> Option<(String, Instant)> {
        ExistingDevice::read(self, now).map(|read| (read.sequence_token.to_owned(), read.until))
    }
}

/// The driver's clock, as the machines take it (tokio's, so paused test time applies).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A request that runs while the rendezvous is watched.
pub(crate) type Background<A> = Pin<Box<dyn Future<Output = A> + Send>>;

/// What a device-specific action handler decided.
pub(crate) enum Handled<A> {
    /// Events to feed the machine now.
    Now(Vec<Event>),
    /// A request to run alongside the rendezvous; its answer goes to
    /// [`Handler::answered`].
    Later(Background<A>),
}

/// Device-specific actions.
pub(crate) trait Handler {
    type Ui: Ui;
    /// What a request run in the background brings back.
    type Answer: Send + 'static;
    fn ui(&mut self) -> &mut Self::Ui;
    fn handle(&mut self, action: Action) -> impl Future<Output = Handled<Self::Answer>> + Send;
    /// The events a background request's answer stands for.
    fn answered(&mut self, answer: Self::Answer) -> Vec<Event>;
    /// The request error behind the last failed step, reported with the failure.
    fn take_cause(&mut self) -> Option<ClientError>;
}

/// Runs `machine` to its end. Returns `Ok(())` on [`Action::Done`].
pub(crate) async fn run<M, H>(
    machine: &mut M,
    initial: Vec<Action>,
    rendezvous: &mut Rendezvous,
    handler: &mut H,
) -> Result<(), DriverError>
where
    M: Machine,
    H: Handler,
{
    let mut queue: VecDeque<Action> = initial.into();
    let mut background: Option<Background<H::Answer>> = None;
    let mut transport_error: Option<ClientError> = None;
    loop {
        while let Some(action) = queue.pop_front() {
            let events = match action {
                Action::Send {
                    payload,
                    sequence_token,
                } => match rendezvous.send_replacing(&sequence_token, &payload).await {
                    Ok(token) => vec![Event::PayloadSent {
                        sequence_token: token,
                    }],
                    Err(e) => {
                        transport_error = Some(e);
                        vec![Event::TransportFailed]
                    }
                },
                Action::DeleteRendezvous => {
                    rendezvous.delete_session().await;
                    vec![]
                }
                Action::Done => return Ok(()),
                Action::Failed { failure, told_peer } => {
                    let cause = transport_error.take().or_else(|| handler.take_cause());
                    return Err(DriverError::Failed {
                        failure,
                        told_peer,
                        cause,
                    });
                }
                Action::ShowQrCode(qr) => {
                    handler.ui().show(UiEvent::ShowQrCode(qr));
                    handler
                        .ui()
                        .show(UiEvent::Step(Step::WaitingForOtherDevice));
                    vec![]
                }
                Action::ShowCheckCode(code) => {
                    handler.ui().show(UiEvent::ShowCheckCode(code));
                    vec![]
                }
                Action::AskCheckCode => match handler.ui().ask_check_code().await {
                    Some(code) => vec![Event::CheckCodeEntered(code)],
                    None => vec![Event::Cancelled],
                },
                other => match handler.handle(other).await {
                    Handled::Now(events) => events,
                    Handled::Later(wait) => {
                        background = Some(wait);
                        vec![]
                    }
                },
            };
            for event in events {
                queue.extend(machine.handle(now(), event));
            }
        }

        // Nothing to do but wait: for the other device (reading as long as the machine says,
        // which is never past its next deadline), or for a background request.
        let started = now();
        let read = machine.read(started);
        let deadline = machine.poll_timeout();
        let event = tokio::select! {
            received = async {
                match &read {
                    Some((token, until)) => {
                        let wait = until.saturating_duration_since(started);
                        rendezvous.receive_after(token, wait).await
                    }
                    None => std::future::pending().await,
                }
            } => match received {
                Ok((data, sequence_token)) => Event::PayloadReceived { data, sequence_token },
                // The read's time is up: a receive slice ended, or a deadline came.
                Err(ClientError::Timeout) => {
                    queue.extend(machine.handle_timeout(now()));
                    continue;
                }
                Err(e) => {
                    transport_error = Some(e);
                    Event::TransportFailed
                }
            },
            // With nothing to read, the machine's deadline is waited for on its own.
            () = async {
                match (&read, deadline) {
                    (None, Some(at)) => {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await
                    }
                    _ => std::future::pending().await,
                }
            } => {
                queue.extend(machine.handle_timeout(now()));
                continue;
            }
            answer = async {
                match background.as_mut() {
                    Some(request) => request.await,
                    None => std::future::pending().await,
                }
            } => {
                background = None;
                for event in handler.answered(answer) {
                    queue.extend(machine.handle(now(), event));
                }
                continue;
            }
            () = handler.ui().cancelled() => {
                // A request in flight (a token poll, a device check) is abandoned.
                background = None;
                Event::Cancelled
            }
        };
        queue.extend(machine.handle(now(), event));
    }
}

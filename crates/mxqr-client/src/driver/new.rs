//! The new device: signs in through the device authorization grant while the existing device
//! consents, then receives the cross-signing and backup secrets and sets up encryption.

use std::future::Future;
use std::time::Duration;

use mxqr_keys::{
    Account, BackupRefusal, CrossSigningRefusal, check_received_backup,
    check_received_cross_signing,
};
use mxqr_proto::Generation;
use mxqr_proto::machine::{Action, DeviceAuthorization, Event, NewDevice, TokenAnswer};
use mxqr_proto::messages::{DeviceId, SecretsMessage};
use mxqr_proto::qr::{Msc4388Prefix, QrCode};
use url::Url;

use super::{Background, DriverError, Handled, Handler, Step, Ui, UiEvent, run};
use crate::discovery::homeserver_base_url;
use crate::oauth::{self, AuthMetadata, ClientMetadata, PollOutcome, ScopeSpelling, Tokens};
use crate::rendezvous::{Rendezvous, RendezvousSupport};
use crate::{ClientError, e2ee};

/// How the new device presents itself.
#[derive(Debug, Clone)]
pub struct NewDeviceOptions {
    pub client_name: String,
    pub client_uri: Url,
    /// matrix-sdk requests the unstable spelling; servers accept both.
    pub scope_spelling: ScopeSpelling,
    /// Force a generation when showing a QR code; `None` picks MSC4388 when offered.
    pub generation: Option<Generation>,
}

impl Default for NewDeviceOptions {
    fn default() -> Self {
        Self {
            client_name: "mxqr".into(),
            client_uri: Url::parse("https://mxqr.invalid/").expect("static URL"),
            scope_spelling: ScopeSpelling::Stable,
            generation: None,
        }
    }
}

/// What encryption set-up achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2eeReport {
    pub user_id: String,
    pub cross_signing: CrossSigningStatus,
    pub backup: BackupStatus,
}

impl E2eeReport {
    /// The device keys were uploaded with the self-signing key's signature.
    pub fn cross_signed(&self) -> bool {
        matches!(self.cross_signing, CrossSigningStatus::Signed)
    }

    /// The backup key is the server's current backup version's key.
    pub fn backup_enabled(&self) -> bool {
        matches!(self.backup, BackupStatus::Enabled)
    }
}

/// What became of the received cross-signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrossSigningStatus {
    /// They are the user's published keys: the device signed itself with the self-signing key.
    Signed,
    /// They are not: the device keys went up without their signature, and they are not kept.
    Refused(CrossSigningRefusal),
}

/// What became of the received backup key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupStatus {
    /// It is the current backup version's key.
    Enabled,
    /// The existing device sent none.
    NotSent,
    /// It is not the current backup version's key; it is not kept.
    Refused(BackupRefusal),
}

/// The new device's encryption identity and its set-up once signed in.
pub trait E2eeSetup: Send {
    fn device_id(&self) -> DeviceId;
    fn finish(
        &mut self,
        http: &reqwest::Client,
        homeserver: &Url,
        access_token: &str,
        secrets: &SecretsMessage,
    ) -> impl Future<Output = Result<E2eeReport, ClientError>> + Send;
}

/// The real set-up on a vodozemac `Account` (see [`set_up_encryption`]): the device ID is its
/// Curve25519 identity key, as matrix-sdk does.
impl E2eeSetup for Account {
    fn device_id(&self) -> DeviceId {
        DeviceId::new(mxqr_keys::device_id(self)).expect("a base64 key is a valid device ID")
    }

    async fn finish(
        &mut self,
        http: &reqwest::Client,
        homeserver: &Url,
        access_token: &str,
        secrets: &SecretsMessage,
    ) -> Result<E2eeReport, ClientError> {
        set_up_encryption(self, http, homeserver, access_token, secrets)
            .await
            .map(|done| done.report)
    }
}

/// The outcome of [`set_up_encryption`].
#[derive(Debug)]
pub struct EncryptionSetUp {
    pub report: E2eeReport,
    /// The received secrets that passed the checks: the only ones to keep and hand on to
    /// further devices. `None` when the cross-signing keys were refused: `m.login.secrets`
    /// cannot carry a backup key without them, so a good backup key is then used but not kept.
    pub accepted: Option<SecretsMessage>,
}

/// Sets up encryption on the new device with the secrets received in `m.login.secrets`: one
/// `/keys/upload` carries the device keys signed by the device and, if the received
/// cross-signing keys are the user's published ones, by the self-signing key.
///
/// Each secret is checked against what the homeserver publishes before it is used (see
/// [`mxqr_keys::received`]); a refused one is reported, not an error, and the sign-in goes on
/// without it. Only request failures are errors.
pub async fn set_up_encryption(
    account: &mut Account,
    http: &reqwest::Client,
    homeserver: &Url,
    access_token: &str,
    secrets: &SecretsMessage,
) -> Result<EncryptionSetUp, ClientError> {
    let me = e2ee::whoami(http, homeserver, access_token).await?;
    let user_id = me.user_id;
    let published = e2ee::query_own_keys(
        http,
        homeserver,
        access_token,
        &user_id,
        me.device_id.as_deref(),
    )
    .await?;
    let (cross_signing, cross_signing_status) =
        match check_received_cross_signing(&secrets.cross_signing, &published, &user_id) {
            Ok(keys) => (Some(keys), CrossSigningStatus::Signed),
            Err(refusal) => {
                tracing::warn!(%refusal, "received cross-signing keys refused");
                (None, CrossSigningStatus::Refused(refusal))
            }
        };
    let backup = match &secrets.backup {
        None => BackupStatus::NotSent,
        Some(received) => {
            let current = e2ee::current_backup_version(http, homeserver, access_token).await?;
            match check_received_backup(received, current.as_ref()) {
                Ok(_) => BackupStatus::Enabled,
                Err(refusal) => {
                    tracing::warn!(%refusal, "received backup key refused");
                    BackupStatus::Refused(refusal)
                }
            }
        }
    };

    let body = mxqr_keys::keys_upload_body(account, &user_id, cross_signing.as_ref(), 20)
        .map_err(|e| ClientError::Protocol(format!("building the key upload: {e}")))?;
    e2ee::upload_keys(http, homeserver, access_token, &body).await?;
    account.mark_keys_as_published();

    let accepted = cross_signing.is_some().then(|| SecretsMessage {
        cross_signing: secrets.cross_signing.clone(),
        backup: secrets
            .backup
            .clone()
            .filter(|_| backup == BackupStatus::Enabled),
    });
    Ok(EncryptionSetUp {
        report: E2eeReport {
            user_id,
            cross_signing: cross_signing_status,
            backup,
        },
        accepted,
    })
}

/// A completed sign-in of the new device.
#[derive(Debug)]
pub struct LoginOutcome {
    pub homeserver: Url,
    pub metadata: AuthMetadata,
    pub client_id: String,
    pub device_id: DeviceId,
    pub tokens: Tokens,
    pub e2ee: E2eeReport,
}

/// A new device that signed in but whose encryption set-up failed: what an app needs to keep
/// a record of it, so that it is not left signed in unknown to anyone (and can sign out).
#[derive(Debug)]
pub struct SignedInDevice {
    pub homeserver: Url,
    pub metadata: AuthMetadata,
    pub client_id: String,
    pub device_id: DeviceId,
    pub tokens: Tokens,
}

struct NewHandler<'a, E: E2eeSetup, U: Ui> {
    http: reqwest::Client,
    options: &'a NewDeviceOptions,
    e2ee: &'a mut E,
    ui: &'a mut U,
    /// Known from the QR code or the command line; otherwise from `m.login.protocols`.
    homeserver: Option<Url>,
    grant: Option<(AuthMetadata, String, oauth::DeviceAuthorization)>,
    tokens: Option<Tokens>,
    /// Whether the person was told the sign-in now waits for consent.
    waiting_shown: bool,
    report: Option<Result<E2eeReport, ClientError>>,
    cause: Option<ClientError>,
}

impl<E: E2eeSetup, U: Ui> NewHandler<'_, E, U> {
    async fn start_authorization(
        &mut self,
        homeserver: &str,
        device_id: &DeviceId,
    ) -> Result<Event, ClientError> {
        self.ui.show(UiEvent::Step(Step::StartingAuthorization));
        let base = homeserver_base_url(&self.http, homeserver).await?;
        let metadata = AuthMetadata::discover(&self.http, &base).await?;
        if metadata.device_authorization_endpoint.is_none() {
            return Ok(Event::DeviceAuthorizationUnsupported);
        }
        let client =
            ClientMetadata::native(&self.options.client_name, self.options.client_uri.clone());
        let client_id = oauth::register(&self.http, &metadata, &client).await?;
        let scope = oauth::device_scope(device_id.as_str(), self.options.scope_spelling);
        let grant =
            oauth::start_device_authorization(&self.http, &metadata, &client_id, &scope).await?;
        let event = Event::DeviceAuthorizationStarted(DeviceAuthorization {
            verification_uri: grant.verification_uri.to_string(),
            verification_uri_complete: grant.verification_uri_complete.as_ref().map(Url::to_string),
            user_code: grant.user_code.clone(),
            expires_in: Duration::from_secs(grant.expires_in),
            interval: Some(Duration::from_secs(grant.interval)),
        });
        self.homeserver = Some(base);
        self.grant = Some((metadata, client_id, grant));
        Ok(event)
    }
}

impl<E: E2eeSetup, U: Ui> Handler for NewHandler<'_, E, U> {
    type Ui = U;
    type Answer = Result<PollOutcome, ClientError>;
    fn ui(&mut self) -> &mut U {
        self.ui
    }

    async fn handle(&mut self, action: Action) -> Handled<Self::Answer> {
        match action {
            Action::StartDeviceAuthorization {
                homeserver,
                device_id,
            } => match self.start_authorization(&homeserver, &device_id).await {
                Ok(event) => Handled::Now(vec![event]),
                Err(e) => {
                    self.cause = Some(e);
                    Handled::Now(vec![Event::Cancelled])
                }
            },
            Action::ShowUserCode {
                user_code,
                verification_uri,
            } => {
                self.ui.show(UiEvent::ShowUserCode {
                    user_code,
                    verification_uri,
                });
                Handled::Now(vec![])
            }
            Action::PollToken => {
                let Some((metadata, client_id, grant)) = self.grant.clone() else {
                    self.cause = Some(ClientError::Protocol(
                        "token polling before authorization".into(),
                    ));
                    return Handled::Now(vec![Event::Cancelled]);
                };
                if !std::mem::replace(&mut self.waiting_shown, true) {
                    self.ui.show(UiEvent::Step(Step::WaitingForConsent));
                }
                let http = self.http.clone();
                let poll: Background<Self::Answer> = Box::pin(async move {
                    oauth::poll_device_token(&http, &metadata, &client_id, &grant.device_code).await
                });
                Handled::Later(poll)
            }
            Action::ImportSecrets(secrets) => {
                self.ui.show(UiEvent::Step(Step::SettingUpEncryption));
                let report = match (&self.homeserver, &self.tokens) {
                    (Some(hs), Some(tokens)) => {
                        self.e2ee
                            .finish(&self.http, hs, &tokens.access_token, &secrets)
                            .await
                    }
                    _ => Err(ClientError::Protocol(
                        "secrets arrived before sign-in".into(),
                    )),
                };
                self.report = Some(report);
                Handled::Now(vec![])
            }
            other => {
                tracing::warn!(?other, "action not meant for the new device");
                Handled::Now(vec![])
            }
        }
    }

    fn answered(&mut self, answer: Self::Answer) -> Vec<Event> {
        let answer = match answer {
            Ok(PollOutcome::Granted(tokens)) => {
                self.tokens = Some(tokens);
                TokenAnswer::Granted
            }
            Ok(polled) => polled.answer(),
            // The machine decides whether and when to try again.
            Err(e) if crate::rendezvous::is_transient(&e) => {
                tracing::debug!("token poll failed ({e})");
                self.cause = Some(e);
                return vec![Event::TokenPolled(TokenAnswer::Unavailable)];
            }
            Err(e) => {
                self.cause = Some(e);
                return vec![Event::Cancelled];
            }
        };
        // An earlier unanswered poll is no longer the story.
        self.cause = None;
        vec![Event::TokenPolled(answer)]
    }

    fn take_cause(&mut self) -> Option<ClientError> {
        self.cause.take()
    }
}

/// Picks the generation for a QR code this device shows. A forced generation is tried even
/// when `/versions` does not list it: Synapse serves MSC4388 (unstable prefix) without
/// advertising it, and a server without it refuses the creation (`Unsupported` then too).
pub(crate) fn pick_generation(
    forced: Option<Generation>,
    support: &RendezvousSupport,
) -> Result<Generation, ClientError> {
    match forced {
        Some(g) => Ok(g),
        None if support.msc4388 => Ok(Generation::Msc4388),
        None if support.msc4108 => Ok(Generation::Msc4108v2024),
        None => Err(ClientError::Unsupported),
    }
}

/// Creates a rendezvous of `generation` on `base` (MSC4388 under the unstable prefix, the one
/// shipping clients read from QR codes today).
pub(crate) async fn create_rendezvous(
    http: &reqwest::Client,
    base: &Url,
    generation: Generation,
    support: &RendezvousSupport,
    access_token: Option<&str>,
) -> Result<Rendezvous, ClientError> {
    match generation {
        Generation::Msc4388 => {
            Rendezvous::create_msc4388(
                http.clone(),
                base,
                Msc4388Prefix::Unstable,
                support,
                access_token,
            )
            .await
        }
        Generation::Msc4108v2024 => Rendezvous::create_msc4108(http.clone(), base, support).await,
    }
}

/// Whether the server behind a scanned code offers long-poll (best effort: no answer, no).
pub(crate) async fn scanned_support(http: &reqwest::Client, qr: &QrCode) -> RendezvousSupport {
    let base = match &qr.rendezvous {
        mxqr_proto::qr::QrRendezvous::Msc4388 { base_url, .. } => Url::parse(base_url).ok(),
        mxqr_proto::qr::QrRendezvous::Msc4108 { rendezvous_url, .. } => Url::parse(rendezvous_url)
            .ok()
            .and_then(|u| Url::parse(&u.origin().ascii_serialization()).ok()),
    };
    match base {
        Some(base) => RendezvousSupport::discover(http, &base)
            .await
            .unwrap_or_default(),
        None => RendezvousSupport::default(),
    }
}

async fn drive<E: E2eeSetup, U: Ui>(
    http: reqwest::Client,
    options: &NewDeviceOptions,
    e2ee: &mut E,
    ui: &mut U,
    homeserver: Option<Url>,
    mut rendezvous: Rendezvous,
    start: impl FnOnce(
        &Rendezvous,
        DeviceId,
    ) -> Result<(NewDevice, Vec<Action>), mxqr_proto::machine::StartError>,
) -> Result<LoginOutcome, DriverError> {
    let device_id = e2ee.device_id();
    let (mut machine, initial) = match start(&rendezvous, device_id.clone()) {
        Ok(started) => started,
        Err(e) => {
            rendezvous.delete().await;
            return Err(e.into());
        }
    };
    let mut handler = NewHandler {
        http,
        options,
        e2ee,
        ui,
        homeserver,
        grant: None,
        tokens: None,
        waiting_shown: false,
        report: None,
        cause: None,
    };
    run(&mut machine, initial, &mut rendezvous, &mut handler).await?;
    let report = handler.report.take().ok_or_else(|| {
        DriverError::Client(ClientError::Protocol(
            "sign-in ended without secrets".into(),
        ))
    })?;
    let (metadata, client_id, _) = handler.grant.take().ok_or_else(|| {
        DriverError::Client(ClientError::Protocol(
            "sign-in ended without authorization".into(),
        ))
    })?;
    let tokens = handler.tokens.take().ok_or_else(|| {
        DriverError::Client(ClientError::Protocol("sign-in ended without tokens".into()))
    })?;
    let homeserver = handler.homeserver.take().ok_or_else(|| {
        DriverError::Client(ClientError::Protocol(
            "sign-in ended without a homeserver".into(),
        ))
    })?;
    let e2ee = match report {
        Ok(report) => report,
        Err(source) => {
            return Err(DriverError::E2ee {
                device: Box::new(SignedInDevice {
                    homeserver,
                    metadata,
                    client_id,
                    device_id,
                    tokens,
                }),
                source,
            });
        }
    };
    Ok(LoginOutcome {
        homeserver,
        metadata,
        client_id,
        device_id,
        tokens,
        e2ee,
    })
}

/// The new device shows a QR code on `homeserver` (a base URL or server name) and waits for
/// the existing device to scan it.
pub async fn login_show_qr<E: E2eeSetup, U: Ui>(
    http: reqwest::Client,
    homeserver: &str,
    options: &NewDeviceOptions,
    e2ee: &mut E,
    ui: &mut U,
) -> Result<LoginOutcome, DriverError> {
    let base = homeserver_base_url(&http, homeserver).await?;
    let support = RendezvousSupport::discover(&http, &base).await?;
    let generation = pick_generation(options.generation, &support)?;
    let rendezvous = create_rendezvous(&http, &base, generation, &support, None).await?;
    drive(
        http,
        options,
        e2ee,
        ui,
        Some(base),
        rendezvous,
        |rv, device_id| NewDevice::show_qr(rv.created(), device_id, &mut rand::rng()),
    )
    .await
}

/// The new device scanned `qr`, shown by the existing device.
pub async fn login_scan<E: E2eeSetup, U: Ui>(
    http: reqwest::Client,
    qr: &QrCode,
    options: &NewDeviceOptions,
    e2ee: &mut E,
    ui: &mut U,
) -> Result<LoginOutcome, DriverError> {
    qr.check_scannable_by(mxqr_proto::DeviceKind::New)
        .map_err(mxqr_proto::machine::StartError::Qr)?;
    let support = scanned_support(&http, qr).await;
    let rendezvous = Rendezvous::join(http.clone(), &qr.rendezvous, support.long_poll).await?;
    drive(
        http,
        options,
        e2ee,
        ui,
        None,
        rendezvous,
        |rv, device_id| {
            NewDevice::scan(
                qr,
                rv.sequence_token().to_owned(),
                device_id,
                &mut rand::rng(),
            )
        },
    )
    .await
}

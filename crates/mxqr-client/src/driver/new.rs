//! The new device: signs in through the device authorization grant while the existing device
//! consents, then receives the cross-signing and backup secrets and sets up encryption.

use std::future::Future;

use mxqr_keys::{Account, BackupKey, CrossSigningKeys};
use mxqr_proto::Generation;
use mxqr_proto::machine::{Action, DeviceAuthorization, Event, NewDevice, TokenOutcome};
use mxqr_proto::messages::{DeviceId, SecretsMessage};
use mxqr_proto::qr::{Msc4388Prefix, QrCode};
use reqwest::StatusCode;
use tokio::time::Instant;
use url::Url;

use super::{Background, DriverError, Handled, Handler, Step, Ui, UiEvent, run};
use crate::ClientError;
use crate::discovery::homeserver_base_url;
use crate::oauth::{self, AuthMetadata, ClientMetadata, DeviceGrantOutcome, ScopeSpelling, Tokens};
use crate::rendezvous::{Rendezvous, RendezvousSupport, join};

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
    /// The device keys were uploaded with the self-signing key's signature.
    pub cross_signed: bool,
    /// The backup key matched the server's current backup version.
    pub backup_enabled: bool,
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

/// The real set-up on a vodozemac `Account`: the device ID is its Curve25519 identity key (as
/// matrix-sdk does), and one `/keys/upload` carries the device keys signed by the device and
/// by the self-signing key from `m.login.secrets`.
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
        let whoami: serde_json::Value = get_json(
            http,
            join(homeserver, "_matrix/client/v3/account/whoami")?,
            access_token,
        )
        .await?;
        let user_id = whoami
            .get("user_id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ClientError::Protocol("whoami has no user_id".into()))?
            .to_owned();
        let cross_signing = CrossSigningKeys::from_secrets(&secrets.cross_signing)
            .map_err(|e| ClientError::Protocol(format!("received cross-signing keys: {e}")))?;
        let body = mxqr_keys::keys_upload_body(self, &user_id, Some(&cross_signing), 20)
            .map_err(|e| ClientError::Protocol(format!("building the key upload: {e}")))?;
        let response = http
            .post(join(homeserver, "_matrix/client/v3/keys/upload")?)
            .bearer_auth(access_token)
            .json(&body)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(ClientError::from_response(response).await);
        }
        self.mark_keys_as_published();

        let backup_enabled = match &secrets.backup {
            Some(backup) => backup_matches(http, homeserver, access_token, backup).await?,
            None => false,
        };
        Ok(E2eeReport {
            user_id,
            cross_signed: true,
            backup_enabled,
        })
    }
}

/// Whether the received backup key is the one of the server's backup `version`.
async fn backup_matches(
    http: &reqwest::Client,
    homeserver: &Url,
    access_token: &str,
    backup: &mxqr_proto::messages::BackupSecrets,
) -> Result<bool, ClientError> {
    let key = BackupKey::from_backup_secrets(backup)
        .map_err(|e| ClientError::Protocol(format!("received backup key: {e}")))?;
    let path = format!(
        "_matrix/client/v3/room_keys/version/{}",
        urlencoding(&backup.backup_version)
    );
    let info: serde_json::Value = match get_json(http, join(homeserver, &path)?, access_token).await
    {
        Ok(v) => v,
        Err(ClientError::Status {
            status: StatusCode::NOT_FOUND,
            ..
        }) => return Ok(false),
        Err(e) => return Err(e),
    };
    let public = info
        .pointer("/auth_data/public_key")
        .and_then(|v| v.as_str());
    Ok(public == Some(key.public_key().to_base64().as_str()))
}

pub(crate) fn urlencoding(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%2B")
}

pub(crate) async fn get_json(
    http: &reqwest::Client,
    url: Url,
    access_token: &str,
) -> Result<serde_json::Value, ClientError> {
    let response = http.get(url).bearer_auth(access_token).send().await?;
    if !response.status().is_success() {
        return Err(ClientError::from_response(response).await);
    }
    crate::body::json(response, "answer").await
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

struct NewHandler<'a, E: E2eeSetup, U: Ui> {
    http: reqwest::Client,
    options: &'a NewDeviceOptions,
    e2ee: &'a mut E,
    ui: &'a mut U,
    /// Known from the QR code or the command line; otherwise from `m.login.protocols`.
    homeserver: Option<Url>,
    grant: Option<(AuthMetadata, String, oauth::DeviceAuthorization, Instant)>,
    tokens: Option<Tokens>,
    /// The token polling's result, delivered when its background wait ends.
    pending_tokens: Option<tokio::sync::oneshot::Receiver<Result<DeviceGrantOutcome, ClientError>>>,
    report: Option<Result<E2eeReport, ClientError>>,
    cause: Option<ClientError>,
}

impl<E: E2eeSetup, U: Ui> NewHandler<'_, E, U> {
    fn collect_tokens(&mut self) {
        if let Some(mut rx) = self.pending_tokens.take() {
            match rx.try_recv() {
                Ok(Ok(DeviceGrantOutcome::Granted(tokens))) => self.tokens = Some(tokens),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => self.cause = Some(e),
                // Still polling: keep waiting for it.
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                    self.pending_tokens = Some(rx)
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {}
            }
        }
    }

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
        });
        self.homeserver = Some(base);
        self.grant = Some((metadata, client_id, grant, Instant::now()));
        Ok(event)
    }
}

impl<E: E2eeSetup, U: Ui> Handler for NewHandler<'_, E, U> {
    type Ui = U;
    fn ui(&mut self) -> &mut U {
        self.ui
    }

    async fn handle(&mut self, action: Action) -> Handled {
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
                let Some((metadata, client_id, grant, started)) = self.grant.clone() else {
                    self.cause = Some(ClientError::Protocol(
                        "token polling before authorization".into(),
                    ));
                    return Handled::Now(vec![Event::Cancelled]);
                };
                self.ui.show(UiEvent::Step(Step::WaitingForConsent));
                let http = self.http.clone();
                let (tx, rx) = tokio::sync::oneshot::channel();
                let wait: Background = Box::pin(async move {
                    let outcome =
                        oauth::wait_for_device_token(&http, &metadata, &client_id, &grant, started)
                            .await;
                    let event = match &outcome {
                        Ok(DeviceGrantOutcome::Granted(_)) => Event::Token(TokenOutcome::Granted),
                        Ok(DeviceGrantOutcome::Denied) => Event::Token(TokenOutcome::Denied),
                        Ok(DeviceGrantOutcome::Expired) => Event::Token(TokenOutcome::Expired),
                        Err(_) => Event::Cancelled,
                    };
                    let _ = tx.send(outcome);
                    event
                });
                self.pending_tokens = Some(rx);
                Handled::Later(wait)
            }
            Action::ImportSecrets(secrets) => {
                self.collect_tokens();
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

    fn take_cause(&mut self) -> Option<ClientError> {
        self.collect_tokens();
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
        pending_tokens: None,
        report: None,
        cause: None,
    };
    run(&mut machine, initial, &mut rendezvous, &mut handler).await?;
    handler.collect_tokens();
    let report = handler.report.take().ok_or_else(|| {
        DriverError::Client(ClientError::Protocol(
            "sign-in ended without secrets".into(),
        ))
    })?;
    let e2ee = report.map_err(DriverError::E2ee)?;
    let (metadata, client_id, _, _) = handler.grant.take().ok_or_else(|| {
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

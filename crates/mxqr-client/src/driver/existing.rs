//! The existing device: checks the new device's ID is free, opens the consent page, waits for
//! the new device to appear, then hands over the cross-signing and backup secrets.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use mxqr_proto::Generation;
use mxqr_proto::machine::{Action, ConsentOrigin, DeviceLookup, Event, ExistingDevice};
use mxqr_proto::messages::{DeviceId, SecretsMessage};
use mxqr_proto::qr::QrCode;
use reqwest::StatusCode;
use url::Url;

use super::new::{create_rendezvous, pick_generation, scanned_support};
use super::{Background, DriverError, Handled, Handler, Step, Ui, UiEvent, run};
use crate::ClientError;
use crate::endpoint::endpoint;
use crate::oauth::AuthMetadata;
use crate::rendezvous::{Rendezvous, RendezvousSupport};

/// A signed-in existing device: its homeserver, its access token and the secrets it holds.
pub struct ExistingSession {
    pub homeserver: Url,
    pub access_token: String,
    pub secrets: SecretsMessage,
    /// Renews the access token when the server answers 401: a grant can outlive a
    /// short-lived token (consent may take minutes). Without it a 401 ends the grant.
    pub refresh: Option<TokenRefresh>,
}

/// Returns a fresh access token (and stores the rotated pair wherever the app keeps it).
pub type TokenRefresh = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, ClientError>> + Send>> + Send + Sync,
>;

/// The access token in use, renewed on 401 when the session can refresh.
#[derive(Clone)]
struct Auth {
    token: Arc<Mutex<String>>,
    refresh: Option<TokenRefresh>,
}

impl Auth {
    fn new(session: &ExistingSession) -> Self {
        Self {
            token: Arc::new(Mutex::new(session.access_token.clone())),
            refresh: session.refresh.clone(),
        }
    }

    fn current(&self) -> String {
        self.token.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// [`device_status`] with the current token; on 401 refreshes once and asks again. A
    /// 401 that stays is an error, not an answer: it says nothing about the device.
    async fn device_status(
        &self,
        http: &reqwest::Client,
        homeserver: &Url,
        device_id: &DeviceId,
    ) -> Result<StatusCode, ClientError> {
        let mut status = device_status(http, homeserver, &self.current(), device_id).await?;
        if status == StatusCode::UNAUTHORIZED
            && let Some(refresh) = &self.refresh
        {
            let fresh = refresh().await?;
            if let Ok(mut token) = self.token.lock() {
                *token = fresh.clone();
            }
            status = device_status(http, homeserver, &fresh, device_id).await?;
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized(
                "the homeserver no longer accepts this device's access token; sign in again".into(),
            ));
        }
        Ok(status)
    }
}

impl std::fmt::Debug for ExistingSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExistingSession")
            .field("homeserver", &self.homeserver.as_str())
            .finish_non_exhaustive()
    }
}

/// A completed grant: the device that was signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantOutcome {
    pub device_id: DeviceId,
}

struct ExistingHandler<'a, U: Ui> {
    http: reqwest::Client,
    session: &'a ExistingSession,
    auth: Auth,
    ui: &'a mut U,
    device_id: Option<DeviceId>,
    cause: Option<ClientError>,
}

/// `GET /_matrix/client/v3/devices/<id>`: the status alone matters (404: free).
async fn device_status(
    http: &reqwest::Client,
    homeserver: &Url,
    access_token: &str,
    device_id: &DeviceId,
) -> Result<StatusCode, ClientError> {
    let url = endpoint(
        homeserver,
        "_matrix/client/v3/devices",
        &[device_id.as_str()],
    )?;
    let response = http.get(url).bearer_auth(access_token).send().await?;
    Ok(response.status())
}

impl<U: Ui> Handler for ExistingHandler<'_, U> {
    type Ui = U;
    /// Whether a look-up found the new device.
    type Answer = bool;
    fn ui(&mut self) -> &mut U {
        self.ui
    }

    async fn handle(&mut self, action: Action) -> Handled<bool> {
        match action {
            Action::LookUpDevice { device_id } => {
                let status = self
                    .auth
                    .device_status(&self.http, &self.session.homeserver, &device_id)
                    .await;
                self.device_id = Some(device_id);
                match status {
                    Ok(StatusCode::NOT_FOUND) => {
                        Handled::Now(vec![Event::DeviceLookup(DeviceLookup::NotFound)])
                    }
                    Ok(_) => Handled::Now(vec![Event::DeviceLookup(DeviceLookup::Found)]),
                    Err(e) => {
                        self.cause = Some(e);
                        Handled::Now(vec![Event::Cancelled])
                    }
                }
            }
            Action::OpenVerificationUri { uri } => {
                self.ui.show(UiEvent::OpenVerificationUri(uri));
                self.ui.show(UiEvent::Step(Step::WaitingForNewDevice));
                Handled::Now(vec![])
            }
            Action::LookForDevice { device_id } => {
                let http = self.http.clone();
                let homeserver = self.session.homeserver.clone();
                let auth = self.auth.clone();
                // Any answer but 200, or none, is "not yet": the machine looks again or gives up.
                let look: Background<bool> = Box::pin(async move {
                    matches!(
                        auth.device_status(&http, &homeserver, &device_id).await,
                        Ok(StatusCode::OK)
                    )
                });
                Handled::Later(look)
            }
            Action::ExportSecrets => {
                Handled::Now(vec![Event::SecretsObtained(self.session.secrets.clone())])
            }
            other => {
                tracing::warn!(?other, "action not meant for the existing device");
                Handled::Now(vec![])
            }
        }
    }

    fn answered(&mut self, found: bool) -> Vec<Event> {
        vec![if found {
            Event::DeviceAppeared
        } else {
            Event::DeviceNotSeen
        }]
    }

    fn take_cause(&mut self) -> Option<ClientError> {
        self.cause.take()
    }
}

async fn drive<U: Ui>(
    http: reqwest::Client,
    session: &ExistingSession,
    ui: &mut U,
    mut rendezvous: Rendezvous,
    start: impl FnOnce(
        &Rendezvous,
    ) -> Result<(ExistingDevice, Vec<Action>), mxqr_proto::machine::StartError>,
) -> Result<GrantOutcome, DriverError> {
    let (mut machine, initial) = match start(&rendezvous) {
        Ok(started) => started,
        Err(e) => {
            rendezvous.delete().await;
            return Err(e.into());
        }
    };
    let mut handler = ExistingHandler {
        http,
        auth: Auth::new(session),
        session,
        ui,
        device_id: None,
        cause: None,
    };
    run(&mut machine, initial, &mut rendezvous, &mut handler).await?;
    let device_id = handler.device_id.ok_or_else(|| {
        DriverError::Client(ClientError::Protocol("grant ended without a device".into()))
    })?;
    Ok(GrantOutcome { device_id })
}

/// Where the account's consent pages live: the origin of the `device_authorization_endpoint`
/// in the homeserver's own `auth_metadata`, read here rather than taken from the new device.
/// A homeserver without the grant cannot sign a new device in by QR code, so that ends the
/// grant before it starts.
async fn consent_origin(
    http: &reqwest::Client,
    homeserver: &Url,
) -> Result<ConsentOrigin, ClientError> {
    let metadata = AuthMetadata::discover(http, homeserver).await?;
    let endpoint = metadata.device_authorization_endpoint.ok_or_else(|| {
        ClientError::Protocol(
            "the homeserver offers no device authorization grant, so no device can sign in \
             by QR code"
                .into(),
        )
    })?;
    Ok(ConsentOrigin::of_endpoint(&endpoint)?)
}

/// The existing device shows a QR code on its own homeserver for a new device to scan.
pub async fn grant_show_qr<U: Ui>(
    http: reqwest::Client,
    session: &ExistingSession,
    generation: Option<Generation>,
    ui: &mut U,
) -> Result<GrantOutcome, DriverError> {
    let consent = consent_origin(&http, &session.homeserver).await?;
    let support = RendezvousSupport::discover(&http, &session.homeserver).await?;
    let generation = pick_generation(generation, &support)?;
    let rendezvous = create_rendezvous(
        &http,
        &session.homeserver,
        generation,
        &support,
        Some(&session.access_token),
    )
    .await?;
    let homeserver = session.homeserver.to_string();
    drive(http, session, ui, rendezvous, |rv| {
        ExistingDevice::show_qr(rv.created(), &homeserver, consent, &mut rand::rng())
    })
    .await
}

/// The existing device scanned `qr`, shown by a new device.
pub async fn grant_scan<U: Ui>(
    http: reqwest::Client,
    session: &ExistingSession,
    qr: &QrCode,
    ui: &mut U,
) -> Result<GrantOutcome, DriverError> {
    qr.check_scannable_by(mxqr_proto::DeviceKind::Existing)
        .map_err(mxqr_proto::machine::StartError::Qr)?;
    let consent = consent_origin(&http, &session.homeserver).await?;
    let support = scanned_support(&http, qr).await;
    let rendezvous = Rendezvous::join(http.clone(), &qr.rendezvous, support.long_poll).await?;
    let homeserver = session.homeserver.to_string();
    drive(http, session, ui, rendezvous, |rv| {
        ExistingDevice::scan(
            qr,
            rv.sequence_token().to_owned(),
            &homeserver,
            consent,
            &mut rand::rng(),
        )
    })
    .await
}

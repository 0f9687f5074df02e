//! `mxqr login` (this machine is the new device) and `mxqr grant` (this profile's signed-in
//! device lets a new one in), both directions of the QR code and both generations.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use clap::{ArgGroup, Args};
use mxqr_client::ClientError;
use mxqr_client::driver::{
    BackupStatus, CrossSigningStatus, DriverError, E2eeReport, E2eeSetup, ExistingSession,
    NewDeviceOptions, SignedInDevice, TokenRefresh, grant_scan, grant_show_qr, login_scan,
    login_show_qr, set_up_encryption,
};
use mxqr_keys::Account;
use mxqr_proto::Generation;
use mxqr_proto::machine::Failure;
use mxqr_proto::messages::{DeviceId, FailureReason, SecretsMessage};
use mxqr_proto::qr::QrCode;
use mxqr_proto::qr::render;
use serde_json::json;
use url::Url;

use super::printable::printable;
use super::profile::{Profile, Session, SignedIn};
use super::ui::{CliUi, parse_check_code};
use super::{CliError, block_on, finish};

/// Options both sign-in commands share.
#[derive(Args, Debug)]
pub struct SignInArgs {
    /// Profile to use (see `mxqr account`).
    #[arg(long, default_value = "default", global = true)]
    pub profile: String,
    /// Scan this QR code instead of showing one: a PNG/JPEG file, or the payload as base64
    /// or hex (as printed by the other device).
    #[arg(long, value_name = "CODE", allow_hyphen_values = true)]
    pub scan: Option<String>,
    /// Show an MSC4108 (2024) QR code, the generation Element X and Element Web speak today.
    #[arg(long, conflicts_with_all = ["msc4388", "scan"])]
    pub msc4108: bool,
    /// Show an MSC4388 QR code (the default when the server offers it).
    #[arg(long, conflicts_with = "scan")]
    pub msc4388: bool,
    /// The two-digit check code shown on the other device, instead of asking for it.
    #[arg(long, value_name = "NN", value_parser = parse_check_code)]
    pub check_code: Option<u8>,
    /// Also write the QR code this device shows to this PNG file (for a phone's camera, or
    /// another window).
    #[arg(long, value_name = "FILE", conflicts_with = "scan")]
    pub png: Option<std::path::PathBuf>,
    /// Print one JSON object per event on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

impl SignInArgs {
    fn generation(&self) -> Option<Generation> {
        if self.msc4108 {
            Some(Generation::Msc4108v2024)
        } else if self.msc4388 {
            Some(Generation::Msc4388)
        } else {
            None
        }
    }
}

/// `mxqr login`: sign this machine in as a new device.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("how").required(true).args(["homeserver", "scan"])))]
pub struct LoginArgs {
    /// Show a QR code for a signed-in device to scan, on this homeserver (a server name such
    /// as `example.org`, or a base URL).
    #[arg(long, value_name = "NAME|URL", conflicts_with = "scan")]
    pub homeserver: Option<String>,
    #[command(flatten)]
    pub common: SignInArgs,
}

/// `mxqr grant`: let a new device in from this profile's signed-in device.
#[derive(Args, Debug)]
pub struct GrantArgs {
    #[command(flatten)]
    pub common: SignInArgs,
    /// Print the consent link instead of opening a browser.
    #[arg(long)]
    pub no_browser: bool,
}

/// The new device's keys, keeping a copy of the received secrets that passed the checks
/// against the published keys, so that this profile can later let further devices in itself.
struct KeptKeys {
    account: Account,
    secrets: Option<SecretsMessage>,
}

impl E2eeSetup for KeptKeys {
    fn device_id(&self) -> DeviceId {
        E2eeSetup::device_id(&self.account)
    }

    async fn finish(
        &mut self,
        http: &reqwest::Client,
        homeserver: &Url,
        access_token: &str,
        secrets: &SecretsMessage,
    ) -> Result<E2eeReport, ClientError> {
        let done =
            set_up_encryption(&mut self.account, http, homeserver, access_token, secrets).await?;
        self.secrets = done.accepted;
        Ok(done.report)
    }
}

pub fn login(args: LoginArgs) -> ExitCode {
    let json = args.common.json;
    finish(json, block_on(run_login(args)))
}

pub fn grant(args: GrantArgs) -> ExitCode {
    let json = args.common.json;
    finish(json, block_on(run_grant(args)))
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

async fn run_login(args: LoginArgs) -> Result<(), CliError> {
    let common = &args.common;
    let profile = Profile::open(&common.profile).map_err(CliError::usage)?;
    let previous = profile.load_opt().map_err(CliError::failed)?;
    // Signing in makes new device keys: never overwrite a profile's keys or tokens.
    if let Some(previous) = previous {
        let what = if previous.access_token.is_some() {
            "is already signed in"
        } else {
            "already holds device keys"
        };
        return Err(CliError::Usage(format!(
            "profile `{}` {what}; choose another with --profile",
            profile.name
        )));
    }
    let qr = common.scan.as_deref().map(read_qr).transpose()?;
    let mut ui = CliUi::new(common.json, common.check_code, true);
    ui.png = common.png.clone();
    let options = NewDeviceOptions {
        generation: common.generation(),
        ..NewDeviceOptions::default()
    };
    let mut keys = KeptKeys {
        account: Account::new(),
        secrets: None,
    };
    let http = reqwest::Client::new();
    let result = match (&qr, &args.homeserver) {
        (Some(qr), _) => login_scan(http, qr, &options, &mut keys, &mut ui).await,
        (None, Some(homeserver)) => {
            login_show_qr(http, homeserver, &options, &mut keys, &mut ui).await
        }
        (None, None) => {
            return Err(CliError::Usage(
                "give --homeserver to show a QR code, or --scan to scan one".into(),
            ));
        }
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(DriverError::E2ee { device, source }) => {
            return Err(keep_without_e2ee(&profile, &keys.account, &device, &source));
        }
        Err(e) => return Err(cli_error(&e)),
    };

    let mut session = Session {
        homeserver: Some(outcome.homeserver.clone()),
        user_id: Some(outcome.e2ee.user_id.clone()),
        device_id: Some(outcome.device_id.as_str().to_owned()),
        client_id: Some(outcome.client_id.clone()),
        secrets: keys.secrets.take(),
        ..Session::default()
    };
    session.set_tokens(&outcome.tokens);
    session
        .set_account(&keys.account)
        .map_err(CliError::Failed)?;
    profile.save(&session).map_err(CliError::failed)?;

    let e2ee = &outcome.e2ee;
    if common.json {
        ui.emit(json!({
            "event": "done",
            "role": "new",
            "profile": profile.name,
            "homeserver": outcome.homeserver.as_str(),
            "user_id": e2ee.user_id,
            "device_id": outcome.device_id.as_str(),
            "cross_signed": e2ee.cross_signed(),
            "cross_signing_refused": refused_cross_signing(e2ee).map(|r| r.to_string()),
            "backup": e2ee.backup_enabled(),
            "backup_refused": refused_backup(e2ee).map(|r| r.to_string()),
        }));
    } else {
        println!(
            "Signed in as {} on device {} (profile `{}`)",
            printable(&e2ee.user_id),
            printable(outcome.device_id.as_str()),
            profile.name
        );
        println!(
            "cross-signed: {}",
            with_reason(e2ee.cross_signed(), refused_cross_signing(e2ee))
        );
        println!(
            "key backup:   {}",
            with_reason(e2ee.backup_enabled(), refused_backup(e2ee))
        );
    }
    Ok(())
}

fn refused_cross_signing(e2ee: &E2eeReport) -> Option<&dyn std::fmt::Display> {
    match &e2ee.cross_signing {
        CrossSigningStatus::Refused(refusal) => Some(refusal),
        CrossSigningStatus::Signed => None,
    }
}

fn refused_backup(e2ee: &E2eeReport) -> Option<&dyn std::fmt::Display> {
    match &e2ee.backup {
        BackupStatus::Refused(refusal) => Some(refusal),
        BackupStatus::Enabled | BackupStatus::NotSent => None,
    }
}

/// `yes`, `no`, or `no (why a received key was refused)`.
fn with_reason(done: bool, refused: Option<&dyn std::fmt::Display>) -> String {
    match refused {
        Some(why) => format!("no ({why}; the received key is not kept)"),
        None => yes_no(done).to_owned(),
    }
}

/// The device signed in but encryption set-up failed: saves the profile anyway (tokens,
/// device keys, no secrets) and says how to sign the device out.
///
/// Saved rather than revoked: the device already shows on the account (the existing device
/// saw it appear), a revocation would go to the server that just failed and could fail too,
/// and with the profile the person can look at the device (`mxqr whoami`), keep it as a
/// device without cross-signing, or end it with `mxqr logout`.
fn keep_without_e2ee(
    profile: &Profile,
    account: &Account,
    device: &SignedInDevice,
    source: &ClientError,
) -> CliError {
    let mut session = Session {
        homeserver: Some(device.homeserver.clone()),
        device_id: Some(device.device_id.as_str().to_owned()),
        client_id: Some(device.client_id.clone()),
        ..Session::default()
    };
    session.set_tokens(&device.tokens);
    let saved = session
        .set_account(account)
        .and_then(|()| profile.save(&session).map_err(|e| e.to_string()));
    let name = &profile.name;
    match saved {
        Ok(()) => CliError::Failed(format!(
            "signed in as device {} (saved in profile `{name}`), but end-to-end encryption \
             could not be set up: {source}; the device is not cross-signed. \
             `mxqr logout --profile {name}` signs it out",
            device.device_id.as_str()
        )),
        Err(e) => CliError::Failed(format!(
            "signed in as device {}, but end-to-end encryption could not be set up \
             ({source}), and the profile could not be saved ({e}): sign the device out on \
             the account page",
            device.device_id.as_str()
        )),
    }
}

async fn run_grant(args: GrantArgs) -> Result<(), CliError> {
    let common = &args.common;
    let qr = common.scan.as_deref().map(read_qr).transpose()?;
    let mut signed_in = SignedIn::load(&common.profile)?;
    let Some(secrets) = signed_in.session.secrets.clone() else {
        return Err(CliError::Failed(format!(
            "profile `{}` holds no cross-signing keys to hand over; run `mxqr account bootstrap --profile {}` first",
            signed_in.profile.name, signed_in.profile.name
        )));
    };
    let http = reqwest::Client::new();
    // Checks the token first (refreshing it if it expired) so the sign-in does not fail
    // half-way on a stale token.
    let homeserver = signed_in.homeserver.clone();
    let me = signed_in
        .with_refresh(&http, |token| {
            let http = http.clone();
            let homeserver = homeserver.clone();
            async move { mxqr_client::e2ee::whoami(&http, &homeserver, &token).await }
        })
        .await
        .map_err(CliError::Failed)?;

    let profile_name = signed_in.profile.name.clone();
    let homeserver = signed_in.homeserver.clone();
    let access_token = signed_in.access_token.clone();
    // The grant may outlive the access token (consent can take minutes): refresh it, and
    // save the rotated pair in the profile, whenever the server refuses it.
    let shared = Arc::new(tokio::sync::Mutex::new(signed_in));
    let refresh: TokenRefresh = {
        let http = http.clone();
        Arc::new(move || {
            let shared = shared.clone();
            let http = http.clone();
            Box::pin(async move {
                let mut signed_in = shared.lock().await;
                signed_in
                    .refresh(&http)
                    .await
                    .map_err(ClientError::Unauthorized)?;
                Ok(signed_in.access_token.clone())
            })
        })
    };
    let session = ExistingSession {
        homeserver,
        access_token,
        secrets: secrets.clone(),
        refresh: Some(refresh),
    };
    let mut ui = CliUi::new(common.json, common.check_code, args.no_browser);
    ui.png = common.png.clone();
    let result = match &qr {
        Some(qr) => grant_scan(http, &session, qr, &mut ui).await,
        None => grant_show_qr(http, &session, common.generation(), &mut ui).await,
    };
    let outcome = result.map_err(|e| cli_error(&e))?;
    let backup = secrets.backup.is_some();
    if common.json {
        ui.emit(json!({
            "event": "done",
            "role": "existing",
            "profile": profile_name,
            "user_id": me.user_id,
            "device_id": outcome.device_id.as_str(),
            "cross_signing_sent": true,
            "backup_sent": backup,
        }));
    } else {
        println!(
            "Signed in device {} as {}",
            printable(outcome.device_id.as_str()),
            printable(&me.user_id)
        );
        println!("cross-signing keys handed over: yes");
        println!("key backup handed over:         {}", yes_no(backup));
    }
    Ok(())
}

/// A QR code from an image file, or its payload as hex or base64 (any alphabet, padded or
/// not). Hex goes first: hex text is also base64 text, but a real payload's base64 is never
/// hex.
fn read_qr(input: &str) -> Result<QrCode, CliError> {
    let path = Path::new(input);
    let payload = if path.is_file() {
        let bytes = std::fs::read(path)
            .map_err(|e| CliError::Usage(format!("cannot read {input}: {e}")))?;
        render::decode_image(&bytes).map_err(|e| CliError::Usage(format!("{input}: {e}")))?
    } else {
        let text = input.trim();
        if text.len().is_multiple_of(2)
            && !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_hexdigit())
            && let Ok(bytes) = hex::decode(text)
        {
            bytes
        } else {
            let alphabet = if text.contains(['-', '_']) {
                &alphabet::URL_SAFE
            } else {
                &alphabet::STANDARD
            };
            let config = GeneralPurposeConfig::new()
                .with_decode_padding_mode(DecodePaddingMode::Indifferent);
            GeneralPurpose::new(alphabet, config)
                .decode(text)
                .map_err(|_| {
                    CliError::Usage(
                        "--scan takes an image file, or the code's payload as base64 or hex".into(),
                    )
                })?
        }
    };
    QrCode::decode(&payload)
        .map_err(|e| CliError::Usage(format!("the scanned code is not a login QR code: {e}")))
}

/// A driver error as the command's outcome: Ctrl-C is a cancellation, not a failure.
fn cli_error(error: &DriverError) -> CliError {
    match error {
        // Without a request error behind it, a local cancellation is the person's.
        DriverError::Failed {
            failure: Failure::Local(FailureReason::UserCancelled),
            cause: None,
            ..
        } => CliError::Cancelled(describe(error)),
        _ => CliError::Failed(describe(error)),
    }
}

/// A driver error in plain words, with the request error behind it when there is one.
pub fn describe(error: &DriverError) -> String {
    match error {
        DriverError::Failed { failure, cause, .. } => {
            let what = match failure {
                Failure::CheckCodeMismatch => {
                    "the check code did not match the one on the other device; nothing was \
                     signed in (start again, and type the code carefully)"
                        .to_owned()
                }
                Failure::Transport
                    if matches!(cause, Some(ClientError::Gone) | Some(ClientError::Expired)) =>
                {
                    return if matches!(cause, Some(ClientError::Expired)) {
                        "the sign-in session expired on the server before the other device \
                         answered; nothing was signed in"
                            .to_owned()
                    } else {
                        "the sign-in session is gone from the server: the other device ended it \
                         (a wrong check code or a cancellation), or the server lost it (a \
                         restart); nothing was signed in"
                            .to_owned()
                    };
                }
                // The driver stops (and tells the other device) when one of its own requests
                // fails: that is the story, not a cancellation.
                Failure::Local(FailureReason::UserCancelled) if cause.is_some() => {
                    "the sign-in stopped".to_owned()
                }
                Failure::PeerFailed(reason) | Failure::Local(reason) => {
                    reason_words(reason).to_owned()
                }
                Failure::PeerDeclined | Failure::Declined => {
                    "the sign-in was declined on the consent page".to_owned()
                }
                Failure::UntrustedConsentPage(why) => format!(
                    "the new device asked this one to open a page outside your homeserver's \
                     sign-in service, as a phishing attempt would; nothing was opened or signed \
                     in ({why})"
                ),
                other => other.to_string(),
            };
            match cause {
                Some(cause) => format!("{what} ({cause})"),
                None => what,
            }
        }
        DriverError::Start(e) => format!("cannot start: {e}"),
        DriverError::Client(ClientError::Unsupported) => {
            "the homeserver does not offer QR sign-in (no rendezvous API of the requested kind)"
                .to_owned()
        }
        other => other.to_string(),
    }
}

fn reason_words(reason: &FailureReason) -> &str {
    match reason {
        FailureReason::AuthorizationExpired => {
            "the approval on the consent page was not given in time"
        }
        FailureReason::DeviceAlreadyExists => {
            "a device with the new device's ID already exists on the account"
        }
        FailureReason::DeviceNotFound => {
            "the new device said it signed in, but it did not appear on the account"
        }
        FailureReason::UnexpectedMessageReceived => {
            "the other device sent something out of turn (a bug in one of the two apps)"
        }
        FailureReason::UnsupportedProtocol => "the two devices have no sign-in method in common",
        FailureReason::UserCancelled => "the sign-in was cancelled",
        FailureReason::Unknown(reason) => reason,
    }
}

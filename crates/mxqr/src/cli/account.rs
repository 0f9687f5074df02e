//! `mxqr account`: make a profile for a signed-in ("existing") device without QR sign-in,
//! either from an operator-issued token or through the device authorization grant, then give
//! it cross-signing and key backup so it can let new devices in. Also `mxqr whoami` and
//! `mxqr logout`, which act on any profile.

use std::io::Read as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use mxqr_client::discovery::homeserver_base_url;
use mxqr_client::driver::{E2eeSetup, Step, Ui, UiEvent};
use mxqr_client::loopback::{Callback, LoopbackRedirect};
use mxqr_client::oauth::{self, AuthMetadata, ClientMetadata, DeviceGrantOutcome, ScopeSpelling};
use mxqr_keys::Account;
use serde_json::json;
use url::Url;

use super::printable::printable;
use super::profile::{Profile, Session, SignedIn};
use super::ui::CliUi;
use super::{CliError, block_on, finish};

/// Options every account command takes.
#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// Profile to act on.
    #[arg(long, default_value = "default", global = true)]
    pub profile: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AccountArgs {
    #[command(flatten)]
    pub common: ProfileArgs,
    #[command(subcommand)]
    pub command: AccountCommand,
}

#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Create this profile's device keys and print the device ID they give (issue a token for
    /// that ID with `mxqr admin issue-token`, then `mxqr account import-token`).
    Init,
    /// Store a token for this profile's device, read from stdin: the output of
    /// `mxqr admin issue-token` (access token, then refresh token, one per line) or of its
    /// `--json` form.
    ImportToken {
        /// The homeserver the token is for (a server name or a base URL).
        #[arg(long, value_name = "NAME|URL")]
        homeserver: String,
        /// Read the token from stdin (the only way: tokens do not belong in shell history).
        #[arg(long, required = true)]
        access_token_stdin: bool,
        /// The OAuth client the tokens were issued to, if any, so they can be refreshed.
        #[arg(long, value_name = "ID")]
        client_id: Option<String>,
    },
    /// Create cross-signing keys and a key backup for the account and keep them in this
    /// profile (once per account: an account that has cross-signing keys already refuses).
    Bootstrap,
    /// Sign this machine in, in a browser (authorization code with PKCE, redirected back to
    /// a listener on 127.0.0.1) or with `--device-code` (approve a printed code in any
    /// browser), then bootstrap cross-signing and backup.
    Login {
        /// The homeserver (a server name or a base URL).
        #[arg(long, value_name = "NAME|URL")]
        homeserver: String,
        /// Use the device authorization grant instead of a browser on this machine.
        #[arg(long)]
        device_code: bool,
        /// Print the sign-in page's address instead of opening a browser.
        #[arg(long, conflicts_with = "device_code")]
        no_browser: bool,
        /// Only sign in; leave cross-signing and backup to an existing device.
        #[arg(long)]
        no_bootstrap: bool,
    },
}

pub fn run(args: AccountArgs) -> ExitCode {
    let json = args.common.json;
    finish(json, block_on(execute(args)))
}

async fn execute(args: AccountArgs) -> Result<(), CliError> {
    let common = &args.common;
    match args.command {
        AccountCommand::Init => init(common),
        AccountCommand::ImportToken {
            homeserver,
            access_token_stdin: _,
            client_id,
        } => import_token(common, &homeserver, client_id).await,
        AccountCommand::Bootstrap => bootstrap(common).await,
        AccountCommand::Login {
            homeserver,
            device_code,
            no_browser,
            no_bootstrap,
        } => {
            let method = if device_code {
                Method::DeviceCode
            } else {
                Method::Browser { no_browser }
            };
            sign_in(common, &homeserver, method).await?;
            if no_bootstrap {
                Ok(())
            } else {
                bootstrap(common).await
            }
        }
    }
}

fn init(common: &ProfileArgs) -> Result<(), CliError> {
    let profile = Profile::open(&common.profile).map_err(CliError::usage)?;
    if profile.load_opt().map_err(CliError::failed)?.is_some() {
        return Err(CliError::Usage(format!(
            "profile `{}` already exists; choose another with --profile",
            profile.name
        )));
    }
    let account = Account::new();
    let device_id = mxqr_keys::device_id(&account);
    let mut session = Session {
        device_id: Some(device_id.clone()),
        ..Session::default()
    };
    session.set_account(&account).map_err(CliError::Failed)?;
    profile.save(&session).map_err(CliError::failed)?;
    if common.json {
        println!(
            "{}",
            json!({ "profile": profile.name, "device_id": device_id })
        );
    } else {
        println!("{device_id}");
    }
    Ok(())
}

/// Access and refresh token from `mxqr admin issue-token` output (lines or JSON).
fn parse_tokens(text: &str) -> Result<(String, Option<String>), CliError> {
    let text = text.trim();
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| CliError::Usage(format!("stdin is not valid JSON: {e}")))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let access = field("access_token")
            .ok_or_else(|| CliError::Usage("the JSON on stdin has no access_token".into()))?;
        return Ok((access, field("refresh_token")));
    }
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let access = lines
        .next()
        .ok_or_else(|| CliError::Usage("no access token on stdin".into()))?
        .to_owned();
    Ok((access, lines.next().map(str::to_owned)))
}

async fn import_token(
    common: &ProfileArgs,
    homeserver: &str,
    client_id: Option<String>,
) -> Result<(), CliError> {
    let profile = Profile::open(&common.profile).map_err(CliError::usage)?;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| CliError::Failed(format!("cannot read stdin: {e}")))?;
    let (access_token, refresh_token) = parse_tokens(&input)?;
    let mut session = profile.load_opt().map_err(CliError::failed)?.ok_or_else(|| {
        CliError::Usage(format!(
            "profile `{}` has no device keys yet: run `mxqr account init --profile {}` and issue the token for the device ID it prints",
            profile.name, profile.name
        ))
    })?;
    let http = reqwest::Client::new();
    let base = homeserver_base_url(&http, homeserver)
        .await
        .map_err(CliError::usage)?;
    let me = mxqr_client::e2ee::whoami(&http, &base, &access_token)
        .await
        .map_err(|e| CliError::Failed(format!("the server did not accept the token: {e}")))?;
    if me.device_id.is_some() && me.device_id != session.device_id {
        return Err(CliError::Usage(format!(
            "the token is for device {}, but profile `{}` holds the keys of device {}; issue the token with --device-id {}",
            me.device_id.as_deref().unwrap_or("?"),
            profile.name,
            session.device_id.as_deref().unwrap_or("?"),
            session.device_id.as_deref().unwrap_or("?"),
        )));
    }
    session.homeserver = Some(base.clone());
    session.user_id = Some(me.user_id.clone());
    session.access_token = Some(access_token);
    session.refresh_token = refresh_token;
    session.client_id = client_id;
    profile.save(&session).map_err(CliError::failed)?;
    report_identity(
        common,
        &profile.name,
        &base,
        &me.user_id,
        me.device_id.as_deref(),
    );
    Ok(())
}

async fn bootstrap(common: &ProfileArgs) -> Result<(), CliError> {
    let mut signed_in = SignedIn::load(&common.profile)?;
    if signed_in.session.secrets.is_some() {
        return Err(CliError::Usage(format!(
            "profile `{}` already holds cross-signing keys",
            signed_in.profile.name
        )));
    }
    let mut account = signed_in
        .session
        .account()
        .map_err(CliError::Failed)?
        .ok_or_else(|| CliError::Failed("the profile has no device keys".into()))?;
    let http = reqwest::Client::new();
    // Refreshes an expired token first: bootstrap itself changes state on the server, so it
    // is not simply retried.
    let homeserver = signed_in.homeserver.clone();
    signed_in
        .with_refresh(&http, |token| {
            let http = http.clone();
            let homeserver = homeserver.clone();
            async move { mxqr_client::e2ee::whoami(&http, &homeserver, &token).await }
        })
        .await
        .map_err(CliError::Failed)?;
    let result = mxqr_client::e2ee::bootstrap(
        &http,
        &signed_in.homeserver,
        &signed_in.access_token,
        &mut account,
    )
    .await;
    // The keys may have been published even if a later step failed: keep that state.
    signed_in
        .session
        .set_account(&account)
        .map_err(CliError::Failed)?;
    let boot = match result {
        Ok(boot) => boot,
        Err(e) => {
            signed_in
                .profile
                .save(&signed_in.session)
                .map_err(CliError::failed)?;
            return Err(CliError::Failed(format!(
                "setting up cross-signing and backup failed: {e}"
            )));
        }
    };
    signed_in.session.secrets = Some(boot.secrets());
    signed_in.session.user_id = Some(boot.user_id.clone());
    signed_in
        .profile
        .save(&signed_in.session)
        .map_err(CliError::failed)?;
    if common.json {
        println!(
            "{}",
            json!({
                "event": "done",
                "profile": signed_in.profile.name,
                "user_id": boot.user_id,
                "device_id": boot.device_id,
                "cross_signed": true,
                "backup": true,
                "backup_version": boot.backup_version,
            })
        );
    } else {
        println!(
            "Cross-signing and key backup (version {}) set up for {} on device {}",
            printable(&boot.backup_version),
            printable(&boot.user_id),
            printable(&boot.device_id)
        );
    }
    Ok(())
}

/// Device authorization grant (RFC 8628): print the code and link, poll until approved.
/// How `mxqr account login` gets its tokens.
#[derive(Clone, Copy, Debug)]
enum Method {
    DeviceCode,
    Browser { no_browser: bool },
}

/// How long the browser sign-in may take before the command gives up.
const BROWSER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

async fn sign_in(common: &ProfileArgs, homeserver: &str, method: Method) -> Result<(), CliError> {
    let profile = Profile::open(&common.profile).map_err(CliError::usage)?;
    if profile.load_opt().map_err(CliError::failed)?.is_some() {
        return Err(CliError::Usage(format!(
            "profile `{}` already exists; choose another with --profile, or `mxqr logout` first",
            profile.name
        )));
    }
    let http = reqwest::Client::new();
    let no_browser = matches!(
        method,
        Method::DeviceCode | Method::Browser { no_browser: true }
    );
    let mut ui = CliUi::new(common.json, None, no_browser);
    ui.show(UiEvent::Step(Step::StartingAuthorization));
    let base = homeserver_base_url(&http, homeserver)
        .await
        .map_err(CliError::usage)?;
    let metadata = AuthMetadata::discover(&http, &base).await.map_err(|e| {
        CliError::Failed(format!("the homeserver offers no OAuth 2.0 sign-in: {e}"))
    })?;
    let account = Account::new();
    let device_id = E2eeSetup::device_id(&account);
    let client = ClientMetadata::native(
        "mxqr",
        Url::parse("https://mxqr.invalid/").map_err(CliError::failed)?,
    );
    let client_id = oauth::register(&http, &metadata, &client)
        .await
        .map_err(|e| CliError::Failed(format!("client registration: {e}")))?;
    let scope = oauth::device_scope(device_id.as_str(), ScopeSpelling::Stable);
    let tokens = match method {
        Method::DeviceCode => {
            device_code_tokens(&http, &metadata, &client_id, &scope, &mut ui).await?
        }
        Method::Browser { .. } => {
            browser_tokens(&http, &metadata, &client_id, &scope, &mut ui).await?
        }
    };
    let me = mxqr_client::e2ee::whoami(&http, &base, &tokens.access_token)
        .await
        .map_err(|e| CliError::Failed(format!("signed in, but whoami failed: {e}")))?;
    let mut session = Session {
        homeserver: Some(base.clone()),
        user_id: Some(me.user_id.clone()),
        device_id: Some(device_id.as_str().to_owned()),
        client_id: Some(client_id),
        ..Session::default()
    };
    session.set_tokens(&tokens);
    session.set_account(&account).map_err(CliError::Failed)?;
    profile.save(&session).map_err(CliError::failed)?;
    report_identity(
        common,
        &profile.name,
        &base,
        &me.user_id,
        Some(device_id.as_str()),
    );
    Ok(())
}

async fn device_code_tokens(
    http: &reqwest::Client,
    metadata: &AuthMetadata,
    client_id: &str,
    scope: &str,
    ui: &mut CliUi,
) -> Result<oauth::Tokens, CliError> {
    let grant = oauth::start_device_authorization(http, metadata, client_id, scope)
        .await
        .map_err(|e| CliError::Failed(format!("device authorization: {e}")))?;
    let started = tokio::time::Instant::now();
    let uri = grant
        .verification_uri_complete
        .as_ref()
        .unwrap_or(&grant.verification_uri)
        .to_string();
    ui.show(UiEvent::ShowUserCode {
        user_code: grant.user_code.clone(),
        verification_uri: uri,
    });
    ui.show(UiEvent::Step(Step::WaitingForConsent));
    match oauth::wait_for_device_token(http, metadata, client_id, &grant, started)
        .await
        .map_err(|e| CliError::Failed(format!("waiting for approval: {e}")))?
    {
        DeviceGrantOutcome::Granted(tokens) => Ok(tokens),
        DeviceGrantOutcome::Denied => Err(CliError::Failed("the sign-in was declined".into())),
        DeviceGrantOutcome::Expired => Err(CliError::Failed(
            "the code was not approved in time; start again".into(),
        )),
    }
}

/// The authorization-code grant of a native app: PKCE S256, a random `state`, the browser
/// sent back to a one-shot listener on 127.0.0.1.
async fn browser_tokens(
    http: &reqwest::Client,
    metadata: &AuthMetadata,
    client_id: &str,
    scope: &str,
    ui: &mut CliUi,
) -> Result<oauth::Tokens, CliError> {
    let redirect = LoopbackRedirect::bind().await.map_err(CliError::failed)?;
    let redirect_uri = redirect.redirect_uri().clone();
    let pkce = oauth::Pkce::new();
    let state = oauth::random_state();
    let url = oauth::authorization_url(metadata, client_id, &redirect_uri, scope, &state, &pkce);
    ui.show_sign_in_page(url.as_str());
    ui.show(UiEvent::Step(Step::WaitingForConsent));
    let callback = redirect.wait(&state, BROWSER_TIMEOUT).await.map_err(|_| {
        CliError::Failed(format!(
            "no answer from the browser within {} minutes; start again",
            BROWSER_TIMEOUT.as_secs() / 60
        ))
    })?;
    match callback {
        Callback::Code(code) => {
            oauth::exchange_code(http, metadata, client_id, &code, &redirect_uri, &pkce)
                .await
                .map_err(|e| CliError::Failed(format!("redeeming the authorization code: {e}")))
        }
        Callback::Error { error, .. } if error == "access_denied" => {
            Err(CliError::Failed("the sign-in was declined".into()))
        }
        Callback::Error { error, description } => Err(CliError::Failed(format!(
            "the homeserver refused the sign-in: {error}{}",
            description.map(|d| format!(" ({d})")).unwrap_or_default()
        ))),
    }
}

fn report_identity(
    common: &ProfileArgs,
    profile: &str,
    homeserver: &Url,
    user_id: &str,
    device_id: Option<&str>,
) {
    if common.json {
        println!(
            "{}",
            json!({
                "event": "signed_in",
                "profile": profile,
                "homeserver": homeserver.as_str(),
                "user_id": user_id,
                "device_id": device_id,
            })
        );
    } else {
        println!(
            "Profile `{profile}`: {} on device {} at {}",
            printable(user_id),
            printable(device_id.unwrap_or("(unknown)")),
            printable(homeserver.as_str())
        );
    }
}

/// `mxqr whoami`.
#[derive(Args, Debug)]
pub struct WhoamiArgs {
    #[command(flatten)]
    pub common: ProfileArgs,
}

pub fn whoami(args: WhoamiArgs) -> ExitCode {
    let json = args.common.json;
    finish(json, block_on(run_whoami(args.common)))
}

async fn run_whoami(common: ProfileArgs) -> Result<(), CliError> {
    let mut signed_in = SignedIn::load(&common.profile)?;
    let http = reqwest::Client::new();
    let homeserver = signed_in.homeserver.clone();
    let me = signed_in
        .with_refresh(&http, |token| {
            let http = http.clone();
            let homeserver = homeserver.clone();
            async move { mxqr_client::e2ee::whoami(&http, &homeserver, &token).await }
        })
        .await
        .map_err(CliError::Failed)?;
    let secrets = signed_in.session.secrets.as_ref();
    if common.json {
        println!(
            "{}",
            json!({
                "profile": signed_in.profile.name,
                "homeserver": homeserver.as_str(),
                "user_id": me.user_id,
                "device_id": me.device_id,
                "cross_signing_keys": secrets.is_some(),
                "backup_key": secrets.is_some_and(|s| s.backup.is_some()),
            })
        );
    } else {
        println!("user:       {}", printable(&me.user_id));
        println!(
            "device:     {}",
            printable(me.device_id.as_deref().unwrap_or("(unknown)"))
        );
        println!("homeserver: {}", printable(homeserver.as_str()));
        println!(
            "holds cross-signing keys: {}",
            if secrets.is_some() { "yes" } else { "no" }
        );
    }
    Ok(())
}

/// `mxqr logout`.
#[derive(Args, Debug)]
pub struct LogoutArgs {
    #[command(flatten)]
    pub common: ProfileArgs,
}

pub fn logout(args: LogoutArgs) -> ExitCode {
    let json = args.common.json;
    finish(json, block_on(run_logout(args.common)))
}

/// Ends the session on the server (OAuth revocation when the profile has a client, else
/// `/logout`), then deletes the profile: its keys belong to a device that no longer exists.
async fn run_logout(common: ProfileArgs) -> Result<(), CliError> {
    let signed_in = SignedIn::load(&common.profile)?;
    let http = reqwest::Client::new();
    let revoked = match &signed_in.session.client_id {
        Some(client_id) => {
            let token = signed_in
                .session
                .refresh_token
                .as_deref()
                .unwrap_or(&signed_in.access_token);
            match AuthMetadata::discover(&http, &signed_in.homeserver).await {
                Ok(metadata) if metadata.revocation_endpoint.is_some() => {
                    oauth::revoke(&http, &metadata, client_id, token)
                        .await
                        .map_err(|e| e.to_string())
                }
                _ => legacy_logout(&http, &signed_in).await,
            }
        }
        None => legacy_logout(&http, &signed_in).await,
    };
    if let Err(e) = revoked {
        return Err(CliError::Failed(format!(
            "the server did not end the session ({e}); the profile is kept"
        )));
    }
    signed_in.profile.remove().map_err(CliError::failed)?;
    if common.json {
        println!(
            "{}",
            json!({ "event": "done", "profile": signed_in.profile.name, "logged_out": true })
        );
    } else {
        println!("Signed out; profile `{}` removed", signed_in.profile.name);
    }
    Ok(())
}

async fn legacy_logout(http: &reqwest::Client, signed_in: &SignedIn) -> Result<(), String> {
    let url = signed_in
        .homeserver
        .join("_matrix/client/v3/logout")
        .map_err(|e| e.to_string())?;
    let response = http
        .post(url)
        .bearer_auth(&signed_in.access_token)
        .json(&json!({}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    // An unknown token means the session is already over.
    if response.status().is_success() || response.status() == reqwest::StatusCode::UNAUTHORIZED {
        Ok(())
    } else {
        Err(format!("server answered {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_tokens;

    #[test]
    fn tokens_from_issue_token_output() {
        let (access, refresh) = parse_tokens("mat_a\nmar_r\n").unwrap();
        assert_eq!(
            (access.as_str(), refresh.as_deref()),
            ("mat_a", Some("mar_r"))
        );
        let (access, refresh) = parse_tokens("  mat_a  \n").unwrap();
        assert_eq!((access.as_str(), refresh), ("mat_a", None));
        let (access, refresh) =
            parse_tokens(r#"{"access_token":"mat_j","refresh_token":"mar_j"}"#).unwrap();
        assert_eq!(
            (access.as_str(), refresh.as_deref()),
            ("mat_j", Some("mar_j"))
        );
        assert!(parse_tokens("\n\n").is_err());
        assert!(parse_tokens(r#"{"refresh_token":"x"}"#).is_err());
        assert!(parse_tokens("{not json").is_err());
    }
}

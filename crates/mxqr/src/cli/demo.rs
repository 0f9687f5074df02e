//! `mxqr demo`: the whole QR sign-in on one machine, as proof that a build works and as a
//! stopwatch. It starts a throw-away `mxqr serve` (in this process, on a loopback port, over
//! real HTTP), makes an account and a signed-in existing device with cross-signing and key
//! backup, then signs in a new device in every combination: who shows the QR code × MSC4388 /
//! MSC4108 (2024) × long-poll / plain polling. The demo plays the person too: it carries the
//! QR code and the check code between the two devices and approves the consent page over
//! HTTP as a browser would. Each run is checked on the server (`/keys/query`): the new device
//! must be signed by the account's self-signing key.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use mxqr_client::driver::{
    E2eeSetup, ExistingSession, NewDeviceOptions, Ui, UiEvent, grant_scan, grant_show_qr,
    login_scan, login_show_qr,
};
use mxqr_keys::Account;
use mxqr_proto::Generation;
use mxqr_proto::qr::QrCode;
use mxqr_server::Config;
use mxqr_server::accounts::Grant;
use mxqr_server::oauth::{OAuthState, password, scope};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use url::Url;

use super::printable::printable;
use super::{CliError, finish};

/// Longest one combination may take before the demo calls it failed.
const COMBINATION_TIMEOUT: Duration = Duration::from_secs(60);
const DEMO_USER: &str = "demo";

/// `mxqr demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How the devices wait for each other on the rendezvous.
    #[arg(long, value_enum, default_value_t = PollingChoice::Both)]
    polling: PollingChoice,
    /// Only this generation (default: both).
    #[arg(long, value_enum)]
    generation: Option<GenerationChoice>,
    /// Sign-ins per combination; the timings report the median and the slowest.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Print one JSON object per line (`combination` events, then `done`).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PollingChoice {
    LongPoll,
    Plain,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum GenerationChoice {
    Msc4388,
    Msc4108,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Polling {
    LongPoll,
    Plain,
}

impl Polling {
    fn name(self) -> &'static str {
        match self {
            Polling::LongPoll => "long-poll",
            Polling::Plain => "plain",
        }
    }
}

fn generation_name(generation: Generation) -> &'static str {
    match generation {
        Generation::Msc4388 => "msc4388",
        Generation::Msc4108v2024 => "msc4108-2024",
    }
}

pub fn run(args: DemoArgs) -> ExitCode {
    let json = args.json;
    if let Err(err) = mxqr_server::log_from_env() {
        return finish(json, Err(CliError::Failed(err.to_string())));
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start: {e}")))
        .and_then(|rt| rt.block_on(demo(args)));
    finish(json, result)
}

async fn demo(args: DemoArgs) -> Result<(), CliError> {
    let pollings: &[Polling] = match args.polling {
        PollingChoice::LongPoll => &[Polling::LongPoll],
        PollingChoice::Plain => &[Polling::Plain],
        PollingChoice::Both => &[Polling::LongPoll, Polling::Plain],
    };
    let generations: &[Generation] = match args.generation {
        Some(GenerationChoice::Msc4388) => &[Generation::Msc4388],
        Some(GenerationChoice::Msc4108) => &[Generation::Msc4108v2024],
        None => &[Generation::Msc4388, Generation::Msc4108v2024],
    };
    let dir = std::env::temp_dir().join(format!("mxqr-demo-{}", rand::random::<u64>()));
    let _cleanup = RemoveOnDrop(dir.clone());
    let started = Instant::now();
    let mut passed = 0usize;
    let mut failed = 0usize;
    for &polling in pollings {
        let server = DemoServer::start(dir.join(polling.name()), polling).await?;
        let existing = server.existing_device().await?;
        if !args.json {
            println!(
                "server {} ({} rendezvous), existing device {} of {}",
                server.base,
                polling.name(),
                existing.device_id,
                existing.user_id
            );
        }
        for &generation in generations {
            for new_shows in [true, false] {
                let mut runs = Vec::new();
                let mut error = None;
                for _ in 0..args.rounds {
                    match server.sign_in(&existing, generation, new_shows).await {
                        Ok(run) => runs.push(run),
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                let shows = if new_shows { "new" } else { "existing" };
                report(
                    args.json,
                    polling,
                    generation,
                    shows,
                    &runs,
                    error.as_deref(),
                );
                if error.is_some() {
                    failed += 1;
                } else {
                    passed += 1;
                }
            }
        }
        server.stop().await;
    }
    let total_ms = started.elapsed().as_millis() as u64;
    if args.json {
        println!(
            "{}",
            json!({ "event": "done", "passed": passed, "failed": failed, "total_ms": total_ms })
        );
    } else {
        println!(
            "{passed} combination(s) passed, {failed} failed, in {:.1} s",
            total_ms as f64 / 1000.0
        );
    }
    if failed > 0 {
        return Err(CliError::Failed(format!(
            "{failed} of {} combinations failed",
            passed + failed
        )));
    }
    Ok(())
}

fn report(
    json: bool,
    polling: Polling,
    generation: Generation,
    shows: &str,
    runs: &[Run],
    error: Option<&str>,
) {
    let mut times: Vec<f64> = runs.iter().map(|r| r.took.as_secs_f64() * 1000.0).collect();
    times.sort_by(f64::total_cmp);
    let round = |ms: f64| (ms * 10.0).round() / 10.0;
    let median = times.get(times.len() / 2).copied().map(round);
    let max = times.last().copied().map(round);
    let success = error.is_none() && !runs.is_empty();
    let last = runs.last();
    if json {
        let mut event = json!({
            "event": "combination",
            "success": success,
            "generation": generation_name(generation),
            "qr_shown_by": shows,
            "polling": polling.name(),
            "cross_signed": last.is_some_and(|r| r.cross_signed),
            "backup_enabled": last.is_some_and(|r| r.backup_enabled),
            "elapsed_ms": median,
            "max_ms": max,
            "rounds": runs.len(),
            "steps": last.map(|r| r.steps.clone()).unwrap_or_default(),
        });
        if let Some(error) = error {
            event["error"] = Value::from(error);
        }
        println!("{event}");
        return;
    }
    println!(
        "\n{} with {} rendezvous, QR code shown by the {shows} device",
        generation_name(generation),
        polling.name()
    );
    if let Some(run) = runs.first() {
        for step in &run.steps {
            let detail = step["detail"].as_str().unwrap_or("");
            println!(
                "  {:>8.1} ms  {:<8} {}{}{}",
                step["ms"].as_f64().unwrap_or(0.0),
                step["device"].as_str().unwrap_or(""),
                step["step"].as_str().unwrap_or(""),
                if detail.is_empty() { "" } else { ": " },
                printable(detail)
            );
        }
    }
    match (error, median, max) {
        (None, Some(median), Some(max)) => println!(
            "  ok: cross-signed and connected to key backup; {median:.1} ms (median of {}, max {max:.1} ms)",
            runs.len()
        ),
        (Some(error), _, _) => println!("  FAILED: {}", printable(error)),
        _ => println!("  no result"),
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One successful sign-in.
struct Run {
    took: Duration,
    steps: Vec<Value>,
    cross_signed: bool,
    backup_enabled: bool,
}

/// A throw-away server on a loopback port with one account.
struct DemoServer {
    base: Url,
    oauth: OAuthState,
    password: String,
    http: reqwest::Client,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The signed-in device that lets the new ones in.
struct Existing {
    user_id: String,
    device_id: String,
    session: ExistingSession,
    access_token: String,
    self_signing: mxqr_keys::Ed25519PublicKey,
}

impl DemoServer {
    async fn start(data_dir: PathBuf, polling: Polling) -> Result<Self, CliError> {
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", data_dir.display())))?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| CliError::Failed(format!("cannot listen on loopback: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| CliError::Failed(e.to_string()))?;
        let mut config = Config {
            data_dir,
            public_url: Some(format!("http://{addr}/")),
            ..Config::default()
        };
        // 0 turns long-poll off: the server stops advertising it and answers at once.
        if polling == Polling::Plain {
            config.rendezvous.long_poll_max_ms = 0;
        }
        // The demo makes many requests from one address in a burst.
        config.rate_limit.enabled = false;
        let state = mxqr_server::app_state(config)
            .await
            .map_err(CliError::failed)?;
        let oauth = state
            .oauth()
            .cloned()
            .ok_or_else(|| CliError::Failed("the server has no accounts".into()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(mxqr_server::serve(state, listener, async move {
            let _ = stopped.await;
        }));
        let base = Url::parse(&format!("http://{addr}/")).map_err(CliError::failed)?;

        let password = hex::encode(rand::random::<[u8; 16]>());
        let hashed = password::hash(&password).map_err(CliError::failed)?;
        oauth
            .db()
            .create_user(DEMO_USER, Some(&hashed), oauth.now_ms())
            .await
            .map_err(CliError::failed)?;
        Ok(Self {
            base,
            oauth,
            password,
            http: reqwest::Client::new(),
            stop,
            task,
        })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }

    /// Mints a token for a fresh device (as `mxqr admin issue-token` does) and bootstraps
    /// cross-signing and key backup on it through the Client-Server API.
    async fn existing_device(&self) -> Result<Existing, CliError> {
        let mut account = Account::new();
        let device_id = mxqr_keys::device_id(&account);
        let requested = scope::parse(&format!(
            "urn:matrix:client:api:* urn:matrix:client:device:{device_id}"
        ))
        .map_err(|e| CliError::Failed(format!("device ID: {e}")))?;
        let grant = Grant {
            localpart: DEMO_USER.into(),
            device_id: requested.device_id,
            client_id: None,
            scope: requested.granted,
        };
        let minted = self.oauth.mint();
        self.oauth
            .db()
            .issue_session(&grant, &minted.stored, self.oauth.now_ms())
            .await
            .map_err(CliError::failed)?;
        let access_token = minted.access_token.clone();
        let boot =
            mxqr_client::e2ee::bootstrap(&self.http, &self.base, &access_token, &mut account)
                .await
                .map_err(|e| CliError::Failed(format!("bootstrap of the existing device: {e}")))?;
        Ok(Existing {
            user_id: boot.user_id.clone(),
            device_id,
            session: ExistingSession {
                homeserver: self.base.clone(),
                access_token: access_token.clone(),
                secrets: boot.secrets(),
                refresh: None,
            },
            access_token,
            self_signing: boot.cross_signing.public_keys().self_signing,
        })
    }

    /// One sign-in of a fresh new device; the wall time from start to both sides done.
    async fn sign_in(
        &self,
        existing: &Existing,
        generation: Generation,
        new_shows: bool,
    ) -> Result<Run, String> {
        let (qr_tx, qr_rx) = oneshot::channel();
        let (code_tx, code_rx) = mpsc::unbounded_channel();
        let mut new_account = Account::new();
        let new_id = E2eeSetup::device_id(&new_account);
        let options = NewDeviceOptions {
            client_name: "mxqr demo".into(),
            generation: Some(generation),
            ..NewDeviceOptions::default()
        };
        let person = Person {
            base: self.base.clone(),
            password: self.password.clone(),
        };
        let log = StepLog::new();
        let mut new_ui = DemoUi {
            device: "new",
            log: Some(log.clone()),
            ..DemoUi::default()
        };
        let mut existing_ui = DemoUi {
            device: "existing",
            log: Some(log.clone()),
            person: Some(person),
            ..DemoUi::default()
        };
        let (mut new_scans, mut existing_scans) = (None, None);
        // G shows the QR code and types the check code that S shows.
        if new_shows {
            new_ui.qr = Some(qr_tx);
            new_ui.typed_code = Some(code_rx);
            existing_ui.shown_code = Some(code_tx);
            existing_scans = Some(qr_rx);
        } else {
            existing_ui.qr = Some(qr_tx);
            existing_ui.typed_code = Some(code_rx);
            new_ui.shown_code = Some(code_tx);
            new_scans = Some(qr_rx);
        }

        let started = Instant::now();
        let http = self.http.clone();
        let homeserver = self.base.to_string();
        let new_side = async move {
            match new_scans {
                None => login_show_qr(http, &homeserver, &options, &mut new_account, &mut new_ui)
                    .await
                    .map_err(|e| super::signin::describe(&e)),
                Some(rx) => {
                    let qr = rx
                        .await
                        .map_err(|_| "the existing device showed no QR code".to_owned())?;
                    login_scan(http, &qr, &options, &mut new_account, &mut new_ui)
                        .await
                        .map_err(|e| super::signin::describe(&e))
                }
            }
        };
        let http = self.http.clone();
        let session = &existing.session;
        let existing_side = async move {
            let result = match existing_scans {
                None => grant_show_qr(http, session, Some(generation), &mut existing_ui).await,
                Some(rx) => {
                    let qr = rx
                        .await
                        .map_err(|_| "the new device showed no QR code".to_owned())?;
                    grant_scan(http, session, &qr, &mut existing_ui).await
                }
            };
            if let Some(consent) = existing_ui.consented.take() {
                consent
                    .await
                    .map_err(|e| format!("consent page: {e}"))?
                    .map_err(|e| format!("consent page: {e}"))?;
            }
            result.map_err(|e| super::signin::describe(&e))
        };
        let (login, grant) = tokio::time::timeout(COMBINATION_TIMEOUT, async {
            tokio::join!(new_side, existing_side)
        })
        .await
        .map_err(|_| format!("no result within {} s", COMBINATION_TIMEOUT.as_secs()))?;
        let took = started.elapsed();
        let login = login.map_err(|e| format!("new device: {e}"))?;
        let grant = grant.map_err(|e| format!("existing device: {e}"))?;
        if login.device_id != new_id || grant.device_id != new_id {
            return Err("the two devices disagree on the new device's ID".into());
        }
        if !(login.e2ee.cross_signed() && login.e2ee.backup_enabled()) {
            return Err(format!("encryption set-up incomplete: {:?}", login.e2ee));
        }
        self.check_cross_signed(existing, new_id.as_str()).await?;
        Ok(Run {
            took,
            steps: log.take(),
            cross_signed: login.e2ee.cross_signed(),
            backup_enabled: login.e2ee.backup_enabled(),
        })
    }

    /// What the existing device sees on the server: the new device signed by the account's
    /// self-signing key.
    async fn check_cross_signed(&self, existing: &Existing, device_id: &str) -> Result<(), String> {
        let url = self
            .base
            .join("_matrix/client/v3/keys/query")
            .map_err(|e| e.to_string())?;
        let query: Value = self
            .http
            .post(url)
            .bearer_auth(&existing.access_token)
            .json(&json!({ "device_keys": { &existing.user_id: [] } }))
            .send()
            .await
            .map_err(|e| format!("keys/query: {e}"))?
            .json()
            .await
            .map_err(|e| format!("keys/query: {e}"))?;
        let device = &query["device_keys"][&existing.user_id][device_id];
        mxqr_keys::verify_device_signed_by(device, &existing.user_id, &existing.self_signing)
            .map_err(|e| format!("the server does not show the new device cross-signed: {e}"))
    }
}

/// What passes between the two devices outside the network (a camera for the QR code, a
/// person reading one screen and typing on the other), and the person's browser.
#[derive(Default)]
struct DemoUi {
    /// Which device this is, for the step log.
    device: &'static str,
    log: Option<StepLog>,
    qr: Option<oneshot::Sender<QrCode>>,
    shown_code: Option<mpsc::UnboundedSender<u8>>,
    typed_code: Option<mpsc::UnboundedReceiver<u8>>,
    person: Option<Person>,
    consented: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Ui for DemoUi {
    fn show(&mut self, event: UiEvent) {
        if let Some(log) = &self.log {
            log.record(self.device, &event);
        }
        match event {
            UiEvent::ShowQrCode(qr) => {
                // Through the bytes a camera would read.
                if let (Some(tx), Ok(read)) = (self.qr.take(), QrCode::decode(&qr.encode())) {
                    let _ = tx.send(read);
                }
            }
            UiEvent::ShowCheckCode(code) => {
                if let Some(tx) = &self.shown_code {
                    let _ = tx.send(code.digits());
                }
            }
            UiEvent::OpenVerificationUri(uri) => {
                if let Some(person) = self.person.clone() {
                    self.consented = Some(tokio::spawn(async move { person.approve(&uri).await }));
                }
            }
            UiEvent::ShowUserCode { .. } | UiEvent::Step(_) => {}
        }
    }

    async fn ask_check_code(&mut self) -> Option<u8> {
        self.typed_code.as_mut()?.recv().await
    }
}

/// What both devices showed, with the time since the combination started.
#[derive(Clone)]
struct StepLog {
    started: Instant,
    entries: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl StepLog {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            entries: Default::default(),
        }
    }

    fn record(&self, device: &str, event: &UiEvent) {
        let (what, detail) = match event {
            UiEvent::ShowQrCode(qr) => (
                "qr".to_owned(),
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, qr.encode()),
            ),
            UiEvent::ShowCheckCode(code) => ("check_code".to_owned(), code.to_string()),
            UiEvent::ShowUserCode { user_code, .. } => ("user_code".to_owned(), user_code.clone()),
            UiEvent::OpenVerificationUri(_) => ("consent_page".to_owned(), String::new()),
            UiEvent::Step(step) => (format!("{step:?}"), String::new()),
        };
        let ms = (self.started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
        let mut entry = json!({ "device": device, "step": what, "ms": ms });
        if !detail.is_empty() {
            entry["detail"] = Value::from(detail);
        }
        if let Ok(mut entries) = self.entries.lock() {
            entries.push(entry);
        }
    }

    fn take(&self) -> Vec<Value> {
        self.entries
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}

/// The person at the existing device's browser.
#[derive(Clone)]
struct Person {
    base: Url,
    password: String,
}

impl Person {
    /// Opens the consent link, signs in when asked, ticks the confirmation box and approves.
    async fn approve(&self, uri: &str) -> Result<(), String> {
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let join = |path: &str| self.base.join(path).map_err(|e| e.to_string());
        let err = |e: reqwest::Error| e.to_string();
        let mut page = browser.get(uri).send().await.map_err(err)?;
        if page.status().is_redirection() {
            let login_url = join(location(&page)?)?;
            let login_page = browser
                .get(login_url)
                .send()
                .await
                .map_err(err)?
                .text()
                .await
                .map_err(err)?;
            let mut form = hidden_inputs(form_posting_to(&login_page, "/login")?);
            form.push(("username".into(), DEMO_USER.into()));
            form.push(("password".into(), self.password.clone()));
            let done = browser
                .post(join("login")?)
                .form(&form)
                .send()
                .await
                .map_err(err)?;
            if !done.status().is_redirection() {
                return Err(format!("signing in on the login page: {}", done.status()));
            }
            page = browser
                .get(join(location(&done)?)?)
                .send()
                .await
                .map_err(err)?;
        }
        if !page.status().is_success() {
            return Err(format!("consent page: {}", page.status()));
        }
        let html = page.text().await.map_err(err)?;
        let mut form = hidden_inputs(form_posting_to(&html, "/link")?);
        form.push(("decision".into(), "approve".into()));
        form.push(("confirm".into(), "yes".into()));
        let done = browser
            .post(join("link")?)
            .form(&form)
            .send()
            .await
            .map_err(err)?;
        if !done.status().is_success() {
            return Err(format!("approving: {}", done.status()));
        }
        Ok(())
    }
}

fn location(response: &reqwest::Response) -> Result<&str, String> {
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("{} without a Location", response.status()))
}

/// The first form of the page that posts to `action`.
fn form_posting_to<'a>(html: &'a str, action: &str) -> Result<&'a str, String> {
    let start = html
        .find(&format!("action=\"{action}\""))
        .ok_or_else(|| format!("the page has no form posting to {action}"))?;
    let end = html[start..]
        .find("</form>")
        .map_or(html.len(), |e| e + start);
    Ok(&html[start..end])
}

/// Name and value of each hidden input (the CSRF token and the request being decided).
fn hidden_inputs(form: &str) -> Vec<(String, String)> {
    const OPEN: &str = "<input type=\"hidden\" name=\"";
    let mut fields = Vec::new();
    let mut rest = form;
    while let Some(i) = rest.find(OPEN) {
        rest = &rest[i + OPEN.len()..];
        let Some(name_end) = rest.find('"') else {
            break;
        };
        let name = rest[..name_end].to_owned();
        let Some(v) = rest.find("value=\"").map(|v| v + "value=\"".len()) else {
            break;
        };
        let Some(v_end) = rest[v..].find('"').map(|e| e + v) else {
            break;
        };
        fields.push((name, unescape(&rest[v..v_end])));
    }
    fields
}

fn unescape(text: &str) -> String {
    text.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_inputs_are_unescaped_and_scoped_to_one_form() {
        let html = r#"<form method="post" action="/login"><input type="hidden" name="csrf" value="a&amp;b&#x2f;c"><input name="username"></form>
<form action="/other"><input type="hidden" name="x" value="y"></form>"#;
        let form = form_posting_to(html, "/login").unwrap();
        assert_eq!(hidden_inputs(form), vec![("csrf".into(), "a&b/c".into())]);
        assert!(form_posting_to(html, "/link").is_err());
    }
}

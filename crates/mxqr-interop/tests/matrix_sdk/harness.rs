//! A spawned `mxqr serve`, accounts made with `mxqr admin`, the consent pages driven over
//! HTTP as a browser would, `mxqr` CLI processes with JSON events, and matrix-sdk clients.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::authentication::oauth::ClientRegistrationData;
use matrix_sdk::authentication::oauth::registration::{
    ApplicationType, ClientMetadata, Localized, OAuthGrantType,
};
use matrix_sdk::ruma::serde::Raw;
use mxqr_testkit::cli::mxqr_bin;
use mxqr_testkit::person::{self, form_posting_to, hidden_inputs};
use serde_json::Value;
use url::Url;

pub use mxqr_testkit::person::PASSWORD;

/// Longest wait for any single step (an event, a page, a sign-in): a hang fails here.
pub const WAIT: Duration = Duration::from_secs(60);
/// Where the SDK's authorization-code grant "returns"; never served, the redirect is
/// captured from the `Location` header.
const REDIRECT_URI: &str = "http://127.0.0.1/mxqr-interop/callback";

pub struct Server {
    child: Child,
    pub base: Url,
    dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- mxqr serve log ---");
            for line in self.log.lock().unwrap().iter() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request as the server logged it (route templates only, never concrete paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// `mxqr serve` on a free loopback port with its own data directory; `env` adds `MXQR_*`
/// settings. Its debug log (one line per request) is kept for [`Server::requests`].
pub fn start_server(env: &[(&str, &str)]) -> Server {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mxqr-interop-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new(mxqr_bin());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("server"))
        .env("MXQR_LOG", "warn,mxqr_server=debug")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("MXQR_CONFIG")
        // Devices poll the token endpoint at this interval: keep the tests quick.
        .env("MXQR_OAUTH__DEVICE_POLL_INTERVAL_SECS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn mxqr serve");
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("mxqr serve printed no address: {:?}", log.lock().unwrap()));
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}: {:?}", log.lock().unwrap()))
        .to_owned();
    let base = Url::parse(&format!("http://{addr}/")).unwrap();
    Server {
        child,
        base,
        dir,
        log,
    }
}

impl Server {
    fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// `mxqr` with the client store in this test's directory; returns stdout, or panics
    /// with stderr.
    pub fn mxqr(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mxqr");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "mxqr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn admin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        let data_dir = self.dir.join("server");
        all.extend_from_slice(&["--data-dir", data_dir.to_str().unwrap()]);
        self.mxqr(&all, stdin)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(mxqr_bin());
        command
            .args(args)
            .env("MXQR_HOME", self.home())
            .env_remove("MXQR_CONFIG");
        command
    }

    pub fn add_alice(&self) {
        self.admin(
            &["user", "add", "alice", "--password-stdin"],
            Some(&format!("{PASSWORD}\n")),
        );
    }

    /// A signed-in `mxqr` existing device with cross-signing and backup, in profile `old`.
    pub fn cli_existing_profile(&self) {
        let device_id = self.mxqr(&["account", "init", "--profile", "old"], None);
        let issued = self.admin(
            &["issue-token", "alice", "--device-id", device_id.trim()],
            None,
        );
        self.mxqr(
            &[
                "account",
                "import-token",
                "--profile",
                "old",
                "--homeserver",
                self.base.as_str(),
                "--access-token-stdin",
            ],
            Some(&issued),
        );
        let boot = self.mxqr(
            &["account", "bootstrap", "--profile", "old", "--json"],
            None,
        );
        let boot: Value = serde_json::from_str(&boot).unwrap();
        assert_eq!(boot["cross_signed"], true, "{boot}");
    }

    /// A running `mxqr` whose JSON events arrive on a channel, line by line.
    pub fn spawn_json(&self, args: &[&str]) -> Running {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mxqr");
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON event: {line:?}: {e}"));
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Running {
            child,
            stdin,
            events,
            seen: Vec::new(),
        }
    }

    /// The requests logged so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(" request ") || line.ends_with(" request"))
            .filter_map(|line| {
                let field = |name: &str| {
                    let start = line.find(&format!(" {name}="))? + name.len() + 2;
                    let rest = &line[start..];
                    let value = if let Some(quoted) = rest.strip_prefix('"') {
                        &quoted[..quoted.find('"')?]
                    } else {
                        rest.split(' ').next()?
                    };
                    Some(value.to_owned())
                };
                Some(Logged {
                    method: field("method")?,
                    route: field("route")?,
                    status: field("status")?.parse().ok()?,
                })
            })
            .collect()
    }

    /// Fails when any request so far got a 5xx answer.
    pub fn assert_no_server_errors(&self) {
        let failed: Vec<_> = self
            .requests()
            .into_iter()
            .filter(|r| r.status >= 500)
            .collect();
        assert!(failed.is_empty(), "server errors: {failed:?}");
    }

    /// Prints the request log when `MXQR_INTEROP_PRINT_REQUESTS` is set (how
    /// docs/interop-matrix-sdk.md was made).
    pub fn print_requests(&self, title: &str) {
        if std::env::var_os("MXQR_INTEROP_PRINT_REQUESTS").is_some() {
            println!("=== {title}");
            for r in self.requests() {
                println!("{} {} {}", r.method, r.route, r.status);
            }
        }
    }
}

pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    events: tokio::sync::mpsc::UnboundedReceiver<Value>,
    pub seen: Vec<Value>,
}

impl Running {
    /// Waits for the next event named `name`; earlier ones are kept in `seen`. An `error`
    /// event on the way fails the test.
    pub async fn wait_for(&mut self, name: &str) -> Value {
        loop {
            let event = match tokio::time::timeout(WAIT, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => panic!("mxqr ended without `{name}`; seen: {:?}", self.seen),
                Err(_) => panic!("no `{name}` event in {WAIT:?}; seen: {:?}", self.seen),
            };
            self.seen.push(event.clone());
            if event["event"] == name {
                return event;
            }
            assert_ne!(event["event"], "error", "waiting for `{name}`: {event}");
        }
    }

    pub fn type_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the process to end; returns its exit code and stderr.
    pub async fn end(mut self) -> (Option<i32>, String) {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("mxqr did not end; events: {:?}", self.seen);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        (status.code(), stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A person on the existing device: opens the device-grant consent link (signing in
/// first), ticks the confirmation box and approves or denies.
pub async fn consent_device(base: &Url, uri: &str, approve: bool) {
    let decision = if approve { "approve" } else { "deny" };
    person::decide(base, uri, decision).await
}

/// What the SDK registers: a native client with a loopback redirect URI, able to use the
/// authorization-code and device-code grants.
pub fn registration_data() -> ClientRegistrationData {
    let mut metadata = ClientMetadata::new(
        ApplicationType::Native,
        vec![
            OAuthGrantType::AuthorizationCode {
                redirect_uris: vec![Url::parse(REDIRECT_URI).unwrap()],
            },
            OAuthGrantType::DeviceCode,
        ],
        Localized::new(
            Url::parse("https://example.org/mxqr-interop").unwrap(),
            None,
        ),
    );
    metadata.client_name = Some(Localized::new("mxqr interop (matrix-sdk)".to_owned(), None));
    Raw::new(&metadata).unwrap().into()
}

/// A matrix-sdk client for `homeserver` with in-memory stores.
pub async fn sdk_client(homeserver: &Url) -> Client {
    Client::builder()
        .homeserver_url(homeserver.as_str())
        .handle_refresh_tokens()
        .build()
        .await
        .expect("build matrix-sdk client")
}

/// A matrix-sdk existing device of `homeserver`: signed in as alice through the
/// authorization-code grant (consent page on `pages` driven over HTTP, redirect captured,
/// `finish_login`), then cross-signing bootstrapped by the SDK against the homeserver. The
/// two URLs are one `mxqr serve` standalone, and Synapse and mxqr in synapse mode.
pub async fn sdk_existing_device(homeserver: &Url, pages: &Url) -> Client {
    let client = sdk_client(homeserver).await;
    let oauth = client.oauth();
    let auth = tokio::time::timeout(
        WAIT,
        oauth
            .login(
                Url::parse(REDIRECT_URI).unwrap(),
                None,
                Some(registration_data()),
                None,
            )
            .build(),
    )
    .await
    .expect("authorization URL in time")
    .expect("authorization URL");

    let browser = person::browser();
    let html = person::open_signed_in(&browser, pages, auth.url.as_str(), PASSWORD)
        .await
        .text()
        .await
        .unwrap();
    let mut form = hidden_inputs(form_posting_to(&html, "/oauth2/authorize"));
    form.push(("decision".into(), "approve".into()));
    let done = browser
        .post(pages.join("oauth2/authorize").unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(
        done.status().is_redirection(),
        "consent: {} {}",
        done.status(),
        done.text().await.unwrap_or_default()
    );
    let location = done.headers()["location"].to_str().unwrap().to_owned();
    let redirected = Url::parse(&location).unwrap();
    assert!(
        redirected.as_str().starts_with(REDIRECT_URI),
        "redirected to {redirected}"
    );
    tokio::time::timeout(WAIT, oauth.finish_login(redirected.into()))
        .await
        .expect("finish_login in time")
        .expect("finish_login");

    let encryption = client.encryption();
    tokio::time::timeout(WAIT, encryption.wait_for_e2ee_initialization_tasks())
        .await
        .expect("E2EE initialisation in time");
    tokio::time::timeout(WAIT, encryption.bootstrap_cross_signing(None))
        .await
        .expect("cross-signing bootstrap in time")
        .expect("cross-signing bootstrap");
    let status = encryption
        .cross_signing_status()
        .await
        .expect("an olm machine");
    assert!(status.is_complete(), "{status:?}");
    client
}

/// The server's view (`POST /keys/query` with `token`) of `user_id`'s `device_id`: it must
/// be self-signed and carry a signature by the user's published self-signing key.
pub async fn assert_server_shows_cross_signed(
    server: &Server,
    token: &str,
    user_id: &str,
    device_id: &str,
) {
    let answer: Value = reqwest::Client::new()
        .post(server.base.join("_matrix/client/v3/keys/query").unwrap())
        .bearer_auth(token)
        .json(&serde_json::json!({ "device_keys": { user_id: [] } }))
        .timeout(WAIT)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let ssk = answer["self_signing_keys"][user_id]["keys"]
        .as_object()
        .and_then(|keys| keys.keys().next().cloned())
        .unwrap_or_else(|| panic!("no self-signing key: {answer}"));
    let signatures = &answer["device_keys"][user_id][device_id]["signatures"][user_id];
    assert!(
        signatures[&ssk].is_string(),
        "device {device_id} lacks the self-signing signature {ssk}: {answer}"
    );
    assert!(
        signatures[format!("ed25519:{device_id}")].is_string(),
        "device {device_id} is not self-signed: {answer}"
    );
}

/// Unpadded standard base64, as the CLI prints and reads QR payloads.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

pub fn from_b64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text.trim_end_matches('='))
        .unwrap_or_else(|e| panic!("QR base64 {text:?}: {e}"))
}

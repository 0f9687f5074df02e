//! Delegated mode against a real Synapse 1.163.2: `mxqr serve` in synapse mode is the
//! authentication service (`matrix_authentication_service`) of a Synapse started by
//! `scripts/synapse-test-server.sh` (which installs it into a cached venv when missing; this
//! test fails, never skips, when that is impossible).
//!
//! Clients see only Synapse as their homeserver: OAuth metadata through Synapse's
//! `auth_metadata` (relayed from mxqr), the rendezvous on Synapse (MSC4108 2024 and MSC4388),
//! keys and sync on Synapse; mxqr serves the consent and account pages, the tokens, and
//! answers Synapse's introspection. All four QR combinations end with the new device
//! cross-signed in Synapse's `/keys/query`; a revocation at mxqr and a sign-out on mxqr's
//! account page end tokens in Synapse at once (not after its two-minute introspection cache),
//! and a cross-signing reset approved on the account page lets Synapse accept new keys.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mxqr_client::driver::{
    E2eeSetup, ExistingSession, NewDeviceOptions, Ui, UiEvent, grant_scan, grant_show_qr,
    login_scan, login_show_qr,
};
use mxqr_client::oauth::{self, AuthMetadata, ClientMetadata, PollOutcome, ScopeSpelling};
use mxqr_keys::Account;
use mxqr_proto::Generation;
use mxqr_proto::qr::QrCode;
use mxqr_testkit::person::{PASSWORD, browser, decide_in, form_posting_to, hidden_inputs};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use url::Url;

const SERVER_NAME: &str = "mxqr.test";

/// A child process stopped (and its directory removed) on drop.
struct Proc {
    child: Child,
    dir: Option<PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: the Synapse script stops Synapse on it.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Removes the test's directory at the end, pass or fail.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `MXQR_*` settings of synapse mode, read by `mxqr serve` and `mxqr admin` alike.
type Env = Vec<(&'static str, String)>;

fn synapse_mode_env(synapse_port: u16, secret_file: &Path) -> Env {
    vec![
        ("MXQR_SERVER_NAME", SERVER_NAME.to_owned()),
        ("MXQR_HOMESERVER__MODE", "synapse".to_owned()),
        (
            "MXQR_HOMESERVER__SYNAPSE_URL",
            format!("http://127.0.0.1:{synapse_port}"),
        ),
        (
            "MXQR_HOMESERVER__SECRET_PATH",
            secret_file.display().to_string(),
        ),
    ]
}

fn mxqr(dir: &Path, env: &Env, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mxqr");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mxqr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// mxqr in synapse mode on `port` (fixed: Synapse is told it, and it survives restarts),
/// with `env` from [`synapse_mode_env`] (Synapse's future address).
fn start_mxqr(dir: &Path, port: u16, env: &Env) -> (Proc, Url) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .env("MXQR_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mxqr serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("mxqr serve did not start: {line:?}"))
        .to_owned();
    let base = Url::parse(&format!("http://{addr}/")).unwrap();
    (Proc { child, dir: None }, base)
}

/// Synapse through the script, with MSC4108 session creation redirected to `msc4108_delegate`;
/// panics (the test fails) if it cannot be installed or started.
fn start_synapse(
    mxqr: &Url,
    port: u16,
    secret_file: &Path,
    msc4108_delegate: &Url,
) -> (Proc, Url, u32) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/synapse-test-server.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .args(["--mxqr-url", mxqr.as_str(), "--server-name", SERVER_NAME])
        .args(["--port", &port.to_string()])
        .args(["--msc4108-delegate", msc4108_delegate.as_str()])
        .arg("--secret-file")
        .arg(secret_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run scripts/synapse-test-server.sh");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let (mut url, mut dir, mut pid) = (None, None, None);
    while url.is_none() || dir.is_none() || pid.is_none() {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "Synapse could not be installed or started (see the script's output above)"
        );
        if let Some(u) = line.trim().strip_prefix("synapse_url=") {
            url = Some(Url::parse(&format!("{u}/")).unwrap());
        } else if let Some(d) = line.trim().strip_prefix("synapse_dir=") {
            dir = Some(PathBuf::from(d));
        } else if let Some(p) = line.trim().strip_prefix("synapse_pid=") {
            pid = Some(p.parse().unwrap());
        }
    }
    (Proc { child, dir }, url.unwrap(), pid.unwrap())
}

/// Every QR code shown, as JSON (to see where each rendezvous was).
static QR_SHOWN: std::sync::Mutex<Vec<Value>> = std::sync::Mutex::new(Vec::new());

/// What passes between the two devices outside the network (camera, a person's eyes).
struct TestUi {
    qr: Option<oneshot::Sender<QrCode>>,
    shown_code: Option<mpsc::UnboundedSender<u8>>,
    typed_code: Option<mpsc::UnboundedReceiver<u8>>,
    consent: Option<(Url, reqwest::Client)>,
    consented: Option<tokio::task::JoinHandle<()>>,
}

impl TestUi {
    fn new() -> Self {
        Self {
            qr: None,
            shown_code: None,
            typed_code: None,
            consent: None,
            consented: None,
        }
    }
}

impl Ui for TestUi {
    fn show(&mut self, event: UiEvent) {
        match event {
            UiEvent::ShowQrCode(qr) => {
                let decoded = QrCode::decode(&qr.encode()).expect("our own QR code decodes");
                QR_SHOWN.lock().unwrap().push(decoded.to_json());
                let _ = self.qr.take().expect("one QR code").send(decoded);
            }
            UiEvent::ShowCheckCode(code) => {
                let _ = self
                    .shown_code
                    .as_ref()
                    .expect("S shows the code")
                    .send(code.digits());
            }
            UiEvent::OpenVerificationUri(uri) => {
                let (base, browser) = self.consent.clone().expect("existing device consents");
                self.consented = Some(tokio::spawn(async move {
                    decide_in(&browser, &base, &uri, "approve").await
                }));
            }
            UiEvent::ShowUserCode { .. } | UiEvent::Step(_) => {}
        }
    }

    async fn ask_check_code(&mut self) -> Option<u8> {
        self.typed_code
            .as_mut()
            .expect("G asks for the code")
            .recv()
            .await
    }
}

/// Status and body of an authenticated client-server request to Synapse.
async fn synapse_call(
    http: &reqwest::Client,
    synapse: &Url,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http
        .request(method, synapse.join(path).unwrap())
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Status and body of Synapse's `whoami` for `token`.
async fn synapse_whoami(http: &reqwest::Client, synapse: &Url, token: &str) -> (u16, Value) {
    let path = "_matrix/client/v3/account/whoami";
    synapse_call(http, synapse, reqwest::Method::GET, path, token, None).await
}

/// The existing device signs in like any client would: metadata through Synapse, device
/// authorization grant at mxqr, approved on mxqr's consent page.
async fn sign_in_existing_device(
    http: &reqwest::Client,
    synapse: &Url,
    mxqr: &Url,
    browser: &reqwest::Client,
    device_id: &str,
) -> oauth::Tokens {
    let metadata = AuthMetadata::discover(http, synapse).await.unwrap();
    assert_eq!(
        metadata.issuer,
        mxqr.as_str(),
        "Synapse relays mxqr's metadata"
    );
    let client_id = oauth::register(
        http,
        &metadata,
        &ClientMetadata::native("synapse test", Url::parse("https://mxqr.test/").unwrap()),
    )
    .await
    .unwrap();
    let scope = oauth::device_scope(device_id, ScopeSpelling::Stable);
    let authorization = oauth::start_device_authorization(http, &metadata, &client_id, &scope)
        .await
        .unwrap();
    let uri = authorization
        .verification_uri_complete
        .clone()
        .unwrap_or_else(|| authorization.verification_uri.clone());
    decide_in(browser, mxqr, uri.as_str(), "approve").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match oauth::poll_device_token(http, &metadata, &client_id, &authorization.device_code)
            .await
            .unwrap()
        {
            PollOutcome::Granted(tokens) => return tokens,
            PollOutcome::Pending | PollOutcome::SlowDown if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => panic!("device grant: {other:?}"),
        }
    }
}

/// Device ID → display name (empty when unnamed), as Synapse lists the user's devices.
async fn device_names(
    http: &reqwest::Client,
    synapse: &Url,
    token: &str,
) -> std::collections::HashMap<String, String> {
    let (status, devices) = synapse_call(
        http,
        synapse,
        reqwest::Method::GET,
        "_matrix/client/v3/devices",
        token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{devices}");
    devices["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("{devices}"))
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap().to_owned(),
                d["display_name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Synapse's own record of whether `user_id` is locked (not visible through its client API
/// when authentication is delegated).
fn locked_in(synapse_db: &Path, user_id: &str) -> bool {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\
             'SELECT locked FROM users WHERE name = ?', (sys.argv[2],)).fetchone()[0])",
        ])
        .arg(synapse_db)
        .arg(user_id)
        .output()
        .expect("python3 reads Synapse's database");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    matches!(String::from_utf8_lossy(&out.stdout).trim(), "1" | "True")
}

/// Waits up to 15 s (the outbox is read every 2 s) for `check` to hold.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_sign_in_through_synapse_with_mxqr_as_its_auth_service() {
    let _heavy = mxqr_testkit::heavy().await;
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!(
        "mxqr-synapse-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveOnDrop(dir.clone());
    let secret: String = format!("{:032x}", rand::random::<u128>());
    let secret_file = dir.join("shared-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();

    let synapse_port = free_port();
    let mxqr_port = free_port();
    let env = synapse_mode_env(synapse_port, &secret_file);
    let (mut mxqr_proc, mxqr_base) = start_mxqr(&dir, mxqr_port, &env);
    mxqr(
        &dir,
        &env,
        &["admin", "user", "add", "alice", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    // Synapse serves MSC4388 itself and sends MSC4108 session creation to mxqr (307).
    let msc4108_at_mxqr = mxqr_base
        .join("_matrix/client/unstable/org.matrix.msc4108/rendezvous")
        .unwrap();
    let (synapse_proc, synapse, synapse_pid) =
        start_synapse(&mxqr_base, synapse_port, &secret_file, &msc4108_at_mxqr);
    eprintln!("mxqr and Synapse up after {:?}", started.elapsed());
    let http = reqwest::Client::new();

    // mxqr no longer serves the client-server API itself; Synapse does.
    let own = http
        .get(mxqr_base.join("_matrix/client/v3/account/whoami").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(own.status().as_u16(), 404);

    // The existing device, signed in through Synapse's discovery, then cross-signing and a
    // key backup created on Synapse.
    let pages = browser();
    let mut existing_account = Account::new();
    let existing_id = mxqr_keys::device_id(&existing_account);
    let tokens = sign_in_existing_device(&http, &synapse, &mxqr_base, &pages, &existing_id).await;
    let token = tokens.access_token.clone();
    let me = mxqr_client::e2ee::whoami(&http, &synapse, &token)
        .await
        .expect("Synapse accepts mxqr's token (user and device provisioned)");
    let user_id = format!("@alice:{SERVER_NAME}");
    assert_eq!(me.user_id, user_id);
    assert_eq!(me.device_id.as_deref(), Some(existing_id.as_str()));
    let boot = mxqr_client::e2ee::bootstrap(&http, &synapse, &token, &mut existing_account)
        .await
        .unwrap();
    let session = ExistingSession {
        homeserver: synapse.clone(),
        access_token: token.clone(),
        secrets: boot.secrets(),
        refresh: None,
    };
    let ssk = boot.cross_signing.public_keys().self_signing;

    let mut new_devices = Vec::new();
    for generation in [Generation::Msc4388, Generation::Msc4108v2024] {
        for new_shows in [true, false] {
            let label = format!("{generation:?}, new device shows: {new_shows}");
            let t0 = Instant::now();
            let (qr_tx, qr_rx) = oneshot::channel();
            let (code_tx, code_rx) = mpsc::unbounded_channel();
            let mut new_account = Account::new();
            let new_id = E2eeSetup::device_id(&new_account);
            let options = NewDeviceOptions {
                generation: Some(generation),
                ..NewDeviceOptions::default()
            };
            let mut new_ui = TestUi::new();
            let mut existing_ui = TestUi::new();
            existing_ui.consent = Some((mxqr_base.clone(), pages.clone()));
            let (mut new_qr_rx, mut existing_qr_rx) = (None, None);
            if new_shows {
                new_ui.qr = Some(qr_tx);
                new_ui.typed_code = Some(code_rx);
                existing_ui.shown_code = Some(code_tx);
                existing_qr_rx = Some(qr_rx);
            } else {
                existing_ui.qr = Some(qr_tx);
                existing_ui.typed_code = Some(code_rx);
                new_ui.shown_code = Some(code_tx);
                new_qr_rx = Some(qr_rx);
            }

            let new_http = http.clone();
            let hs = synapse.to_string();
            let new_side = tokio::spawn(async move {
                match new_qr_rx {
                    None => {
                        login_show_qr(new_http, &hs, &options, &mut new_account, &mut new_ui).await
                    }
                    Some(rx) => {
                        let qr = rx.await.expect("the existing device shows a QR code");
                        login_scan(new_http, &qr, &options, &mut new_account, &mut new_ui).await
                    }
                }
            });
            let existing_http = http.clone();
            let existing_session = ExistingSession {
                homeserver: session.homeserver.clone(),
                access_token: session.access_token.clone(),
                secrets: session.secrets.clone(),
                refresh: None,
            };
            let existing_side = tokio::spawn(async move {
                let result = match existing_qr_rx {
                    None => {
                        grant_show_qr(
                            existing_http,
                            &existing_session,
                            Some(generation),
                            &mut existing_ui,
                        )
                        .await
                    }
                    Some(rx) => {
                        let qr = rx.await.expect("the new device shows a QR code");
                        grant_scan(existing_http, &existing_session, &qr, &mut existing_ui).await
                    }
                };
                if let Some(consented) = existing_ui.consented.take() {
                    consented.await.expect("consent in the browser");
                }
                result
            });
            let (new_result, existing_result) =
                tokio::time::timeout(Duration::from_secs(90), async {
                    let new_result = new_side.await.unwrap();
                    if let Err(e) = &new_result {
                        panic!("{label}: new device: {e:?}");
                    }
                    (new_result, existing_side.await.unwrap())
                })
                .await
                .unwrap_or_else(|_| panic!("{label}: timed out"));
            let login = new_result.unwrap_or_else(|e| panic!("{label}: new device: {e:?}"));
            let grant =
                existing_result.unwrap_or_else(|e| panic!("{label}: existing device: {e:?}"));
            assert_eq!(login.device_id, new_id, "{label}");
            assert_eq!(grant.device_id, new_id, "{label}");
            assert!(
                login.e2ee.cross_signed() && login.e2ee.backup_enabled(),
                "{label}: {:?}",
                login.e2ee
            );

            // On Synapse, with the new token: whoami, a sync, and its own keys cross-signed.
            let new_token = login.tokens.access_token.clone();
            let me = mxqr_client::e2ee::whoami(&http, &synapse, &new_token)
                .await
                .unwrap_or_else(|e| panic!("{label}: whoami on Synapse: {e:?}"));
            assert_eq!(me.device_id.as_deref(), Some(new_id.as_str()), "{label}");
            let (status, sync) = synapse_call(
                &http,
                &synapse,
                reqwest::Method::GET,
                "_matrix/client/v3/sync?timeout=0",
                &new_token,
                None,
            )
            .await;
            assert_eq!(status, 200, "{label}: sync {sync}");
            assert!(sync["next_batch"].is_string(), "{label}: {sync}");
            let (status, query) = synapse_call(
                &http,
                &synapse,
                reqwest::Method::POST,
                "_matrix/client/v3/keys/query",
                &new_token,
                Some(json!({ "device_keys": { &user_id: [] } })),
            )
            .await;
            assert_eq!(status, 200, "{label}: {query}");
            let device = &query["device_keys"][&user_id][new_id.as_str()];
            mxqr_keys::verify_device_signed_by(device, &user_id, &ssk)
                .unwrap_or_else(|e| panic!("{label}: not cross-signed in Synapse: {e}: {query}"));
            eprintln!("{label}: signed in and cross-signed in {:?}", t0.elapsed());
            new_devices.push((new_id.to_string(), new_token));
        }
    }

    // Where each rendezvous was: MSC4388 on Synapse, MSC4108 on mxqr, reached through
    // Synapse's 307 (`msc4108_delegation_endpoint`), which the clients followed.
    let shown = std::mem::take(&mut *QR_SHOWN.lock().unwrap());
    assert_eq!(shown.len(), 4, "{shown:?}");
    for qr in &shown {
        match qr["generation"].as_str() {
            Some("msc4388") => assert_eq!(
                qr["homeserver"].as_str().map(|h| h.trim_end_matches('/')),
                Some(synapse.as_str().trim_end_matches('/')),
                "{qr}"
            ),
            _ => assert!(
                qr["rendezvous_url"]
                    .as_str()
                    .is_some_and(|u| u.starts_with(mxqr_base.as_str())),
                "MSC4108 session not at mxqr: {qr}"
            ),
        }
    }
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(
            synapse
                .join("_matrix/client/unstable/org.matrix.msc4108/rendezvous")
                .unwrap(),
        )
        .header(reqwest::header::CONTENT_LENGTH, "0")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status().as_u16(), 307);
    assert_eq!(
        redirect.headers()["location"].to_str().unwrap(),
        msc4108_at_mxqr.as_str()
    );

    // Devices are named after the client that signed them in.
    let names = device_names(&http, &synapse, &token).await;
    assert_eq!(names[existing_id.as_str()], "synapse test", "{names:?}");
    for (id, _) in &new_devices {
        assert_eq!(names[id.as_str()], "mxqr", "{names:?}");
    }

    // Introspection as Synapse calls it: the shared secret, form body.
    let introspect = mxqr_base.join("oauth2/introspect").unwrap();
    let wrong = http
        .post(introspect.clone())
        .bearer_auth("not-the-secret")
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let answer: Value = http
        .post(introspect.clone())
        .bearer_auth(&secret)
        .form(&[
            ("token", token.as_str()),
            ("token_type_hint", "access_token"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["username"], "alice");
    assert_eq!(answer["device_id"], existing_id.as_str());
    assert!(
        answer["scope"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|s| s == "urn:matrix:client:api:*"),
        "{answer}"
    );
    assert!(answer["expires_in"].as_i64().unwrap() > 0, "{answer}");

    // Latency over 2000 sequential introspections (one keep-alive connection, like Synapse).
    let mut times = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        let response = http
            .post(introspect.clone())
            .bearer_auth(&secret)
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let _ = response.bytes().await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    eprintln!(
        "introspection over 2000 sequential requests: p50 {:?}, p99 {:?}, max {:?}; \
         RSS mxqr {} KiB, Synapse {} KiB",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().unwrap(),
        rss_kib(mxqr_proc.child.id()),
        rss_kib(synapse_pid),
    );

    // Sign-out 1: revocation at mxqr. Synapse had the token cached as active; the device is
    // gone from Synapse before the revocation answers, so the very next request fails.
    let (revoked_id, revoked_token) = &new_devices[0];
    let (status, _) = synapse_whoami(&http, &synapse, revoked_token).await;
    assert_eq!(status, 200, "cached as active before the revocation");
    let revoked = http
        .post(mxqr_base.join("oauth2/revoke").unwrap())
        .form(&[("token", revoked_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 200);
    let (status, body) = synapse_whoami(&http, &synapse, revoked_token).await;
    assert_eq!(status, 401, "revoked token still works in Synapse: {body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let gone: Value = http
        .post(introspect.clone())
        .bearer_auth(&secret)
        .form(&[("token", revoked_token.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gone, json!({ "active": false }));

    // Sign-out 2: the account page on mxqr signs another device out.
    let (page_id, page_token) = &new_devices[1];
    let mut view = mxqr_base.join("account").unwrap();
    view.query_pairs_mut()
        .append_pair("action", "org.matrix.device_view")
        .append_pair("device_id", page_id);
    let html = pages.get(view).send().await.unwrap().text().await.unwrap();
    let form = hidden_inputs(form_posting_to(&html, "/account/device/delete"));
    let deleted = pages
        .post(mxqr_base.join("account/device/delete").unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(
        deleted.status().is_redirection(),
        "device sign-out: {}",
        deleted.status()
    );
    let (status, body) = synapse_whoami(&http, &synapse, page_token).await;
    assert_eq!(
        status, 401,
        "signed-out device still works in Synapse: {body}"
    );

    // Synapse's device list is the live sessions: the two signed-out devices are gone.
    let (status, devices) = synapse_call(
        &http,
        &synapse,
        reqwest::Method::GET,
        "_matrix/client/v3/devices",
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{devices}");
    let listed: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&existing_id.as_str()), "{devices}");
    assert!(!listed.contains(&revoked_id.as_str()), "{devices}");
    assert!(!listed.contains(&page_id.as_str()), "{devices}");
    assert!(listed.contains(&new_devices[2].0.as_str()), "{devices}");

    // A token from `mxqr admin issue-token` (written to the store, no request to mxqr): its
    // device reaches Synapse at the first introspection, so Synapse accepts it at once.
    let issued: Value = serde_json::from_str(&mxqr(
        &dir,
        &env,
        &[
            "admin",
            "issue-token",
            "alice",
            "--device-id",
            "ADMINDEVICE",
            "--json",
        ],
        None,
    ))
    .unwrap();
    let admin_token = issued["access_token"].as_str().unwrap();
    let me = mxqr_client::e2ee::whoami(&http, &synapse, admin_token)
        .await
        .expect("Synapse accepts an admin-issued token");
    assert_eq!(me.device_id.as_deref(), Some("ADMINDEVICE"));

    // A display name Synapse would refuse is refused by `mxqr admin` at once.
    let too_long = "x".repeat(257);
    let refused = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args(["admin", "user", "set-display-name", "alice", &too_long])
        .arg("--data-dir")
        .arg(&dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    // A display name set with `mxqr admin` reaches Synapse's profile (mxqr keeps none).
    let shown = mxqr(
        &dir,
        &env,
        &[
            "admin",
            "user",
            "set-display-name",
            "alice",
            "Alice Liddell",
        ],
        None,
    );
    assert!(shown.contains("set_displayname"), "{shown}");
    let profile = format!("_matrix/client/v3/profile/{user_id}");
    eventually("display name in Synapse", || async {
        let (status, body) = synapse_call(
            &http,
            &synapse,
            reqwest::Method::GET,
            &profile,
            &token,
            None,
        )
        .await;
        status == 200 && body["displayname"] == "Alice Liddell"
    })
    .await;

    // Start-up reconciliation: a device Synapse has but mxqr has no session for (as after a
    // deletion lost in a crash) is gone from Synapse once mxqr restarts.
    let ghost = http
        .post(synapse.join("_synapse/mas/upsert_device").unwrap())
        .bearer_auth(&secret)
        .json(&json!({ "localpart": "alice", "device_id": "GHOSTDEVICE" }))
        .send()
        .await
        .unwrap();
    assert!(ghost.status().is_success(), "{}", ghost.status());
    assert!(
        device_names(&http, &synapse, &token)
            .await
            .contains_key("GHOSTDEVICE")
    );
    drop(mxqr_proc);
    mxqr_proc = start_mxqr(&dir, mxqr_port, &env).0;
    eventually("reconciled device list", || async {
        let names = device_names(&http, &synapse, &token).await;
        !names.contains_key("GHOSTDEVICE")
            && names.contains_key(existing_id.as_str())
            && names.contains_key("ADMINDEVICE")
            && names.contains_key(new_devices[2].0.as_str())
    })
    .await;

    // Replacing the cross-signing keys in Synapse needs the approval given on mxqr's
    // account page (passed on through `allow_cross_signing_reset`).
    let replacement = mxqr_keys::CrossSigningKeys::new()
        .device_signing_upload_body(&user_id)
        .unwrap();
    let upload = |body: Value| {
        synapse_call(
            &http,
            &synapse,
            reqwest::Method::POST,
            "_matrix/client/v3/keys/device_signing/upload",
            &token,
            Some(body),
        )
    };
    let (status, uia) = upload(replacement.clone()).await;
    assert_eq!(status, 401, "reset without approval: {uia}");
    let mut reset_page = mxqr_base.join("account").unwrap();
    reset_page
        .query_pairs_mut()
        .append_pair("action", "org.matrix.cross_signing_reset");
    let html = pages
        .get(reset_page)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let form = hidden_inputs(form_posting_to(&html, "/account/cross-signing-reset"));
    let approved = pages
        .post(mxqr_base.join("account/cross-signing-reset").unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(approved.status().is_success(), "{}", approved.status());
    let (status, body) = upload(replacement).await;
    assert_eq!(status, 200, "reset after approval: {body}");

    // Locking the account with `mxqr admin` ends its tokens in Synapse at once (its devices
    // go, rather than waiting out Synapse's two-minute introspection cache) and marks the
    // account locked in Synapse's own database; unlocking clears the mark.
    assert_eq!(synapse_whoami(&http, &synapse, &token).await.0, 200);
    mxqr(&dir, &env, &["admin", "user", "lock", "alice"], None);
    let synapse_db = synapse_proc.dir.clone().unwrap().join("homeserver.db");
    eventually("account locked in Synapse", || async {
        let (status, body) = synapse_whoami(&http, &synapse, &token).await;
        status == 401 && body["errcode"] == "M_UNKNOWN_TOKEN" && locked_in(&synapse_db, &user_id)
    })
    .await;
    mxqr(&dir, &env, &["admin", "user", "unlock", "alice"], None);
    eventually("account unlocked in Synapse", || async {
        !locked_in(&synapse_db, &user_id)
    })
    .await;
    let issued: Value = serde_json::from_str(&mxqr(
        &dir,
        &env,
        &[
            "admin",
            "issue-token",
            "alice",
            "--device-id",
            "AFTERLOCK",
            "--json",
        ],
        None,
    ))
    .unwrap();
    let after = issued["access_token"].as_str().unwrap().to_owned();
    eventually("account unlocked in Synapse", || async {
        synapse_whoami(&http, &synapse, &after).await.0 == 200
    })
    .await;

    drop(synapse_proc);
    drop(mxqr_proc);
    eprintln!("whole test: {:?}", started.elapsed());
}

//! Harness for the scale-out and fault tests: real `mxqr serve` processes sharing one
//! PostgreSQL database, a round-robin TCP proxy in front of them (what a load balancer does),
//! a PostgreSQL cluster of the test's own that can be stopped and started, and QR sign-ins
//! driven from the client library with a consent page driven over HTTP.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxqr_client::driver::{
    E2eeSetup, ExistingSession, LoginOutcome, NewDeviceOptions, Ui, UiEvent, grant_scan,
    grant_show_qr, login_scan, login_show_qr,
};
use mxqr_keys::Account;
use mxqr_keys::cross_signing::CrossSigningPublicKeys;
use mxqr_proto::Generation;
use mxqr_proto::qr::QrCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use url::Url;

use mxqr_testkit::person::{PASSWORD, browser_without_pool, decide_in};

/// Longest wait for a server process to announce it listens (migrations included).
const START_WAIT: Duration = Duration::from_secs(30);
/// Longest a whole sign-in may take.
pub const SIGN_IN_WAIT: Duration = Duration::from_secs(60);

/// A fresh temporary directory for one test.
pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mxqr-scale-{label}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Settings every instance of a test shares: one database, one public URL (the proxy's), no
/// rate limits (every request comes from the proxy's address), fast device-code polling.
pub fn shared_env(database_url: &str) -> Vec<(String, String)> {
    [
        ("MXQR_DATABASE_URL", database_url),
        ("MXQR_DATABASE__MAX_CONNECTIONS", "4"),
        ("MXQR_RENDEZVOUS__POSTGRES_MAX_CONNECTIONS", "4"),
        ("MXQR_RATE_LIMIT__ENABLED", "false"),
        ("MXQR_OAUTH__DEVICE_POLL_INTERVAL_SECS", "1"),
        ("MXQR_LOG", "warn"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// One `mxqr serve` process; killed when dropped.
pub struct Instance {
    child: Option<Child>,
    pub addr: SocketAddr,
    data_dir: PathBuf,
    public_url: Option<String>,
    env: Vec<(String, String)>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl Instance {
    /// Starts an instance on a free port and waits (bounded) until it serves.
    pub fn start(data_dir: &Path, public_url: Option<&str>, env: &[(String, String)]) -> Self {
        let mut instance = Self {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.to_owned(),
            public_url: public_url.map(str::to_owned),
            env: env.to_vec(),
        };
        instance.spawn();
        instance
    }

    fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mxqr"));
        command
            .args(["serve", "--listen", &self.addr.to_string(), "--data-dir"])
            .arg(&self.data_dir)
            .env_remove("MXQR_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(url) = &self.public_url {
            command.args(["--public-url", url]);
        }
        let mut child = command.spawn().expect("spawn mxqr serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(START_WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("mxqr serve did not start within {START_WAIT:?}");
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("no listening line: {line:?}"));
        self.addr = addr.parse().unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no goodbye to anyone, open requests are cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the instance and starts it again on the same port and settings.
    pub fn restart(&mut self) {
        let addr = self.addr;
        self.kill();
        self.spawn();
        assert_eq!(self.addr, addr);
    }

    /// The instance's own address, bypassing any proxy.
    pub fn url(&self) -> Url {
        Url::parse(&format!("http://{}/", self.addr)).unwrap()
    }

    /// `mxqr admin …` on this instance's database; returns stdout.
    pub fn admin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mxqr"))
            .arg("admin")
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env_remove("MXQR_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mxqr admin");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "mxqr admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A round-robin TCP proxy: each new connection goes to the next backend; a backend that
/// refuses the connection is skipped (a load balancer's passive health check). With clients
/// that do not keep connections alive, that is one backend choice per request.
pub struct Proxy {
    pub url: Url,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Stats {
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// The backend each connection went to, in order of arrival.
    log: Mutex<Vec<usize>>,
    /// Connections a dead backend refused, sent on to the next one.
    failovers: AtomicUsize,
    ids: AtomicU64,
    /// Open connections: backend and start.
    open: Mutex<HashMap<u64, (usize, Instant)>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Binds the proxy (its URL is every instance's `public_url`); backends come later.
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(accept_loop(listener, stats.clone()));
        Self { url, stats, task }
    }

    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.stats.backends.lock().unwrap() = backends;
    }

    /// Connections per backend so far.
    pub fn counts(&self) -> Vec<usize> {
        let n = self.stats.backends.lock().unwrap().len();
        let mut counts = vec![0; n];
        for &b in self.stats.log.lock().unwrap().iter() {
            counts[b] += 1;
        }
        counts
    }

    /// The backend of every connection so far, in order.
    pub fn log(&self) -> Vec<usize> {
        self.stats.log.lock().unwrap().clone()
    }

    pub fn failovers(&self) -> usize {
        self.stats.failovers.load(Ordering::SeqCst)
    }

    /// Backends holding a connection open for at least `age` (long-polls).
    pub fn long_lived(&self, age: Duration) -> Vec<usize> {
        self.stats
            .open
            .lock()
            .unwrap()
            .values()
            .filter(|(_, since)| since.elapsed() >= age)
            .map(|(b, _)| *b)
            .collect()
    }
}

async fn accept_loop(listener: TcpListener, stats: Arc<Stats>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let backends = stats.backends.lock().unwrap().clone();
            for _ in 0..backends.len() {
                let index = stats.next.fetch_add(1, Ordering::SeqCst) % backends.len();
                let connect = TcpStream::connect(backends[index]);
                match tokio::time::timeout(Duration::from_secs(2), connect).await {
                    Ok(Ok(upstream)) => {
                        stats.log.lock().unwrap().push(index);
                        let id = stats.ids.fetch_add(1, Ordering::SeqCst);
                        stats
                            .open
                            .lock()
                            .unwrap()
                            .insert(id, (index, Instant::now()));
                        let (mut client, mut upstream) = (client, upstream);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        stats.open.lock().unwrap().remove(&id);
                        return;
                    }
                    _ => {
                        stats.failovers.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            // No backend left: the client sees the connection close.
        });
    }
}

/// An HTTP client that opens a new connection for every request, so a per-connection proxy
/// spreads requests, and that never waits longer than a long-poll plus a margin.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap()
}

/// A PostgreSQL cluster of the test's own (`scripts/pg-test-server.sh`), which the test may
/// stop and start; the script's watcher removes it when the test binary exits.
pub struct OwnCluster {
    dir: PathBuf,
    port: u16,
    pub url: String,
}

impl OwnCluster {
    pub fn start() -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/pg-test-server.sh"
        );
        let dir = temp_dir("pg");
        let output = Command::new("bash")
            .arg(script)
            .arg("start")
            .arg(&dir)
            .arg("--watch")
            .arg(std::process::id().to_string())
            .output()
            .expect("run pg-test-server.sh");
        assert!(
            output.status.success(),
            "pg-test-server.sh failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let url = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .filter(|l| l.starts_with("postgres://"))
            .expect("a URL from pg-test-server.sh")
            .to_owned();
        let port = std::fs::read_to_string(dir.join("port"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Self { dir, port, url }
    }

    /// `pg_ctl …` as the cluster's owner (`postgres` when we are root, as the script does).
    fn pg_ctl(&self, args: &[&str]) {
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "pg_ctl"]);
            c
        } else {
            Command::new("pg_ctl")
        };
        let data = self.dir.join("data");
        let status = command
            .arg("-D")
            .arg(&data)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl");
        assert!(status.success(), "pg_ctl {args:?} failed");
    }

    /// Stops the server: open connections are closed, new ones refused.
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "-t", "30", "stop"]);
    }

    /// Starts it again on the same port with the script's settings.
    pub fn start_again(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='{}' \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        self.pg_ctl(&[
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "30",
            "start",
            "-o",
            &options,
        ]);
    }

    /// A database of its own on this cluster.
    pub async fn fresh_database(&self) -> String {
        use sqlx::Connection as _;
        let name = format!("mxqr_s_{:08x}", rand::random::<u32>());
        let mut admin = sqlx::postgres::PgConnection::connect(&self.url)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let mut url = Url::parse(&self.url).unwrap();
        url.set_path(&format!("/{name}"));
        url.to_string()
    }
}

/// Root ignores permission bits, so tests that need a refused write drop to `nobody`.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The signed-in existing device every sign-in of a test starts from.
pub struct ExistingDevice {
    pub base: Url,
    pub token: String,
    pub user_id: String,
    pub cross_signing: CrossSigningPublicKeys,
    secrets: mxqr_proto::messages::SecretsMessage,
}

impl ExistingDevice {
    /// Makes alice (through `mxqr admin` on `instance`'s database), a token for a device of
    /// hers, and cross-signing and a key backup through `base`.
    pub async fn set_up(instance: &Instance, base: &Url) -> Self {
        instance.admin(
            &["user", "add", "alice", "--password-stdin"],
            Some(&format!("{PASSWORD}\n")),
        );
        let mut account = Account::new();
        let device_id = mxqr_keys::device_id(&account);
        let issued = instance.admin(
            &["issue-token", "alice", "--device-id", &device_id, "--json"],
            None,
        );
        let issued: Value = serde_json::from_str(&issued).unwrap();
        let token = issued["access_token"].as_str().unwrap().to_owned();
        let boot = mxqr_client::e2ee::bootstrap(&http_client(), base, &token, &mut account)
            .await
            .unwrap();
        Self {
            base: base.clone(),
            token,
            user_id: boot.user_id.clone(),
            cross_signing: boot.cross_signing.public_keys(),
            secrets: boot.secrets(),
        }
    }

    fn session(&self) -> ExistingSession {
        ExistingSession {
            homeserver: self.base.clone(),
            access_token: self.token.clone(),
            secrets: self.secrets.clone(),
            refresh: None,
        }
    }
}

/// Lets a test act while a sign-in waits at the consent page: `reached` fires when the
/// existing device opens the page, and the person consents once `proceed` fires.
pub struct ConsentGate {
    pub reached: oneshot::Sender<()>,
    pub proceed: oneshot::Receiver<()>,
}

/// What passes between the two devices outside the network: the QR code (a camera), the
/// check code (a person reading one screen and typing on the other), and the consent page.
struct TestUi {
    qr: Option<oneshot::Sender<QrCode>>,
    shown_code: Option<mpsc::UnboundedSender<u8>>,
    typed_code: Option<mpsc::UnboundedReceiver<u8>>,
    consent: Option<(Url, Option<ConsentGate>)>,
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
                let (base, gate) = self.consent.take().expect("existing device consents");
                self.consented = Some(tokio::spawn(async move {
                    if let Some(gate) = gate {
                        let _ = gate.reached.send(());
                        gate.proceed.await.expect("the test lets the person go on");
                    }
                    decide_in(&browser_without_pool(), &base, &uri, "approve").await;
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

/// One QR sign-in of a new device, both devices talking to `existing.base`; checks that the
/// new device's token works and that the server shows it cross-signed. `gate` pauses the
/// person at the consent page.
pub async fn sign_in(
    existing: &ExistingDevice,
    generation: Generation,
    new_shows: bool,
    gate: Option<ConsentGate>,
) -> LoginOutcome {
    let label = format!("{generation:?}, new device shows: {new_shows}");
    let http = http_client();
    let base = existing.base.clone();
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
    existing_ui.consent = Some((base.clone(), gate));
    // G shows the QR code and is asked for the check code; S shows it.
    let (new_qr_rx, existing_qr_rx) = if new_shows {
        new_ui.qr = Some(qr_tx);
        new_ui.typed_code = Some(code_rx);
        existing_ui.shown_code = Some(code_tx);
        (None, Some(qr_rx))
    } else {
        existing_ui.qr = Some(qr_tx);
        existing_ui.typed_code = Some(code_rx);
        new_ui.shown_code = Some(code_tx);
        (Some(qr_rx), None)
    };

    let new_http = http.clone();
    let hs = base.to_string();
    let new_side = tokio::spawn(async move {
        match new_qr_rx {
            None => login_show_qr(new_http, &hs, &options, &mut new_account, &mut new_ui).await,
            Some(rx) => {
                let qr = rx.await.expect("the existing device shows a QR code");
                login_scan(new_http, &qr, &options, &mut new_account, &mut new_ui).await
            }
        }
    });
    let existing_http = http.clone();
    let session = existing.session();
    let existing_side = tokio::spawn(async move {
        let result = match existing_qr_rx {
            None => {
                grant_show_qr(existing_http, &session, Some(generation), &mut existing_ui).await
            }
            Some(rx) => {
                let qr = rx.await.expect("the new device shows a QR code");
                grant_scan(existing_http, &session, &qr, &mut existing_ui).await
            }
        };
        if let Some(consented) = existing_ui.consented.take() {
            consented.await.expect("consent in the browser");
        }
        result
    });

    let (new_result, existing_result) = tokio::time::timeout(SIGN_IN_WAIT, async {
        (new_side.await.unwrap(), existing_side.await.unwrap())
    })
    .await
    .unwrap_or_else(|_| panic!("{label}: timed out"));
    let login = new_result.unwrap_or_else(|e| panic!("{label}: new device: {e:?}"));
    let grant = existing_result.unwrap_or_else(|e| panic!("{label}: existing device: {e:?}"));
    assert_eq!(login.device_id, new_id, "{label}");
    assert_eq!(grant.device_id, new_id, "{label}");
    assert_eq!(login.e2ee.user_id, existing.user_id, "{label}");
    assert!(
        login.e2ee.cross_signed() && login.e2ee.backup_enabled(),
        "{label}: {:?}",
        login.e2ee
    );

    let me = mxqr_client::e2ee::whoami(&http, &base, &login.tokens.access_token)
        .await
        .unwrap();
    assert_eq!(me.device_id.as_deref(), Some(new_id.as_str()), "{label}");
    let query: Value = http
        .post(base.join("_matrix/client/v3/keys/query").unwrap())
        .bearer_auth(&existing.token)
        .json(&json!({ "device_keys": { &existing.user_id: [] } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device = &query["device_keys"][&existing.user_id][new_id.as_str()];
    mxqr_keys::verify_device_signed_by(
        device,
        &existing.user_id,
        &existing.cross_signing.self_signing,
    )
    .unwrap_or_else(|e| panic!("{label}: not cross-signed: {e}; {query}"));
    login
}

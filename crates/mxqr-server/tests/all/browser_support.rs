//! Headless Chromium driven through chromedriver (WebDriver), for the browser page tests.
//!
//! Each scenario gets its own chromedriver (own process group, free port) and a fresh
//! profile, so scenarios can run in parallel and a crashed one leaves nothing behind.
//! Missing binaries fail the test: a skipped browser test would hide broken pages.

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::{Value, json};

/// How long any single wait for the page may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);
/// Upper bound for one whole scenario.
const SCENARIO_LIMIT: Duration = Duration::from_secs(90);
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Without the background-networking flags Chromium's own connections are refused on CI
/// machines and slow the start; the rest keep a fresh profile quiet and headless.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1000,900",
];

/// `MXQR_<NAME>` if set, else the first of `candidates` that exists, else a clear failure.
fn binary(env: &str, candidates: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env}={} does not exist", path.display());
        return path;
    }
    let mut searched: Vec<PathBuf> = candidates.iter().map(PathBuf::from).collect();
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            for name in candidates {
                if let Some(file) = Path::new(name).file_name() {
                    searched.push(dir.join(file));
                }
            }
        }
    }
    searched.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "browser tests need Chromium and chromedriver, but none of {candidates:?} was found \
             (nor {env}): run scripts/install-test-deps.sh (Debian packages chromium and \
             chromium-driver)"
        )
    })
}

/// Where screenshots go: `<target>/browser-screenshots`.
pub fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("browser-screenshots")
}

/// chromedriver and its Chromium; killed as a process group when dropped.
struct Driver {
    child: Child,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver leads its own process group, which Chromium and its helpers inherit.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

async fn start_driver() -> (Driver, String) {
    use std::os::unix::process::CommandExt;
    let chromedriver = binary(
        "MXQR_CHROMEDRIVER",
        &["/usr/bin/chromedriver", "chromedriver"],
    );
    let profile = std::env::temp_dir().join(format!(
        "mxqr-browser-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&profile).unwrap();
    let port = free_port();
    let log = profile.join("chromedriver.log");
    let child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .arg("--log-level=WARNING")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
    let mut driver = Driver { child, profile };
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = driver.child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("chromedriver exited at start ({status}):\n{text}");
        }
        if let Ok(response) = http.get(format!("{url}/status")).send().await
            && let Ok(body) = response.json::<Value>().await
            && body["value"]["ready"] == true
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not become ready on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (driver, url)
}

/// A browser session plus the screenshots it took.
#[derive(Clone)]
pub struct Browser {
    pub client: Client,
    name: &'static str,
    shots: Arc<Mutex<Vec<PathBuf>>>,
}

/// Runs `scenario` in a fresh headless Chromium; closes the browser even when it panics,
/// then checks every screenshot it saved.
pub async fn run<F, Fut>(name: &'static str, scenario: F)
where
    F: FnOnce(Browser) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let chromium = binary(
        "MXQR_CHROMIUM",
        &["/usr/bin/chromium", "chromium", "chromium-browser"],
    );
    // Earlier runs' pictures of this scenario would pass for this run's.
    if let Ok(entries) = std::fs::read_dir(screenshot_dir()) {
        let prefix = format!("{name}-");
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let (driver, url) = start_driver().await;
    let profile_dir = driver.profile.join("profile");
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile_dir.display()));
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium, "args": args },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let client = ClientBuilder::rustls()
        .expect("rustls connector")
        .capabilities(capabilities)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot open a Chromium session through chromedriver: {e}"));
    let browser = Browser {
        client: client.clone(),
        name,
        shots: Arc::default(),
    };
    let shots = browser.shots.clone();
    let outcome = tokio::spawn(tokio::time::timeout(SCENARIO_LIMIT, scenario(browser))).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
    drop(driver);
    match outcome {
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => panic!("scenario {name} did not finish: {join}"),
        Ok(Err(_)) => panic!("scenario {name} took longer than {SCENARIO_LIMIT:?}"),
        Ok(Ok(())) => {}
    }
    let shots = shots.lock().unwrap().clone();
    assert!(!shots.is_empty(), "scenario {name} saved no screenshot");
    for shot in shots {
        let bytes = std::fs::read(&shot)
            .unwrap_or_else(|e| panic!("screenshot {} missing: {e}", shot.display()));
        assert!(
            bytes.starts_with(PNG_SIGNATURE) && bytes.len() > 1000,
            "{} is not a PNG image",
            shot.display()
        );
    }
}

impl Browser {
    /// Saves a PNG of the current page as `<name>-<n>-<label>.png`.
    pub async fn shot(&self, label: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let mut shots = self.shots.lock().unwrap();
        let path = dir.join(format!("{}-{:02}-{label}.png", self.name, shots.len() + 1));
        std::fs::write(&path, &png).unwrap();
        shots.push(path);
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    pub async fn url(&self) -> url::Url {
        self.client.current_url().await.expect("current URL")
    }

    pub async fn find(&self, css: &str) -> Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => panic!("no {css} on {}: {e}", self.url().await),
        }
    }

    /// Waits until an element matching `css` exists.
    pub async fn wait_for(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!(
                "{css} did not appear ({e}); page {}:\n{}",
                self.url().await,
                self.body_text().await
            ),
        }
    }

    /// Waits until the page's `<h1>` contains `text`; returns the heading.
    pub async fn wait_for_heading(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(h1) = self.client.find(Locator::Css("h1")).await
                && let Ok(heading) = h1.text().await
                && heading.contains(text)
            {
                return heading;
            }
            if Instant::now() > deadline {
                panic!(
                    "no heading with {text:?} on {}:\n{}",
                    self.url().await,
                    self.body_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the current URL satisfies `ok`.
    pub async fn wait_for_url(&self, what: &str, ok: impl Fn(&url::Url) -> bool) -> url::Url {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(url) = self.client.current_url().await
                && ok(&url)
            {
                return url;
            }
            if Instant::now() > deadline {
                panic!("never reached {what}; at {}", self.url().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The visible text of the page body (for assertions and failure messages).
    pub async fn body_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Types into the input matching `css` (after clearing it).
    pub async fn type_into(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.expect("clear input");
        input.send_keys(text).await.expect("type");
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Fills the sign-in form the browser is on and submits it.
    pub async fn sign_in(&self, username: &str, password: &str) {
        self.wait_for("form[action=\"/login\"] #username").await;
        self.type_into("#username", username).await;
        self.type_into("#password", password).await;
        self.shot("login").await;
        self.click("form[action=\"/login\"] button[type=submit]")
            .await;
    }
}

/// A loopback HTTP listener standing in for a native app's redirect URI (and, on another
/// host name, for a foreign site). Records the target of every `/callback` request.
pub struct Loopback {
    pub port: u16,
    callbacks: tokio::sync::mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Loopback {
    /// Serves `pages` (path → HTML) and a plain page at `/callback`.
    pub async fn start(pages: Vec<(String, String)>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, callbacks) = tokio::sync::mpsc::unbounded_channel();
        let pages = Arc::new(pages);
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let tx = tx.clone();
                let pages = pages.clone();
                // Per connection: Chromium may open sockets it never uses.
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let target = text.split(' ').nth(1).unwrap_or("/").to_owned();
                    let path = target.split('?').next().unwrap_or("");
                    let (status, body) = if path == "/callback" {
                        let _ = tx.send(target.clone());
                        (
                            "200 OK",
                            "<!DOCTYPE html><title>App</title><h1>Back in the app</h1>".to_owned(),
                        )
                    } else if let Some((_, html)) = pages.iter().find(|(p, _)| p == path) {
                        ("200 OK", html.clone())
                    } else {
                        (
                            "404 Not Found",
                            "<!DOCTYPE html><title>404</title>".to_owned(),
                        )
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            port,
            callbacks,
            task,
        }
    }

    /// The query parameters of the next `/callback` request `browser` makes.
    pub async fn callback(
        &mut self,
        browser: &Browser,
    ) -> std::collections::HashMap<String, String> {
        let target = match tokio::time::timeout(WAIT, self.callbacks.recv()).await {
            Ok(Some(target)) => target,
            Ok(None) => panic!("loopback listener stopped"),
            Err(_) => panic!(
                "the app's redirect URI was never called; the browser is at {}:\n{}",
                browser.url().await,
                browser.body_text().await
            ),
        };
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

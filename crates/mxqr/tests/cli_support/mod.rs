//! Harness for the command-line sign-in tests: a real `mxqr serve` process (restartable on
//! the same port and data), `mxqr` processes whose JSON events arrive line by line, and a
//! person's browser driving the consent page over HTTP.

#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use url::Url;

pub const PASSWORD: &str = "correct horse battery staple";
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Server {
    pub child: Child,
    pub base: Url,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn start_server() -> Server {
    start_server_with(&[])
}

/// A server with extra `MXQR_*` settings (short lifetimes for the failure tests).
pub fn start_server_with(env: &[(&str, &str)]) -> Server {
    start_server_logging(env, None)
}

/// A server with extra settings whose stderr (its log) goes to `log` when given.
pub fn start_server_logging(env: &[(&str, &str)], log: Option<&Path>) -> Server {
    let dir = std::env::temp_dir().join(format!(
        "mxqr-cli-signin-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::inherit(),
    };
    let (child, base) = spawn_serve(&dir, "127.0.0.1:0", &env, stderr, None);
    Server {
        child,
        base,
        dir,
        env,
    }
}

/// A server whose process may open at most `nofile` files (`ulimit -n`, soft and hard).
pub fn start_server_nofile(nofile: u32) -> Server {
    let dir = std::env::temp_dir().join(format!(
        "mxqr-cli-signin-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (child, base) = spawn_serve(&dir, "127.0.0.1:0", &[], Stdio::inherit(), Some(nofile));
    Server {
        child,
        base,
        dir,
        env: Vec::new(),
    }
}

fn spawn_serve(
    dir: &Path,
    listen: &str,
    env: &[(String, String)],
    stderr: Stdio,
    nofile: Option<u32>,
) -> (Child, Url) {
    let mut command = match nofile {
        Some(limit) => {
            let mut shell = Command::new("sh");
            shell
                .arg("-c")
                .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                .arg(env!("CARGO_BIN_EXE_mxqr"));
            shell
        }
        None => Command::new(env!("CARGO_BIN_EXE_mxqr")),
    };
    let mut child = command
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(dir.join("server"))
        .env("MXQR_LOG", "warn")
        .env_remove("MXQR_CONFIG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn mxqr serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("no listening line: {line:?}"))
        .to_owned();
    (child, Url::parse(&format!("http://{addr}/")).unwrap())
}

impl Server {
    /// Stops the server (SIGKILL: no goodbye to anyone) and starts it again on the same
    /// port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let listen = format!(
            "{}:{}",
            self.base.host_str().unwrap(),
            self.base.port().unwrap()
        );
        let (child, base) = spawn_serve(&self.dir, &listen, &self.env, Stdio::inherit(), None);
        assert_eq!(base, self.base);
        self.child = child;
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn home(&self) -> PathBuf {
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

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mxqr"));
        command
            .args(args)
            .env("MXQR_HOME", self.home())
            .env_remove("MXQR_CONFIG")
            // `mxqr admin` reads the server's settings (token lifetimes) from these too.
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
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
        let (tx, events) = mpsc::channel();
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

    /// A signed-in existing device with cross-signing and backup, in profile `old`.
    pub fn existing_profile(&self) {
        self.admin(
            &["user", "add", "alice", "--password-stdin"],
            Some(&format!("{PASSWORD}\n")),
        );
        let device_id = self.mxqr(&["account", "init", "--profile", "old"], None);
        let issued = self.admin(
            &["issue-token", "alice", "--device-id", device_id.trim()],
            None,
        );
        let imported = self.mxqr(
            &[
                "account",
                "import-token",
                "--profile",
                "old",
                "--homeserver",
                self.base.as_str(),
                "--access-token-stdin",
                "--json",
            ],
            Some(&issued),
        );
        let imported: Value = serde_json::from_str(&imported).unwrap();
        assert_eq!(imported["device_id"], device_id.trim());
        assert!(imported["user_id"].as_str().unwrap().starts_with("@alice:"));
        let boot = self.mxqr(
            &["account", "bootstrap", "--profile", "old", "--json"],
            None,
        );
        let boot: Value = serde_json::from_str(&boot).unwrap();
        assert_eq!(boot["cross_signed"], true, "{boot}");
    }
}

pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Running {
    /// Waits for the next event named `name` (earlier ones are kept in `seen`).
    pub fn wait_for(&mut self, name: &str) -> Value {
        loop {
            let event = self
                .events
                .recv_timeout(WAIT)
                .unwrap_or_else(|e| panic!("no `{name}` event ({e}); seen: {:?}", self.seen));
            self.seen.push(event.clone());
            if event["event"] == name {
                return event;
            }
            assert_ne!(event["event"], "error", "waiting for `{name}`: {event}");
        }
    }

    /// Waits for the `error` event that ends a failed run.
    pub fn wait_for_error(&mut self) -> Value {
        loop {
            let event = self
                .events
                .recv_timeout(WAIT)
                .unwrap_or_else(|e| panic!("no `error` event ({e}); seen: {:?}", self.seen));
            self.seen.push(event.clone());
            if event["event"] == "error" {
                return event;
            }
            assert_ne!(
                event["event"], "done",
                "expected a failure: {:?}",
                self.seen
            );
        }
    }

    /// Ctrl-C, as a terminal sends it.
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub fn type_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the process to end and returns its exit code and stderr.
    pub fn end(mut self) -> (Option<i32>, String, Vec<Value>) {
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
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        self.seen.extend(self.events.try_iter());
        (status.code(), stderr, std::mem::take(&mut self.seen))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The first form of the page that posts to `action`.
pub fn form_posting_to<'a>(html: &'a str, action: &str) -> &'a str {
    let start = html
        .find(&format!("action=\"{action}\""))
        .unwrap_or_else(|| panic!("no form for {action}:\n{html}"));
    let end = html[start..]
        .find("</form>")
        .map_or(html.len(), |e| e + start);
    &html[start..end]
}

pub fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("<input type=\"hidden\" name=\"") {
        rest = &rest[i + "<input type=\"hidden\" name=\"".len()..];
        let name_end = rest.find('"').unwrap();
        let name = rest[..name_end].to_owned();
        let v = rest.find("value=\"").unwrap() + "value=\"".len();
        let v_end = rest[v..].find('"').unwrap() + v;
        let value = rest[v..v_end]
            .replace("&#x2f;", "/")
            .replace("&#x27;", "'")
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        fields.push((name, value));
    }
    fields
}

/// A person on the existing device: opens the consent link (signing in first), ticks the
/// confirmation box and approves.
pub async fn consent(base: &Url, uri: &str) {
    decide(base, uri, "approve").await
}

/// As [`consent`], with `decision` `approve` or `deny`.
pub async fn decide(base: &Url, uri: &str, decision: &str) {
    let browser = browser();
    let page = browser.get(uri).send().await.unwrap();
    let page = if page.status().is_redirection() {
        let next = page.headers()["location"].to_str().unwrap().to_owned();
        let login_page = browser
            .get(base.join(&next).unwrap())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut form = hidden_inputs(form_posting_to(&login_page, "/login"));
        form.push(("username".into(), "alice".into()));
        form.push(("password".into(), PASSWORD.into()));
        let done = browser
            .post(base.join("login").unwrap())
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(done.status().is_redirection(), "login: {}", done.status());
        let back = done.headers()["location"].to_str().unwrap().to_owned();
        browser.get(base.join(&back).unwrap()).send().await.unwrap()
    } else {
        page
    };
    assert!(
        page.status().is_success(),
        "consent page: {}",
        page.status()
    );
    let html = page.text().await.unwrap();
    let mut form = hidden_inputs(form_posting_to(&html, "/link"));
    form.push(("decision".into(), decision.into()));
    form.push(("confirm".into(), "yes".into()));
    let done = browser
        .post(base.join("link").unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(done.status().is_success(), "{decision}: {}", done.status());
}

pub fn assert_private(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let actual = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(actual, mode, "{}", path.display());
}

/// Checks both sides' `done` events and that `whoami` on the new profile names the device.
pub fn check_signed_in(server: &Server, new_done: &Value, grant_done: &Value, profile: &str) {
    assert_eq!(new_done["role"], "new");
    assert_eq!(new_done["cross_signed"], true, "{new_done}");
    assert_eq!(new_done["backup"], true, "{new_done}");
    assert_eq!(grant_done["role"], "existing");
    assert_eq!(grant_done["device_id"], new_done["device_id"]);
    assert_eq!(grant_done["user_id"], new_done["user_id"]);

    let who = server.mxqr(&["whoami", "--profile", profile, "--json"], None);
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["device_id"], new_done["device_id"], "{who}");
    assert_eq!(who["user_id"], new_done["user_id"], "{who}");
    // The new device kept the secrets it received, so it can let devices in itself.
    assert_eq!(who["cross_signing_keys"], true, "{who}");

    let dir = server.home().join("profiles").join(profile);
    assert_private(&dir, 0o700);
    assert_private(&dir.join("session.json"), 0o600);
}

/// The key-backup version each profile's device sees on the server: both devices must use the
/// same one after a sign-in.
pub async fn backup_version(server: &Server, profile: &str) -> String {
    let file = server
        .home()
        .join("profiles")
        .join(profile)
        .join("session.json");
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let token = stored["access_token"].as_str().expect("an access token");
    let answer: Value = reqwest::Client::new()
        .get(
            server
                .base
                .join("_matrix/client/v3/room_keys/version")
                .unwrap(),
        )
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["version"]
        .as_str()
        .unwrap_or_else(|| panic!("no backup version for {profile}: {answer}"))
        .to_owned()
}

/// A person in a browser on this machine: opens the authorization URL, signs in as alice,
/// and answers the consent page with `decision`; the browser then follows the redirect to
/// the loopback listener of `mxqr account login`. Returns that redirect.
pub async fn authorize_in_browser(base: &Url, url: &str, decision: &str) -> Url {
    let browser = browser();
    let mut page = browser.get(url).send().await.unwrap();
    if page.status().is_redirection() {
        let next = page.headers()["location"].to_str().unwrap().to_owned();
        let login_page = browser
            .get(base.join(&next).unwrap())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut form = hidden_inputs(form_posting_to(&login_page, "/login"));
        form.push(("username".into(), "alice".into()));
        form.push(("password".into(), PASSWORD.into()));
        let done = browser
            .post(base.join("login").unwrap())
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(done.status().is_redirection(), "login: {}", done.status());
        let back = done.headers()["location"].to_str().unwrap().to_owned();
        page = browser.get(base.join(&back).unwrap()).send().await.unwrap();
    }
    assert!(
        page.status().is_success(),
        "consent page: {}",
        page.status()
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("mxqr"), "the consent page names the client");
    let mut form = hidden_inputs(form_posting_to(&html, "/oauth2/authorize"));
    form.push(("decision".into(), decision.into()));
    let answer = browser
        .post(base.join("oauth2/authorize").unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_redirection(),
        "decision: {}",
        answer.status()
    );
    let callback = Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(callback.host_str(), Some("127.0.0.1"), "{callback}");
    let landed = browser.get(callback.clone()).send().await.unwrap();
    assert_eq!(landed.status(), 200, "the loopback listener answers");
    callback
}

//! QR sign-in with the `mxqr` command line on both sides: a real `mxqr serve`, an existing
//! device made with `mxqr account init` + `mxqr admin issue-token` + `mxqr account
//! import-token` + `mxqr account bootstrap`, then `mxqr grant --json` and `mxqr login --json`
//! as two processes whose JSON events are piped to each other as a script would. The consent
//! page is driven over HTTP as a browser would.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use url::Url;

const PASSWORD: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(60);

struct Server {
    child: Child,
    base: Url,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_server() -> Server {
    let dir = std::env::temp_dir().join(format!(
        "mxqr-cli-signin-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("server"))
        .env("MXQR_LOG", "warn")
        .env_remove("MXQR_CONFIG")
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
        .expect("listening line")
        .to_owned();
    let base = Url::parse(&format!("http://{addr}/")).unwrap();
    Server { child, base, dir }
}

impl Server {
    fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// `mxqr` with the client store in this test's directory; returns stdout, or panics
    /// with stderr.
    fn mxqr(&self, args: &[&str], stdin: Option<&str>) -> String {
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

    fn admin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        let data_dir = self.dir.join("server");
        all.extend_from_slice(&["--data-dir", data_dir.to_str().unwrap()]);
        self.mxqr(&all, stdin)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mxqr"));
        command
            .args(args)
            .env("MXQR_HOME", self.home())
            .env_remove("MXQR_CONFIG");
        command
    }

    /// A running `mxqr` whose JSON events arrive on a channel, line by line.
    fn spawn_json(&self, args: &[&str]) -> Running {
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
    fn existing_profile(&self) {
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

struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Running {
    /// Waits for the next event named `name` (earlier ones are kept in `seen`).
    fn wait_for(&mut self, name: &str) -> Value {
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

    fn type_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the process to end and returns its exit code and stderr.
    fn end(mut self) -> (Option<i32>, String, Vec<Value>) {
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

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The first form of the page that posts to `action`.
fn form_posting_to<'a>(html: &'a str, action: &str) -> &'a str {
    let start = html
        .find(&format!("action=\"{action}\""))
        .unwrap_or_else(|| panic!("no form for {action}:\n{html}"));
    let end = html[start..]
        .find("</form>")
        .map_or(html.len(), |e| e + start);
    &html[start..end]
}

fn hidden_inputs(html: &str) -> Vec<(String, String)> {
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
async fn consent(base: &Url, uri: &str) {
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
    form.push(("decision".into(), "approve".into()));
    form.push(("confirm".into(), "yes".into()));
    let done = browser
        .post(base.join("link").unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(done.status().is_success(), "approve: {}", done.status());
}

fn assert_private(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let actual = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(actual, mode, "{}", path.display());
}

/// Checks both sides' `done` events and that `whoami` on the new profile names the device.
fn check_signed_in(server: &Server, new_done: &Value, grant_done: &Value, profile: &str) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_shows_msc4388_and_new_scans() {
    let server = start_server();
    server.existing_profile();

    let mut grant = server.spawn_json(&[
        "grant",
        "--profile",
        "old",
        "--msc4388",
        "--json",
        "--no-browser",
    ]);
    let qr = grant.wait_for("qr");
    assert_eq!(qr["generation"], "msc4388");
    let mut login = server.spawn_json(&[
        "login",
        "--profile",
        "new",
        "--scan",
        qr["base64"].as_str().unwrap(),
        "--json",
    ]);
    let code = login.wait_for("check_code");
    grant.wait_for("enter_check_code");
    grant.type_line(code["code"].as_str().unwrap());
    let uri = grant.wait_for("verification_uri");
    consent(&server.base, uri["uri"].as_str().unwrap()).await;

    let grant_done = grant.wait_for("done");
    let new_done = login.wait_for("done");
    let (status, stderr, _) = grant.end();
    assert_eq!(status, Some(0), "{stderr}");
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(0), "{stderr}");
    check_signed_in(&server, &new_done, &grant_done, "new");

    // Signing out ends the session on the server and removes the profile.
    let file = server.home().join("profiles/new/session.json");
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let token = stored["access_token"].as_str().unwrap().to_owned();
    server.mxqr(&["logout", "--profile", "new"], None);
    let answer = reqwest::Client::new()
        .get(
            server
                .base
                .join("_matrix/client/v3/account/whoami")
                .unwrap(),
        )
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert!(!server.home().join("profiles").join("new").exists());
    let out = server
        .command(&["whoami", "--profile", "new"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("profile `new` does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_shows_msc4108_and_existing_scans() {
    let server = start_server();
    server.existing_profile();

    let mut login = server.spawn_json(&[
        "login",
        "--profile",
        "new",
        "--homeserver",
        server.base.as_str(),
        "--msc4108",
        "--json",
    ]);
    let qr = login.wait_for("qr");
    assert_eq!(qr["generation"], "msc4108-2024");
    let mut grant = server.spawn_json(&[
        "grant",
        "--profile",
        "old",
        "--scan",
        qr["base64"].as_str().unwrap(),
        "--json",
        "--no-browser",
    ]);
    let code = grant.wait_for("check_code");
    login.wait_for("enter_check_code");
    login.type_line(code["code"].as_str().unwrap());
    let uri = grant.wait_for("verification_uri");
    consent(&server.base, uri["uri"].as_str().unwrap()).await;

    let new_done = login.wait_for("done");
    let grant_done = grant.wait_for("done");
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(0), "{stderr}");
    let (status, stderr, _) = grant.end();
    assert_eq!(status, Some(0), "{stderr}");
    check_signed_in(&server, &new_done, &grant_done, "new");

    // An access token the server no longer knows is refreshed with the stored refresh token,
    // and the rotated pair is saved.
    let file = server.home().join("profiles/new/session.json");
    let mut stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let old_refresh = stored["refresh_token"].clone();
    assert!(old_refresh.is_string(), "{}", stored["refresh_token"]);
    stored["access_token"] = "expired-or-revoked".into();
    std::fs::write(&file, stored.to_string()).unwrap();
    let who = server.mxqr(&["whoami", "--profile", "new", "--json"], None);
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["device_id"], new_done["device_id"], "{who}");
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_ne!(stored["access_token"], "expired-or-revoked");
    assert_ne!(stored["refresh_token"], old_refresh);
    assert_private(&file, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_login_bootstraps_an_existing_device() {
    let server = start_server();
    server.admin(
        &["user", "add", "alice", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    let mut login = server.spawn_json(&[
        "account",
        "login",
        "--profile",
        "dc",
        "--homeserver",
        server.base.as_str(),
        "--device-code",
        "--json",
    ]);
    let code = login.wait_for("user_code");
    assert!(
        code["user_code"].as_str().is_some_and(|c| !c.is_empty()),
        "{code}"
    );
    consent(&server.base, code["verification_uri"].as_str().unwrap()).await;
    let signed_in = login.wait_for("signed_in");
    let done = login.wait_for("done");
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(done["device_id"], signed_in["device_id"]);
    assert_eq!(done["cross_signed"], true, "{done}");

    let who = server.mxqr(&["whoami", "--profile", "dc", "--json"], None);
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["device_id"], signed_in["device_id"], "{who}");
    assert_eq!(who["cross_signing_keys"], true, "{who}");
    assert_eq!(who["backup_key"], true, "{who}");

    // A token for another device than the profile's keys is refused, naming the fix.
    server.mxqr(&["account", "init", "--profile", "other"], None);
    let issued = server.admin(&["issue-token", "alice", "--device-id", "SOMEOTHER"], None);
    let mut import = server
        .command(&[
            "account",
            "import-token",
            "--profile",
            "other",
            "--homeserver",
            server.base.as_str(),
            "--access-token-stdin",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    import
        .stdin
        .take()
        .unwrap()
        .write_all(issued.as_bytes())
        .unwrap();
    let out = import.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the token is for device SOMEOTHER") && stderr.contains("--device-id"),
        "{stderr}"
    );

    // Signing in as a new device never overwrites a profile.
    let out = server
        .command(&[
            "login",
            "--profile",
            "dc",
            "--homeserver",
            server.base.as_str(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("profile `dc` is already signed in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_check_code_fails_both_sides() {
    let server = start_server();
    server.existing_profile();

    let mut grant = server.spawn_json(&["grant", "--profile", "old", "--json", "--no-browser"]);
    let qr = grant.wait_for("qr");
    let mut login = server.spawn_json(&[
        "login",
        "--profile",
        "new",
        "--scan",
        qr["base64"].as_str().unwrap(),
        "--json",
    ]);
    let code = login.wait_for("check_code");
    let shown: u8 = code["code"].as_str().unwrap().parse().unwrap();
    let wrong = format!("{:02}", (shown + 1) % 100);
    grant.wait_for("enter_check_code");
    grant.type_line(&wrong);

    let grant_error = grant.wait_for("error");
    let (status, stderr, _) = grant.end();
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        grant_error["message"]
            .as_str()
            .unwrap()
            .contains("check code did not match"),
        "{grant_error}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: the check code did not match"),
        "{stderr}"
    );

    let login_error = login.wait_for("error");
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        login_error["message"]
            .as_str()
            .unwrap()
            .contains("the other device ended the sign-in"),
        "{login_error}"
    );
    // Nothing was stored for the new device.
    assert!(!server.home().join("profiles").join("new").exists());
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    let home = std::env::temp_dir().join(format!("mxqr-cli-usage-{}", std::process::id()));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mxqr"))
            .args(args)
            .env("MXQR_HOME", &home)
            .output()
            .unwrap()
    };
    let out = run(&["login", "--scan", "not a code!", "--profile", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--scan takes an image file"), "{stderr}");

    let out = run(&["grant", "--profile", "../etc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid profile name"));

    let out = run(&["login", "--homeserver", "x", "--scan", "y"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["login", "--homeserver", "x", "--check-code", "123"]);
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&home);
}

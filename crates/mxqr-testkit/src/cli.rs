//! The `mxqr` command line under test: a real `mxqr serve` process (restartable on the same
//! port and data), `mxqr` processes whose JSON events arrive line by line, profiles, and the
//! QR sign-in between two `mxqr` processes up to the person's consent.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use url::Url;

pub use crate::person::PASSWORD;

/// Longest wait for any one event: a hang fails here.
pub const WAIT: Duration = Duration::from_secs(60);

/// The `mxqr` binary built next to this test executable (as assert_cmd finds binaries): only
/// the mxqr package's own tests get `CARGO_BIN_EXE_mxqr`, and `cargo test --workspace` builds
/// it for every package's tests.
pub fn mxqr_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lies in target/<profile>/deps");
    let bin = profile_dir.join("mxqr");
    assert!(
        bin.is_file(),
        "{} does not exist: run `cargo build -p mxqr` (with the same profile and target \
         directory) before these tests; `cargo test --workspace` builds it",
        bin.display()
    );
    bin
}

/// A running `mxqr serve` with its data and the client profiles (`home`) under `dir`; killed
/// and removed when dropped.
pub struct ServeProcess {
    pub child: Child,
    pub base: Url,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How to start a [`ServeProcess`]: the one way the command-line tests start `mxqr serve`.
#[derive(Default)]
pub struct Serve {
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
    nofile: Option<u32>,
}

impl Serve {
    /// Default settings: accounts in SQLite, sessions in memory, log to the test's stderr.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an `MXQR_*` setting (also given to the `mxqr` commands run through the server).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Keeps the accounts (and the sessions) in the PostgreSQL database `url`.
    pub fn postgres(self, url: &str) -> Self {
        self.env("MXQR_DATABASE__URL", url)
    }

    /// Writes the server's stderr (its log) to `path`.
    pub fn log_to(mut self, path: &Path) -> Self {
        self.log = Some(path.to_owned());
        self
    }

    /// Lets the process open at most `nofile` files (`ulimit -n`, soft and hard).
    pub fn nofile(mut self, nofile: u32) -> Self {
        self.nofile = Some(nofile);
        self
    }

    /// Starts the server in a fresh directory and waits for its `listening on` line.
    pub fn start(self) -> ServeProcess {
        let dir = std::env::temp_dir().join(format!(
            "mxqr-cli-signin-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let stderr = match &self.log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::inherit(),
        };
        let (child, base) = spawn_serve(&dir, "127.0.0.1:0", &self.env, stderr, self.nofile);
        ServeProcess {
            child,
            base,
            dir,
            env: self.env,
        }
    }
}

/// A server with the default settings.
pub fn start_server() -> ServeProcess {
    Serve::new().start()
}

/// A server with extra `MXQR_*` settings (short lifetimes for the failure tests).
pub fn start_server_with(env: &[(&str, &str)]) -> ServeProcess {
    env.iter()
        .fold(Serve::new(), |serve, (key, value)| serve.env(key, value))
        .start()
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
                .arg(mxqr_bin());
            shell
        }
        None => Command::new(mxqr_bin()),
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

impl ServeProcess {
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

    /// SIGKILL, and waits for the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `MXQR_HOME` of the `mxqr` commands run through this server.
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

    /// `mxqr admin ARGS --data-dir <the server's>`; returns stdout, or panics with stderr.
    pub fn admin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        let data_dir = self.dir.join("server");
        all.extend_from_slice(&["--data-dir", data_dir.to_str().unwrap()]);
        self.mxqr(&all, stdin)
    }

    /// An `mxqr ARGS` command with this server's home and settings.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(mxqr_bin());
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

/// A running `mxqr` process with `--json` events; killed when dropped.
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

    /// Types `text` and Enter on its stdin.
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

/// Asserts the Unix permission bits of `path`.
pub fn assert_private(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let actual = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(actual, mode, "{}", path.display());
}

/// Checks both sides' `done` events and that `whoami` on the new profile names the device.
pub fn check_signed_in(server: &ServeProcess, new_done: &Value, grant_done: &Value, profile: &str) {
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
pub async fn backup_version(server: &ServeProcess, profile: &str) -> String {
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

/// A QR sign-in between two `mxqr` processes, brought to the person's consent: the existing
/// device (profile `old`) shows the QR code, the new device (profile `new`) scans it, and the
/// new device's check code was typed into the existing one.
pub struct QrSignIn {
    /// `mxqr grant` on the existing device.
    pub grant: Running,
    /// `mxqr login` on the new device.
    pub login: Running,
    /// The existing device's `qr` event.
    pub qr: Value,
    /// The consent link the existing device asks the person to open.
    pub uri: String,
}

impl ServeProcess {
    /// Runs `mxqr grant --profile old GRANT_ARGS --json --no-browser` and `mxqr login --profile
    /// new --scan <its QR> --json` up to the consent link (see [`QrSignIn`]).
    pub fn qr_sign_in_to_consent(&self, grant_args: &[&str]) -> QrSignIn {
        let mut args = vec!["grant", "--profile", "old"];
        args.extend_from_slice(grant_args);
        args.extend_from_slice(&["--json", "--no-browser"]);
        let mut grant = self.spawn_json(&args);
        let qr = grant.wait_for("qr");
        let mut login = self.spawn_json(&[
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
        let uri = uri["uri"].as_str().unwrap().to_owned();
        QrSignIn {
            grant,
            login,
            qr,
            uri,
        }
    }
}

//! `mxqr admin` as a real process, next to a running `mxqr serve` on the same data directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use mxqr_testkit::api::Config;
use mxqr_testkit::api::oauth::OAuthState;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mxqr-admin-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn serve(data_dir: &Path) -> Server {
    serve_with(data_dir, &[], &[])
}

/// `mxqr serve` on `data_dir` with extra flags (and environment) in `extra`.
fn serve_command(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mxqr"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .envs(env.iter().copied());
    command
}

fn serve_with(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = serve_command(data_dir, extra, env)
        .env("MXQR_LOG", "warn")
        .env_remove("RUST_LOG")
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
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Server { child, addr }
}

fn admin(data_dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .arg("admin")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("MXQR_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mxqr admin");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// A form POST over HTTP/1.1; returns (status, body).
fn post_form(addr: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn token_valid(data_dir: &Path, token: &str) -> bool {
    let config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let oauth = OAuthState::open(&config).await.unwrap();
            oauth.token_info(token).await.unwrap().is_some()
        })
}

#[test]
fn users_and_tokens_while_the_server_runs() {
    let dir = temp_dir("users");
    let server = serve(&dir);
    assert_private(&dir);

    let out = stdout(&admin(
        &dir,
        &["user", "add", "alice", "--password-stdin"],
        Some("a long password\n"),
    ));
    assert!(out.starts_with("created @alice:127.0.0.1:"), "{out}");
    let out = stdout(&admin(&dir, &["user", "add", "bob"], None));
    let generated = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("generated password");
    assert!(generated.len() >= 16);
    let failed = admin(
        &dir,
        &["user", "add", "alice", "--password-stdin"],
        Some("another password\n"),
    );
    assert_eq!(failed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&failed.stderr).starts_with("error: "));
    assert_eq!(
        admin(&dir, &["user", "add", "Bad Name"], None)
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        admin(
            &dir,
            &["user", "add", "carol", "--password-stdin"],
            Some("short\n")
        )
        .status
        .code(),
        Some(2)
    );

    stdout(&admin(&dir, &["user", "lock", "bob"], None));
    let list = stdout(&admin(&dir, &["user", "list"], None));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines[0].starts_with("@alice:") && lines[0].ends_with("\tactive"));
    assert!(lines[1].starts_with("@bob:") && lines[1].ends_with("\tlocked"));
    assert_eq!(
        admin(&dir, &["issue-token", "bob", "--device-id", "X"], None)
            .status
            .code(),
        Some(2)
    );
    stdout(&admin(&dir, &["user", "unlock", "bob"], None));
    assert_eq!(
        admin(&dir, &["user", "lock", "nobody"], None).status.code(),
        Some(2)
    );
    // Display names live in Synapse: refused in standalone mode, with nothing created.
    let refused = admin(&dir, &["user", "set-display-name", "bob", "Bob"], None);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("synapse"),
        "{refused:?}"
    );
    let refused = admin(
        &dir,
        &["user", "add", "dave", "--display-name", "Dave"],
        None,
    );
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        stdout(&admin(&dir, &["user", "list"], None))
            .lines()
            .count(),
        2
    );

    // Plain output: access token, then refresh token.
    let out = stdout(&admin(
        &dir,
        &["issue-token", "alice", "--device-id", "CLIDEVICE"],
        None,
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("mxqr_at_") && lines[1].starts_with("mxqr_rt_"));
    assert!(token_valid(&dir, lines[0]));
    // The running server accepts the refresh token.
    let (status, body) = post_form(
        &server.addr,
        "/oauth2/token",
        &format!("grant_type=refresh_token&refresh_token={}", lines[1]),
    );
    assert_eq!(status, 200, "{body}");
    let refreshed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(token_valid(
        &dir,
        refreshed["access_token"].as_str().unwrap()
    ));

    // JSON output, with a base64 device ID.
    let out = stdout(&admin(
        &dir,
        &["issue-token", "alice", "--device-id", "ab+c/d=", "--json"],
        None,
    ));
    let value: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(value["device_id"], "ab+c/d=");
    assert!(value["user_id"].as_str().unwrap().starts_with("@alice:"));
    assert_eq!(value["expires_in"], 300);
    let access = value["access_token"].as_str().unwrap();
    assert!(token_valid(&dir, access));
    let (status, _) = post_form(&server.addr, "/oauth2/revoke", &format!("token={access}"));
    assert_eq!(status, 200);
    assert!(!token_valid(&dir, access));

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// GET `path` with a bearer token over HTTP/1.1; returns (status, body).
fn get_authed(addr: &str, path: &str, token: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// A `mxqr serve` that must refuse to start: its exit code and stderr.
fn serve_refused(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = serve_command(data_dir, extra, env)
        .env("MXQR_LOG", "warn")
        .env_remove("RUST_LOG")
        .env_remove("MXQR_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        output.stdout.is_empty(),
        "started: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The server name is pinned in the database at first start: `mxqr admin` without the
/// server's flags takes it from there (it used to derive `127.0.0.1:8008` from its own
/// defaults, so its user IDs were refused by the server), and a start whose configuration
/// names another server refuses, with one line.
#[test]
fn the_server_name_is_pinned_at_first_start() {
    let dir = temp_dir("pinned");
    let server = serve_with(&dir, &["--public-url", "http://127.0.0.1:36927/"], &[]);
    let out = stdout(&admin(
        &dir,
        &["user", "add", "erin", "--password-stdin"],
        Some("a long password\n"),
    ));
    assert_eq!(out.trim(), "created @erin:127.0.0.1:36927");
    let out = stdout(&admin(
        &dir,
        &["issue-token", "erin", "--device-id", "PINNED", "--json"],
        None,
    ));
    let issued: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let (status, body) = get_authed(
        &server.addr,
        "/_matrix/client/v3/account/whoami",
        issued["access_token"].as_str().unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    let whoami: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(whoami["user_id"], issued["user_id"]);
    assert_eq!(whoami["user_id"], "@erin:127.0.0.1:36927");
    drop(server);

    // Another public URL or server name: refused, one line naming the pinned name.
    for (extra, env) in [
        (&["--public-url", "http://127.0.0.1:4000/"][..], &[][..]),
        (&[][..], &[("MXQR_SERVER_NAME", "other.example")][..]),
    ] {
        let (code, stderr) = serve_refused(&dir, extra, env);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("\"127.0.0.1:36927\""), "{stderr}");
    }
    let mut refused = Command::new(env!("CARGO_BIN_EXE_mxqr"));
    let refused = refused
        .args(["admin", "user", "list", "--data-dir"])
        .arg(&dir)
        .env("MXQR_SERVER_NAME", "other.example")
        .env_remove("MXQR_CONFIG")
        .output()
        .unwrap();
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("127.0.0.1:36927"),
        "{refused:?}"
    );

    // The same name under another public URL is fine: server_name decouples them.
    let server = serve_with(
        &dir,
        &["--public-url", "http://127.0.0.1:4000/"],
        &[("MXQR_SERVER_NAME", "127.0.0.1:36927")],
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The data directory is only for the server's user (0700), the database files too (0600):
/// they hold password hashes and token digests.
#[cfg(unix)]
fn assert_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(files >= 1, "no database file in {}", dir.display());
}

#[cfg(not(unix))]
fn assert_private(_dir: &Path) {}

/// `mxqr admin` creating the data directory does the same.
#[test]
fn admin_creates_a_private_data_directory() {
    let dir = temp_dir("private").join("nested");
    stdout(&admin(
        &dir,
        &["user", "add", "frank", "--password-stdin"],
        Some("a long password\n"),
    ));
    assert_private(&dir);
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

//! `mxqr serve` as a real process on a free port, spoken to over plain HTTP/1.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Kills the server when the test ends, pass or fail.
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
    let dir = std::env::temp_dir().join(format!("mxqr-serve-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start(data_dir: &PathBuf) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("MXQR_LOG", "warn")
        .env_remove("RUST_LOG")
        .env_remove("MXQR_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mxqr serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Server { child, addr }
}

/// One request on a fresh connection; returns (status, body).
fn request(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

#[test]
fn serves_health_versions_and_a_rendezvous_session() {
    let data_dir = temp_dir("run");
    let server = start(&data_dir);
    assert!(data_dir.is_dir(), "--data-dir is created");

    let (status, body) = request(&server.addr, "GET", "/health", None);
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));

    let (status, body) = request(&server.addr, "GET", "/_matrix/client/versions", None);
    assert_eq!(status, 200);
    let versions: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(versions["unstable_features"]["io.element.msc4388"], true);

    let prefix = "/_matrix/client/v1/rendezvous";
    let (status, body) = request(&server.addr, "POST", prefix, Some("{\"data\":\"hi\"}"));
    assert_eq!(status, 200, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = created["id"].as_str().unwrap();
    let (status, body) = request(&server.addr, "GET", &format!("{prefix}/{id}"), None);
    assert_eq!(status, 200);
    let read: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(read["data"], "hi");
    assert_eq!(read["sequence_token"], created["sequence_token"]);

    let (status, body) = request(&server.addr, "POST", prefix, Some("{"));
    assert_eq!(status, 400);
    assert!(body.contains("M_NOT_JSON"), "{body}");

    // SIGTERM stops it cleanly.
    let pid = server.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let mut server = server;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn print_config_shows_environment_overrides_and_refuses_bad_values() {
    let output = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args(["serve", "--print-config", "--listen", "127.0.0.1:9999"])
        .env("MXQR_RENDEZVOUS__TTL_SECS", "240")
        .env_remove("MXQR_CONFIG")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:9999\""), "{text}");
    assert!(
        text.contains("public_url = \"http://127.0.0.1:9999/\""),
        "{text}"
    );
    assert!(text.contains("ttl_secs = 240"), "{text}");

    let output = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args(["serve", "--print-config"])
        .env("MXQR_RENDEZVOUS__TTL_SECS", "5")
        .env_remove("MXQR_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("error: ") && stderr.contains("ttl_secs"),
        "{stderr}"
    );
}

/// Descriptors `mxqr serve` may open in the exhaustion test; the attacker holds more sockets.
const NOFILE: u32 = 256;
const ATTACKER_SOCKETS: usize = 400;

/// One connection from 127.0.0.2 that sends `head` and then holds the socket.
async fn attacker_socket(
    addr: std::net::SocketAddr,
    head: String,
) -> Option<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind("127.0.0.2:0".parse().unwrap()).ok()?;
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = stream.write_all(head.as_bytes()).await;
    Some(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holding_many_sockets_does_not_stop_another_clients_sign_in() {
    use mxqr_testkit::cli::*;
    use mxqr_testkit::person::consent;
    let server = Serve::new().nofile(NOFILE).start();
    let addr: std::net::SocketAddr = format!(
        "{}:{}",
        server.base.host_str().unwrap(),
        server.base.port().unwrap()
    )
    .parse()
    .unwrap();
    let host = addr.to_string();

    // The attacker's one rendezvous session, to long-poll on.
    let prefix = "/_matrix/client/v1/rendezvous";
    let created = attacker_socket(
        addr,
        format!(
            "POST {prefix} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{{\"data\":\"x\"}}"
        ),
    )
    .await
    .expect("attacker connects");
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::BufReader::new(created), &mut answer)
        .await
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    let (id, token) = (
        body["id"].as_str().unwrap().to_owned(),
        body["sequence_token"].as_str().unwrap().to_owned(),
    );

    // More sockets than the server may open files: half-sent request heads, idle keep-alive
    // connections and long-polls, held for the whole test.
    let mut held = Vec::new();
    for i in 0..ATTACKER_SOCKETS {
        let head = match i % 3 {
            0 => format!("GET /health HTTP/1.1\r\nHost: {host}\r\n"),
            1 => format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            _ => format!(
                "GET {prefix}/{id}?since={token}&timeout_ms=30000 HTTP/1.1\r\nHost: {host}\r\n\r\n"
            ),
        };
        if let Some(stream) = attacker_socket(addr, head).await {
            held.push(stream);
        }
    }
    assert!(
        held.len() > NOFILE as usize,
        "the attacker got {} sockets",
        held.len()
    );

    // Another client still gets answers, at once...
    let health = tokio::task::spawn_blocking(move || request(&host, "GET", "/health", None))
        .await
        .unwrap();
    assert_eq!(health.0, 200);
    // ...and completes a whole QR sign-in: account set-up, both devices over the rendezvous,
    // consent in the browser.
    server.existing_profile();
    let QrSignIn {
        mut grant,
        mut login,
        uri,
        ..
    } = server.qr_sign_in_to_consent(&["--msc4388"]);
    consent(&server.base, &uri).await;
    let grant_done = grant.wait_for("done");
    let new_done = login.wait_for("done");
    check_signed_in(&server, &new_done, &grant_done, "new");
    drop(held);
}

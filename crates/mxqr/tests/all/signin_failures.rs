//! QR sign-ins that must fail, with `mxqr grant` / `mxqr login` processes against a real
//! `mxqr serve`: each side reports the reason in one line (and as a JSON `error` event),
//! exits non-zero, stores nothing for the new device, and does not hang.

use std::time::{Duration, Instant};

use mxqr_client::driver::{DriverError, E2eeSetup, NewDeviceOptions, Ui, UiEvent, login_scan};
use mxqr_keys::Account;
use mxqr_proto::machine::Failure;
use mxqr_proto::messages::FailureReason;
use mxqr_proto::qr::QrCode;
use mxqr_testkit::cli::*;
use mxqr_testkit::person::decide;
use serde_json::Value;
use tokio::sync::mpsc;

/// Waits for the `error` event and the exit; returns the message, the status and stderr.
fn failed(running: Running) -> (String, Option<i32>, String) {
    let mut running = running;
    let error = running.wait_for_error();
    let (status, stderr, _) = running.end();
    let message = error["message"].as_str().unwrap_or_default().to_owned();
    (message, status, stderr)
}

fn assert_one_line(stderr: &str, message: &str) {
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(message), "{stderr} / {message}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn no_new_profile(server: &ServeProcess) {
    assert!(
        !server.home().join("profiles").join("new").exists(),
        "nothing is stored for a device that did not sign in"
    );
}

/// `mxqr grant` shows the QR code, `mxqr login` scans it, the check code is typed; returns
/// both processes with the consent link the existing device opens.
fn up_to_consent(server: &ServeProcess, generation: &str) -> (Running, Running, String) {
    let QrSignIn {
        grant, login, uri, ..
    } = server.qr_sign_in_to_consent(&[generation]);
    (grant, login, uri)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_consent_fails_both_sides() {
    let server = start_server();
    server.existing_profile();
    let (grant, login, uri) = up_to_consent(&server, "--msc4388");
    decide(&server.base, &uri, "deny").await;

    let (message, status, stderr) = failed(login);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(message.contains("declined"), "{message}");
    assert_one_line(&stderr, &message);
    let (message, status, stderr) = failed(grant);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(message.contains("declined"), "{message}");
    no_new_profile(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_device_code_fails_both_sides() {
    let server = start_server_with(&[
        ("MXQR_OAUTH__DEVICE_CODE_TTL_SECS", "10"),
        ("MXQR_OAUTH__DEVICE_POLL_INTERVAL_SECS", "1"),
    ]);
    server.existing_profile();
    let started = Instant::now();
    // Nobody opens the consent link.
    let (grant, login, _uri) = up_to_consent(&server, "--msc4108");

    let (message, status, stderr) = failed(login);
    // The client stops when the next poll would come after the code's expiry.
    assert!(started.elapsed() >= Duration::from_secs(9), "{message}");
    assert_eq!(status, Some(1), "{stderr}");
    assert!(message.contains("not given in time"), "{message}");
    assert_one_line(&stderr, &message);
    let (message, status, stderr) = failed(grant);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(message.contains("not given in time"), "{message}");
    no_new_profile(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_the_existing_device_cancels_both() {
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
    login.wait_for("check_code");
    // The person gives up instead of typing the code.
    grant.wait_for("enter_check_code");
    grant.interrupt();

    let (message, status, stderr) = failed(grant);
    assert_eq!(status, Some(130), "{stderr}");
    assert!(message.contains("cancelled"), "{message}");
    assert_one_line(&stderr, &message);
    // No trusted channel yet to say why: the new device sees the rendezvous vanish.
    let (message, status, stderr) = failed(login);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(message.contains("the sign-in session is gone"), "{message}");
    no_new_profile(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_the_new_device_while_waiting_for_consent() {
    let server = start_server();
    server.existing_profile();
    let (grant, mut login, _uri) = up_to_consent(&server, "--msc4388");
    login.wait_for("user_code");
    login.interrupt();

    let (message, status, stderr) = failed(login);
    assert_eq!(status, Some(130), "{stderr}");
    assert!(message.contains("cancelled"), "{message}");
    // Over the secure channel: the existing device is told why.
    let (message, status, stderr) = failed(grant);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(message.contains("the sign-in was cancelled"), "{message}");
    assert_one_line(&stderr, &message);
    no_new_profile(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unscanned_code_expires() {
    let server = start_server_with(&[
        ("MXQR_RENDEZVOUS__TTL_SECS", "10"),
        ("MXQR_RENDEZVOUS__MAX_LIFETIME_SECS", "10"),
    ]);
    server.existing_profile();
    for (command, profile) in [("grant", "old"), ("login", "new")] {
        let started = Instant::now();
        let homeserver = server.base.to_string();
        let mut args = vec![command, "--profile", profile, "--json"];
        if command == "login" {
            args.extend(["--homeserver", &homeserver]);
        } else {
            args.push("--no-browser");
        }
        let mut shown = server.spawn_json(&args);
        shown.wait_for("qr");
        let (message, status, stderr) = failed(shown);
        assert!(started.elapsed() >= Duration::from_secs(9), "{command}");
        assert_eq!(status, Some(1), "{command}: {stderr}");
        assert!(message.contains("expired"), "{command}: {message}");
        assert_one_line(&stderr, &message);
    }
    no_new_profile(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_flow_is_reported() {
    let mut server = start_server();
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
    grant.wait_for("enter_check_code");
    // The rendezvous lives in the server's memory: a restart loses it.
    server.restart();
    grant.type_line(code["code"].as_str().unwrap());

    let started = Instant::now();
    let (message, status, stderr) = failed(grant);
    let lost = |m: &str| m.contains("session is gone") || m.contains("could not reach the server");
    assert!(lost(&message), "existing device: {message}");
    assert_eq!(status, Some(1), "{stderr}");
    assert_one_line(&stderr, &message);
    let (message, status, stderr) = failed(login);
    assert!(lost(&message), "new device: {message}");
    assert_eq!(status, Some(1), "{stderr}");
    assert_one_line(&stderr, &message);
    assert!(started.elapsed() < Duration::from_secs(30));
    no_new_profile(&server);
    // The server itself is fine: accounts and tokens are on disk.
    let who = server.mxqr(&["whoami", "--profile", "old", "--json"], None);
    let who: Value = serde_json::from_str(&who).unwrap();
    assert!(who["user_id"].as_str().unwrap().starts_with("@alice:"));
}

/// The new device in this process (the library), so that its device ID can exist already.
struct ScanningUi {
    shown_code: mpsc::UnboundedSender<u8>,
}

impl Ui for ScanningUi {
    fn show(&mut self, event: UiEvent) {
        if let UiEvent::ShowCheckCode(code) = event {
            let _ = self.shown_code.send(code.digits());
        }
    }
    async fn ask_check_code(&mut self) -> Option<u8> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_id_that_exists_already_is_refused() {
    let server = start_server();
    server.existing_profile();
    let mut account = Account::new();
    let device_id = E2eeSetup::device_id(&account);
    server.admin(
        &["issue-token", "alice", "--device-id", device_id.as_str()],
        None,
    );

    let mut grant = server.spawn_json(&["grant", "--profile", "old", "--json", "--no-browser"]);
    let qr = grant.wait_for("qr");
    let qr = QrCode::decode(
        &base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            qr["base64"].as_str().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let (tx, mut codes) = mpsc::unbounded_channel();
    let new_side = tokio::spawn(async move {
        let mut ui = ScanningUi { shown_code: tx };
        login_scan(
            reqwest::Client::new(),
            &qr,
            &NewDeviceOptions::default(),
            &mut account,
            &mut ui,
        )
        .await
    });
    let code = tokio::time::timeout(WAIT, codes.recv())
        .await
        .unwrap()
        .unwrap();
    grant.wait_for("enter_check_code");
    grant.type_line(&format!("{code:02}"));

    let (message, status, stderr) = failed(grant);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(message.contains("already exists"), "{message}");
    assert_one_line(&stderr, &message);
    let result = tokio::time::timeout(WAIT, new_side).await.unwrap().unwrap();
    let error = result.expect_err("the new device is refused");
    assert!(
        matches!(
            error,
            DriverError::Failed {
                failure: Failure::PeerFailed(FailureReason::DeviceAlreadyExists),
                ..
            }
        ),
        "{error:?}"
    );
}

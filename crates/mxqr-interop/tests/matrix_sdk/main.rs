//! matrix-sdk 0.18.0 (what Element X ships) against a spawned `mxqr serve` over real HTTP:
//! QR sign-in on the MSC4108 (2024) generation (ETag rendezvous, ECIES), matrix-sdk on both
//! sides and matrix-sdk against the `mxqr` command line, both QR directions each, and the
//! SDK's failure paths. The consent pages are driven over HTTP as a browser would. The
//! `synapse` module runs matrix-sdk against a real Synapse with mxqr as its authentication
//! service.

mod harness;
mod synapse;

use std::future::IntoFuture as _;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use harness::{
    Server, WAIT, assert_server_shows_cross_signed, b64, consent_device, from_b64,
    registration_data, sdk_client, sdk_existing_device, start_server,
};
use matrix_sdk::Client;
use matrix_sdk::authentication::oauth::qrcode::{
    DeviceCodeErrorResponseType, GeneratedQrProgress, GrantLoginProgress, LoginFailureReason,
    LoginProgress, Msc4108IntentData, QRCodeGrantLoginError, QRCodeLoginError, QrAuthMessage,
    QrCodeData, QrCodeIntentData, QrProgress,
};
use serde_json::Value;

/// Bound on a whole sign-in (several steps of at most [`WAIT`] each).
const WHOLE: Duration = Duration::from_secs(180);

/// Waits for the first progress state that `pick` accepts; fails when the progress ends
/// (its sign-in future finished) or nothing comes within [`WAIT`].
async fn next_state<T: std::fmt::Debug, R>(
    progress: &mut Pin<Box<impl Stream<Item = T>>>,
    what: &str,
    mut pick: impl FnMut(T) -> Option<R>,
) -> R {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(state) = progress.next().await {
            let shown = format!("{state:?}");
            if let Some(found) = pick(state) {
                return Some(found);
            }
            seen.push(shown);
        }
        None
    })
    .await;
    match found {
        Ok(Some(found)) => found,
        Ok(None) => panic!("progress ended before {what}; seen: {seen:?}"),
        Err(_) => panic!("no {what} within {WAIT:?}; seen: {seen:?}"),
    }
}

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(WHOLE, future)
        .await
        .expect("the sign-in finished in time")
}

fn qr_ready_login(state: LoginProgress<GeneratedQrProgress>) -> Option<QrCodeData> {
    match state {
        LoginProgress::EstablishingSecureChannel(GeneratedQrProgress::QrReady(qr)) => Some(qr),
        _ => None,
    }
}

fn qr_ready_grant(state: GrantLoginProgress<GeneratedQrProgress>) -> Option<QrCodeData> {
    match state {
        GrantLoginProgress::EstablishingSecureChannel(GeneratedQrProgress::QrReady(qr)) => Some(qr),
        _ => None,
    }
}

fn check_code_prompt_login(
    state: LoginProgress<GeneratedQrProgress>,
) -> Option<matrix_sdk::authentication::oauth::qrcode::CheckCodeSender> {
    match state {
        LoginProgress::EstablishingSecureChannel(GeneratedQrProgress::QrScanned(sender)) => {
            Some(sender)
        }
        _ => None,
    }
}

fn check_code_prompt_grant(
    state: GrantLoginProgress<GeneratedQrProgress>,
) -> Option<matrix_sdk::authentication::oauth::qrcode::CheckCodeSender> {
    match state {
        GrantLoginProgress::EstablishingSecureChannel(GeneratedQrProgress::QrScanned(sender)) => {
            Some(sender)
        }
        _ => None,
    }
}

fn shown_code_login(state: LoginProgress<QrProgress>) -> Option<u8> {
    match state {
        LoginProgress::EstablishingSecureChannel(QrProgress { check_code }) => {
            Some(check_code.to_digit())
        }
        _ => None,
    }
}

fn shown_code_grant(state: GrantLoginProgress<QrProgress>) -> Option<u8> {
    match state {
        GrantLoginProgress::EstablishingSecureChannel(QrProgress { check_code }) => {
            Some(check_code.to_digit())
        }
        _ => None,
    }
}

fn verification_uri<Q>(state: GrantLoginProgress<Q>) -> Option<url::Url> {
    match state {
        GrantLoginProgress::WaitingForAuth { verification_uri } => Some(verification_uri),
        _ => None,
    }
}

/// What a camera reads: the QR code's bytes, decoded again.
fn scan(qr: &QrCodeData) -> QrCodeData {
    QrCodeData::from_bytes(&qr.to_bytes()).expect("the SDK reads its own QR code")
}

/// A matrix-sdk new device for the homeserver named in an existing device's QR code, as
/// Element X builds it after scanning.
async fn sdk_client_from_qr(qr: &QrCodeData) -> Client {
    let QrCodeIntentData::Msc4108 {
        data: Msc4108IntentData::Reciprocate { server_name },
        ..
    } = qr.intent_data()
    else {
        panic!("not an MSC4108 QR code of an existing device: {qr:?}");
    };
    Client::builder()
        .server_name_or_homeserver_url(server_name)
        .handle_refresh_tokens()
        .build()
        .await
        .unwrap_or_else(|e| panic!("client for {server_name}: {e}"))
}

/// The SDK's own verdict on a device it just signed in: cross-signed by its owner,
/// verified, and holding all three private cross-signing keys.
async fn assert_sdk_device_verified(new: &Client) {
    let encryption = new.encryption();
    let own = encryption
        .get_own_device()
        .await
        .unwrap()
        .expect("the new device knows itself");
    assert!(own.is_cross_signed_by_owner(), "{own:?}");
    assert!(own.is_verified(), "{own:?}");
    let status = encryption.cross_signing_status().await.unwrap();
    assert!(status.is_complete(), "{status:?}");
}

/// Checks the `mxqr login` side's `done` event.
fn assert_cli_new_done(done: &Value, user_id: &str) {
    assert_eq!(done["role"], "new", "{done}");
    assert_eq!(done["user_id"], user_id, "{done}");
    assert_eq!(done["cross_signed"], true, "{done}");
}

fn token(client: &Client) -> String {
    client.access_token().expect("signed in")
}

/// QR sign-in with matrix-sdk on both sides, the existing device showing the code: a new
/// device is built from the scanned code (as Element X does), the person compares the
/// check code and approves on the consent page at `pages`; returns the signed-in new device.
async fn sdk_new_device_scans_existing(existing: &Client, pages: &url::Url) -> Client {
    let registration = registration_data();
    let existing_oauth = existing.oauth();
    let grant = existing_oauth.grant_login_with_qr_code().generate();
    let mut grant_progress = Box::pin(grant.subscribe_to_progress());
    let new_device = async {
        let qr = next_state(&mut grant_progress, "QR code", qr_ready_grant).await;
        let scanned = scan(&qr);
        let new = sdk_client_from_qr(&scanned).await;
        let new_oauth = new.oauth();
        let login = new_oauth
            .login_with_qr_code(Some(&registration))
            .scan(&scanned);
        let mut login_progress = Box::pin(login.subscribe_to_progress());
        let person = async {
            let code = next_state(&mut login_progress, "check code", shown_code_login).await;
            let prompt = next_state(
                &mut grant_progress,
                "check code prompt",
                check_code_prompt_grant,
            )
            .await;
            prompt.send(code).await.unwrap();
            let uri = next_state(&mut grant_progress, "consent link", verification_uri).await;
            consent_device(pages, uri.as_str(), true).await;
        };
        let (result, ()) = tokio::join!(login.into_future(), person);
        result.expect("the SDK new device signs in");
        new
    };
    let (granted, new) = within(async { tokio::join!(grant.into_future(), new_device) }).await;
    granted.expect("the SDK existing device lets it in");
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_existing_shows_qr_and_sdk_new_scans() {
    let server = start_server(&[]);
    server.add_alice();
    let existing = sdk_existing_device(&server.base, &server.base).await;
    let new = sdk_new_device_scans_existing(&existing, &server.base).await;

    assert_sdk_device_verified(&new).await;
    assert_eq!(new.user_id(), existing.user_id());
    assert_server_shows_cross_signed(
        &server,
        &token(&existing),
        existing.user_id().unwrap().as_str(),
        new.device_id().unwrap().as_str(),
    )
    .await;
    server.assert_no_server_errors();
    server.print_requests("matrix-sdk existing shows, matrix-sdk new scans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_new_shows_qr_and_sdk_existing_scans() {
    let server = start_server(&[]);
    server.add_alice();
    let existing = sdk_existing_device(&server.base, &server.base).await;
    let new = sdk_client(&server.base).await;
    let registration = registration_data();

    let new_oauth = new.oauth();
    let login = new_oauth.login_with_qr_code(Some(&registration)).generate();
    let mut login_progress = Box::pin(login.subscribe_to_progress());
    let existing_device = async {
        let qr = next_state(&mut login_progress, "QR code", qr_ready_login).await;
        let scanned = scan(&qr);
        let existing_oauth = existing.oauth();
        let grant = existing_oauth.grant_login_with_qr_code().scan(&scanned);
        let mut grant_progress = Box::pin(grant.subscribe_to_progress());
        let person = async {
            let code = next_state(&mut grant_progress, "check code", shown_code_grant).await;
            let prompt = next_state(
                &mut login_progress,
                "check code prompt",
                check_code_prompt_login,
            )
            .await;
            prompt.send(code).await.unwrap();
            let uri = next_state(&mut grant_progress, "consent link", verification_uri).await;
            consent_device(&server.base, uri.as_str(), true).await;
        };
        let (result, ()) = tokio::join!(grant.into_future(), person);
        result
    };
    let (logged_in, granted) =
        within(async { tokio::join!(login.into_future(), existing_device) }).await;
    granted.expect("the SDK existing device lets it in");
    logged_in.expect("the SDK new device signs in");

    assert_sdk_device_verified(&new).await;
    assert_eq!(new.user_id(), existing.user_id());
    assert_server_shows_cross_signed(
        &server,
        &token(&existing),
        existing.user_id().unwrap().as_str(),
        new.device_id().unwrap().as_str(),
    )
    .await;
    server.assert_no_server_errors();
    server.print_requests("matrix-sdk new shows, matrix-sdk existing scans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_existing_shows_qr_and_cli_new_scans() {
    let server = start_server(&[]);
    server.add_alice();
    let existing = sdk_existing_device(&server.base, &server.base).await;

    let existing_oauth = existing.oauth();
    let grant = existing_oauth.grant_login_with_qr_code().generate();
    let mut grant_progress = Box::pin(grant.subscribe_to_progress());
    let new_device = async {
        let qr = next_state(&mut grant_progress, "QR code", qr_ready_grant).await;
        let mut login = server.spawn_json(&[
            "login",
            "--profile",
            "new",
            "--scan",
            &b64(&qr.to_bytes()),
            "--json",
        ]);
        let code = login.wait_for("check_code").await;
        let prompt = next_state(
            &mut grant_progress,
            "check code prompt",
            check_code_prompt_grant,
        )
        .await;
        prompt
            .send(code["code"].as_str().unwrap().parse().unwrap())
            .await
            .unwrap();
        let uri = next_state(&mut grant_progress, "consent link", verification_uri).await;
        consent_device(&server.base, uri.as_str(), true).await;
        let done = login.wait_for("done").await;
        let (status, stderr) = login.end().await;
        assert_eq!(status, Some(0), "{stderr}");
        done
    };
    let (granted, done) = within(async { tokio::join!(grant.into_future(), new_device) }).await;
    granted.expect("the SDK existing device lets `mxqr login` in");

    let user_id = existing.user_id().unwrap().as_str();
    assert_cli_new_done(&done, user_id);
    assert_server_shows_cross_signed(
        &server,
        &token(&existing),
        user_id,
        done["device_id"].as_str().unwrap(),
    )
    .await;
    server.assert_no_server_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_new_shows_qr_and_sdk_existing_scans() {
    let server = start_server(&[]);
    server.add_alice();
    let existing = sdk_existing_device(&server.base, &server.base).await;

    let mut login = server.spawn_json(&[
        "login",
        "--profile",
        "new",
        "--homeserver",
        server.base.as_str(),
        "--msc4108",
        "--json",
    ]);
    let qr = login.wait_for("qr").await;
    assert_eq!(qr["generation"], "msc4108-2024", "{qr}");
    let scanned = QrCodeData::from_bytes(&from_b64(qr["base64"].as_str().unwrap()))
        .expect("matrix-sdk reads the QR code of `mxqr login --msc4108`");
    let existing_oauth = existing.oauth();
    let grant = existing_oauth.grant_login_with_qr_code().scan(&scanned);
    let mut grant_progress = Box::pin(grant.subscribe_to_progress());
    let person = async {
        let code = next_state(&mut grant_progress, "check code", shown_code_grant).await;
        login.wait_for("enter_check_code").await;
        login.type_line(&format!("{code:02}"));
        let uri = next_state(&mut grant_progress, "consent link", verification_uri).await;
        consent_device(&server.base, uri.as_str(), true).await;
        let done = login.wait_for("done").await;
        let (status, stderr) = login.end().await;
        assert_eq!(status, Some(0), "{stderr}");
        done
    };
    let (granted, done) = within(async { tokio::join!(grant.into_future(), person) }).await;
    granted.expect("the SDK existing device lets `mxqr login` in");

    let user_id = existing.user_id().unwrap().as_str();
    assert_cli_new_done(&done, user_id);
    assert_server_shows_cross_signed(
        &server,
        &token(&existing),
        user_id,
        done["device_id"].as_str().unwrap(),
    )
    .await;
    server.assert_no_server_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_existing_shows_qr_and_sdk_new_scans() {
    let server = start_server(&[]);
    server.add_alice();
    server.cli_existing_profile();
    let registration = registration_data();

    let mut grant = server.spawn_json(&[
        "grant",
        "--profile",
        "old",
        "--msc4108",
        "--json",
        "--no-browser",
    ]);
    let qr = grant.wait_for("qr").await;
    assert_eq!(qr["generation"], "msc4108-2024", "{qr}");
    let scanned = QrCodeData::from_bytes(&from_b64(qr["base64"].as_str().unwrap()))
        .expect("matrix-sdk reads the QR code of `mxqr grant --msc4108`");
    let new = sdk_client_from_qr(&scanned).await;
    let new_oauth = new.oauth();
    let login = new_oauth
        .login_with_qr_code(Some(&registration))
        .scan(&scanned);
    let mut login_progress = Box::pin(login.subscribe_to_progress());
    let person = async {
        let code = next_state(&mut login_progress, "check code", shown_code_login).await;
        grant.wait_for("enter_check_code").await;
        grant.type_line(&format!("{code:02}"));
        let uri = grant.wait_for("verification_uri").await;
        consent_device(&server.base, uri["uri"].as_str().unwrap(), true).await;
        let done = grant.wait_for("done").await;
        let (status, stderr) = grant.end().await;
        assert_eq!(status, Some(0), "{stderr}");
        done
    };
    let (logged_in, done) = within(async { tokio::join!(login.into_future(), person) }).await;
    logged_in.expect("the SDK new device signs in through `mxqr grant`");

    assert_sdk_device_verified(&new).await;
    assert_eq!(done["role"], "existing", "{done}");
    assert_eq!(
        done["device_id"],
        new.device_id().unwrap().as_str(),
        "{done}"
    );
    assert_server_shows_cross_signed(
        &server,
        &token(&new),
        new.user_id().unwrap().as_str(),
        new.device_id().unwrap().as_str(),
    )
    .await;
    server.assert_no_server_errors();
    server.print_requests("mxqr grant shows, matrix-sdk new scans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_new_shows_qr_and_cli_existing_scans() {
    let server = start_server(&[]);
    server.add_alice();
    server.cli_existing_profile();
    let new = sdk_client(&server.base).await;
    let registration = registration_data();

    let new_oauth = new.oauth();
    let login = new_oauth.login_with_qr_code(Some(&registration)).generate();
    let mut login_progress = Box::pin(login.subscribe_to_progress());
    let existing_device = async {
        let qr = next_state(&mut login_progress, "QR code", qr_ready_login).await;
        let mut grant = server.spawn_json(&[
            "grant",
            "--profile",
            "old",
            "--scan",
            &b64(&qr.to_bytes()),
            "--json",
            "--no-browser",
        ]);
        let code = grant.wait_for("check_code").await;
        let prompt = next_state(
            &mut login_progress,
            "check code prompt",
            check_code_prompt_login,
        )
        .await;
        prompt
            .send(code["code"].as_str().unwrap().parse().unwrap())
            .await
            .unwrap();
        let uri = grant.wait_for("verification_uri").await;
        consent_device(&server.base, uri["uri"].as_str().unwrap(), true).await;
        let done = grant.wait_for("done").await;
        let (status, stderr) = grant.end().await;
        assert_eq!(status, Some(0), "{stderr}");
        done
    };
    let (logged_in, done) =
        within(async { tokio::join!(login.into_future(), existing_device) }).await;
    logged_in.expect("the SDK new device signs in through `mxqr grant --scan`");

    assert_sdk_device_verified(&new).await;
    assert_eq!(
        done["device_id"],
        new.device_id().unwrap().as_str(),
        "{done}"
    );
    assert_server_shows_cross_signed(
        &server,
        &token(&new),
        new.user_id().unwrap().as_str(),
        new.device_id().unwrap().as_str(),
    )
    .await;
    server.assert_no_server_errors();
}

/// Runs the existing-device-shows direction with matrix-sdk on both sides up to the consent
/// link, then lets `at_consent` act (or not) as the person; returns both outcomes. With
/// `wrong_code` the person types a wrong check code on the existing device instead, and the
/// new device's outcome is `None` if it is still waiting five seconds later.
async fn sdk_pair_until_consent(
    existing: &Client,
    new: &Client,
    wrong_code: bool,
    at_consent: impl AsyncFnOnce(url::Url),
) -> (
    Result<(), QRCodeGrantLoginError>,
    Option<Result<(), QRCodeLoginError>>,
) {
    let registration = registration_data();
    let existing_oauth = existing.oauth();
    let grant = existing_oauth.grant_login_with_qr_code().generate();
    let mut grant_progress = Box::pin(grant.subscribe_to_progress());
    let new_device = async {
        let qr = next_state(&mut grant_progress, "QR code", qr_ready_grant).await;
        let scanned = scan(&qr);
        let new_oauth = new.oauth();
        let login = new_oauth
            .login_with_qr_code(Some(&registration))
            .scan(&scanned);
        let mut login_progress = Box::pin(login.subscribe_to_progress());
        let person = async {
            let code = next_state(&mut login_progress, "check code", shown_code_login).await;
            let prompt = next_state(
                &mut grant_progress,
                "check code prompt",
                check_code_prompt_grant,
            )
            .await;
            if wrong_code {
                prompt.send((code + 1) % 100).await.unwrap();
                return;
            }
            prompt.send(code).await.unwrap();
            let uri = next_state(&mut grant_progress, "consent link", verification_uri).await;
            at_consent(uri).await;
        };
        let login = async {
            if wrong_code {
                // Nothing tells the new device that the code was refused: it waits on
                // the rendezvous until it expires. A few seconds show it got nowhere.
                tokio::time::timeout(Duration::from_secs(5), login.into_future())
                    .await
                    .ok()
            } else {
                Some(login.into_future().await)
            }
        };
        let (result, ()) = tokio::join!(login, person);
        result
    };
    within(async { tokio::join!(grant.into_future(), new_device) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_consent_declined() {
    let server = start_server(&[]);
    server.add_alice();
    let existing = sdk_existing_device(&server.base, &server.base).await;
    let new = sdk_client(&server.base).await;
    let base = server.base.clone();
    let (granted, logged_in) = sdk_pair_until_consent(&existing, &new, false, async move |uri| {
        consent_device(&base, uri.as_str(), false).await;
    })
    .await;

    let logged_in = logged_in.expect("the new device finished");
    let err = logged_in.expect_err("a declined sign-in fails on the new device");
    assert!(
        matches!(
            &err,
            QRCodeLoginError::OAuth(e)
                if matches!(e.as_request_token_error(), Some(DeviceCodeErrorResponseType::AccessDenied))
        ),
        "{err:?}"
    );
    // The new device tells the existing one with `m.login.declined`, which the SDK's
    // existing device reports as an unexpected message in place of `m.login.success`.
    let err = granted.expect_err("a declined sign-in fails on the existing device");
    assert!(
        matches!(
            &err,
            QRCodeGrantLoginError::UnexpectedMessage {
                expected: "m.login.success",
                received: QrAuthMessage::LoginDeclined,
            }
        ),
        "{err:?}"
    );
    assert!(new.session_meta().is_none());
    assert_eq!(device_count(&server, &existing).await, 1);
    server.assert_no_server_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_device_code_expired() {
    const TTL_SECS: u64 = 10;
    let ttl = TTL_SECS.to_string();
    let server = start_server(&[("MXQR_OAUTH__DEVICE_CODE_TTL_SECS", &ttl)]);
    server.add_alice();
    let existing = sdk_existing_device(&server.base, &server.base).await;
    let new = sdk_client(&server.base).await;
    let started = std::time::Instant::now();
    // Nobody opens the consent link.
    let (granted, logged_in) = sdk_pair_until_consent(&existing, &new, false, async |_| {}).await;

    assert!(started.elapsed() >= Duration::from_secs(TTL_SECS));
    let logged_in = logged_in.expect("the new device finished");
    let err = logged_in.expect_err("an expired device code fails on the new device");
    assert!(
        matches!(
            &err,
            QRCodeLoginError::OAuth(e)
                if matches!(e.as_request_token_error(), Some(DeviceCodeErrorResponseType::ExpiredToken))
        ),
        "{err:?}"
    );
    let err = granted.expect_err("an expired device code fails on the existing device");
    assert!(
        matches!(
            &err,
            QRCodeGrantLoginError::LoginFailure {
                reason: LoginFailureReason::AuthorizationExpired
            }
        ),
        "{err:?}"
    );
    assert!(new.session_meta().is_none());
    assert_eq!(device_count(&server, &existing).await, 1);
    // The server itself answered `expired_token` (not only the SDK's own clock).
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.route == "/oauth2/token" && r.status == 400),
        "{:?}",
        server.requests()
    );
    server.assert_no_server_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_wrong_check_code() {
    let server = start_server(&[]);
    server.add_alice();
    let existing = sdk_existing_device(&server.base, &server.base).await;
    let new = sdk_client(&server.base).await;
    let (granted, logged_in) = sdk_pair_until_consent(&existing, &new, true, async |_| {
        unreachable!("no consent link after a wrong check code")
    })
    .await;

    let err = granted.expect_err("the existing device refuses a wrong check code");
    assert!(
        matches!(err, QRCodeGrantLoginError::InvalidCheckCode),
        "{err:?}"
    );
    assert!(
        !matches!(logged_in, Some(Ok(()))),
        "the new device got in: {logged_in:?}"
    );
    assert!(new.session_meta().is_none());
    assert_eq!(device_count(&server, &existing).await, 1);
    server.assert_no_server_errors();
}

/// How many devices alice has, as the server lists them.
async fn device_count(server: &Server, client: &Client) -> usize {
    let answer: Value = reqwest::Client::new()
        .get(server.base.join("_matrix/client/v3/devices").unwrap())
        .bearer_auth(token(client))
        .timeout(WAIT)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .len()
}

//! What `mxqr login` does with the secrets it receives, against a real `mxqr serve`: it
//! uses, keeps and hands on only the cross-signing and backup keys the homeserver publishes
//! for the user; and when encryption set-up fails after the sign-in, the signed-in device
//! is still recorded in its profile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use mxqr_client::driver::{ExistingSession, GrantOutcome, Ui, UiEvent, grant_show_qr};
use mxqr_keys::{BackupKey, CrossSigningKeys, seed_to_secret};
use mxqr_proto::Generation;
use mxqr_proto::messages::SecretsMessage;
use mxqr_testkit::cli::*;
use mxqr_testkit::person::consent;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use url::Url;

/// A profile's `session.json`.
fn stored(server: &ServeProcess, profile: &str) -> Value {
    let file = server
        .home()
        .join("profiles")
        .join(profile)
        .join("session.json");
    serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap()
}

/// The existing device in this process, so that it can hand over secrets of its choosing.
struct ExistingUi {
    qr: Option<oneshot::Sender<String>>,
    typed_code: mpsc::UnboundedReceiver<u8>,
    base: Url,
    consented: Option<tokio::task::JoinHandle<()>>,
}

impl Ui for ExistingUi {
    fn show(&mut self, event: UiEvent) {
        match event {
            UiEvent::ShowQrCode(qr) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(qr.encode());
                let _ = self.qr.take().expect("one QR code").send(encoded);
            }
            UiEvent::OpenVerificationUri(uri) => {
                let base = self.base.clone();
                self.consented = Some(tokio::spawn(async move { consent(&base, &uri).await }));
            }
            _ => {}
        }
    }

    async fn ask_check_code(&mut self) -> Option<u8> {
        self.typed_code.recv().await
    }
}

/// Profile `old`'s device hands `secrets` to `mxqr login --profile new`; returns the new
/// device's `done` event.
async fn sign_in_handing_over(server: &ServeProcess, secrets: SecretsMessage) -> Value {
    let old = stored(server, "old");
    let session = ExistingSession {
        homeserver: server.base.clone(),
        access_token: old["access_token"].as_str().unwrap().to_owned(),
        secrets,
        refresh: None,
    };
    let (qr_tx, qr_rx) = oneshot::channel();
    let (code_tx, code_rx) = mpsc::unbounded_channel();
    let mut ui = ExistingUi {
        qr: Some(qr_tx),
        typed_code: code_rx,
        base: server.base.clone(),
        consented: None,
    };
    let existing = tokio::spawn(async move {
        let result: Result<GrantOutcome, _> = grant_show_qr(
            reqwest::Client::new(),
            &session,
            Some(Generation::Msc4388),
            &mut ui,
        )
        .await;
        if let Some(consented) = ui.consented.take() {
            consented.await.expect("consent in the browser");
        }
        result
    });
    let qr = tokio::time::timeout(WAIT, qr_rx).await.unwrap().unwrap();
    let mut login = server.spawn_json(&["login", "--profile", "new", "--scan", &qr, "--json"]);
    let code = login.wait_for("check_code");
    code_tx
        .send(code["code"].as_str().unwrap().parse().unwrap())
        .unwrap();
    let done = login.wait_for("done");
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(0), "{stderr}");
    let granted = tokio::time::timeout(WAIT, existing)
        .await
        .unwrap()
        .unwrap()
        .expect("the existing device completes the grant");
    assert_eq!(granted.device_id.as_str(), done["device_id"]);
    done
}

/// The new device's `device_keys` as the existing device sees them on the server.
async fn device_keys(server: &ServeProcess, user_id: &str, device_id: &str) -> Value {
    let old = stored(server, "old");
    let query: Value = reqwest::Client::new()
        .post(server.base.join("_matrix/client/v3/keys/query").unwrap())
        .bearer_auth(old["access_token"].as_str().unwrap())
        .json(&json!({ "device_keys": { user_id: [device_id] } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    query["device_keys"][user_id][device_id].clone()
}

fn whoami(server: &ServeProcess, profile: &str) -> Value {
    let who = server.mxqr(&["whoami", "--profile", profile, "--json"], None);
    serde_json::from_str(&who).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signing_key_that_is_not_published_is_not_used_kept_or_handed_on() {
    let server = start_server();
    server.existing_profile();
    let old = stored(&server, "old");
    let mut secrets: SecretsMessage = serde_json::from_value(old["secrets"].clone()).unwrap();
    let bogus = CrossSigningKeys::new();
    secrets.cross_signing.self_signing_key = seed_to_secret(&bogus.self_signing);

    let done = sign_in_handing_over(&server, secrets).await;
    assert_eq!(done["cross_signed"], false, "{done}");
    let reason = done["cross_signing_refused"].as_str().unwrap_or_default();
    assert!(reason.contains("self-signing"), "{done}");
    // The backup key was the right one: it is used.
    assert_eq!(done["backup"], true, "{done}");

    // The uploaded device keys carry the device's own signature and nothing else.
    let user_id = done["user_id"].as_str().unwrap();
    let device_id = done["device_id"].as_str().unwrap();
    let keys = device_keys(&server, user_id, device_id).await;
    let signatures = keys["signatures"][user_id].as_object().unwrap();
    let bogus_id = format!("ed25519:{}", bogus.self_signing.public_key().to_base64());
    assert!(!signatures.contains_key(&bogus_id), "{keys}");
    assert_eq!(
        signatures.keys().collect::<Vec<_>>(),
        [&format!("ed25519:{device_id}")],
        "{keys}"
    );

    // Nothing of the refused keys is kept, so `mxqr grant` has nothing to hand on.
    assert!(stored(&server, "new")["secrets"].is_null());
    assert_eq!(whoami(&server, "new")["cross_signing_keys"], false);
    let mut grant = server.spawn_json(&["grant", "--profile", "new", "--json", "--no-browser"]);
    let error = grant.wait_for_error();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("holds no cross-signing keys"),
        "{error}"
    );
    let (status, _, _) = grant.end();
    assert_eq!(status, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_key_that_is_not_the_current_one_is_not_kept_or_handed_on() {
    let server = start_server();
    server.existing_profile();
    let old = stored(&server, "old");
    let mut secrets: SecretsMessage = serde_json::from_value(old["secrets"].clone()).unwrap();
    let backup = secrets.backup.as_mut().expect("old holds a backup key");
    let right_key = backup.key.clone();
    backup.key = BackupKey::new().to_secret();

    let done = sign_in_handing_over(&server, secrets).await;
    // The cross-signing keys were the right ones: the device is cross-signed.
    assert_eq!(done["cross_signed"], true, "{done}");
    assert_eq!(done["backup"], false, "{done}");
    let reason = done["backup_refused"].as_str().unwrap_or_default();
    assert!(reason.contains("not the current backup"), "{done}");

    let kept = &stored(&server, "new")["secrets"];
    assert!(kept["cross_signing"].is_object(), "{kept}");
    assert!(kept["backup"].is_null(), "{kept}");
    assert_eq!(whoami(&server, "new")["backup_key"], false);

    // `new` lets a third device in: cross-signing keys go on, the wrong backup key does not.
    let mut grant = server.spawn_json(&[
        "grant",
        "--profile",
        "new",
        "--msc4388",
        "--json",
        "--no-browser",
    ]);
    let qr = grant.wait_for("qr");
    let mut third = server.spawn_json(&[
        "login",
        "--profile",
        "third",
        "--scan",
        qr["base64"].as_str().unwrap(),
        "--json",
    ]);
    let code = third.wait_for("check_code");
    grant.wait_for("enter_check_code");
    grant.type_line(code["code"].as_str().unwrap());
    let uri = grant.wait_for("verification_uri");
    consent(&server.base, uri["uri"].as_str().unwrap()).await;
    let third_done = third.wait_for("done");
    let grant_done = grant.wait_for("done");
    assert_eq!(grant_done["backup_sent"], false, "{grant_done}");
    assert_eq!(third_done["cross_signed"], true, "{third_done}");
    assert_eq!(third_done["backup"], false, "{third_done}");
    let third_kept = serde_json::to_string(&stored(&server, "third")["secrets"]).unwrap();
    assert!(!third_kept.contains(right_key.expose()));
    assert!(stored(&server, "third")["secrets"]["backup"].is_null());
}

/// A reverse proxy to `target` that answers `POST /keys/upload` with a 500 once `broken`.
async fn breaking_proxy(target: Url, broken: Arc<AtomicBool>) -> Url {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::response::{IntoResponse, Response};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let forward = move |request: Request| {
        let http = http.clone();
        let target = target.clone();
        let broken = broken.clone();
        async move {
            let (parts, body) = request.into_parts();
            if broken.load(Ordering::SeqCst) && parts.uri.path() == "/_matrix/client/v3/keys/upload"
            {
                return (
                    reqwest::StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"errcode":"M_UNKNOWN","error":"broken on purpose"}"#,
                )
                    .into_response();
            }
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut headers = parts.headers.clone();
            headers.remove(reqwest::header::HOST);
            let answer = http
                .request(parts.method, target.join(&path[1..]).unwrap())
                .headers(headers)
                .body(body)
                .send()
                .await
                .unwrap();
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if name != reqwest::header::TRANSFER_ENCODING {
                    response = response.header(name, value);
                }
            }
            response
                .body(Body::from(answer.bytes().await.unwrap()))
                .unwrap()
        }
    };
    let app = axum::Router::new().fallback(forward);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Url::parse(&format!("http://{addr}/")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_encryption_set_up_keeps_the_signed_in_device_in_its_profile() {
    let server = start_server();
    let broken = Arc::new(AtomicBool::new(false));
    let proxy = breaking_proxy(server.base.clone(), broken.clone()).await;
    // Profile `old` as in `existing_profile`, but talking to the homeserver through the proxy.
    server.admin(
        &["user", "add", "alice", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    let device_id = server.mxqr(&["account", "init", "--profile", "old"], None);
    let issued = server.admin(
        &["issue-token", "alice", "--device-id", device_id.trim()],
        None,
    );
    server.mxqr(
        &[
            "account",
            "import-token",
            "--profile",
            "old",
            "--homeserver",
            proxy.as_str(),
            "--access-token-stdin",
        ],
        Some(&issued),
    );
    server.mxqr(&["account", "bootstrap", "--profile", "old"], None);
    // From now on the new device's key upload fails.
    broken.store(true, Ordering::SeqCst);

    let QrSignIn {
        mut grant,
        mut login,
        uri,
        ..
    } = server.qr_sign_in_to_consent(&[]);
    consent(&server.base, &uri).await;
    grant.wait_for("done");

    let error = login.wait_for_error();
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(1), "{stderr}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("encryption"), "{message}");
    assert!(message.contains("mxqr logout --profile new"), "{message}");

    // The device is signed in and on record: its token works, and it can sign out.
    let kept = stored(&server, "new");
    assert!(kept["access_token"].is_string(), "{kept}");
    assert!(kept["refresh_token"].is_string(), "{kept}");
    assert!(kept["secrets"].is_null(), "{kept}");
    let who = whoami(&server, "new");
    assert!(who["user_id"].as_str().unwrap().starts_with("@alice:"));
    let token = kept["access_token"].as_str().unwrap().to_owned();
    server.mxqr(&["logout", "--profile", "new"], None);
    let after = reqwest::Client::new()
        .get(
            server
                .base
                .join("_matrix/client/v3/account/whoami")
                .unwrap(),
        )
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401, "the token is revoked by `mxqr logout`");
}

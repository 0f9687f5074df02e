//! QR sign-in end to end over real HTTP: a real `mxqr serve` process, an account made with
//! `mxqr admin`, an existing device bootstrapped with cross-signing and key backup, and the
//! new-device and existing-device drivers of `mxqr-client` completing all four combinations
//! (who shows the QR code × MSC4108 2024 / MSC4388). The consent page is driven over HTTP as
//! a browser would; the server's `/keys/query` then shows the new device cross-signed.

use std::time::Duration;

use mxqr_client::driver::{
    E2eeSetup, ExistingSession, NewDeviceOptions, Ui, UiEvent, grant_scan, grant_show_qr,
    login_scan, login_show_qr,
};
use mxqr_keys::Account;
use mxqr_proto::Generation;
use mxqr_proto::qr::QrCode;
use mxqr_testkit::cli::start_server;
use mxqr_testkit::person::{PASSWORD, browser, decide_in};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use url::Url;

/// What passes between the two devices outside the network: the QR code (a camera), the
/// check code (a person reading one screen and typing on the other).
struct TestUi {
    qr: Option<oneshot::Sender<QrCode>>,
    shown_code: Option<mpsc::UnboundedSender<u8>>,
    typed_code: Option<mpsc::UnboundedReceiver<u8>>,
    /// Existing device only: consent in the browser.
    consent: Option<(Url, reqwest::Client)>,
    consented: Option<tokio::task::JoinHandle<()>>,
}

impl Ui for TestUi {
    fn show(&mut self, event: UiEvent) {
        match event {
            UiEvent::ShowQrCode(qr) => {
                // Through the bytes a camera would read.
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
                let (base, browser) = self.consent.clone().expect("existing device consents");
                self.consented = Some(tokio::spawn(async move {
                    decide_in(&browser, &base, &uri, "approve").await
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

async fn keys_query(http: &reqwest::Client, base: &Url, token: &str, user_id: &str) -> Value {
    http.post(base.join("_matrix/client/v3/keys/query").unwrap())
        .bearer_auth(token)
        .json(&json!({ "device_keys": { user_id: [] } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_combinations_sign_in_and_cross_sign() {
    let server = start_server();
    let base = server.base.clone();
    server.admin(
        &["user", "add", "alice", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );

    // The existing device: its own keys, a token bound to its device ID, then cross-signing
    // and a backup version.
    let mut existing_account = Account::new();
    let existing_id = mxqr_keys::device_id(&existing_account);
    let issued = server.admin(
        &[
            "issue-token",
            "alice",
            "--device-id",
            &existing_id,
            "--json",
        ],
        None,
    );
    let issued: Value = serde_json::from_str(&issued).unwrap();
    let token = issued["access_token"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let boot = mxqr_client::e2ee::bootstrap(&http, &base, &token, &mut existing_account)
        .await
        .unwrap();
    let session = ExistingSession {
        homeserver: base.clone(),
        access_token: token.clone(),
        secrets: boot.secrets(),
        refresh: None,
    };
    let ssk = boot.cross_signing.public_keys().self_signing.to_base64();

    for generation in [Generation::Msc4388, Generation::Msc4108v2024] {
        for new_shows in [true, false] {
            let label = format!("{generation:?}, new device shows: {new_shows}");
            let (qr_tx, qr_rx) = oneshot::channel();
            let (code_tx, code_rx) = mpsc::unbounded_channel();
            let mut new_account = Account::new();
            let new_id = E2eeSetup::device_id(&new_account);
            let options = NewDeviceOptions {
                generation: Some(generation),
                ..NewDeviceOptions::default()
            };

            let mut new_ui = TestUi {
                qr: None,
                shown_code: None,
                typed_code: None,
                consent: None,
                consented: None,
            };
            let mut existing_ui = TestUi {
                qr: None,
                shown_code: None,
                typed_code: None,
                consent: Some((base.clone(), browser())),
                consented: None,
            };
            // G shows the QR code and is asked for the check code; S shows it.
            if new_shows {
                new_ui.qr = Some(qr_tx);
                new_ui.typed_code = Some(code_rx);
                existing_ui.shown_code = Some(code_tx);
            } else {
                existing_ui.qr = Some(qr_tx);
                existing_ui.typed_code = Some(code_rx);
                new_ui.shown_code = Some(code_tx);
            }

            let (mut new_qr_rx, mut existing_qr_rx) = (None, None);
            if new_shows {
                existing_qr_rx = Some(qr_rx)
            } else {
                new_qr_rx = Some(qr_rx)
            }

            let new_http = http.clone();
            let hs = base.to_string();
            let new_side = tokio::spawn(async move {
                match new_qr_rx {
                    None => {
                        login_show_qr(new_http, &hs, &options, &mut new_account, &mut new_ui).await
                    }
                    Some(rx) => {
                        let qr = rx.await.expect("the existing device shows a QR code");
                        login_scan(new_http, &qr, &options, &mut new_account, &mut new_ui).await
                    }
                }
            });
            let existing_http = http.clone();
            let existing_session = ExistingSession {
                homeserver: session.homeserver.clone(),
                access_token: session.access_token.clone(),
                secrets: session.secrets.clone(),
                refresh: None,
            };
            let existing_side = tokio::spawn(async move {
                let result = match existing_qr_rx {
                    None => {
                        grant_show_qr(
                            existing_http,
                            &existing_session,
                            Some(generation),
                            &mut existing_ui,
                        )
                        .await
                    }
                    Some(rx) => {
                        let qr = rx.await.expect("the new device shows a QR code");
                        grant_scan(existing_http, &existing_session, &qr, &mut existing_ui).await
                    }
                };
                if let Some(consented) = existing_ui.consented.take() {
                    consented.await.expect("consent in the browser");
                }
                result
            });

            let (new_result, existing_result) =
                tokio::time::timeout(Duration::from_secs(60), async {
                    (new_side.await.unwrap(), existing_side.await.unwrap())
                })
                .await
                .unwrap_or_else(|_| panic!("{label}: timed out"));
            let login = new_result.unwrap_or_else(|e| panic!("{label}: new device: {e:?}"));
            let grant =
                existing_result.unwrap_or_else(|e| panic!("{label}: existing device: {e:?}"));

            assert_eq!(login.device_id, new_id, "{label}");
            assert_eq!(grant.device_id, new_id, "{label}");
            assert_eq!(login.e2ee.user_id, boot.user_id, "{label}");
            assert!(
                login.e2ee.cross_signed() && login.e2ee.backup_enabled(),
                "{label}: {:?}",
                login.e2ee
            );

            // The new device's token is its own, and the server shows it signed by the
            // self-signing key to the existing device.
            let me = mxqr_client::e2ee::whoami(&http, &base, &login.tokens.access_token)
                .await
                .unwrap();
            assert_eq!(me.device_id.as_deref(), Some(new_id.as_str()), "{label}");
            let query = keys_query(&http, &base, &token, &boot.user_id).await;
            let device = &query["device_keys"][&boot.user_id][new_id.as_str()];
            let signatures = &device["signatures"][&boot.user_id];
            assert!(
                signatures.get(format!("ed25519:{ssk}")).is_some(),
                "{label}: {query}"
            );
            assert!(
                signatures
                    .get(format!("ed25519:{}", new_id.as_str()))
                    .is_some(),
                "{label}"
            );
            mxqr_keys::verify_device_signed_by(
                device,
                &boot.user_id,
                &boot.cross_signing.public_keys().self_signing,
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        }
    }
}

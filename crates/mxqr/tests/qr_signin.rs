//! QR sign-in end to end over real HTTP: a real `mxqr serve` process, an account made with
//! `mxqr admin`, an existing device bootstrapped with cross-signing and key backup, and the
//! new-device and existing-device drivers of `mxqr-client` completing all four combinations
//! (who shows the QR code × MSC4108 2024 / MSC4388). The consent page is driven over HTTP as
//! a browser would; the server's `/keys/query` then shows the new device cross-signed.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mxqr_client::driver::{
    E2eeSetup, ExistingSession, NewDeviceOptions, Ui, UiEvent, grant_scan, grant_show_qr,
    login_scan, login_show_qr,
};
use mxqr_keys::Account;
use mxqr_proto::Generation;
use mxqr_proto::qr::QrCode;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use url::Url;

const PASSWORD: &str = "correct horse battery staple";

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

fn mxqr(dir: &PathBuf, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mxqr");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mxqr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn start_server() -> Server {
    let dir = std::env::temp_dir().join(format!(
        "mxqr-e2e-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("MXQR_LOG", "warn")
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
                self.consented = Some(tokio::spawn(
                    async move { consent(&base, &browser, &uri).await },
                ));
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
async fn consent(base: &Url, browser: &reqwest::Client, uri: &str) {
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

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
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
    mxqr(
        &server.dir,
        &["admin", "user", "add", "alice", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );

    // The existing device: its own keys, a token bound to its device ID, then cross-signing
    // and a backup version.
    let mut existing_account = Account::new();
    let existing_id = mxqr_keys::device_id(&existing_account);
    let issued = mxqr(
        &server.dir,
        &[
            "admin",
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

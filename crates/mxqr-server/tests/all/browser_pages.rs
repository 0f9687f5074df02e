//! The sign-in, consent, `/link` and account pages driven end to end in headless Chromium:
//! what a person sees and clicks, and what the app at the other end then gets.
//!
//! Needs `chromium` and `chromedriver` (scripts/install-test-deps.sh); fails without them.
//! Screenshots of every page visited land in `target/browser-screenshots/`.

use mxqr_testkit::Backend;
use std::time::Duration;

use crate::browser_support::{Browser, Loopback, run};
use mxqr_keys::{CrossSigningKeys, KeyUsage};
use mxqr_testkit::cs::{USER, assert_error, get, post, token};
use mxqr_testkit::oauth::{DEVICE_GRANT, OAuthServer, PASSWORD, pkce, scope};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WHOAMI: &str = "/_matrix/client/v3/account/whoami";
const DEVICE_SIGNING: &str = "/_matrix/client/v3/keys/device_signing/upload";

async fn server_with_alice() -> OAuthServer {
    let server = OAuthServer::start(Backend::Sqlite).await;
    server.add_user("alice").await;
    server
}

/// Registers (RFC 7591) a native app whose redirect URI is `redirect`.
async fn register_app(server: &OAuthServer, redirect: &str) -> String {
    let response = server
        .register(json!({
            "client_name": "Browser Test App",
            "client_uri": "https://app.example.com/",
            "application_type": "native",
            "redirect_uris": [redirect],
            "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["client_id"].as_str().unwrap().to_owned()
}

fn authorize_url(
    server: &OAuthServer,
    client_id: &str,
    redirect: &str,
    device_id: &str,
    state: &str,
    challenge: &str,
    prompt: Option<&str>,
) -> String {
    let mut url = url::Url::parse(&server.url("/oauth2/authorize")).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect)
        .append_pair("response_type", "code")
        .append_pair("response_mode", "query")
        .append_pair("scope", &scope(device_id))
        .append_pair("state", state)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(prompt) = prompt {
        url.query_pairs_mut().append_pair("prompt", prompt);
    }
    url.into()
}

/// `whoami` with `access_token` answers this user and device.
async fn assert_whoami(server: &OAuthServer, access_token: &str, device_id: &str) {
    let (status, body) = get(server, WHOAMI, access_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], USER);
    assert_eq!(body["device_id"], device_id);
}

#[tokio::test]
async fn authorization_code_grant_through_login_and_consent() {
    let server = server_with_alice().await;
    run("authorization-code", async move |browser: Browser| {
        let mut app = Loopback::start(Vec::new()).await;
        // Registered without a port (Matrix spec); the run-time port matches at authorization.
        let redirect = format!("http://127.0.0.1:{}/callback", app.port);
        let client_id = register_app(&server, "http://127.0.0.1/callback").await;
        let (verifier, challenge) = pkce();
        let state = format!("st-{}", hex::encode(rand::random::<[u8; 8]>()));
        let authorize = authorize_url(
            &server,
            &client_id,
            &redirect,
            "BROWSERDEV",
            &state,
            &challenge,
            None,
        );

        // Not signed in yet: the request goes through the sign-in page and comes back.
        browser.goto(&authorize).await;
        browser
            .wait_for_url("the sign-in page", |u| u.path() == "/login")
            .await;
        browser.sign_in("alice", PASSWORD).await;
        let heading = browser.wait_for_heading("Allow").await;
        assert!(heading.contains("Browser Test App"), "{heading}");
        let page = browser.body_text().await;
        for shown in [
            "Browser Test App",
            "https://app.example.com/",
            USER,
            "BROWSERDEV",
            redirect.as_str(),
        ] {
            assert!(
                page.contains(shown),
                "consent page lacks {shown:?}:\n{page}"
            );
        }
        browser.shot("consent").await;
        browser.click("button[name=decision][value=approve]").await;

        // The app's loopback listener gets the code and its state back.
        let params = app.callback(&browser).await;
        assert_eq!(params.get("state"), Some(&state), "{params:?}");
        let code = params.get("code").expect("a code").clone();
        browser
            .wait_for_url("the app's redirect URI", |u| {
                u.port() == Some(app.port) && u.path() == "/callback"
            })
            .await;
        browser.wait_for_heading("Back in the app").await;
        browser.shot("redirected-to-app").await;

        let (status, tokens) = server
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("client_id", &client_id),
                ("redirect_uri", &redirect),
                ("code_verifier", &verifier),
            ])
            .await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert_whoami(
            &server,
            tokens["access_token"].as_str().unwrap(),
            "BROWSERDEV",
        )
        .await;

        // Signed in but without a fresh decision, prompt=none comes back with consent_required
        // instead of showing a page.
        let silent = authorize_url(
            &server,
            &client_id,
            &redirect,
            "BROWSERDEV2",
            "silent",
            &challenge,
            Some("none"),
        );
        browser.goto(&silent).await;
        let params = app.callback(&browser).await;
        assert_eq!(
            params.get("error").map(String::as_str),
            Some("consent_required")
        );
        assert_eq!(params.get("state").map(String::as_str), Some("silent"));
        assert!(!params.contains_key("code"));
        browser.wait_for_heading("Back in the app").await;
        browser.shot("prompt-none-answer").await;
    })
    .await;
}

/// Starts a device authorization as a device would; returns the RFC 8628 answer.
async fn device_authorization(server: &OAuthServer, client_id: &str, device_id: &str) -> Value {
    let response = server
        .http
        .post(server.url("/oauth2/device"))
        .header("user-agent", "MxqrTV/2.1 (living room)")
        .form(&[("client_id", client_id), ("scope", &scope(device_id))])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn poll(server: &OAuthServer, client_id: &str, device_code: &str) -> (StatusCode, Value) {
    // Polls are spaced by the advertised interval (the server's clock is manual).
    server.clock.advance(Duration::from_secs(6));
    server
        .token(&[
            ("grant_type", DEVICE_GRANT),
            ("device_code", device_code),
            ("client_id", client_id),
        ])
        .await
}

#[tokio::test]
async fn device_grant_approved_and_denied_through_link() {
    let server = server_with_alice().await;
    run("device-grant", async move |browser: Browser| {
        let client_id = register_app(&server, "http://127.0.0.1/callback").await;
        let grant = device_authorization(&server, &client_id, "TVDEVICE").await;
        let device_code = grant["device_code"].as_str().unwrap();
        let user_code = grant["user_code"].as_str().unwrap();
        assert_eq!(grant["verification_uri"], server.url("/link"));
        let (status, body) = poll(&server, &client_id, device_code).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "authorization_pending");

        // /link asks to sign in first, then comes back to the code entry.
        browser.goto(&server.url("/link")).await;
        browser.sign_in("alice", PASSWORD).await;
        browser.wait_for("form[action=\"/link\"] #code").await;
        browser.wait_for_heading("Sign in a device").await;
        // Typed as people do: lower case, a space instead of the dash.
        let (left, right) = user_code.split_once('-').unwrap();
        let typed = format!(" {} {} ", left.to_lowercase(), right.to_lowercase());
        browser.type_into("#code", &typed).await;
        browser.shot("link-code-entry").await;
        browser
            .click("form[action=\"/link\"] button[type=submit]")
            .await;

        browser.wait_for_heading("Sign in a new device").await;
        let page = browser.body_text().await;
        for shown in [
            "Browser Test App",
            "TVDEVICE",
            "127.0.0.1",
            "MxqrTV/2.1 (living room)",
            user_code,
        ] {
            assert!(
                page.contains(shown),
                "device consent lacks {shown:?}:\n{page}"
            );
        }
        browser.shot("device-consent").await;

        // Approving without ticking the confirmation does not go through: the browser holds
        // the form back, and the server refuses it too when that check is bypassed.
        let confirm = browser.find("input[name=confirm]").await;
        assert!(!confirm.is_selected().await.unwrap());
        browser.click("button[name=decision][value=approve]").await;
        let held_back = browser
            .client
            .execute(
                "return document.querySelector('input[name=confirm]').validity.valueMissing;",
                Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!(held_back, Value::Bool(true));
        browser
            .client
            .execute(
                "document.querySelector('input[name=confirm]').removeAttribute('required');",
                Vec::new(),
            )
            .await
            .unwrap();
        browser.click("button[name=decision][value=approve]").await;
        let alert = browser.wait_for("p.error[role=alert]").await;
        assert!(alert.text().await.unwrap().contains("Tick the box"));
        browser.shot("device-consent-unconfirmed").await;
        let (status, body) = poll(&server, &client_id, device_code).await;
        assert_eq!(body["error"], "authorization_pending", "{status} {body}");

        browser.click("input[name=confirm]").await;
        assert!(
            browser
                .find("input[name=confirm]")
                .await
                .is_selected()
                .await
                .unwrap()
        );
        browser.shot("device-consent-confirmed").await;
        browser.click("button[name=decision][value=approve]").await;
        browser.wait_for_heading("Device signed in").await;
        browser.shot("device-signed-in").await;

        let (status, tokens) = poll(&server, &client_id, device_code).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert_whoami(
            &server,
            tokens["access_token"].as_str().unwrap(),
            "TVDEVICE",
        )
        .await;

        // A second device, opened through verification_uri_complete, is denied.
        let other = device_authorization(&server, &client_id, "SNEAKYDEV").await;
        let other_code = other["device_code"].as_str().unwrap();
        browser
            .goto(other["verification_uri_complete"].as_str().unwrap())
            .await;
        browser.wait_for_heading("Sign in a new device").await;
        assert!(browser.body_text().await.contains("SNEAKYDEV"));
        browser.shot("device-consent-to-deny").await;
        browser.click("button[name=decision][value=deny]").await;
        browser.wait_for_heading("Sign-in denied").await;
        browser.shot("device-denied").await;
        let (status, body) = poll(&server, &client_id, other_code).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "access_denied");
    })
    .await;
}

#[tokio::test]
async fn account_pages_devices_reset_and_sign_out() {
    let server = server_with_alice().await;
    run("account", async move |browser: Browser| {
        let phone = token(&server, "OLDPHONE").await;
        let tablet = token(&server, "LOSTTABLET").await;

        browser.goto(&server.url("/account")).await;
        browser.sign_in("alice", PASSWORD).await;
        browser.wait_for_heading("Your account").await;
        let page = browser.body_text().await;
        assert!(page.contains(USER), "{page}");
        for device in ["OLDPHONE", "LOSTTABLET"] {
            assert!(page.contains(device), "device {device} not listed:\n{page}");
        }
        browser.shot("account").await;

        // Device view, then sign the lost tablet out.
        browser.click("a[href*=\"device_id=LOSTTABLET\"]").await;
        browser.wait_for_heading("Device LOSTTABLET").await;
        assert!(
            browser
                .url()
                .await
                .query()
                .unwrap_or("")
                .contains("action=org.matrix.device_view")
        );
        browser.shot("device-view").await;
        browser
            .goto(&server.url("/account?action=org.matrix.device_delete&device_id=LOSTTABLET"))
            .await;
        browser.wait_for_heading("Device LOSTTABLET").await;
        assert!(browser.body_text().await.contains("Sign this device out?"));
        browser.shot("device-delete-confirm").await;
        browser
            .click("form[action=\"/account/device/delete\"] button")
            .await;
        browser.wait_for(".notice").await;
        browser.wait_for_heading("Your account").await;
        let page = browser.body_text().await;
        assert!(page.contains("The device was signed out."), "{page}");
        assert!(!page.contains("LOSTTABLET"), "{page}");
        assert!(page.contains("OLDPHONE"), "{page}");
        browser.shot("device-signed-out").await;
        assert_error(
            &get(&server, WHOAMI, &tablet).await,
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
        );
        assert_whoami(&server, &phone, "OLDPHONE").await;

        // Replacing cross-signing keys waits for the approval given on the page.
        let first = CrossSigningKeys::new();
        let body = first.device_signing_upload_body(USER).unwrap();
        assert_eq!(
            post(&server, DEVICE_SIGNING, &phone, &body).await.0,
            StatusCode::OK
        );
        let second = CrossSigningKeys::new();
        let mut replacement = second.device_signing_upload_body(USER).unwrap();
        let (status, uia) = post(&server, DEVICE_SIGNING, &phone, &replacement).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uia}");
        let approval_url = uia["params"]["m.oauth"]["url"].as_str().unwrap();
        replacement["auth"] = json!({ "type": "m.oauth", "session": uia["session"] });
        assert_eq!(
            post(&server, DEVICE_SIGNING, &phone, &replacement).await.0,
            StatusCode::UNAUTHORIZED,
            "not approved yet"
        );
        browser.goto(approval_url).await;
        browser.wait_for_heading("Reset cross-signing keys").await;
        browser.shot("cross-signing-reset").await;
        browser
            .click("form[action=\"/account/cross-signing-reset\"] button")
            .await;
        browser.wait_for(".notice").await;
        assert!(
            browser
                .body_text()
                .await
                .contains("may replace your cross-signing keys")
        );
        browser.shot("cross-signing-reset-allowed").await;
        let (status, body) = post(&server, DEVICE_SIGNING, &phone, &replacement).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, published) = post(
            &server,
            "/_matrix/client/v3/keys/query",
            &phone,
            &json!({ "device_keys": { USER: [] } }),
        )
        .await;
        assert_eq!(
            mxqr_keys::cross_signing_public_key(
                &published["master_keys"][USER],
                USER,
                KeyUsage::Master
            )
            .unwrap(),
            second.public_keys().master
        );

        // Sign out ends the session on the server, not just the cookie.
        browser.goto(&server.url("/account")).await;
        browser.wait_for_heading("Your account").await;
        let session = browser
            .client
            .get_named_cookie("mxqr_session")
            .await
            .expect("a session cookie")
            .value()
            .to_owned();
        browser.click("form[action=\"/logout\"] button").await;
        browser.wait_for_heading("Sign in to").await;
        browser.shot("signed-out").await;
        assert!(
            browser
                .client
                .get_named_cookie("mxqr_session")
                .await
                .is_err()
        );
        browser.goto(&server.url("/account")).await;
        browser
            .wait_for_url("the sign-in page", |u| u.path() == "/login")
            .await;
        browser.wait_for("#username").await;
        let replayed = server
            .http
            .get(server.url("/account"))
            .header("cookie", format!("mxqr_session={session}"))
            .send()
            .await
            .unwrap();
        assert_eq!(replayed.status(), StatusCode::SEE_OTHER);
        assert!(
            mxqr_testkit::oauth::location(&replayed).starts_with("/login"),
            "the old session cookie still signs in"
        );
    })
    .await;
}

#[tokio::test]
async fn cookies_csrf_and_framing_protections() {
    let server = server_with_alice().await;
    let target = server.url("/logout");
    // A page on another site (localhost vs 127.0.0.1) posting to the sign-out form.
    let foreign = format!(
        "<!DOCTYPE html><title>Win a prize</title><h1>Win a prize</h1>\
         <form method=\"post\" action=\"{target}\"><input type=\"hidden\" name=\"csrf\" \
         value=\"{}\"><button type=\"submit\" id=\"go\">Claim</button></form>",
        "a".repeat(43)
    );
    run("security", async move |browser: Browser| {
        let site = Loopback::start(vec![("/prize".to_owned(), foreign)]).await;

        browser.goto(&server.url("/login")).await;
        browser.sign_in("alice", PASSWORD).await;
        browser.wait_for_heading("Your account").await;
        browser.shot("account").await;
        for name in ["mxqr_session", "mxqr_csrf"] {
            let cookie = browser
                .client
                .get_named_cookie(name)
                .await
                .unwrap_or_else(|e| panic!("no {name} cookie: {e}"));
            assert_eq!(cookie.http_only(), Some(true), "{name} must be HttpOnly");
            assert!(
                cookie.same_site().is_some_and(|s| s.is_lax()),
                "{name} must be SameSite=Lax"
            );
            assert_eq!(cookie.path(), Some("/"), "{name} path");
        }

        // A sign-out form whose CSRF token was tampered with is refused; still signed in.
        browser
            .client
            .execute(
                "document.querySelector('form[action=\"/logout\"] input[name=csrf]').value = \
                 'x'.repeat(43);",
                Vec::new(),
            )
            .await
            .unwrap();
        browser.click("form[action=\"/logout\"] button").await;
        browser.wait_for_heading("Something went wrong").await;
        assert!(browser.body_text().await.contains("the form expired"));
        browser.shot("csrf-wrong").await;

        // The code entry form without its CSRF field is refused too.
        browser.goto(&server.url("/link")).await;
        browser.wait_for_heading("Sign in a device").await;
        browser.shot("link-code-entry").await;
        browser
            .client
            .execute(
                "document.querySelector('input[name=csrf]').remove();",
                Vec::new(),
            )
            .await
            .unwrap();
        browser.type_into("#code", "WDJB-MJHT").await;
        browser
            .click("form[action=\"/link\"] button[type=submit]")
            .await;
        browser.wait_for_heading("Something went wrong").await;
        assert!(browser.body_text().await.contains("the form expired"));
        browser.shot("csrf-missing").await;

        // A foreign site's form cannot sign the user out.
        browser
            .goto(&format!("http://localhost:{}/prize", site.port))
            .await;
        browser.wait_for_heading("Win a prize").await;
        browser.shot("foreign-site").await;
        browser.click("#go").await;
        browser.wait_for_heading("Something went wrong").await;
        browser.shot("cross-site-post").await;

        browser.goto(&server.url("/account")).await;
        browser.wait_for_heading("Your account").await;
        browser.shot("still-signed-in").await;

        // Every page, signed in or not, forbids framing and loads nothing from elsewhere.
        let session = browser
            .client
            .get_named_cookie("mxqr_session")
            .await
            .expect("a session cookie")
            .value()
            .to_owned();
        for (path, signed_in, status) in [
            ("/login", false, StatusCode::OK),
            ("/link", true, StatusCode::OK),
            ("/account", true, StatusCode::OK),
            (
                "/account?action=org.matrix.cross_signing_reset",
                true,
                StatusCode::OK,
            ),
            ("/oauth2/authorize", true, StatusCode::BAD_REQUEST),
        ] {
            let mut request = server.http.get(server.url(path));
            if signed_in {
                request = request.header("cookie", format!("mxqr_session={session}"));
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), status, "{path}");
            let headers = response.headers();
            let csp = headers["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
            assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
            assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        }
    })
    .await;
}

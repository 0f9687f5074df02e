//! Account pages (account_management_uri), self-registration with `prompt=create`, sign-out.

mod oauth_support;

use mxqr_server::db::Grant;
use oauth_support::*;
use reqwest::StatusCode;

async fn issue(server: &OAuthServer, device: &str) -> String {
    let minted = server.oauth.mint();
    let grant = Grant {
        localpart: "alice".into(),
        device_id: device.into(),
        client_id: None,
        scope: scope(device),
    };
    server
        .db()
        .issue_session(&grant, &minted.stored, server.oauth.now_ms())
        .await
        .unwrap();
    minted.access_token
}

#[tokio::test]
async fn devices_list_view_and_sign_out() {
    let server = OAuthServer::start().await;
    server.add_user("alice").await;
    let phone = issue(&server, "PHONE").await;
    let laptop = issue(&server, "LAPTOP").await;

    let browser = browser();
    let response = browser
        .get(server.url("/account?action=org.matrix.devices_list"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "sign-in first");
    assert!(
        location(&response)
            .starts_with("/login?next=%2Faccount%3Faction%3Dorg.matrix.devices_list")
    );
    server.login(&browser, "alice").await;

    let page = browser
        .get(server.url("/account?action=org.matrix.devices_list"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        page.headers()["content-security-policy"].to_str().unwrap(),
        "default-src 'none'; style-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("PHONE") && html.contains("LAPTOP"));
    assert!(html.contains("@alice:example.test"));

    let page = browser
        .get(server.url("/account?action=org.matrix.session_end&device_id=PHONE"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("Sign this device out?"));
    let fields = form_fields(&html, "/account/device/delete");

    // Without the CSRF token nothing happens.
    let response = browser
        .post(server.url("/account/device/delete"))
        .form(&[("device_id", "PHONE")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(server.token_valid(&phone).await);

    let response = browser
        .post(server.url("/account/device/delete"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(
        !server.token_valid(&phone).await,
        "signing a device out revokes its tokens"
    );
    assert!(server.token_valid(&laptop).await);
    assert!(
        server
            .db()
            .device("alice", "PHONE")
            .await
            .unwrap()
            .is_none()
    );

    let response = browser
        .get(server.url("/account?action=org.matrix.device_view&device_id=NOPE"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cross_signing_reset_approval_is_recorded() {
    let server = OAuthServer::start().await;
    server.add_user("alice").await;
    let browser = browser();
    server.login(&browser, "alice").await;
    assert!(
        !server
            .oauth
            .cross_signing_reset_allowed("alice")
            .await
            .unwrap()
    );
    let html = browser
        .get(server.url("/account?action=org.matrix.cross_signing_reset"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fields = form_fields(&html, "/account/cross-signing-reset");
    let response = browser
        .post(server.url("/account/cross-signing-reset"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        server
            .oauth
            .cross_signing_reset_allowed("alice")
            .await
            .unwrap()
    );
    server.clock.advance(std::time::Duration::from_secs(601));
    assert!(
        !server
            .oauth
            .cross_signing_reset_allowed("alice")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn sign_out_ends_the_browser_session() {
    let server = OAuthServer::start().await;
    server.add_user("alice").await;
    let browser = browser();
    server.login(&browser, "alice").await;
    let html = browser
        .get(server.url("/account"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fields = form_fields(&html, "/logout");
    let response = browser
        .post(server.url("/logout"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let response = browser.get(server.url("/account")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn prompt_create_registers_then_consents() {
    let server = OAuthServer::with(Options {
        registration: true,
        ..Options::default()
    })
    .await;
    let client_id = server.native_client().await;
    let browser = browser();
    let (_, challenge) = pkce();
    let query = [
        ("client_id", client_id.as_str()),
        ("redirect_uri", "com.example.app:/callback"),
        ("response_type", "code"),
        ("response_mode", "fragment"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("scope", &scope("NEWDEV")),
        ("prompt", "create"),
    ];
    let response = browser
        .get(server.url("/oauth2/authorize"))
        .query(&query)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let register = location(&response);
    assert!(register.starts_with("/register?next="), "{register}");
    let html = browser
        .get(server.url(&register))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden(&html, "csrf");
    let next = hidden(&html, "next");
    let submit = |user: &'static str, pw2: &'static str| {
        let form = vec![
            ("csrf", csrf.clone()),
            ("next", next.clone()),
            ("username", user.to_owned()),
            ("password", "long enough pw".to_owned()),
            ("password2", pw2.to_owned()),
        ];
        browser.post(server.url("/register")).form(&form).send()
    };
    assert_eq!(
        submit("Bad Name", "long enough pw").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        submit("bob", "different pw!!").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let response = submit("bob", "long enough pw").await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), next);
    let consent = browser.get(server.url(&next)).send().await.unwrap();
    assert_eq!(consent.status(), StatusCode::OK);
    assert!(consent.text().await.unwrap().contains("@bob:example.test"));
    assert_eq!(
        submit("bob", "long enough pw").await.unwrap().status(),
        StatusCode::BAD_REQUEST,
        "taken"
    );

    // Registration off: no page.
    let closed = OAuthServer::start().await;
    let response = closed
        .http
        .get(closed.url("/register"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

//! Authorization-code grant with PKCE, driven through the login and consent pages over HTTP.

use mxqr_testkit::Backend;
use std::time::Duration;

use mxqr_testkit::oauth::*;
use reqwest::{Client, StatusCode};
use serde_json::Value;

const REDIRECT: &str = "http://127.0.0.1/callback";

fn authorize_query(
    client_id: &str,
    redirect: &str,
    challenge: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut q: Vec<(String, String)> = [
        ("client_id", client_id),
        ("redirect_uri", redirect),
        ("response_type", "code"),
        ("response_mode", "query"),
        ("state", "st-123"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    q.push(("scope".into(), scope("DEVICEAAA")));
    for (k, v) in extra {
        q.retain(|(key, _)| key != k);
        if !v.is_empty() {
            q.push(((*k).to_owned(), (*v).to_owned()));
        }
    }
    q
}

async fn get_authorize(
    server: &OAuthServer,
    browser: &Client,
    query: &[(String, String)],
) -> reqwest::Response {
    browser
        .get(server.url("/oauth2/authorize"))
        .query(query)
        .send()
        .await
        .unwrap()
}

/// Signs in, consents, and returns the redirect `Location`.
async fn consent(
    server: &OAuthServer,
    browser: &Client,
    query: &[(String, String)],
    decision: &str,
) -> String {
    let page = get_authorize(server, browser, query).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Test App"),
        "consent names the client:\n{html}"
    );
    assert!(html.contains("DEVICEAAA"));
    let mut fields = form_fields(&html, "/oauth2/authorize");
    fields.push(("decision".into(), decision.into()));
    let response = browser
        .post(server.url("/oauth2/authorize"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    location(&response)
}

async fn signed_in(server: &OAuthServer) -> Client {
    server.add_user("alice").await;
    let browser = browser();
    let response = server.login(&browser, "alice").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    browser
}

async fn code_for(server: &OAuthServer, browser: &Client, client_id: &str) -> (String, String) {
    let (verifier, challenge) = pkce();
    let loc = consent(
        server,
        browser,
        &authorize_query(client_id, REDIRECT, &challenge, &[]),
        "approve",
    )
    .await;
    let params = redirect_params(&loc, false);
    assert_eq!(params["state"], "st-123");
    (params["code"].clone(), verifier)
}

async fn exchange(
    server: &OAuthServer,
    client_id: &str,
    code: &str,
    verifier: &str,
) -> (StatusCode, Value) {
    server
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ])
        .await
}

async fn login_consent_and_token_exchange(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    server.add_user("alice").await;
    let browser = browser();
    let (verifier, challenge) = pkce();
    let query = authorize_query(
        &client_id,
        "http://127.0.0.1:49152/callback",
        &challenge,
        &[],
    );

    // Not signed in: off to the login page, which comes back to the same request.
    let first = get_authorize(&server, &browser, &query).await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let login_url = location(&first);
    assert!(login_url.starts_with("/login?next="), "{login_url}");
    let page = browser.get(server.url(&login_url)).send().await.unwrap();
    let html = page.text().await.unwrap();
    let next = hidden(&html, "next");
    assert!(next.starts_with("/oauth2/authorize?"), "{next}");
    let posted = browser
        .post(server.url("/login"))
        .form(&[
            ("csrf", hidden(&html, "csrf").as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
            ("next", next.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&posted), next);

    // Loopback redirect with a run-time port matches the port-less registration.
    let loc = consent(&server, &browser, &query, "approve").await;
    assert!(loc.starts_with("http://127.0.0.1:49152/callback?"), "{loc}");
    let params = redirect_params(&loc, false);
    assert_eq!(params["state"], "st-123");
    let code = &params["code"];

    let (status, body) = server
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", &client_id),
            ("redirect_uri", "http://127.0.0.1:49152/callback"),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], scope("DEVICEAAA"));
    let access = body["access_token"].as_str().unwrap();
    assert!(access.starts_with("mxqr_at_"));
    assert!(
        body["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("mxqr_rt_")
    );
    let info = server.oauth.token_info(access).await.unwrap().unwrap();
    assert_eq!(
        (info.localpart.as_str(), info.device_id.as_str()),
        ("alice", "DEVICEAAA")
    );
    // The device exists as soon as tokens are issued.
    assert!(
        server
            .db()
            .device("alice", "DEVICEAAA")
            .await
            .unwrap()
            .is_some()
    );
}

async fn fragment_mode_private_scheme_and_denial(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;
    let (_, challenge) = pkce();
    let query = authorize_query(
        &client_id,
        "com.example.app:/callback",
        &challenge,
        &[("response_mode", "fragment")],
    );
    let loc = consent(&server, &browser, &query, "approve").await;
    assert!(loc.starts_with("com.example.app:/callback#"), "{loc}");
    assert!(redirect_params(&loc, true).contains_key("code"));

    let loc = consent(&server, &browser, &query, "deny").await;
    let params = redirect_params(&loc, true);
    assert_eq!(params["error"], "access_denied");
    assert_eq!(params["state"], "st-123");
}

async fn pkce_mismatch_and_code_single_use(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;

    // Wrong verifier: invalid_grant, and the code is spent.
    let (code, verifier) = code_for(&server, &browser, &client_id).await;
    let (wrong, _) = pkce();
    let (status, body) = exchange(&server, &client_id, &code, &wrong).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    let (status, _) = exchange(&server, &client_id, &code, &verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Reuse after success: refused, and what the first exchange issued is revoked.
    let (code, verifier) = code_for(&server, &browser, &client_id).await;
    let (status, first) = exchange(&server, &client_id, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK);
    let access = first["access_token"].as_str().unwrap();
    assert!(server.token_valid(access).await);
    let (status, body) = exchange(&server, &client_id, &code, &verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        !server.token_valid(access).await,
        "reuse revokes the issued access token"
    );
    let (status, _) = server
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", first["refresh_token"].as_str().unwrap()),
        ])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "and the refresh token");

    // Redirect URI at the token endpoint must match the authorization request.
    let (code, verifier) = code_for(&server, &browser, &client_id).await;
    let (status, body) = server
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &client_id),
            ("redirect_uri", "com.example.app:/callback"),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

async fn expired_code_is_refused(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;
    let (code, verifier) = code_for(&server, &browser, &client_id).await;
    server.clock.advance(Duration::from_secs(301));
    let (status, body) = exchange(&server, &client_id, &code, &verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

async fn request_errors_go_to_the_client_or_a_page(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;
    let (_, challenge) = pkce();

    // Untrusted redirect: an error page, never a redirect.
    for query in [
        authorize_query(&client_id, "http://127.0.0.1/elsewhere", &challenge, &[]),
        authorize_query(&client_id, "com.example.app:/other", &challenge, &[]),
        authorize_query("unknown-client", REDIRECT, &challenge, &[]),
        authorize_query(&client_id, "", &challenge, &[("redirect_uri", "")]),
    ] {
        let response = get_authorize(&server, &browser, &query).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query:?}");
        assert!(response.headers().get("location").is_none());
        assert!(response.text().await.unwrap().contains("<!DOCTYPE html>"));
    }

    // Trusted redirect: RFC 6749 error responses with the state.
    for (extra, error) in [
        (&[("code_challenge_method", "plain")][..], "invalid_request"),
        (&[("code_challenge_method", "")], "invalid_request"),
        (&[("code_challenge", "short")], "invalid_request"),
        (&[("response_type", "token")], "unsupported_response_type"),
        (&[("scope", "urn:matrix:client:api:*")], "invalid_scope"),
        (
            &[(
                "scope",
                &*format!("{} urn:matrix:client:device:B", scope("A")),
            )],
            "invalid_scope",
        ),
        (&[("response_mode", "form_post")], "invalid_request"),
    ] {
        let response = get_authorize(
            &server,
            &browser,
            &authorize_query(&client_id, REDIRECT, &challenge, extra),
        )
        .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{extra:?}");
        let params = redirect_params(&location(&response), false);
        assert_eq!(params["error"], error, "{extra:?}");
        assert_eq!(params["state"], "st-123");
    }

    // Unstable scope spellings are accepted.
    let response = get_authorize(
        &server,
        &browser,
        &authorize_query(
            &client_id,
            REDIRECT,
            &challenge,
            &[("scope", &unstable_scope("K+/="))],
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

async fn csrf_missing_or_wrong_is_refused(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;
    let (_, challenge) = pkce();
    let page = get_authorize(
        &server,
        &browser,
        &authorize_query(&client_id, REDIRECT, &challenge, &[]),
    )
    .await;
    let html = page.text().await.unwrap();
    let fields = form_fields(&html, "/oauth2/authorize");
    for csrf in [None, Some("x".repeat(43))] {
        let mut posted: Vec<(String, String)> = fields
            .iter()
            .filter(|(k, _)| k != "csrf")
            .cloned()
            .collect();
        if let Some(c) = csrf {
            posted.push(("csrf".into(), c));
        }
        posted.push(("decision".into(), "approve".into()));
        let response = browser
            .post(server.url("/oauth2/authorize"))
            .form(&posted)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.headers().get("location").is_none());
    }
    // Login without the CSRF cookie (a fresh client) is refused too.
    let response = api_client()
        .post(server.url("/login"))
        .form(&[
            ("csrf", "x".repeat(43).as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

async fn locked_user_cannot_log_in_and_loses_sessions(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;
    let (code, verifier) = code_for(&server, &browser, &client_id).await;
    let (_, tokens) = exchange(&server, &client_id, &code, &verifier).await;
    let access = tokens["access_token"].as_str().unwrap();
    assert!(server.token_valid(access).await);

    server
        .db()
        .set_locked("alice", true, server.oauth.now_ms())
        .await
        .unwrap();
    assert!(!server.token_valid(access).await);
    let response = server.login(&mxqr_testkit::oauth::browser(), "alice").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The existing browser session ended as well.
    let response = browser.get(server.url("/account")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);

    server
        .db()
        .set_locked("alice", false, server.oauth.now_ms())
        .await
        .unwrap();
    let response = server.login(&mxqr_testkit::oauth::browser(), "alice").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    // Wrong password.
    let fresh = mxqr_testkit::oauth::browser();
    let page = fresh
        .get(server.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let response = fresh
        .post(server.url("/login"))
        .form(&[
            ("csrf", hidden(&page, "csrf").as_str()),
            ("username", "alice"),
            ("password", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

async fn prompt_none_answers_without_a_page(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let (_, challenge) = pkce();
    let silent = |extra: &[(&str, &str)]| {
        let mut all = vec![("prompt", "none")];
        all.extend_from_slice(extra);
        authorize_query(&client_id, REDIRECT, &challenge, &all)
    };

    // Nobody signed in: login_required, back at the client, not the sign-in page.
    let anonymous = browser();
    let response = get_authorize(&server, &anonymous, &silent(&[])).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let loc = location(&response);
    assert!(loc.starts_with(REDIRECT), "{loc}");
    let params = redirect_params(&loc, false);
    assert_eq!(params["error"], "login_required");
    assert_eq!(params["state"], "st-123");

    // Signed in: consent is asked every time, so consent_required; no code.
    let signed_in = signed_in(&server).await;
    let response = get_authorize(&server, &signed_in, &silent(&[])).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let params = redirect_params(&location(&response), false);
    assert_eq!(params["error"], "consent_required");
    assert_eq!(params["state"], "st-123");
    assert!(!params.contains_key("code"));

    // The answer follows response_mode.
    let response = get_authorize(
        &server,
        &signed_in,
        &silent(&[("response_mode", "fragment")]),
    )
    .await;
    let params = redirect_params(&location(&response), true);
    assert_eq!(params["error"], "consent_required");

    // `none` with another value is a malformed request (OIDC Core §3.1.2.1).
    let response = get_authorize(&server, &signed_in, &silent(&[("prompt", "none login")])).await;
    let params = redirect_params(&location(&response), false);
    assert_eq!(params["error"], "invalid_request");

    // An unregistered redirect URI still gets a page, never a redirect.
    let query = authorize_query(
        &client_id,
        "http://127.0.0.1/elsewhere",
        &challenge,
        &[("prompt", "none")],
    );
    let response = get_authorize(&server, &anonymous, &query).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("location").is_none());

    // Without prompt=none the same signed-in request shows the consent page.
    let response = get_authorize(
        &server,
        &signed_in,
        &authorize_query(&client_id, REDIRECT, &challenge, &[]),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// The Matrix spec's loopback redirect URIs (`localhost`, `127.0.0.1`, `[::1]`) are registered
/// without a port and match any port at `/oauth2/authorize` (RFC 8252 §7.3), host and path
/// still exact.
async fn loopback_redirects_match_any_port_on_all_three_hosts(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let response = server
        .register(serde_json::json!({
            "client_name": "Test App",
            "client_uri": "https://app.example.com/",
            "application_type": "native",
            "redirect_uris": [
                "http://localhost/callback",
                "http://127.0.0.1/callback",
                "http://[::1]/callback",
            ],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let client_id = response.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let browser = signed_in(&server).await;
    for host in ["localhost", "127.0.0.1", "[::1]"] {
        let redirect = format!("http://{host}:50123/callback");
        let (verifier, challenge) = pkce();
        let query = authorize_query(&client_id, &redirect, &challenge, &[]);
        let loc = consent(&server, &browser, &query, "approve").await;
        assert!(loc.starts_with(&format!("{redirect}?")), "{loc}");
        let code = redirect_params(&loc, false)["code"].clone();
        let (status, body) = server
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("client_id", &client_id),
                ("redirect_uri", &redirect),
                ("code_verifier", &verifier),
            ])
            .await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
        // Only the port may differ: another path or scheme is not registered.
        for wrong in [
            format!("http://{host}:50123/other"),
            format!("https://{host}:50123/callback"),
        ] {
            let query = authorize_query(&client_id, &wrong, &challenge, &[]);
            let page = get_authorize(&server, &browser, &query).await;
            assert_eq!(page.status(), StatusCode::BAD_REQUEST, "{wrong}");
        }
    }
}

/// A scope naming a device ID the user already has signs the application in as that device
/// (its keys, its messages): the consent page says so, for either scope spelling.
async fn consent_warns_when_the_device_id_exists(backend: Backend) {
    const WARNING: &str = "already has a device with the ID";
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;
    let (_, challenge) = pkce();
    let page = |scope: String| {
        let query = authorize_query(&client_id, REDIRECT, &challenge, &[("scope", &scope)]);
        let (server, browser) = (&server, &browser);
        async move {
            let response = get_authorize(server, browser, &query).await;
            assert_eq!(response.status(), StatusCode::OK);
            response.text().await.unwrap()
        }
    };
    let html = page(scope("DEVICEAAA")).await;
    assert!(!html.contains(WARNING), "new device, no warning:\n{html}");

    let minted = server.oauth.mint();
    let grant = mxqr_testkit::api::accounts::Grant {
        localpart: "alice".into(),
        device_id: "DEVICEAAA".into(),
        client_id: None,
        scope: scope("DEVICEAAA"),
    };
    server
        .db()
        .issue_session(&grant, &minted.stored, server.oauth.now_ms())
        .await
        .unwrap();
    server
        .db()
        .set_device_display_name("alice", "DEVICEAAA", Some("Alice's laptop"))
        .await
        .unwrap();
    for requested in [scope("DEVICEAAA"), unstable_scope("DEVICEAAA")] {
        let html = page(requested).await;
        assert!(html.contains(WARNING), "{html}");
        assert!(html.contains("Alice&#x27;s laptop"), "{html}");
    }
    // Another user's device of that ID is not this user's concern.
    let html = page(scope("DEVICEBBB")).await;
    assert!(!html.contains(WARNING));
}

mxqr_testkit::backend_tests! {
    login_consent_and_token_exchange,
    fragment_mode_private_scheme_and_denial,
    pkce_mismatch_and_code_single_use,
    expired_code_is_refused,
    request_errors_go_to_the_client_or_a_page,
    csrf_missing_or_wrong_is_refused,
    locked_user_cannot_log_in_and_loses_sessions,
    prompt_none_answers_without_a_page,
    loopback_redirects_match_any_port_on_all_three_hosts,
    consent_warns_when_the_device_id_exists,
}

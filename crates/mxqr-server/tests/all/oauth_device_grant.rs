//! Device authorization grant (RFC 8628) with `/link` code entry and consent over HTTP.

use mxqr_testkit::Backend;
use std::time::Duration;

use mxqr_testkit::oauth::*;
use reqwest::{Client, StatusCode};
use serde_json::Value;

const DEVICE_ID: &str = "abcdEFGH+/ijklMNOP0123456789abcdEFGHijklMNO";

async fn start_grant(server: &OAuthServer, client_id: &str, scope: &str) -> (StatusCode, Value) {
    let response = server
        .http
        .post(server.url("/oauth2/device"))
        .header("user-agent", "TestDevice/1.0")
        .form(&[("client_id", client_id), ("scope", scope)])
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn poll(server: &OAuthServer, client_id: &str, device_code: &str) -> (StatusCode, Value) {
    server
        .token(&[
            ("grant_type", DEVICE_GRANT),
            ("device_code", device_code),
            ("client_id", client_id),
        ])
        .await
}

async fn signed_in(server: &OAuthServer) -> Client {
    server.add_user("alice").await;
    let browser = browser();
    assert_eq!(
        server.login(&browser, "alice").await.status(),
        StatusCode::SEE_OTHER
    );
    browser
}

/// Opens `/link`, types `typed`, and returns the consent page.
async fn enter_code(server: &OAuthServer, browser: &Client, typed: &str) -> (StatusCode, String) {
    let page = browser.get(server.url("/link")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let response = browser
        .post(server.url("/link"))
        .form(&[("csrf", hidden(&html, "csrf").as_str()), ("code", typed)])
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn decide(
    server: &OAuthServer,
    browser: &Client,
    consent: &str,
    decision: &str,
    confirm: bool,
) -> (StatusCode, String) {
    let mut fields = form_fields(consent, "/link");
    fields.push(("decision".into(), decision.into()));
    if confirm {
        fields.push(("confirm".into(), "yes".into()));
    }
    let response = browser
        .post(server.url("/link"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn device_grant_happy_path(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;
    let (status, grant) = start_grant(&server, &client_id, &unstable_scope(DEVICE_ID)).await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    let user_code = grant["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 9);
    assert_eq!(&user_code[4..5], "-");
    assert!(
        user_code
            .chars()
            .filter(|c| *c != '-')
            .all(|c| "BCDFGHJKLMNPQRSTVWXZ".contains(c))
    );
    assert_eq!(grant["verification_uri"], server.url("/link"));
    assert_eq!(
        grant["verification_uri_complete"],
        format!(
            "{}?code={}",
            server.url("/link"),
            user_code.replace('-', "")
        )
    );
    assert_eq!(grant["expires_in"], 1200);
    assert_eq!(grant["interval"], 5);
    let device_code = grant["device_code"].as_str().unwrap();
    assert!(device_code.len() >= 22, "at least 128 bits");

    // First poll immediately: pending.
    let (status, body) = poll(&server, &client_id, device_code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("authorization_pending"))
    );
    assert!(
        server
            .db()
            .device("alice", DEVICE_ID)
            .await
            .unwrap()
            .is_none()
    );

    // The person types the code in lower case with spaces; the page shows what is asking.
    let typed = format!(" {} ", user_code.to_lowercase().replace('-', " "));
    let (status, consent) = enter_code(&server, &browser, &typed).await;
    assert_eq!(status, StatusCode::OK, "{consent}");
    let unescaped = consent.replace("&#x2f;", "/");
    for shown in [
        "Test App",
        "https://app.example.com/",
        "127.0.0.1",
        "TestDevice/1.0",
        user_code,
        "@alice:example.test",
    ] {
        assert!(
            unescaped.contains(shown),
            "consent shows {shown}:\n{consent}"
        );
    }
    assert!(
        consent.contains("abcdEFGH+&#x2f;ijkl"),
        "device ID shown (escaped)"
    );
    assert!(consent.contains("type=\"checkbox\" name=\"confirm\""));

    // Approval without the confirmation box is not taken.
    let (status, again) = decide(&server, &browser, &consent, "approve", false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(again.contains("Tick the box"));
    let (status, _) = poll(&server, &client_id, device_code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, done) = decide(&server, &browser, &consent, "approve", true).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert!(done.contains("Device signed in"));

    server.clock.advance(Duration::from_secs(10));
    let (status, tokens) = poll(&server, &client_id, device_code).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], unstable_scope(DEVICE_ID));
    assert!(tokens["expires_in"].as_u64().unwrap() > 0);
    assert!(tokens["refresh_token"].is_string());
    let info = server
        .oauth
        .token_info(tokens["access_token"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.device_id, DEVICE_ID);
    assert!(
        server
            .db()
            .device("alice", DEVICE_ID)
            .await
            .unwrap()
            .is_some(),
        "device created at issuance"
    );

    // Redeemed once: later polls get nothing.
    let (status, body) = poll(&server, &client_id, device_code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

async fn verification_uri_complete_needs_login_then_shows_consent(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    server.add_user("alice").await;
    let (_, grant) = start_grant(&server, &client_id, &scope("DEV1")).await;
    let complete = grant["verification_uri_complete"].as_str().unwrap();
    let browser = browser();
    let response = browser.get(complete).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let login = location(&response);
    assert!(
        login.starts_with("/login?next=%2Flink%3Fcode%3D"),
        "{login}"
    );
    let page = browser
        .get(server.url(&login))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let next = hidden(&page, "next");
    let response = browser
        .post(server.url("/login"))
        .form(&[
            ("csrf", hidden(&page, "csrf").as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
            ("next", &next),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(location(&response), next);
    let consent = browser.get(server.url(&next)).send().await.unwrap();
    assert_eq!(consent.status(), StatusCode::OK);
    let html = consent.text().await.unwrap();
    let (status, _) = decide(&server, &browser, &html, "deny", false).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = poll(&server, &client_id, grant["device_code"].as_str().unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("access_denied"))
    );
}

async fn slow_down_and_expiry(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let (_, grant) = start_grant(&server, &client_id, &scope("DEV1")).await;
    let code = grant["device_code"].as_str().unwrap();
    let (_, body) = poll(&server, &client_id, code).await;
    assert_eq!(body["error"], "authorization_pending");
    let (status, body) = poll(&server, &client_id, code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("slow_down"))
    );
    // The interval is now 10 s: 6 s later is still too early, 11 s later is fine.
    server.clock.advance(Duration::from_secs(6));
    let (_, body) = poll(&server, &client_id, code).await;
    assert_eq!(body["error"], "slow_down");
    server.clock.advance(Duration::from_secs(16));
    let (_, body) = poll(&server, &client_id, code).await;
    assert_eq!(body["error"], "authorization_pending");

    server.clock.advance(Duration::from_secs(1200));
    let (status, body) = poll(&server, &client_id, code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("expired_token"))
    );
}

async fn concurrent_polls_redeem_once(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;
    let (_, grant) = start_grant(&server, &client_id, &scope("DEVCONC")).await;
    let (_, consent) = enter_code(&server, &browser, grant["user_code"].as_str().unwrap()).await;
    let (status, _) = decide(&server, &browser, &consent, "approve", true).await;
    assert_eq!(status, StatusCode::OK);
    let code = grant["device_code"].as_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let http = api_client();
        let url = server.url("/oauth2/token");
        let (code, client_id) = (code.clone(), client_id.clone());
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .form(&[
                    ("grant_type", DEVICE_GRANT),
                    ("device_code", &code),
                    ("client_id", &client_id),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut ok = 0;
    for task in tasks {
        let status = task.await.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
            "{status}"
        );
        ok += usize::from(status == StatusCode::OK);
    }
    assert_eq!(ok, 1, "exactly one poll gets tokens");
}

async fn request_errors(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    for bad in [
        "urn:matrix:client:api:*".to_owned(),
        "urn:matrix:client:device:X".to_owned(),
        format!("{} urn:matrix:client:device:Y", scope("X")),
        "urn:matrix:client:api:* urn:matrix:org.matrix.msc2967.client:device:X".to_owned(),
    ] {
        let (status, body) = start_grant(&server, &client_id, &bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_scope")),
            "{bad}"
        );
    }
    let (status, body) = start_grant(&server, "nope", &scope("X")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    // A client that did not register the device grant.
    let web = server
        .register(serde_json::json!({"client_uri": "https://web.example.com/", "redirect_uris": ["https://web.example.com/cb"]}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let (status, body) =
        start_grant(&server, web["client_id"].as_str().unwrap(), &scope("X")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unauthorized_client"))
    );
    // Unknown device codes and another client's device code.
    let (status, body) = poll(&server, &client_id, "mxqr_dc_nope").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (_, grant) = start_grant(&server, &client_id, &scope("X")).await;
    let (status, body) = poll(
        &server,
        web["client_id"].as_str().unwrap(),
        grant["device_code"].as_str().unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // Missing parameters.
    let (status, body) = server.token(&[("grant_type", DEVICE_GRANT)]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (status, body) = server.token(&[("grant_type", "password")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
    );
}

async fn per_grant_lookup_cap_and_wrong_codes(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        Options {
            max_lookups: 2,
            ..Options::default()
        },
    )
    .await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;
    let (_, grant) = start_grant(&server, &client_id, &scope("CAP")).await;
    let user_code = grant["user_code"].as_str().unwrap();
    let (status, page) = enter_code(&server, &browser, "BBBB-BBBB").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("No sign-in is waiting"));
    let (status, _) = enter_code(&server, &browser, "AEIO-UUUU").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for _ in 0..2 {
        let (status, _) = enter_code(&server, &browser, user_code).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, page) = enter_code(&server, &browser, user_code).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("tried too many times"));
    let (_, body) = poll(&server, &client_id, grant["device_code"].as_str().unwrap()).await;
    assert_eq!(body["error"], "access_denied");
}

async fn per_address_limits(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        Options {
            rate_limit: true,
            ..Options::default()
        },
    )
    .await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;
    // Successful sign-ins are not limited, only failures are.
    for _ in 0..7 {
        assert_eq!(
            server
                .login(&mxqr_testkit::oauth::browser(), "alice")
                .await
                .status(),
            StatusCode::SEE_OTHER
        );
    }
    let mut limited = false;
    for _ in 0..10 {
        let (status, _) = enter_code(&server, &browser, "BBBB-CCCC").await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    assert!(limited, "code entry is limited per address");

    let mut statuses = Vec::new();
    for i in 0..8 {
        let fake = format!("mxqr_dc_{i}");
        let (status, body) = poll(&server, &client_id, &fake).await;
        statuses.push((status, body["error"].as_str().unwrap().to_owned()));
    }
    assert_eq!(
        statuses[0],
        (StatusCode::BAD_REQUEST, "invalid_grant".to_owned())
    );
    assert_eq!(
        statuses[7],
        (StatusCode::TOO_MANY_REQUESTS, "slow_down".to_owned())
    );
}

/// A poll of a pending grant is held open (4 s by default) and answers with tokens as soon
/// as the person approves, not one interval later; without a decision it still ends in
/// `authorization_pending` before the next poll is due.
async fn a_held_poll_answers_at_the_approval(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;
    let (_, grant) = start_grant(&server, &client_id, &scope("HELD1")).await;
    let device_code = grant["device_code"].as_str().unwrap().to_owned();
    let user_code = grant["user_code"].as_str().unwrap().to_owned();

    let started = std::time::Instant::now();
    let (status, body) = poll(&server, &client_id, &device_code).await;
    let held = started.elapsed();
    assert_eq!(body["error"], "authorization_pending", "{status} {body}");
    assert!(
        held >= Duration::from_millis(3_500) && held < Duration::from_millis(4_900),
        "held {held:?}"
    );

    // The next poll (one interval later) is held; the person approves meanwhile.
    server.clock.advance(Duration::from_secs(5));
    let polling = {
        let (server, client_id, device_code) = (&server, &client_id, &device_code);
        async move {
            let started = std::time::Instant::now();
            let answer = poll(server, client_id, device_code).await;
            (answer, started.elapsed())
        }
    };
    let approving = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, consent) = enter_code(&server, &browser, &user_code).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = decide(&server, &browser, &consent, "approve", true).await;
        assert_eq!(status, StatusCode::OK);
    };
    let (((status, body), took), ()) = tokio::join!(polling, approving);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["access_token"].is_string(), "{body}");
    assert!(
        took < Duration::from_millis(2_000),
        "answered after {took:?}"
    );
}

/// Pending device grants are capped per address (10) and per client: past a cap, 429
/// `temporarily_unavailable` with `Retry-After` until the oldest counted grant expires.
/// Decided grants no longer count.
async fn pending_grants_are_capped_per_address_and_per_client(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        Options {
            rate_limit: true,
            device_grants_per_client: Some(12),
            ..Options::default()
        },
    )
    .await;
    let client_id = server.native_client().await;
    let mut codes = Vec::new();
    for i in 0..10 {
        let (status, body) = start_grant(&server, &client_id, &scope(&format!("DEV{i}"))).await;
        assert_eq!(status, StatusCode::OK, "{i}: {body}");
        codes.push(body["user_code"].as_str().unwrap().to_owned());
    }
    let response = server
        .http
        .post(server.url("/oauth2/device"))
        .form(&[
            ("client_id", client_id.as_str()),
            ("scope", &scope("DEV10")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Until the oldest pending grant expires (device codes live 1200 s).
    assert!((1100..=1200).contains(&wait), "Retry-After {wait}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");

    // A decided grant is no longer pending: room for one more.
    let browser = signed_in(&server).await;
    let (status, consent) = enter_code(&server, &browser, &codes[0]).await;
    assert_eq!(status, StatusCode::OK);
    decide(&server, &browser, &consent, "deny", false).await;
    let (status, _) = start_grant(&server, &client_id, &scope("DEV10")).await;
    assert_eq!(status, StatusCode::OK);

    // Another address has its own cap, up to the client's (12 pending at most).
    let other = api_client_from("127.0.0.3".parse().unwrap());
    let from_other = |device: &'static str| {
        let (other, server, client_id) = (&other, &server, &client_id);
        async move {
            other
                .post(server.url("/oauth2/device"))
                .form(&[("client_id", client_id.as_str()), ("scope", &scope(device))])
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(from_other("DEV11").await.status(), StatusCode::OK);
    assert_eq!(from_other("DEV12").await.status(), StatusCode::OK);
    let full = from_other("DEV13").await;
    assert_eq!(full.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        full.json::<Value>().await.unwrap()["error"],
        "temporarily_unavailable"
    );
    // Expired grants no longer count.
    server.clock.advance(Duration::from_secs(1201));
    assert_eq!(from_other("DEV14").await.status(), StatusCode::OK);
    let (status, _) = start_grant(&server, &client_id, &scope("DEV15")).await;
    assert_eq!(status, StatusCode::OK);
}

/// `/oauth2/device` draws on the same per-address creation bucket as registration.
async fn device_authorization_is_charged_to_the_creation_bucket(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        Options {
            rate_limit: true,
            ..Options::default()
        },
    )
    .await;
    let client_id = server.native_client().await;
    let mut statuses = Vec::new();
    for i in 0..25 {
        let (status, _) = start_grant(&server, &client_id, &scope(&format!("DEV{i}"))).await;
        statuses.push(status);
        if status == StatusCode::OK {
            // Decided at once, so the pending cap stays out of the way.
            server.clock.advance(Duration::from_secs(1201));
        }
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    // 20 in the burst, one of them spent on the registration.
    assert!((19..=21).contains(&ok), "{statuses:?}");
    assert_eq!(statuses[24], StatusCode::TOO_MANY_REQUESTS);
}

/// The device-grant consent page warns when the requested device ID already exists for the
/// signed-in user: approving signs the new device in as that one.
async fn device_consent_warns_when_the_device_id_exists(backend: Backend) {
    const WARNING: &str = "already has a device with the ID";
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let browser = signed_in(&server).await;
    let (_, body) = start_grant(&server, &client_id, &scope("FRESHDEV")).await;
    let (status, html) = enter_code(&server, &browser, body["user_code"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains(WARNING), "{html}");

    let minted = server.oauth.mint();
    let grant = mxqr_testkit::api::accounts::Grant {
        localpart: "alice".into(),
        device_id: DEVICE_ID.into(),
        client_id: None,
        scope: scope(DEVICE_ID),
    };
    server
        .db()
        .issue_session(&grant, &minted.stored, server.oauth.now_ms())
        .await
        .unwrap();
    for requested in [scope(DEVICE_ID), unstable_scope(DEVICE_ID)] {
        let (_, body) = start_grant(&server, &client_id, &requested).await;
        let (status, html) =
            enter_code(&server, &browser, body["user_code"].as_str().unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains(WARNING), "{html}");
    }
}

/// Code guessing on `/link` and password guessing have separate budgets per address, so
/// neither can lock the other out for everyone behind one NAT address.
async fn link_codes_and_passwords_have_separate_budgets(backend: Backend) {
    let options = || Options {
        rate_limit: true,
        ..Options::default()
    };
    let wrong_password = |server: &OAuthServer| {
        let browser = mxqr_testkit::oauth::browser();
        let page = server.url("/login");
        async move {
            let html = browser
                .get(&page)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            browser
                .post(&page)
                .form(&[
                    ("csrf", hidden(&html, "csrf").as_str()),
                    ("username", "alice"),
                    ("password", "not the password"),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }
    };

    // Wrong codes until refused; signing in with the right password still works.
    let server = OAuthServer::with(backend, options()).await;
    let browser = signed_in(&server).await;
    let mut limited = false;
    for _ in 0..10 {
        let (status, _) = enter_code(&server, &browser, "BBBB-CCCC").await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    assert!(limited);
    assert_eq!(
        server
            .login(&mxqr_testkit::oauth::browser(), "alice")
            .await
            .status(),
        StatusCode::SEE_OTHER
    );

    // Wrong passwords until refused; code entry still works.
    let server = OAuthServer::with(backend, options()).await;
    let browser = signed_in(&server).await;
    let mut limited = false;
    for _ in 0..10 {
        let status = wrong_password(&server).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert!(limited);
    let (status, _) = enter_code(&server, &browser, "BBBB-CCCC").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Wrong codes sent all at once from one address stop at the budget (5 in these tests):
/// each entry is counted before the lookup, not after.
async fn parallel_wrong_codes_are_counted_before_the_lookup(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        Options {
            rate_limit: true,
            ..Options::default()
        },
    )
    .await;
    let browser = signed_in(&server).await;
    let page = browser.get(server.url("/link")).send().await.unwrap();
    let csrf = hidden(&page.text().await.unwrap(), "csrf");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request = browser
            .post(server.url("/link"))
            .form(&[("csrf", csrf.as_str()), ("code", "BBBB-CCCC")]);
        tasks.spawn(async move { request.send().await.unwrap().status() });
    }
    let mut looked_up = 0;
    while let Some(status) = tasks.join_next().await {
        match status.unwrap() {
            StatusCode::NOT_FOUND => looked_up += 1,
            status => assert_eq!(status, StatusCode::TOO_MANY_REQUESTS),
        }
    }
    assert!(looked_up <= 5, "{looked_up} wrong codes were looked up");
}

mxqr_testkit::backend_tests! {
    device_grant_happy_path,
    verification_uri_complete_needs_login_then_shows_consent,
    slow_down_and_expiry,
    concurrent_polls_redeem_once,
    request_errors,
    per_grant_lookup_cap_and_wrong_codes,
    per_address_limits,
    a_held_poll_answers_at_the_approval,
    pending_grants_are_capped_per_address_and_per_client,
    device_authorization_is_charged_to_the_creation_bucket,
    device_consent_warns_when_the_device_id_exists,
    link_codes_and_passwords_have_separate_budgets,
    parallel_wrong_codes_are_counted_before_the_lookup,
}

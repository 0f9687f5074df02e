//! Account pages (account_management_uri), self-registration with `prompt=create`, sign-out.

use mxqr_testkit::Backend;
use mxqr_testkit::api::accounts::Grant;
use mxqr_testkit::oauth::*;
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

async fn devices_list_view_and_sign_out(backend: Backend) {
    let server = OAuthServer::start(backend).await;
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

async fn cross_signing_reset_approval_is_recorded(backend: Backend) {
    let server = OAuthServer::start(backend).await;
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

async fn sign_out_ends_the_browser_session(backend: Backend) {
    let server = OAuthServer::start(backend).await;
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

async fn prompt_create_registers_then_consents(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        Options {
            registration: true,
            ..Options::default()
        },
    )
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
    // The form above belonged to the signed-out browser (its CSRF token is bound to the
    // browser session): a fresh one tries the name again.
    let other = mxqr_testkit::oauth::browser();
    let html = other
        .get(server.url("/register"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let response = other
        .post(server.url("/register"))
        .form(&[
            ("csrf", hidden(&html, "csrf").as_str()),
            ("username", "bob"),
            ("password", "long enough pw"),
            ("password2", "long enough pw"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "taken");

    // Registration off: no page.
    let closed = OAuthServer::start(backend).await;
    let response = closed
        .http
        .get(closed.url("/register"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// Addresses a `next` parameter must never lead to: other sites (with tabs, newlines, CRs or
/// backslashes that browsers strip or turn into `/`, raw or percent-encoded), absolute and
/// `javascript:` URLs, and paths outside the pages people return to after signing in.
const HOSTILE_NEXT: &[&str] = &[
    "/\t/evil.example",
    "/\n/x",
    "/\r/x",
    "/\\evil.example",
    "\\/evil.example",
    "\\\\evil.example",
    "//evil.example",
    "///evil.example",
    "/\\/evil.example",
    "/%09/evil.example",
    "/%0a/x",
    "/%0A/x",
    "/%0d/x",
    "/%5c/evil.example",
    "/%5C%5Cevil.example",
    "/%2f/evil.example",
    "/%2F%2Fevil.example",
    "%2F%2Fevil.example",
    "/%2e%2e/evil.example",
    "http://evil.example/",
    "https://evil.example/link",
    "https:/evil.example",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "/link/..//evil.example",
    "/link%2f..%2f..%2fevil.example",
    "/account\t",
    "/link?code=\n",
    " /link",
    "/oauth2/authorize\\@evil.example",
    "/login",
    "/",
    "",
];

/// `next` values the server itself produces, kept as they are.
const OWN_NEXT: &[&str] = &[
    "/link?code=BCDFGHJK",
    "/link",
    "/oauth2/authorize?client_id=abc&scope=urn%3Amatrix%3Aclient%3Aapi%3A*%20x&state=a%2Fb",
    "/account?action=org.matrix.devices_list",
];

fn expected_next(next: &str) -> &str {
    if OWN_NEXT.contains(&next) {
        next
    } else {
        "/account"
    }
}

async fn next_only_leads_to_own_pages(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        Options {
            registration: true,
            ..Options::default()
        },
    )
    .await;
    server.add_user("alice").await;
    for (i, next) in HOSTILE_NEXT.iter().chain(OWN_NEXT).enumerate() {
        let want = expected_next(next);
        for page in ["/login", "/register"] {
            let html = server
                .http
                .get(server.url(page))
                .query(&[("next", next)])
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(hidden(&html, "next"), want, "{page} page, next={next:?}");
        }
        let browser = browser();
        let html = browser
            .get(server.url("/login"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = hidden(&html, "csrf");
        let response = browser
            .post(server.url("/login"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("username", "alice"),
                ("password", PASSWORD),
                ("next", next),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "next={next:?}");
        assert_eq!(location(&response), want, "login, next={next:?}");
        let browser = mxqr_testkit::oauth::browser();
        let html = browser
            .get(server.url("/register"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = hidden(&html, "csrf");
        let username = format!("user{i}");
        let response = browser
            .post(server.url("/register"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("username", &username),
                ("password", "long enough pw"),
                ("password2", "long enough pw"),
                ("next", next),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "next={next:?}");
        assert_eq!(location(&response), want, "register, next={next:?}");
    }
}

/// A browser with the login form open: its client and the form's CSRF token.
async fn login_form(server: &OAuthServer) -> (reqwest::Client, String) {
    let browser = browser();
    let html = browser
        .get(server.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden(&html, "csrf");
    (browser, csrf)
}

/// Posts the login form of `browser`, optionally claiming to come from `from`
/// (`x-forwarded-for`, honoured when the server is set up for it).
async fn try_password(
    server: &OAuthServer,
    (browser, csrf): &(reqwest::Client, String),
    user: &str,
    password: &str,
    from: Option<&str>,
) -> reqwest::Response {
    let mut request = browser.post(server.url("/login")).form(&[
        ("csrf", csrf.as_str()),
        ("username", user),
        ("password", password),
    ]);
    if let Some(ip) = from {
        request = request.header("x-forwarded-for", ip);
    }
    request.send().await.unwrap()
}

/// A refusal for too many attempts is the sign-in page again, with 429 and Retry-After.
async fn assert_throttled_page(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1);
    let html = response.text().await.unwrap();
    assert!(html.contains("action=\"/login\""), "{html}");
    assert!(
        html.contains("Too many attempts") && html.contains("try again in"),
        "{html}"
    );
}

/// Parallel wrong passwords from one address cannot all be checked: each is counted before
/// its verification, so at most the failure cap (5 in these tests) ever reach Argon2.
async fn parallel_wrong_passwords_are_counted_before_checking(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        Options {
            rate_limit: true,
            ..Options::default()
        },
    )
    .await;
    server.add_user("alice").await;
    let form = login_form(&server).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let form = form.clone();
        let url = server.url("/login");
        tasks.spawn(async move {
            form.0
                .post(url)
                .form(&[
                    ("csrf", form.1.as_str()),
                    ("username", "alice"),
                    ("password", &format!("wrong {i}")),
                ])
                .send()
                .await
                .unwrap()
        });
    }
    let mut checked = 0;
    let mut refused = Vec::new();
    while let Some(response) = tasks.join_next().await {
        let response = response.unwrap();
        match response.status() {
            StatusCode::UNAUTHORIZED => checked += 1,
            _ => refused.push(response),
        }
    }
    assert!(checked <= 5, "{checked} wrong passwords were checked");
    assert_eq!(checked + refused.len(), 30);
    for response in refused {
        assert_throttled_page(response).await;
    }
    // The rest of the budget goes to sequential guesses; then even the right password waits
    // for the window.
    loop {
        let response = try_password(&server, &form, "alice", "still wrong", None).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        checked += 1;
    }
    assert_eq!(checked, 5);
    assert_throttled_page(try_password(&server, &form, "alice", PASSWORD, None).await).await;
}

/// At most two password checks run at once per address, however they would end.
async fn concurrent_logins_per_address_are_capped(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        Options {
            rate_limit: true,
            ..Options::default()
        },
    )
    .await;
    server.add_user("alice").await;
    let form = login_form(&server).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let form = form.clone();
        let url = server.url("/login");
        tasks.spawn(async move {
            form.0
                .post(url)
                .form(&[
                    ("csrf", form.1.as_str()),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ])
                .send()
                .await
                .unwrap()
        });
    }
    let mut signed_in = 0;
    let mut refused = Vec::new();
    while let Some(response) = tasks.join_next().await {
        let response = response.unwrap();
        match response.status() {
            StatusCode::SEE_OTHER => signed_in += 1,
            _ => refused.push(response),
        }
    }
    assert!(signed_in >= 1, "the first ones are checked");
    assert!(!refused.is_empty(), "all 12 were checked at once");
    for response in refused {
        assert_throttled_page(response).await;
    }
    // Nothing was charged as a failure: sequential sign-ins go on working.
    for _ in 0..6 {
        let form = login_form(&server).await;
        let response = try_password(&server, &form, "alice", PASSWORD, None).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
    }
}

/// Wrong passwords for one account from many addresses stop at the per-account cap, even
/// sent all at once (each is counted before it is checked); other accounts are unaffected.
async fn wrong_passwords_per_account_are_capped_across_addresses(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        Options {
            rate_limit: true,
            forwarded_for: true,
            ..Options::default()
        },
    )
    .await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let cap = mxqr_testkit::api::Config::default()
        .oauth
        .account_failed_attempts_max;
    let form = login_form(&server).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cap + 10 {
        let form = form.clone();
        let url = server.url("/login");
        tasks.spawn(async move {
            form.0
                .post(url)
                .header("x-forwarded-for", format!("198.51.100.{i}"))
                .form(&[
                    ("csrf", form.1.as_str()),
                    ("username", "alice"),
                    ("password", "not it"),
                ])
                .send()
                .await
                .unwrap()
        });
    }
    let mut checked = 0;
    let mut refused = Vec::new();
    while let Some(response) = tasks.join_next().await {
        let response = response.unwrap();
        match response.status() {
            StatusCode::UNAUTHORIZED => checked += 1,
            _ => refused.push(response),
        }
    }
    assert_eq!(checked, cap, "wrong passwords checked for one account");
    assert_eq!(refused.len(), 10);
    for response in refused {
        assert_throttled_page(response).await;
    }
    // The account refuses checks from any address for the window, whatever the spelling of
    // its name; other accounts do not.
    let response = try_password(&server, &form, "alice", PASSWORD, Some("203.0.113.1")).await;
    assert_throttled_page(response).await;
    let response = try_password(
        &server,
        &form,
        "@Alice:example.test",
        "x",
        Some("203.0.113.2"),
    );
    assert_throttled_page(response.await).await;
    let response = try_password(&server, &form, "bob", PASSWORD, Some("203.0.113.1")).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

/// `name=value` pairs of a response's `Set-Cookie` headers, with their attributes.
fn set_cookies(response: &reqwest::Response) -> Vec<(String, String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let text = v.to_str().unwrap().to_owned();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            (name.to_owned(), value.to_owned(), text.clone())
        })
        .collect()
}

/// One browser signed in by hand (no cookie store): its cookies and a form's CSRF token.
struct Manual {
    csrf_cookie: String,
    session_cookie: String,
    form_csrf: String,
}

async fn manual_sign_in(server: &OAuthServer, prefix: &str) -> Manual {
    let http = api_client();
    let page = http.get(server.url("/login")).send().await.unwrap();
    let csrf_name = format!("{prefix}mxqr_csrf");
    let session_name = format!("{prefix}mxqr_session");
    let csrf_cookie = set_cookies(&page)
        .into_iter()
        .find(|(name, _, _)| *name == csrf_name)
        .unwrap_or_else(|| panic!("no {csrf_name} cookie"))
        .1;
    let token = hidden(&page.text().await.unwrap(), "csrf");
    let response = http
        .post(server.url("/login"))
        .header("cookie", format!("{csrf_name}={csrf_cookie}"))
        .form(&[
            ("csrf", token.as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let session_cookie = set_cookies(&response)
        .into_iter()
        .find(|(name, _, _)| *name == session_name)
        .unwrap_or_else(|| panic!("no {session_name} cookie"))
        .1;
    let page = http
        .get(server.url("/account"))
        .header(
            "cookie",
            format!("{csrf_name}={csrf_cookie}; {session_name}={session_cookie}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let form_csrf = hidden(&page.text().await.unwrap(), "csrf");
    Manual {
        csrf_cookie,
        session_cookie,
        form_csrf,
    }
}

async fn logout_with(server: &OAuthServer, cookies: &str, csrf: &str) -> StatusCode {
    api_client()
        .post(server.url("/logout"))
        .header("cookie", cookies)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap()
        .status()
}

/// A CSRF token (and its cookie, as a cookie-tossing attacker could plant it) taken from one
/// browser session is refused in another.
async fn csrf_token_is_bound_to_the_browser_session(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    server.add_user("alice").await;
    let a = manual_sign_in(&server, "").await;
    let b = manual_sign_in(&server, "").await;
    let crossed = format!(
        "mxqr_csrf={}; mxqr_session={}",
        a.csrf_cookie, b.session_cookie
    );
    assert_eq!(
        logout_with(&server, &crossed, &a.form_csrf).await,
        StatusCode::FORBIDDEN
    );
    let own = format!(
        "mxqr_csrf={}; mxqr_session={}",
        b.csrf_cookie, b.session_cookie
    );
    assert_eq!(
        logout_with(&server, &own, &a.form_csrf).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        logout_with(&server, &own, &b.form_csrf).await,
        StatusCode::SEE_OTHER
    );
}

/// Under an https public URL the cookies are `__Host-` cookies: Secure, Path=/, no Domain;
/// the plain names are not read there.
async fn https_cookies_have_the_host_prefix(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        Options {
            public_url: Some("https://mx.example.test/".into()),
            ..Options::default()
        },
    )
    .await;
    server.add_user("alice").await;
    let page = server.http.get(server.url("/login")).send().await.unwrap();
    let cookies = set_cookies(&page);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let (name, _, text) = &cookies[0];
    assert_eq!(name, "__Host-mxqr_csrf");
    for attribute in ["; Secure", "; Path=/;", "; HttpOnly", "; SameSite=Lax"] {
        assert!(text.contains(attribute), "{text}");
    }
    assert!(!text.to_ascii_lowercase().contains("domain"), "{text}");

    let signed_in = manual_sign_in(&server, "__Host-").await;
    let cookies = format!(
        "__Host-mxqr_csrf={}; __Host-mxqr_session={}",
        signed_in.csrf_cookie, signed_in.session_cookie
    );
    let plain = format!(
        "mxqr_csrf={}; mxqr_session={}",
        signed_in.csrf_cookie, signed_in.session_cookie
    );
    let response = server
        .http
        .get(server.url("/account"))
        .header("cookie", &plain)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SEE_OTHER,
        "plain names are not the session under https"
    );
    let response = server
        .http
        .post(server.url("/logout"))
        .header("cookie", &cookies)
        .form(&[("csrf", signed_in.form_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cleared = set_cookies(&response);
    assert!(
        cleared
            .iter()
            .any(|(name, value, text)| name == "__Host-mxqr_session"
                && value.is_empty()
                && text.contains("; Secure")),
        "{cleared:?}"
    );
}

mxqr_testkit::backend_tests! {
    devices_list_view_and_sign_out,
    cross_signing_reset_approval_is_recorded,
    sign_out_ends_the_browser_session,
    prompt_create_registers_then_consents,
    next_only_leads_to_own_pages,
    parallel_wrong_passwords_are_counted_before_checking,
    concurrent_logins_per_address_are_capped,
    wrong_passwords_per_account_are_capped_across_addresses,
    csrf_token_is_bound_to_the_browser_session,
    https_cookies_have_the_host_prefix,
}

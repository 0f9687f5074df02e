//! Server metadata and dynamic client registration over HTTP.

use mxqr_testkit::Backend;
use std::time::Duration;

use mxqr_testkit::oauth::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn metadata_on_all_three_paths(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let base = format!("{}/", server.base);
    let mut bodies = Vec::new();
    for path in [
        "/_matrix/client/v1/auth_metadata",
        "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata",
        "/.well-known/oauth-authorization-server",
    ] {
        let response = server.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        bodies.push(response.json::<Value>().await.unwrap());
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[0], bodies[2]);
    let m = &bodies[0];
    assert_eq!(m["issuer"], base);
    for (key, path) in [
        ("authorization_endpoint", "oauth2/authorize"),
        ("token_endpoint", "oauth2/token"),
        ("registration_endpoint", "oauth2/registration"),
        ("revocation_endpoint", "oauth2/revoke"),
        ("device_authorization_endpoint", "oauth2/device"),
        ("account_management_uri", "account"),
    ] {
        assert_eq!(m[key], format!("{base}{path}"), "{key}");
    }
    assert_eq!(m["response_types_supported"], json!(["code"]));
    assert_eq!(m["response_modes_supported"], json!(["query", "fragment"]));
    assert_eq!(
        m["grant_types_supported"],
        json!(["authorization_code", "refresh_token", DEVICE_GRANT])
    );
    assert_eq!(m["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(m["token_endpoint_auth_methods_supported"], json!(["none"]));
    let actions = m["account_management_actions_supported"]
        .as_array()
        .unwrap();
    for action in [
        "org.matrix.profile",
        "org.matrix.devices_list",
        "org.matrix.device_view",
        "org.matrix.device_delete",
        "org.matrix.cross_signing_reset",
    ] {
        assert!(actions.contains(&json!(action)), "{action}");
    }
    assert_eq!(
        m["prompt_values_supported"],
        json!(["none"]),
        "registration is off"
    );

    let open = OAuthServer::with(
        backend,
        Options {
            registration: true,
            ..Options::default()
        },
    )
    .await;
    let m: Value = open
        .http
        .get(open.url("/_matrix/client/v1/auth_metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["prompt_values_supported"], json!(["none", "create"]));
}

fn native(redirect_uris: &[&str]) -> Value {
    json!({
        "client_uri": "https://example.com/",
        "application_type": "native",
        "redirect_uris": redirect_uris,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
}

fn web(redirect_uris: &[&str]) -> Value {
    json!({ "client_uri": "https://example.com/", "redirect_uris": redirect_uris })
}

async fn redirect_uri_rules(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let valid = [
        web(&["https://example.com/callback"]),
        web(&["https://app.example.com/callback"]),
        native(&["com.example.app:/callback"]),
        native(&["com.example:/callback"]),
        native(&["http://127.0.0.1/callback"]),
        native(&["http://[::1]/callback"]),
        // The Matrix spec's own example of a native loopback redirect URI.
        native(&["http://localhost/callback"]),
        native(&["https://example.com/callback"]),
    ];
    for body in valid {
        let response = server.register(body.clone()).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{body}");
    }
    let invalid = [
        web(&["http://example.com/callback"]),
        web(&["https://example.org/callback"]),
        web(&["https://evilexample.com/callback"]),
        web(&["https://example.com/callback#fragment"]),
        web(&["com.example.app:/callback"]),
        // Loopback URIs are registered without a port (any port is accepted at authorization).
        native(&["http://localhost:8080/callback"]),
        native(&["http://127.0.0.1:8080/callback"]),
        native(&["http://[::1]:8080/callback"]),
        native(&["https://localhost/callback"]),
        native(&["com.example.app://callback"]),
        native(&["org.example:/callback"]),
        native(&["example:/callback"]),
        native(&["http://10.0.0.1/callback"]),
    ];
    for body in invalid {
        let response = server.register(body.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], "invalid_redirect_uri", "{body}");
        assert!(
            error["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
    }
}

async fn metadata_rules_and_deduplication(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    for body in [
        json!({"redirect_uris": ["https://example.com/cb"]}),
        json!({"client_uri": "http://example.com/", "redirect_uris": ["https://example.com/cb"]}),
        json!({"client_uri": "https://user:pw@example.com/", "redirect_uris": ["https://example.com/cb"]}),
        json!({"client_uri": "https://example.com/", "application_type": "desktop", "redirect_uris": ["https://example.com/cb"]}),
        json!({"client_uri": "https://example.com/", "token_endpoint_auth_method": "client_secret_post", "redirect_uris": ["https://example.com/cb"]}),
        json!({"client_uri": "https://example.com/", "grant_types": ["password"], "redirect_uris": ["https://example.com/cb"]}),
        json!({"client_uri": "https://example.com/", "response_types": ["code", "token"], "redirect_uris": ["https://example.com/cb"]}),
        json!({"client_uri": "https://example.com/", "logo_uri": "https://cdn.other.net/logo.png", "redirect_uris": ["https://example.com/cb"]}),
        json!({"client_uri": "https://example.com/", "policy_uri#de": "http://example.com/de", "redirect_uris": ["https://example.com/cb"]}),
        json!(["not", "an", "object"]),
    ] {
        let response = server.register(body.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], "invalid_client_metadata", "{body}");
    }
    let response = server
        .http
        .post(server.url("/oauth2/registration"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let body = json!({
        "client_uri": "https://example.com/",
        "client_name": "Example",
        "client_name#fr": "Exemple",
        "tos_uri": "https://example.com/tos",
        "policy_uri#fr": "https://docs.example.com/fr/policy",
        "logo_uri": "https://example.com/logo.png",
        "application_type": "native",
        "redirect_uris": ["com.example.app:/cb"],
        "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    let first: Value = server.register(body.clone()).await.json().await.unwrap();
    assert_eq!(first["client_name#fr"], "Exemple");
    assert_eq!(first["policy_uri#fr"], "https://docs.example.com/fr/policy");
    assert_eq!(first["redirect_uris"], json!(["com.example.app:/cb"]));
    let response = server.register(body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let second: Value = response.json().await.unwrap();
    assert_eq!(
        first["client_id"], second["client_id"],
        "identical metadata, same client"
    );
    let other: Value = server
        .register(json!({"client_uri": "https://example.com/", "client_name": "Other", "redirect_uris": ["https://example.com/cb"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(first["client_id"], other["client_id"]);
}

async fn client_uri_must_name_a_registrable_site(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    // On a public suffix, a client_uri would make every site under it "the client's site".
    for client_uri in [
        "https://com/",
        "https://github.io/",
        "https://co.uk/",
        "https://localhost/",
        "https://127.0.0.1/",
        "https://[::1]/",
    ] {
        let response = server
            .register(json!({"client_uri": client_uri, "grant_types": [DEVICE_GRANT]}))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{client_uri}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], "invalid_client_metadata", "{client_uri}");
    }
    // Redirect URIs on someone else's github.io site were accepted with client_uri github.io.
    let response = server
        .register(json!({
            "client_uri": "https://github.io/",
            "redirect_uris": ["https://victim.github.io/callback"],
        }))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = server
        .register(json!({
            "client_uri": "https://me.github.io/",
            "redirect_uris": ["https://me.github.io/callback"],
        }))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

async fn metadata_is_capped(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let error_of = |response: reqwest::Response| async move {
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.unwrap();
        body["error"].as_str().unwrap().to_owned()
    };
    let named = |name: String| json!({"client_uri": "https://example.com/", "client_name": name, "grant_types": [DEVICE_GRANT]});
    assert_eq!(
        server.register(named("n".repeat(256))).await.status(),
        StatusCode::CREATED
    );
    // The review's 30 KB names.
    for name in ["n".repeat(257), "n".repeat(30_000)] {
        assert_eq!(
            error_of(server.register(named(name)).await).await,
            "invalid_client_metadata"
        );
    }
    let long = format!("https://example.com/{}", "a".repeat(2048));
    assert_eq!(
        error_of(server.register(web(&[&long])).await).await,
        "invalid_redirect_uri"
    );
    let eleven: Vec<String> = (0..11)
        .map(|i| format!("https://example.com/cb{i}"))
        .collect();
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    assert_eq!(
        error_of(server.register(web(&eleven)).await).await,
        "invalid_redirect_uri"
    );
    assert_eq!(
        server.register(web(&eleven[..10])).await.status(),
        StatusCode::CREATED
    );
    let response = server
        .register(json!({"client_uri": "https://example.com/", "tos_uri": long, "grant_types": [DEVICE_GRANT]}))
        .await;
    assert_eq!(error_of(response).await, "invalid_client_metadata");
}

/// The review's flood: 300 registrations from one address. A creation bucket per address
/// (shared with `/oauth2/device`) lets a burst through, then answers 429 with `Retry-After`.
async fn registration_is_charged_to_a_creation_bucket(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        Options {
            rate_limit: true,
            ..Options::default()
        },
    )
    .await;
    let mut created = 0;
    let mut refused = None;
    for i in 0..300 {
        let response = server
            .register(json!({
                "client_uri": "https://example.com/",
                "client_name": format!("Flood {i}"),
                "grant_types": [DEVICE_GRANT],
            }))
            .await;
        match response.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                if refused.is_none() {
                    refused = Some(response);
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    // The default burst is 20, refilled at one per 10 s.
    assert!(
        (20..=22).contains(&created),
        "{created} registrations went through"
    );
    let refused = refused.expect("the flood is refused");
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&wait), "Retry-After {wait}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    // Another address has its own bucket.
    let other = api_client_from("127.0.0.2".parse().unwrap());
    let response = other
        .post(server.url("/oauth2/registration"))
        .json(&json!({"client_uri": "https://example.com/", "client_name": "Other address", "grant_types": [DEVICE_GRANT]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// A client that was never used (no authorization code, device approval or session) is
/// purged a day after its last registration; used ones stay.
async fn unused_clients_are_purged_after_a_day(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    server.add_user("alice").await;
    let register = |name: &'static str| {
        let server = &server;
        async move {
            let body: Value = server
                .register(json!({"client_uri": "https://example.com/", "client_name": name, "grant_types": [DEVICE_GRANT]}))
                .await
                .json()
                .await
                .unwrap();
            body["client_id"].as_str().unwrap().to_owned()
        }
    };
    let unused = register("Unused").await;
    let with_session = register("Session").await;
    let with_code = register("Code").await;
    let renewed = register("Renewed").await;
    let minted = server.oauth.mint();
    let grant = mxqr_testkit::api::accounts::Grant {
        localpart: "alice".into(),
        device_id: "DEV1".into(),
        client_id: Some(with_session.clone()),
        scope: scope("DEV1"),
    };
    server
        .db()
        .issue_session(&grant, &minted.stored, server.oauth.now_ms())
        .await
        .unwrap();
    let (_, challenge) = pkce();
    server
        .db()
        .create_auth_code(
            &"c".repeat(64),
            &mxqr_testkit::api::oauth::model::auth_code::IssuedCode {
                client_id: with_code.clone(),
                localpart: "alice".into(),
                device_id: "DEV2".into(),
                scope: scope("DEV2"),
                redirect_uri: "https://example.com/cb".into(),
                code_challenge: challenge,
                expires_at: server.oauth.now_ms() + 60_000,
            },
            server.oauth.now_ms(),
        )
        .await
        .unwrap();

    let exists = |id: String| {
        let server = &server;
        async move { server.db().client(&id).await.unwrap().is_some() }
    };
    server.clock.advance(Duration::from_secs(23 * 3600));
    server.oauth.purge_expired().await;
    assert!(exists(unused.clone()).await, "kept for a day");
    // Registering identical metadata again returns the same client and restarts its day.
    assert_eq!(register("Renewed").await, renewed);
    server.clock.advance(Duration::from_secs(2 * 3600));
    server.oauth.purge_expired().await;
    assert!(!exists(unused).await, "never used: purged");
    assert!(exists(with_session).await);
    assert!(exists(with_code).await);
    assert!(exists(renewed.clone()).await, "re-registered an hour ago");
    server.clock.advance(Duration::from_secs(24 * 3600));
    server.oauth.purge_expired().await;
    assert!(!exists(renewed).await);
}

mxqr_testkit::backend_tests! {
    metadata_on_all_three_paths,
    redirect_uri_rules,
    metadata_rules_and_deduplication,
    client_uri_must_name_a_registrable_site,
    metadata_is_capped,
    registration_is_charged_to_a_creation_bucket,
    unused_clients_are_purged_after_a_day,
}

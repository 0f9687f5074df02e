//! The server `mxqr serve` builds (`app_state`): with `create_policy = "authenticated"`
//! rendezvous creation accepts only live access tokens from the accounts database.

use mxqr_testkit::api::Config;
use mxqr_testkit::api::accounts::Grant;
use mxqr_testkit::api::config::CreatePolicy;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const STABLE: &str = "/_matrix/client/v1/rendezvous";

#[tokio::test]
async fn rendezvous_creation_checks_tokens_against_the_database() {
    let dir = std::env::temp_dir().join(format!(
        "mxqr-oauth-bearer-{}-{}",
        std::process::id(),
        hex::encode(rand::random::<[u8; 4]>())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config {
        listen: addr,
        data_dir: dir.clone(),
        public_url: Some(format!("http://{addr}/")),
        ..Config::default()
    };
    config.rate_limit.enabled = false;
    config.rendezvous.create_policy = CreatePolicy::Authenticated;
    let state = mxqr_testkit::api::app_state(config).await.unwrap();
    let oauth = state.oauth().expect("OAuth attached").clone();
    oauth
        .db()
        .create_user("alice", None, oauth.now_ms())
        .await
        .unwrap();
    let minted = oauth.mint();
    let grant = Grant {
        localpart: "alice".into(),
        device_id: "DEV".into(),
        client_id: None,
        scope: "urn:matrix:client:api:* urn:matrix:client:device:DEV".into(),
    };
    oauth
        .db()
        .issue_session(&grant, &minted.stored, oauth.now_ms())
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mxqr_testkit::api::serve(state, listener, async {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let url = format!("http://{addr}{STABLE}");

    let forged = "mxqr_at_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA_000000";
    for token in [None, Some("not-a-token"), Some(forged)] {
        let mut request = http.post(&url).json(&json!({ "data": "x" }));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{token:?}");
    }
    let response = http
        .post(&url)
        .bearer_auth(&minted.access_token)
        .json(&json!({ "data": "x" }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].is_string(), "{body}");

    // Revoked: refused again.
    let response = http
        .post(format!("http://{addr}/oauth2/revoke"))
        .form(&[("token", minted.refresh_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = http
        .post(&url)
        .bearer_auth(&minted.access_token)
        .json(&json!({ "data": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let _ = tx.send(());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server name is pinned in the accounts database at first start; a later start naming
/// another one is refused, one without a name gets the pinned one. (On PostgreSQL:
/// `pg_db::server_name_is_pinned_in_postgres`.)
#[tokio::test]
async fn server_name_is_pinned_at_first_start() {
    let dir = std::env::temp_dir().join(format!(
        "mxqr-server-name-{}-{}",
        std::process::id(),
        hex::encode(rand::random::<[u8; 4]>())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = |public_url: Option<&str>, server_name: Option<&str>| {
        let mut config = Config {
            data_dir: dir.clone(),
            public_url: public_url.map(str::to_owned),
            server_name: server_name.map(str::to_owned),
            ..Config::default()
        };
        config.rate_limit.enabled = false;
        config
    };
    let first = mxqr_testkit::api::app_state(config(Some("https://one.example/"), None))
        .await
        .unwrap();
    assert_eq!(first.oauth().unwrap().server_name(), "one.example");
    drop(first);
    for (public_url, server_name) in [
        (Some("https://two.example/"), None),
        (Some("https://one.example/"), Some("two.example")),
    ] {
        match mxqr_testkit::api::app_state(config(public_url, server_name)).await {
            Err(mxqr_testkit::api::accounts::DbError::ServerNameMismatch {
                configured,
                pinned,
            }) => {
                assert_eq!(
                    (configured.as_str(), pinned.as_str()),
                    ("two.example", "one.example")
                );
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("started with another server name"),
        }
    }
    // Another public URL with the pinned name, and an admin view without either: fine.
    let moved =
        mxqr_testkit::api::app_state(config(Some("https://new.example/"), Some("one.example")))
            .await
            .unwrap();
    drop(moved);
    let admin = mxqr_testkit::api::oauth::OAuthState::open(&config(None, None))
        .await
        .unwrap();
    assert_eq!(admin.user_id("erin"), "@erin:one.example");
    let _ = std::fs::remove_dir_all(&dir);
}

//! Refresh-token rotation (with the lost-response retry), reuse detection, revocation and
//! access-token expiry.

use mxqr_testkit::Backend;
use std::time::Duration;

use mxqr_testkit::api::accounts::Grant;
use mxqr_testkit::oauth::*;
use reqwest::StatusCode;
use serde_json::Value;

/// A session for alice's device `DEV` issued to `client_id`: (access, refresh).
async fn session(server: &OAuthServer, client_id: &str) -> (String, String) {
    server.add_user("alice").await;
    let minted = server.oauth.mint();
    let grant = Grant {
        localpart: "alice".into(),
        device_id: "DEV".into(),
        client_id: Some(client_id.into()),
        scope: scope("DEV"),
    };
    server
        .db()
        .issue_session(&grant, &minted.stored, server.oauth.now_ms())
        .await
        .unwrap();
    (minted.access_token, minted.refresh_token)
}

async fn refresh(server: &OAuthServer, token: &str) -> (StatusCode, Value) {
    server
        .token(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .await
}

fn pair(body: &Value) -> (String, String) {
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn revoke(server: &OAuthServer, token: &str) -> StatusCode {
    server
        .http
        .post(server.url("/oauth2/revoke"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .status()
}

async fn rotation_and_lost_response_retry(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let (a0, r0) = session(&server, &client_id).await;

    let (status, body) = refresh(&server, &r0).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], scope("DEV"));
    let (a1, r1) = pair(&body);
    assert_ne!(r1, r0);
    assert!(
        server.token_valid(&a0).await,
        "the old access token lives until it expires"
    );
    assert!(server.token_valid(&a1).await);

    // The response carrying (a1, r1) is "lost": retrying with r0 soon after gives a fresh pair
    // and retires the lost one.
    server.clock.advance(Duration::from_secs(5));
    let (status, body) = refresh(&server, &r0).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (a2, r2) = pair(&body);
    assert!(server.token_valid(&a2).await);
    assert!(!server.token_valid(&a1).await, "the lost pair is revoked");
    let (status, _) = refresh(&server, &r1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Normal use continues with r2.
    let (status, body) = refresh(&server, &r2).await;
    assert_eq!(status, StatusCode::OK);
    let (a3, _r3) = pair(&body);

    // r0 again: its successor r2 has been used, so this is reuse: the session ends.
    let (status, body) = refresh(&server, &r0).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert!(
        !server.token_valid(&a3).await,
        "reuse revokes the whole session"
    );
}

async fn old_token_after_grace_revokes_session(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let (_, r0) = session(&server, &client_id).await;
    let (_, body) = refresh(&server, &r0).await;
    let (a1, r1) = pair(&body);
    server.clock.advance(Duration::from_secs(61));
    let (status, body) = refresh(&server, &r0).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert!(!server.token_valid(&a1).await);
    let (status, _) = refresh(&server, &r1).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the current refresh token died with the session"
    );
}

async fn refresh_errors(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let (_, r0) = session(&server, &client_id).await;
    for token in [
        "",
        "garbage",
        "mxqr_rt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA_000000",
    ] {
        let (status, body) = refresh(&server, token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{token}");
        assert!(body["error"] == "invalid_grant" || body["error"] == "invalid_request");
    }
    // Another client may not use it.
    let (status, body) = server
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &r0),
            ("client_id", "other"),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // Repeated parameters are refused.
    let response = server
        .http
        .post(server.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=refresh_token&refresh_token={r0}&refresh_token={r0}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    // The rightful client still can.
    let (status, _) = server
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &r0),
            ("client_id", &client_id),
        ])
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn access_tokens_expire(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let (a0, r0) = session(&server, &client_id).await;
    server.clock.advance(Duration::from_secs(299));
    assert!(server.token_valid(&a0).await);
    server.clock.advance(Duration::from_secs(2));
    assert!(!server.token_valid(&a0).await);
    let (status, body) = refresh(&server, &r0).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        server
            .token_valid(body["access_token"].as_str().unwrap())
            .await
    );
}

async fn revoking_either_token_ends_the_session(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let (a0, r0) = session(&server, &client_id).await;
    assert_eq!(revoke(&server, &a0).await, StatusCode::OK);
    assert!(!server.token_valid(&a0).await);
    let (status, _) = refresh(&server, &r0).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let minted = server.oauth.mint();
    let grant = Grant {
        localpart: "alice".into(),
        device_id: "DEV2".into(),
        client_id: Some(client_id.clone()),
        scope: scope("DEV2"),
    };
    server
        .db()
        .issue_session(&grant, &minted.stored, server.oauth.now_ms())
        .await
        .unwrap();
    assert_eq!(revoke(&server, &minted.refresh_token).await, StatusCode::OK);
    assert!(!server.token_valid(&minted.access_token).await);

    // Unknown and malformed tokens: 200 as well. Missing token: invalid_request.
    assert_eq!(revoke(&server, "mxqr_at_unknown").await, StatusCode::OK);
    assert_eq!(revoke(&server, "whatever").await, StatusCode::OK);
    let response = server
        .http
        .post(server.url("/oauth2/revoke"))
        .form(&[("token_type_hint", "access_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );
}

/// `whoami` with `access_token`: its status (200 while the token is live).
async fn whoami(server: &OAuthServer, access_token: &str) -> StatusCode {
    server
        .http
        .get(server.url("/_matrix/client/v3/account/whoami"))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
        .status()
}

async fn retry_with_an_unused_successor_gets_a_pair_and_kills_the_lost_one(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let (a0, r0) = session(&server, &client_id).await;
    let (_, body) = refresh(&server, &r0).await;
    let (a1, r1) = pair(&body);
    // The response is lost: nobody uses (a1, r1). The client retries with r0.
    server.clock.advance(Duration::from_secs(2));
    let (status, body) = refresh(&server, &r0).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (a2, r2) = pair(&body);
    assert_eq!(whoami(&server, &a1).await, StatusCode::UNAUTHORIZED);
    assert_eq!(refresh(&server, &r1).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(whoami(&server, &a0).await, StatusCode::OK);
    assert_eq!(whoami(&server, &a2).await, StatusCode::OK);
    assert_eq!(refresh(&server, &r2).await.0, StatusCode::OK);
}

/// RFC 9700 §4.14: once the successor's access token was used, the pair evidently arrived,
/// so a replay of the old refresh token (even within the grace window) is theft: the whole
/// session and its device end, the legitimate successor included.
async fn replay_after_the_successor_was_used_revokes_the_device_and_all_tokens(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let (a0, r0) = session(&server, &client_id).await;
    let (_, body) = refresh(&server, &r0).await;
    let (a1, r1) = pair(&body);
    assert_eq!(whoami(&server, &a1).await, StatusCode::OK);
    assert_eq!(
        whoami(&server, &a1).await,
        StatusCode::OK,
        "a second use is fine"
    );

    server.clock.advance(Duration::from_secs(1));
    let (status, body) = refresh(&server, &r0).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );
    for access in [&a0, &a1] {
        assert_eq!(whoami(&server, access).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(refresh(&server, &r1).await.0, StatusCode::BAD_REQUEST);
    assert!(
        server.db().device("alice", "DEV").await.unwrap().is_none(),
        "the device is deleted"
    );
}

/// The grace window is 10 s by default: a retry after it is reuse even with an unused
/// successor.
async fn retry_after_ten_seconds_is_reuse(backend: Backend) {
    let server = OAuthServer::start(backend).await;
    let client_id = server.native_client().await;
    let (_, r0) = session(&server, &client_id).await;
    let (_, body) = refresh(&server, &r0).await;
    let (a1, _) = pair(&body);
    server.clock.advance(Duration::from_secs(11));
    let (status, _) = refresh(&server, &r0).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!server.token_valid(&a1).await);
}

mxqr_testkit::backend_tests! {
    rotation_and_lost_response_retry,
    old_token_after_grace_revokes_session,
    refresh_errors,
    access_tokens_expire,
    revoking_either_token_ends_the_session,
    retry_with_an_unused_successor_gets_a_pair_and_kills_the_lost_one,
    replay_after_the_successor_was_used_revokes_the_device_and_all_tokens,
    retry_after_ten_seconds_is_reuse,
}

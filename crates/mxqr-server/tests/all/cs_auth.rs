//! Bearer authentication, discovery, `whoami`, logout and the Matrix error answers of the
//! client-server endpoints.

use mxqr_testkit::Backend;
use std::time::Duration;

use mxqr_testkit::cs::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

const WHOAMI: &str = "/_matrix/client/v3/account/whoami";

async fn whoami_with_stable_and_unstable_scopes(backend: Backend) {
    let server = start(backend).await;
    let stable = token(&server, "PHONE").await;
    let (status, body) = get(&server, WHOAMI, &stable).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "user_id": USER, "device_id": "PHONE", "is_guest": false })
    );

    let unstable = token_with_scope(&server, "alice", "LAPTOP", &unstable_scope("LAPTOP")).await;
    let (status, body) = get(&server, WHOAMI, &unstable).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["device_id"], "LAPTOP");
}

async fn missing_malformed_and_unknown_tokens(backend: Backend) {
    let server = start(backend).await;
    assert_error(
        &call(&server, Method::GET, WHOAMI, None, None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    // The deprecated query parameter is not read.
    let real = token(&server, "PHONE").await;
    assert_error(
        &call(
            &server,
            Method::GET,
            &format!("{WHOAMI}?access_token={real}"),
            None,
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    for bad in ["garbage", "mxqr_at_short_000000"] {
        let answer = get(&server, WHOAMI, bad).await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
        assert_eq!(answer.1["soft_logout"], false);
    }
    // Well-formed but never issued.
    let unknown = server.oauth.mint().access_token;
    let answer = get(&server, WHOAMI, &unknown).await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert_eq!(answer.1["soft_logout"], false);
    // A non-bearer scheme is no token.
    let response = server
        .http
        .get(server.url(WHOAMI))
        .header("authorization", format!("Basic {real}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");
}

async fn expired_token_is_a_soft_logout(backend: Backend) {
    let server = start(backend).await;
    let token = token(&server, "PHONE").await;
    server
        .clock
        .advance(server.oauth.lifetimes().access_token + Duration::from_secs(1));
    let answer = get(&server, WHOAMI, &token).await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert_eq!(answer.1["soft_logout"], true);
}

async fn locked_user_and_scope_without_client_api(backend: Backend) {
    let server = start(backend).await;
    let token = token(&server, "PHONE").await;
    server
        .db()
        .set_locked("alice", true, server.oauth.now_ms())
        .await
        .unwrap();
    let answer = get(&server, WHOAMI, &token).await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "M_USER_LOCKED");
    assert_eq!(answer.1["soft_logout"], true);

    server.add_user("bob").await;
    let narrow = token_with_scope(&server, "bob", "TV", "urn:matrix:client:device:TV").await;
    assert_error(
        &get(&server, WHOAMI, &narrow).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

async fn logout_deletes_the_device_and_revokes_its_token_only(backend: Backend) {
    let server = start(backend).await;
    let phone = token(&server, "PHONE").await;
    let laptop = token(&server, "LAPTOP").await;
    let (status, body) = post(&server, "/_matrix/client/v3/logout", &phone, &json!({})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let answer = get(&server, WHOAMI, &phone).await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert_eq!(answer.1["soft_logout"], false);
    assert_error(
        &get(&server, "/_matrix/client/v3/devices/PHONE", &laptop).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_eq!(get(&server, WHOAMI, &laptop).await.0, StatusCode::OK);
}

async fn logout_all_ends_every_session(backend: Backend) {
    let server = start(backend).await;
    let phone = token(&server, "PHONE").await;
    let laptop = token(&server, "LAPTOP").await;
    let (status, _) = post(&server, "/_matrix/client/v3/logout/all", &phone, &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    for token in [&phone, &laptop] {
        assert_error(
            &get(&server, WHOAMI, token).await,
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
        );
    }
    assert!(server.db().devices("alice").await.unwrap().is_empty());
}

async fn well_known_versions_and_cors(backend: Backend) {
    let server = start(backend).await;
    let response = server
        .http
        .get(server.url("/.well-known/matrix/client"))
        .header("origin", "https://app.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "m.homeserver": { "base_url": server.base } }));

    let (status, body) = call(&server, Method::GET, "/_matrix/client/versions", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let versions: Vec<&str> = body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for n in 1..=18 {
        assert!(versions.contains(&format!("v1.{n}").as_str()), "v1.{n}");
    }

    // A browser's preflight for an authenticated key upload.
    let response = server
        .http
        .request(
            Method::OPTIONS,
            server.url("/_matrix/client/v3/keys/upload"),
        )
        .header("origin", "https://app.example.org")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
}

async fn unknown_endpoints_and_methods(backend: Backend) {
    let server = start(backend).await;
    let token = token(&server, "PHONE").await;
    assert_error(
        &get(&server, "/_matrix/client/v3/no_such_thing", &token).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &get(&server, "/_matrix/client/v3/keys/upload", &token).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &post(&server, WHOAMI, &token, &json!({})).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
    );
}

async fn writes_are_rate_limited_per_client(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        mxqr_testkit::oauth::Options {
            rate_limit: true,
            ..Default::default()
        },
    )
    .await;
    server.add_user("alice").await;
    let token = token(&server, "PHONE").await;
    let claim = json!({ "one_time_keys": { USER: { "OTHER": "signed_curve25519" } } });
    let mut limited = None;
    // The default write budget is a burst of 100.
    for _ in 0..150 {
        let answer = post(&server, "/_matrix/client/v3/keys/claim", &token, &claim).await;
        if answer.0 != StatusCode::OK {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("claims must be rate limited");
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");
    assert!(limited.1["retry_after_ms"].as_u64().unwrap() > 0);
    // Reads are not charged.
    assert_eq!(get(&server, WHOAMI, &token).await.0, StatusCode::OK);
}

/// Account data is bounded: type names up to 255 bytes (400 `M_INVALID_PARAM` beyond: the
/// path parameter has a wrong value), and per user at most 1,000 types and 1 MiB (413
/// `M_TOO_LARGE`: the user's account data would be too large; a retry cannot help, so not
/// the 429 of a rate limit). Overwriting an existing type within the budget still works.
async fn account_data_type_names_and_quotas_are_bounded(backend: Backend) {
    let server = start(backend).await;
    let token = token(&server, "PHONE").await;
    let path = |data_type: &str| format!("/_matrix/client/v3/user/{USER}/account_data/{data_type}");
    let long = "t".repeat(256);
    assert_error(
        &put(&server, &path(&long), &token, &json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let (status, _) = put(&server, &path(&long[..255]), &token, &json!({})).await;
    assert_eq!(status, StatusCode::OK);

    // Bytes: 60 KB entries until the 1 MiB budget is spent.
    let big = json!({ "blob": "x".repeat(60_000) });
    let mut stored = 0;
    loop {
        let (status, body) = put(&server, &path(&format!("big.{stored}")), &token, &big).await;
        if status != StatusCode::OK {
            assert_eq!(
                (status, body["errcode"].as_str()),
                (StatusCode::PAYLOAD_TOO_LARGE, Some("M_TOO_LARGE")),
                "{body}"
            );
            break;
        }
        stored += 1;
        assert!(stored < 20, "1 MiB is about 17 such entries");
    }
    assert_eq!(stored, 17);
    // Replacing an entry by a smaller one is fine; growing past the budget is not.
    let (status, _) = put(&server, &path("big.0"), &token, &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = put(&server, &path("big.0"), &token, &big).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the freed budget is available again"
    );
    assert_error(
        &put(&server, &path("big.extra"), &token, &big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    for n in 0..stored {
        assert_eq!(
            put(&server, &path(&format!("big.{n}")), &token, &json!({}))
                .await
                .0,
            StatusCode::OK
        );
    }

    // Count: 1,000 types (two stored above, plus the 17 shrunk ones).
    let mut n = 0;
    let status = loop {
        let (status, _) = put(&server, &path(&format!("many.{n}")), &token, &json!({})).await;
        if status != StatusCode::OK {
            break status;
        }
        n += 1;
        assert!(n <= 1_000);
    };
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(n, 1_000 - 1 - stored);
    let (status, _) = put(&server, &path("many.0"), &token, &json!({ "again": true })).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an existing type can still be written"
    );
}

mxqr_testkit::backend_tests! {
    whoami_with_stable_and_unstable_scopes,
    missing_malformed_and_unknown_tokens,
    expired_token_is_a_soft_logout,
    locked_user_and_scope_without_client_api,
    logout_deletes_the_device_and_revokes_its_token_only,
    logout_all_ends_every_session,
    well_known_versions_and_cors,
    unknown_endpoints_and_methods,
    writes_are_rate_limited_per_client,
    account_data_type_names_and_quotas_are_bounded,
}

//! Key-backup versions and global account data.

use mxqr_keys::{BackupKey, CrossSigningKeys, verify_backup_auth_data};
use mxqr_testkit::Backend;
use mxqr_testkit::cs::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

const VERSION: &str = "/_matrix/client/v3/room_keys/version";
const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

async fn create_read_and_update_versions(backend: Backend) {
    let server = start(backend).await;
    let device = TestDevice::new(&server).await;
    assert_error(
        &get(&server, VERSION, &device.token).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    let cross_signing = CrossSigningKeys::new();
    let backup = BackupKey::new();
    let body = backup
        .create_version_body(
            USER,
            &cross_signing,
            Some((&device.account, &device.device_id)),
        )
        .unwrap();
    let (status, created) = post(&server, VERSION, &device.token, &body).await;
    assert_eq!(
        (status, &created),
        (StatusCode::OK, &json!({ "version": "1" }))
    );

    let (status, latest) = get(&server, VERSION, &device.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(latest["version"], "1");
    assert_eq!(latest["algorithm"], ALGORITHM);
    assert_eq!(latest["count"], 0);
    assert!(latest["etag"].is_string());
    assert_eq!(latest["auth_data"], body["auth_data"]);
    // What a new device does with it: check it against the master key it was given.
    let public = verify_backup_auth_data(
        &latest["auth_data"],
        USER,
        &cross_signing.public_keys().master,
    )
    .unwrap();
    assert_eq!(public, backup.public_key());

    let (_, second) = post(&server, VERSION, &device.token, &body).await;
    assert_eq!(second["version"], "2");
    assert_eq!(get(&server, VERSION, &device.token).await.1["version"], "2");
    let (status, first) = get(&server, &format!("{VERSION}/1"), &device.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["version"], "1");

    // Update: the auth_data changes, the version and algorithm must match.
    let other = BackupKey::new();
    let new_auth = other.auth_data(USER, &cross_signing, None).unwrap();
    let (status, answer) = put(
        &server,
        &format!("{VERSION}/1"),
        &device.token,
        &json!({ "algorithm": ALGORITHM, "auth_data": new_auth, "version": "1" }),
    )
    .await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));
    assert_eq!(
        get(&server, &format!("{VERSION}/1"), &device.token).await.1["auth_data"],
        new_auth
    );
    assert_error(
        &put(
            &server,
            &format!("{VERSION}/1"),
            &device.token,
            &json!({ "algorithm": ALGORITHM, "auth_data": new_auth, "version": "2" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &put(
            &server,
            &format!("{VERSION}/1"),
            &device.token,
            &json!({ "algorithm": "m.other", "auth_data": new_auth }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Deleting the latest makes the previous one current; numbers are not reused.
    let (status, answer) = call(
        &server,
        Method::DELETE,
        &format!("{VERSION}/2"),
        Some(&device.token),
        None,
    )
    .await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));
    assert_eq!(get(&server, VERSION, &device.token).await.1["version"], "1");
    assert_error(
        &call(
            &server,
            Method::DELETE,
            &format!("{VERSION}/2"),
            Some(&device.token),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (_, third) = post(&server, VERSION, &device.token, &body).await;
    assert_eq!(third["version"], "3");
    for missing in ["2", "9", "abc"] {
        assert_error(
            &get(&server, &format!("{VERSION}/{missing}"), &device.token).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
        assert_error(
            &put(
                &server,
                &format!("{VERSION}/{missing}"),
                &device.token,
                &json!({ "algorithm": ALGORITHM, "auth_data": new_auth }),
            )
            .await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
    }
}

async fn invalid_version_bodies_and_other_users(backend: Backend) {
    let server = start(backend).await;
    let token = token(&server, "PHONE").await;
    for body in [
        json!({ "algorithm": "m.unknown", "auth_data": { "public_key": "x" } }),
        json!({ "algorithm": ALGORITHM, "auth_data": {} }),
    ] {
        assert_error(
            &post(&server, VERSION, &token, &body).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    assert_error(
        &post(&server, VERSION, &token, &json!({ "algorithm": ALGORITHM })).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &post_raw(&server, VERSION, &token, "nope").await,
        StatusCode::BAD_REQUEST,
        "M_NOT_JSON",
    );
    // Versions are per user.
    let body = json!({ "algorithm": ALGORITHM, "auth_data": { "public_key": "x" } });
    assert_eq!(
        post(&server, VERSION, &token, &body).await.0,
        StatusCode::OK
    );
    server.add_user("bob").await;
    let bob = token_with_scope(&server, "bob", "TV", &scope("TV")).await;
    assert_error(
        &get(&server, VERSION, &bob).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

async fn account_data_round_trip_and_privacy(backend: Backend) {
    let server = start(backend).await;
    let token = token(&server, "PHONE").await;
    let path =
        "/_matrix/client/v3/user/@alice:example.test/account_data/m.secret_storage.default_key";
    assert_error(
        &get(&server, path, &token).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let content = json!({ "key": "abc" });
    let (status, answer) = put(&server, path, &token, &content).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));
    assert_eq!(get(&server, path, &token).await, (StatusCode::OK, content));

    assert_error(
        &put(&server, path, &token, &json!([1])).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &put(
            &server,
            "/_matrix/client/v3/user/@alice:example.test/account_data/m.fully_read",
            &token,
            &json!({}),
        )
        .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_BAD_JSON",
    );
    server.add_user("bob").await;
    let bob = token_with_scope(&server, "bob", "TV", &scope("TV")).await;
    assert_error(
        &get(&server, path, &bob).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &put(&server, path, &bob, &json!({ "key": "evil" })).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

mxqr_testkit::backend_tests! {
    create_read_and_update_versions,
    invalid_version_bodies_and_other_users,
    account_data_round_trip_and_privacy,
}

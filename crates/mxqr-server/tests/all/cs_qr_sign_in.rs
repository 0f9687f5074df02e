//! The homeserver side of a QR sign-in, in order (docs/protocol.md §5 and §8): the existing device
//! bootstraps cross-signing, checks the new device does not exist yet, the new device gets
//! its token, checks `whoami`, uploads its keys signed by itself and by the self-signing key
//! in one request, and the existing device then sees it as cross-signed.

use mxqr_keys::{CrossSigningKeys, KeyUsage, cross_signing_key_id, verify_device_signed_by};
use mxqr_testkit::Backend;
use mxqr_testkit::cs::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn new_device_is_cross_signed_after_one_upload() {
    let server = start(Backend::Sqlite).await;

    // Existing device: signed in, keys uploaded, cross-signing bootstrapped.
    let mut existing = TestDevice::new(&server).await;
    let body = existing.upload_body(None, 5);
    let (status, counts) = post(
        &server,
        "/_matrix/client/v3/keys/upload",
        &existing.token,
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{counts}");
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 5);
    let cross_signing = CrossSigningKeys::new();
    let (status, answer) = post(
        &server,
        "/_matrix/client/v3/keys/device_signing/upload",
        &existing.token,
        &cross_signing.device_signing_upload_body(USER).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Before consent the new device's ID is unknown (the existing device requires the 404).
    let account = mxqr_keys::Account::new();
    let new_id = mxqr_keys::device_id(&account);
    let path = format!("/_matrix/client/v3/devices/{}", segment(&new_id));
    assert_error(
        &get(&server, &path, &existing.token).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Consent: tokens are issued, the device exists from now on.
    let new_token = token(&server, &new_id).await;
    let (status, device) = get(&server, &path, &existing.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(device["device_id"], new_id.as_str());
    let mut new_device = TestDevice {
        account,
        device_id: new_id.clone(),
        token: new_token,
    };

    // New device: whoami, then one upload with both signatures.
    let (status, me) = get(
        &server,
        "/_matrix/client/v3/account/whoami",
        &new_device.token,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user_id"], USER);
    assert_eq!(me["device_id"], new_id.as_str());
    let upload = new_device.upload_body(Some(&cross_signing), 10);
    let (status, counts) = post(
        &server,
        "/_matrix/client/v3/keys/upload",
        &new_device.token,
        &upload,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{counts}");
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 10);

    // matrix-sdk's background fetch of the default secret-storage key: 404 is fine.
    assert_error(
        &get(
            &server,
            "/_matrix/client/v3/user/@alice:example.test/account_data/m.secret_storage.default_key",
            &new_device.token,
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Existing device: the new device carries the self-signing key's signature.
    let (status, keys) = post(
        &server,
        "/_matrix/client/v3/keys/query",
        &existing.token,
        &json!({ "device_keys": { USER: [] } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(keys["failures"], json!({}));
    let published = &keys["device_keys"][USER][new_id.as_str()];
    assert!(published.is_object(), "new device missing: {keys}");
    let public = cross_signing.public_keys();
    verify_device_signed_by(published, USER, &public.self_signing).unwrap();
    assert!(
        published["signatures"][USER][format!("ed25519:{new_id}")].is_string(),
        "the device's own signature is kept"
    );
    // The published cross-signing keys are the ones the existing device uploaded.
    let master = &keys["master_keys"][USER];
    assert_eq!(
        mxqr_keys::cross_signing_public_key(master, USER, KeyUsage::Master).unwrap(),
        public.master
    );
    assert!(
        keys["self_signing_keys"][USER]["signatures"][USER][cross_signing_key_id(&public.master)]
            .is_string()
    );
    assert!(keys["user_signing_keys"][USER].is_object());
    // Both devices are listed.
    assert!(keys["device_keys"][USER][existing.device_id.as_str()].is_object());
}

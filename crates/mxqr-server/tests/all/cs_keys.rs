//! `/keys/upload`, `/keys/query`, `/keys/claim`, `/keys/device_signing/upload` and
//! `/keys/signatures/upload` with real keys: what verifies is published, what does not is
//! refused.

use mxqr_keys::{
    CrossSigningKeys, Ed25519SecretKey, KeyUsage, cross_signing_key_id, ed25519_key_id, sign_json,
    verify_device_signed_by, verify_json,
};
use mxqr_testkit::Backend;
use mxqr_testkit::cs::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const UPLOAD: &str = "/_matrix/client/v3/keys/upload";
const QUERY: &str = "/_matrix/client/v3/keys/query";
const CLAIM: &str = "/_matrix/client/v3/keys/claim";
const DEVICE_SIGNING: &str = "/_matrix/client/v3/keys/device_signing/upload";
const SIGNATURES: &str = "/_matrix/client/v3/keys/signatures/upload";

async fn query_user(server: &OAuthServer, token: &str, user: &str) -> Value {
    let (status, body) = post(
        server,
        QUERY,
        token,
        &json!({ "device_keys": { user: [] } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn bootstrap(server: &OAuthServer, device: &TestDevice) -> CrossSigningKeys {
    let keys = CrossSigningKeys::new();
    let (status, body) = post(
        server,
        DEVICE_SIGNING,
        &device.token,
        &keys.device_signing_upload_body(USER).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    keys
}

async fn upload_refuses_keys_of_another_device_or_user_and_bad_self_signatures(backend: Backend) {
    let server = start(backend).await;
    let device = TestDevice::new(&server).await;
    let other = mxqr_keys::Account::new();

    let cases = [
        // Another device's keys, properly self-signed.
        mxqr_keys::device_keys(&other, USER, &mxqr_keys::device_id(&other)).unwrap(),
        // This device's ID, another user.
        mxqr_keys::device_keys(&device.account, "@bob:example.test", &device.device_id).unwrap(),
        // Tampered after signing.
        {
            let mut keys = device.device_keys();
            keys["algorithms"] = json!(["m.olm.v1.curve25519-aes-sha2"]);
            keys
        },
        // Signed by another account's key under this device's key ID.
        {
            let mut keys = device.device_keys();
            keys["signatures"][USER][ed25519_key_id(&device.device_id)] =
                mxqr_keys::device_keys(&other, USER, &device.device_id).unwrap()["signatures"]
                    [USER][ed25519_key_id(&device.device_id)]
                .clone();
            keys
        },
        // No signature at all.
        {
            let mut keys = device.device_keys();
            keys.as_object_mut().unwrap().remove("signatures");
            keys
        },
    ];
    for keys in cases {
        assert_error(
            &post(
                &server,
                UPLOAD,
                &device.token,
                &json!({ "device_keys": keys }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    let published = query_user(&server, &device.token, USER).await;
    assert_eq!(published["device_keys"][USER], json!({}), "nothing stored");

    // Before any self-signing key is published, an own-user signature by an unknown key is
    // dropped, not refused: matrix-sdk's bootstrap signs with the self-signing key it
    // publishes next (docs/interop-matrix-sdk.md).
    let mut keys = device.device_keys();
    sign_json(
        &mut keys,
        USER,
        "ed25519:UPCOMING",
        &Ed25519SecretKey::new(),
    )
    .unwrap();
    let (status, body) = post(
        &server,
        UPLOAD,
        &device.token,
        &json!({ "device_keys": keys }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let published = query_user(&server, &device.token, USER).await;
    assert_eq!(
        published["device_keys"][USER][device.device_id.as_str()]["signatures"],
        device.device_keys()["signatures"],
        "the unverifiable signature is not published"
    );

    // The genuine keys go in; other users' signatures and `unsigned` are not published.
    let mut keys = device.device_keys();
    keys["signatures"]["@bob:example.test"] = json!({ "ed25519:X": "eA" });
    keys["unsigned"] = json!({ "device_display_name": "spoofed" });
    let (status, counts) = post(
        &server,
        UPLOAD,
        &device.token,
        &json!({ "device_keys": keys }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{counts}");
    assert_eq!(
        counts,
        json!({ "one_time_key_counts": { "signed_curve25519": 0 } })
    );
    let published = query_user(&server, &device.token, USER).await;
    let stored = &published["device_keys"][USER][device.device_id.as_str()];
    assert_eq!(
        stored["signatures"],
        device.device_keys()["signatures"],
        "only the self-signature: {stored}"
    );
    assert!(stored.get("unsigned").is_none(), "no spoofed display name");

    // Identical re-upload is fine; different keys for the same device are not.
    assert_eq!(
        post(
            &server,
            UPLOAD,
            &device.token,
            &json!({ "device_keys": device.device_keys() })
        )
        .await
        .0,
        StatusCode::OK
    );
    let imposter = mxqr_keys::device_keys(&other, USER, &device.device_id).unwrap();
    assert_error(
        &post(
            &server,
            UPLOAD,
            &device.token,
            &json!({ "device_keys": imposter }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

async fn forged_self_signing_signature_in_upload_is_refused(backend: Backend) {
    let server = start(backend).await;
    let existing = TestDevice::new(&server).await;
    let cross_signing = bootstrap(&server, &existing).await;
    let new_device = TestDevice::new(&server).await;
    let mut keys = new_device.device_keys();
    let ssk_id = cross_signing_key_id(&cross_signing.public_keys().self_signing);
    sign_json(&mut keys, USER, &ssk_id, &Ed25519SecretKey::new()).unwrap();
    assert_error(
        &post(
            &server,
            UPLOAD,
            &new_device.token,
            &json!({ "device_keys": keys }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Once a self-signing key is published, a signature by another own key (a stale
    // self-signing key) is refused loudly rather than dropped.
    let mut keys = new_device.device_keys();
    sign_json(&mut keys, USER, "ed25519:STALE", &Ed25519SecretKey::new()).unwrap();
    assert_error(
        &post(
            &server,
            UPLOAD,
            &new_device.token,
            &json!({ "device_keys": keys }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let published = query_user(&server, &existing.token, USER).await;
    assert!(
        published["device_keys"][USER]
            .get(new_device.device_id.as_str())
            .is_none()
    );
}

async fn one_time_keys_are_claimed_once_then_the_fallback_key(backend: Backend) {
    let server = start(backend).await;
    let mut device = TestDevice::new(&server).await;
    let body = device.upload_body(None, 2);
    let (status, counts) = post(&server, UPLOAD, &device.token, &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 2);
    // Re-sending the same keys (a retried request) changes nothing.
    let (_, counts) = post(&server, UPLOAD, &device.token, &body).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 2);

    let claimer = token(&server, "CLAIMER").await;
    let request =
        json!({ "one_time_keys": { USER: { device.device_id.as_str(): "signed_curve25519" } } });
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (status, claimed) = post(&server, CLAIM, &claimer, &request).await;
        assert_eq!(status, StatusCode::OK, "{claimed}");
        assert_eq!(claimed["failures"], json!({}));
        let keys = claimed["one_time_keys"][USER][device.device_id.as_str()]
            .as_object()
            .unwrap();
        assert_eq!(keys.len(), 1);
        let (id, key) = keys.iter().next().unwrap();
        assert!(id.starts_with("signed_curve25519:"));
        assert!(key.get("fallback").is_none());
        assert!(!seen.contains(id), "a one-time key is handed out once");
        seen.push(id.clone());
    }
    let ed25519 = device.account.identity_keys().ed25519;
    for _ in 0..2 {
        let (_, claimed) = post(&server, CLAIM, &claimer, &request).await;
        let keys = claimed["one_time_keys"][USER][device.device_id.as_str()]
            .as_object()
            .unwrap();
        let (_, key) = keys.iter().next().unwrap();
        assert_eq!(key["fallback"], true, "{claimed}");
        verify_json(key, USER, &ed25519_key_id(&device.device_id), &ed25519).unwrap();
    }
    let (_, counts) = post(&server, UPLOAD, &device.token, &json!({})).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 0);

    // Unknown devices give nothing; remote users are failures.
    let (status, claimed) = post(
        &server,
        CLAIM,
        &claimer,
        &json!({ "one_time_keys": {
            USER: { "NOPE": "signed_curve25519" },
            "@carol:elsewhere.test": { "X": "signed_curve25519" },
        } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claimed["one_time_keys"][USER], json!({}));
    assert!(claimed["failures"]["elsewhere.test"].is_object());
}

async fn one_time_keys_must_be_signed_by_the_device_and_ids_not_reused(backend: Backend) {
    let server = start(backend).await;
    let mut device = TestDevice::new(&server).await;
    let mut body = device.upload_body(None, 1);
    let (id, key) = body["one_time_keys"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    // Forged: a different key under the device's signature.
    let mut forged = key.clone();
    forged["key"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    body["one_time_keys"][&id] = forged;
    assert_error(
        &post(&server, UPLOAD, &device.token, &body).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Nothing of a refused request is stored.
    let (_, counts) = post(&server, UPLOAD, &device.token, &json!({})).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 0);
    let published = query_user(&server, &device.token, USER).await;
    assert_eq!(published["device_keys"][USER], json!({}));

    body["one_time_keys"][&id] = key.clone();
    assert_eq!(
        post(&server, UPLOAD, &device.token, &body).await.0,
        StatusCode::OK
    );
    // Same ID, another (validly signed) key: refused.
    let mut other = json!({ "key": "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB" });
    sign_json(
        &mut other,
        USER,
        &ed25519_key_id(&device.device_id),
        &device.account,
    )
    .unwrap();
    assert_error(
        &post(
            &server,
            UPLOAD,
            &device.token,
            &json!({ "one_time_keys": { id.as_str(): other } }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &post(
            &server,
            UPLOAD,
            &device.token,
            &json!({ "one_time_keys": { "noalgorithm": {} } }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

async fn malformed_bodies(backend: Backend) {
    let server = start(backend).await;
    let token = token(&server, "PHONE").await;
    assert_error(
        &post_raw(&server, UPLOAD, &token, "{\"device_keys\":").await,
        StatusCode::BAD_REQUEST,
        "M_NOT_JSON",
    );
    assert_error(
        &post(&server, UPLOAD, &token, &json!({ "one_time_keys": 5 })).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &post(&server, UPLOAD, &token, &json!([1, 2])).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &post(&server, QUERY, &token, &json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &post(
            &server,
            QUERY,
            &token,
            &json!({ "device_keys": { USER: "PHONE" } }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &post(
            &server,
            QUERY,
            &token,
            &json!({ "device_keys": { "alice": [] } }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &post(&server, SIGNATURES, &token, &json!({ USER: 1 })).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &post(
            &server,
            DEVICE_SIGNING,
            &token,
            &json!({ "master_key": { "user_id": USER } }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

async fn cross_signing_replacement_needs_the_account_page(backend: Backend) {
    let server = start(backend).await;
    let device = TestDevice::new(&server).await;
    let first = CrossSigningKeys::new();
    // Subkeys alone need a master key first.
    let mut partial = first.device_signing_upload_body(USER).unwrap();
    partial.as_object_mut().unwrap().remove("master_key");
    assert_error(
        &post(&server, DEVICE_SIGNING, &device.token, &partial).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // A self-signing key not signed by the master key.
    let mut bad = first.device_signing_upload_body(USER).unwrap();
    bad["self_signing_key"]["signatures"] = json!({});
    assert_error(
        &post(&server, DEVICE_SIGNING, &device.token, &bad).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    let body = first.device_signing_upload_body(USER).unwrap();
    assert_eq!(
        post(&server, DEVICE_SIGNING, &device.token, &body).await.0,
        StatusCode::OK
    );
    // A retried bootstrap with the same keys succeeds without approval.
    assert_eq!(
        post(&server, DEVICE_SIGNING, &device.token, &body).await.0,
        StatusCode::OK
    );

    let second = CrossSigningKeys::new();
    let replacement = second.device_signing_upload_body(USER).unwrap();
    let (status, uia) = post(&server, DEVICE_SIGNING, &device.token, &replacement).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{uia}");
    let stages: Vec<&Value> = uia["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["stages"][0])
        .collect();
    assert_eq!(
        stages,
        [&json!("m.oauth"), &json!("org.matrix.cross_signing_reset")]
    );
    let url = uia["params"]["m.oauth"]["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!(
            "{}/account?action=org.matrix.cross_signing_reset",
            server.base
        )
    );
    assert_eq!(uia["params"]["org.matrix.cross_signing_reset"]["url"], url);
    assert!(uia["session"].is_string());

    // Retrying before the user approved.
    let mut retry = replacement.clone();
    retry["auth"] = json!({ "type": "m.oauth", "session": uia["session"] });
    let (status, again) = post(&server, DEVICE_SIGNING, &device.token, &retry).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(again["errcode"], "M_FORBIDDEN");
    let published = query_user(&server, &device.token, USER).await;
    assert_eq!(
        mxqr_keys::cross_signing_public_key(
            &published["master_keys"][USER],
            USER,
            KeyUsage::Master
        )
        .unwrap(),
        first.public_keys().master,
        "old keys still in force"
    );

    // The account page approves (what its reset form stores); the retry goes through.
    let now = server.oauth.now_ms();
    server
        .db()
        .approve_cross_signing_reset("alice", now, now + 600_000)
        .await
        .unwrap();
    let (status, body) = post(&server, DEVICE_SIGNING, &device.token, &retry).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let published = query_user(&server, &device.token, USER).await;
    for usage in [
        KeyUsage::Master,
        KeyUsage::SelfSigning,
        KeyUsage::UserSigning,
    ] {
        let member = match usage {
            KeyUsage::Master => "master_keys",
            KeyUsage::SelfSigning => "self_signing_keys",
            KeyUsage::UserSigning => "user_signing_keys",
        };
        let key =
            mxqr_keys::cross_signing_public_key(&published[member][USER], USER, usage).unwrap();
        let expected = match usage {
            KeyUsage::Master => second.public_keys().master,
            KeyUsage::SelfSigning => second.public_keys().self_signing,
            KeyUsage::UserSigning => second.public_keys().user_signing,
        };
        assert_eq!(key, expected);
    }
    // The approval was for one reset.
    let third = CrossSigningKeys::new();
    assert_eq!(
        post(
            &server,
            DEVICE_SIGNING,
            &device.token,
            &third.device_signing_upload_body(USER).unwrap()
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
}

async fn signatures_upload_as_matrix_sdk_bootstraps(backend: Backend) {
    let server = start(backend).await;
    let mut device = TestDevice::new(&server).await;
    let body = device.upload_body(None, 1);
    assert_eq!(
        post(&server, UPLOAD, &device.token, &body).await.0,
        StatusCode::OK
    );
    let cross_signing = bootstrap(&server, &device).await;

    let mut signed_device = device.device_keys();
    cross_signing
        .sign_device_keys(&mut signed_device, USER)
        .unwrap();
    let signed_master = cross_signing
        .master_key_signed_by_device(&device.account, USER, &device.device_id)
        .unwrap();
    let master_id = cross_signing.public_keys().master.to_base64();
    let upload = mxqr_keys::signatures_upload_body([
        (USER, device.device_id.as_str(), signed_device),
        (USER, master_id.as_str(), signed_master),
    ]);
    let (status, answer) = post(&server, SIGNATURES, &device.token, &upload).await;
    assert_eq!(
        (status, &answer),
        (StatusCode::OK, &json!({ "failures": {} }))
    );

    let published = query_user(&server, &device.token, USER).await;
    let stored_device = &published["device_keys"][USER][device.device_id.as_str()];
    verify_device_signed_by(
        stored_device,
        USER,
        &cross_signing.public_keys().self_signing,
    )
    .unwrap();
    verify_json(
        &published["master_keys"][USER],
        USER,
        &ed25519_key_id(&device.device_id),
        &device.account.identity_keys().ed25519,
    )
    .unwrap();
}

async fn forged_and_misdirected_signatures_are_reported_and_not_stored(backend: Backend) {
    let server = start(backend).await;
    let device = TestDevice::new(&server).await;
    assert_eq!(
        post(
            &server,
            UPLOAD,
            &device.token,
            &json!({ "device_keys": device.device_keys() })
        )
        .await
        .0,
        StatusCode::OK
    );
    let cross_signing = bootstrap(&server, &device).await;
    let ssk_id = cross_signing_key_id(&cross_signing.public_keys().self_signing);

    // Claims to be the self-signing key, made with another key.
    let mut forged = device.device_keys();
    sign_json(&mut forged, USER, &ssk_id, &Ed25519SecretKey::new()).unwrap();
    // Correctly signed, but the content differs from the published keys.
    let mut altered = device.device_keys();
    altered["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    cross_signing.sign_device_keys(&mut altered, USER).unwrap();
    // Signed by the master key, which does not sign devices.
    let mut wrong_signer = device.device_keys();
    cross_signing
        .sign_with_master(&mut wrong_signer, USER)
        .unwrap();
    let mut unknown = device.device_keys();
    cross_signing.sign_device_keys(&mut unknown, USER).unwrap();

    let other_device = TestDevice::new(&server).await;
    let upload = json!({ USER: {
        device.device_id.as_str(): forged,
        "NOPE": unknown,
        other_device.device_id.as_str(): wrong_signer,
    }});
    let (status, answer) = post(&server, SIGNATURES, &device.token, &upload).await;
    assert_eq!(status, StatusCode::OK);
    let failures = &answer["failures"][USER];
    assert_eq!(
        failures[device.device_id.as_str()]["errcode"],
        "M_INVALID_SIGNATURE",
        "{answer}"
    );
    assert_eq!(failures["NOPE"]["errcode"], "M_NOT_FOUND", "{answer}");
    // The other device has no keys uploaded: nothing to sign.
    assert_eq!(
        failures[other_device.device_id.as_str()]["errcode"],
        "M_NOT_FOUND"
    );

    let (_, answer) = post(
        &server,
        SIGNATURES,
        &device.token,
        &json!({ USER: { device.device_id.as_str(): altered } }),
    )
    .await;
    assert_eq!(
        answer["failures"][USER][device.device_id.as_str()]["errcode"],
        "M_INVALID_SIGNATURE"
    );
    let mut by_master = device.device_keys();
    cross_signing
        .sign_with_master(&mut by_master, USER)
        .unwrap();
    let (_, answer) = post(
        &server,
        SIGNATURES,
        &device.token,
        &json!({ USER: { device.device_id.as_str(): by_master } }),
    )
    .await;
    assert_eq!(
        answer["failures"][USER][device.device_id.as_str()]["errcode"],
        "M_INVALID_SIGNATURE"
    );

    let published = query_user(&server, &device.token, USER).await;
    assert_eq!(
        published["device_keys"][USER][device.device_id.as_str()]["signatures"],
        device.device_keys()["signatures"],
        "no forged signature stored"
    );
}

async fn user_signing_signatures_are_shown_only_to_the_signer(backend: Backend) {
    let server = start(backend).await;
    server.add_user("bob").await;
    let alice = TestDevice::new(&server).await;
    let alice_keys = bootstrap(&server, &alice).await;
    let bob_token = token_with_scope(&server, "bob", "BOBPHONE", &scope("BOBPHONE")).await;
    let bob_keys = CrossSigningKeys::new();
    let bob_id = "@bob:example.test";
    assert_eq!(
        post(
            &server,
            DEVICE_SIGNING,
            &bob_token,
            &bob_keys.device_signing_upload_body(bob_id).unwrap()
        )
        .await
        .0,
        StatusCode::OK
    );

    // Alice sees Bob's master and self-signing keys, never his user-signing key.
    let seen = query_user(&server, &alice.token, bob_id).await;
    assert!(seen["master_keys"][bob_id].is_object());
    assert!(seen["self_signing_keys"][bob_id].is_object());
    assert!(seen["user_signing_keys"].get(bob_id).is_none());

    let mut master = seen["master_keys"][bob_id].clone();
    alice_keys.sign_other_master_key(&mut master, USER).unwrap();
    let bob_master_id = bob_keys.public_keys().master.to_base64();
    let usk_id = cross_signing_key_id(&alice_keys.public_keys().user_signing);

    // Forged first: made with the wrong key.
    let mut forged = seen["master_keys"][bob_id].clone();
    sign_json(&mut forged, USER, &usk_id, &Ed25519SecretKey::new()).unwrap();
    let (_, answer) = post(
        &server,
        SIGNATURES,
        &alice.token,
        &json!({ bob_id: { bob_master_id.as_str(): forged } }),
    )
    .await;
    assert_eq!(
        answer["failures"][bob_id][bob_master_id.as_str()]["errcode"],
        "M_INVALID_SIGNATURE"
    );

    let (status, answer) = post(
        &server,
        SIGNATURES,
        &alice.token,
        &json!({ bob_id: { bob_master_id.as_str(): master } }),
    )
    .await;
    assert_eq!(
        (status, &answer),
        (StatusCode::OK, &json!({ "failures": {} }))
    );

    let seen = query_user(&server, &alice.token, bob_id).await;
    verify_json(
        &seen["master_keys"][bob_id],
        USER,
        &usk_id,
        &alice_keys.public_keys().user_signing,
    )
    .unwrap();
    let own_view = query_user(&server, &bob_token, bob_id).await;
    assert!(
        own_view["master_keys"][bob_id]["signatures"]
            .get(USER)
            .is_none()
    );
    assert!(own_view["user_signing_keys"][bob_id].is_object());

    // Unknown users: nothing for local ones, a failure for remote ones.
    let (status, answer) = post(
        &server,
        QUERY,
        &alice.token,
        &json!({ "device_keys": { "@nobody:example.test": [], "@carol:elsewhere.test": [] } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["device_keys"]["@nobody:example.test"], json!({}));
    assert!(answer["failures"]["elsewhere.test"].is_object());
}

async fn a_recreated_device_id_starts_without_the_old_keys(backend: Backend) {
    let server = start(backend).await;
    let mut first = TestDevice::new(&server).await;
    let body = first.upload_body(None, 3);
    assert_eq!(
        post(&server, UPLOAD, &first.token, &body).await.0,
        StatusCode::OK
    );
    // Deleted through the account page (not through this API), then the same ID comes back
    // with another identity.
    server.clock.advance(std::time::Duration::from_secs(1));
    assert!(
        server
            .db()
            .delete_device("alice", &first.device_id, server.oauth.now_ms())
            .await
            .unwrap()
    );
    server.clock.advance(std::time::Duration::from_secs(1));
    let observer = token(&server, "OBSERVER").await;
    let published = query_user(&server, &observer, USER).await;
    assert!(
        published["device_keys"][USER]
            .get(first.device_id.as_str())
            .is_none()
    );

    let reborn_token = token(&server, &first.device_id).await;
    let other = mxqr_keys::Account::new();
    let claim =
        json!({ "one_time_keys": { USER: { first.device_id.as_str(): "signed_curve25519" } } });
    let (_, claimed) = post(&server, CLAIM, &observer, &claim).await;
    assert_eq!(
        claimed["one_time_keys"][USER],
        json!({}),
        "old one-time keys are gone"
    );
    let keys = mxqr_keys::device_keys(&other, USER, &first.device_id).unwrap();
    let (status, counts) = post(
        &server,
        UPLOAD,
        &reborn_token,
        &json!({ "device_keys": keys }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{counts}");
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 0);
    let published = query_user(&server, &observer, USER).await;
    assert_eq!(
        published["device_keys"][USER][first.device_id.as_str()],
        keys
    );
}

mxqr_testkit::backend_tests! {
    upload_refuses_keys_of_another_device_or_user_and_bad_self_signatures,
    forged_self_signing_signature_in_upload_is_refused,
    one_time_keys_are_claimed_once_then_the_fallback_key,
    one_time_keys_must_be_signed_by_the_device_and_ids_not_reused,
    malformed_bodies,
    cross_signing_replacement_needs_the_account_page,
    signatures_upload_as_matrix_sdk_bootstraps,
    forged_and_misdirected_signatures_are_reported_and_not_stored,
    user_signing_signatures_are_shown_only_to_the_signer,
    a_recreated_device_id_starts_without_the_old_keys,
}

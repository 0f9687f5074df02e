//! Device keys built from a vodozemac `Account`, checked with vodozemac's own verification
//! and with the server-side checks.

use mxqr_keys::device::{
    MEGOLM_V1_ALGORITHM, OLM_V1_ALGORITHM, signed_fallback_keys, signed_one_time_keys,
};
use mxqr_keys::{
    Account, CrossSigningKeys, Ed25519Signature, KeyDecodeError, KeysUploadError, SignatureError,
    VerifyError, device_id, device_keys, keys_upload_body, signing_input, verify_device_keys,
    verify_device_signed_by,
};
use serde_json::{Value, json};

const USER: &str = "@alice:example.org";

/// Verifies `signatures.<USER>.<key_id>` of `object` with vodozemac directly, independent of
/// this crate's `verify_json`.
fn vodozemac_verify(object: &Value, key_id: &str, account: &Account) {
    let signature = object["signatures"][USER][key_id].as_str().unwrap();
    let signature = Ed25519Signature::from_base64(signature).unwrap();
    let message = signing_input(object).unwrap();
    account
        .ed25519_key()
        .verify(message.as_bytes(), &signature)
        .unwrap();
}

#[test]
fn device_id_is_the_unpadded_base64_curve25519_key() {
    let account = Account::new();
    let id = device_id(&account);
    assert_eq!(id.len(), 43);
    assert_eq!(id, account.curve25519_key().to_base64());
    assert!(!id.contains('='));
}

#[test]
fn device_keys_shape_and_self_signature() {
    let account = Account::new();
    let id = device_id(&account);
    let keys = device_keys(&account, USER, &id).unwrap();
    assert_eq!(keys["user_id"], USER);
    assert_eq!(keys["device_id"], id.as_str());
    assert_eq!(
        keys["algorithms"],
        json!([OLM_V1_ALGORITHM, MEGOLM_V1_ALGORITHM])
    );
    assert_eq!(
        keys["keys"][format!("curve25519:{id}")],
        account.curve25519_key().to_base64()
    );
    assert_eq!(
        keys["keys"][format!("ed25519:{id}")],
        account.ed25519_key().to_base64()
    );
    vodozemac_verify(&keys, &format!("ed25519:{id}"), &account);

    let identity = verify_device_keys(&keys, USER, &id).unwrap();
    assert_eq!(identity.ed25519, account.ed25519_key());
    assert_eq!(identity.curve25519, account.curve25519_key());
}

#[test]
fn server_refuses_keys_for_someone_else() {
    let account = Account::new();
    let id = device_id(&account);
    let keys = device_keys(&account, USER, &id).unwrap();
    assert!(matches!(
        verify_device_keys(&keys, "@mallory:example.org", &id),
        Err(VerifyError::Mismatch {
            field: "user_id",
            ..
        })
    ));
    assert!(matches!(
        verify_device_keys(&keys, USER, "OTHERDEVICE"),
        Err(VerifyError::Mismatch {
            field: "device_id",
            ..
        })
    ));
}

#[test]
fn server_refuses_tampered_or_malformed_device_keys() {
    let account = Account::new();
    let id = device_id(&account);
    let keys = device_keys(&account, USER, &id).unwrap();
    let curve = format!("curve25519:{id}");
    let ed = format!("ed25519:{id}");

    // Another device's Curve25519 key swapped in: the self-signature no longer matches.
    let mut swapped = keys.clone();
    swapped["keys"][&curve] = json!(Account::new().curve25519_key().to_base64());
    assert_eq!(
        verify_device_keys(&swapped, USER, &id),
        Err(VerifyError::Signature(SignatureError::BadSignature))
    );

    // Another account's Ed25519 key swapped in: its key did not sign this.
    let mut other_signer = keys.clone();
    other_signer["keys"][&ed] = json!(Account::new().ed25519_key().to_base64());
    assert_eq!(
        verify_device_keys(&other_signer, USER, &id),
        Err(VerifyError::Signature(SignatureError::BadSignature))
    );

    let mut truncated = keys.clone();
    truncated["keys"][&ed] = json!("AAAA");
    assert_eq!(
        verify_device_keys(&truncated, USER, &id),
        Err(VerifyError::InvalidKey {
            key_id: ed.clone(),
            reason: KeyDecodeError::Length {
                expected: 32,
                actual: 3
            }
        })
    );

    // 44 unpadded characters (33 bytes) would panic vodozemac's own from_base64.
    let mut overlong = keys.clone();
    overlong["keys"][&ed] = json!("A".repeat(44));
    assert!(matches!(
        verify_device_keys(&overlong, USER, &id),
        Err(VerifyError::InvalidKey { .. })
    ));

    let mut no_curve = keys.clone();
    no_curve["keys"].as_object_mut().unwrap().remove(&curve);
    assert_eq!(
        verify_device_keys(&no_curve, USER, &id),
        Err(VerifyError::MissingKey(curve.clone()))
    );

    let mut unsigned = keys.clone();
    unsigned.as_object_mut().unwrap().remove("signatures");
    assert!(matches!(
        verify_device_keys(&unsigned, USER, &id),
        Err(VerifyError::Signature(
            SignatureError::MissingSignature { .. }
        ))
    ));

    assert_eq!(
        verify_device_keys(&json!("x"), USER, &id),
        Err(VerifyError::NotAnObject)
    );
    assert_eq!(
        verify_device_keys(&json!({"user_id": 1}), USER, &id),
        Err(VerifyError::WrongType("user_id"))
    );
}

#[test]
fn one_time_and_fallback_keys_are_signed_by_the_device() {
    let mut account = Account::new();
    account.generate_one_time_keys(3);
    account.generate_fallback_key();
    let id = device_id(&account);
    let key_id = format!("ed25519:{id}");

    let otks = signed_one_time_keys(&account, USER, &id).unwrap();
    assert_eq!(otks.len(), 3);
    let published: Vec<String> = account
        .one_time_keys()
        .values()
        .map(|k| k.to_base64())
        .collect();
    for (name, object) in &otks {
        assert!(name.starts_with("signed_curve25519:"), "{name}");
        assert!(published.contains(&object["key"].as_str().unwrap().to_owned()));
        assert!(object.get("fallback").is_none());
        vodozemac_verify(object, &key_id, &account);
    }

    let fallback = signed_fallback_keys(&account, USER, &id).unwrap();
    assert_eq!(fallback.len(), 1);
    for object in fallback.values() {
        assert_eq!(object["fallback"], true);
        vodozemac_verify(object, &key_id, &account);
    }
}

#[test]
fn keys_upload_body_without_cross_signing() {
    let mut account = Account::new();
    let body = keys_upload_body(&mut account, USER, None, 5).unwrap();
    let id = device_id(&account);
    verify_device_keys(&body["device_keys"], USER, &id).unwrap();
    assert_eq!(body["one_time_keys"].as_object().unwrap().len(), 5);
    assert_eq!(body["fallback_keys"].as_object().unwrap().len(), 1);
    // Only the device's own signature.
    assert_eq!(
        body["device_keys"]["signatures"][USER]
            .as_object()
            .unwrap()
            .len(),
        1
    );

    // A retry before publishing reuses the same keys.
    let again = keys_upload_body(&mut account, USER, None, 5).unwrap();
    assert_eq!(again["one_time_keys"], body["one_time_keys"]);
    assert_eq!(again["fallback_keys"], body["fallback_keys"]);

    account.mark_keys_as_published();
    assert!(account.one_time_keys().is_empty());
}

#[test]
fn keys_upload_body_with_cross_signing_signs_the_device() {
    let mut account = Account::new();
    let cross_signing = CrossSigningKeys::new();
    let body = keys_upload_body(&mut account, USER, Some(&cross_signing), 0).unwrap();
    let id = device_id(&account);
    let device_keys = &body["device_keys"];
    verify_device_keys(device_keys, USER, &id).unwrap();
    verify_device_signed_by(device_keys, USER, &cross_signing.self_signing.public_key()).unwrap();
    assert!(body["one_time_keys"].as_object().unwrap().is_empty());
    assert_eq!(body["fallback_keys"].as_object().unwrap().len(), 1);
}

#[test]
fn too_many_one_time_keys_is_an_error() {
    let mut account = Account::new();
    let max = account.max_number_of_one_time_keys();
    assert_eq!(
        keys_upload_body(&mut account, USER, None, usize::MAX),
        Err(KeysUploadError::TooManyOneTimeKeys {
            requested: usize::MAX,
            max
        })
    );
    assert!(account.one_time_keys().is_empty());
    let body = keys_upload_body(&mut account, USER, None, max).unwrap();
    assert_eq!(body["one_time_keys"].as_object().unwrap().len(), max);
}

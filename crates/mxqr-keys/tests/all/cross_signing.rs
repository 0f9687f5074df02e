//! Cross-signing: seeds from `m.login.secrets`, the upload bodies, and the chain
//! master → self-signing → device as a server checks it.

use mxqr_keys::cross_signing::KeyUsage;
use mxqr_keys::{
    Account, CrossSigningKeys, KeyDecodeError, SeedImportError, SignatureError, VerifyError,
    cross_signing_key_id, cross_signing_public_key, device_id, device_keys, keys_upload_body,
    seed_from_secret, seed_to_secret, signatures_upload_body, verify_cross_signing_key,
    verify_device_signed_by, verify_device_signing_upload, verify_json,
};
use mxqr_proto::messages::{CrossSigningSecrets, Secret, SecretsMessage};
use serde_json::json;

const USER: &str = "@alice:example.org";

#[test]
fn seeds_round_trip_through_m_login_secrets() {
    let keys = CrossSigningKeys::new();
    let secrets = keys.to_secrets();
    for secret in [
        &secrets.master_key,
        &secrets.self_signing_key,
        &secrets.user_signing_key,
    ] {
        assert_eq!(secret.expose().len(), 43);
        assert!(!secret.expose().contains('='));
    }
    // Through the wire format of the message, as the new device receives it.
    let message = SecretsMessage {
        cross_signing: secrets,
        backup: None,
    };
    let wire = serde_json::to_string(&message).unwrap();
    let received: SecretsMessage = serde_json::from_str(&wire).unwrap();
    let imported = CrossSigningKeys::from_secrets(&received.cross_signing).unwrap();
    assert_eq!(imported.public_keys(), keys.public_keys());
    assert_eq!(imported.to_secrets(), received.cross_signing);
}

#[test]
fn known_seed_gives_known_public_key() {
    // The spec appendix's test-vector seed; its public key as signedjson derives it.
    let key =
        seed_from_secret(&Secret::new("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")).unwrap();
    assert_eq!(
        key.public_key().to_base64(),
        "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
    );
    // The spec's seed has non-zero trailing bits in its last character; exporting writes
    // the canonical spelling of the same 32 bytes.
    assert_eq!(
        seed_to_secret(&key).expose(),
        "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA0"
    );
    // Padded input is accepted too.
    let padded =
        seed_from_secret(&Secret::new("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1=")).unwrap();
    assert_eq!(padded.public_key(), key.public_key());
}

#[test]
fn bad_seeds_are_refused_with_the_key_named() {
    let good = seed_to_secret(&mxqr_keys::Ed25519SecretKey::new());
    let secrets = |master: &str, ssk: Secret| CrossSigningSecrets {
        master_key: Secret::new(master),
        self_signing_key: ssk,
        user_signing_key: good.clone(),
    };
    assert_eq!(
        CrossSigningKeys::from_secrets(&secrets("AAAA", good.clone())).unwrap_err(),
        SeedImportError {
            usage: KeyUsage::Master,
            reason: KeyDecodeError::Length {
                expected: 32,
                actual: 3
            }
        }
    );
    assert_eq!(
        CrossSigningKeys::from_secrets(&secrets(good.expose(), Secret::new("!!"))).unwrap_err(),
        SeedImportError {
            usage: KeyUsage::SelfSigning,
            reason: KeyDecodeError::Base64
        }
    );
    // 44 unpadded characters: vodozemac's from_base64 would panic here.
    assert!(seed_from_secret(&Secret::new("A".repeat(44))).is_err());
}

#[test]
fn device_signing_upload_body_shape_and_signatures() {
    let keys = CrossSigningKeys::new();
    let public = keys.public_keys();
    let body = keys.device_signing_upload_body(USER).unwrap();

    let master_b64 = public.master.to_base64();
    assert_eq!(
        body["master_key"],
        json!({
            "user_id": USER,
            "usage": ["master"],
            "keys": {(format!("ed25519:{master_b64}")): master_b64},
        })
    );
    assert_eq!(body["self_signing_key"]["usage"], json!(["self_signing"]));
    assert_eq!(body["user_signing_key"]["usage"], json!(["user_signing"]));

    assert_eq!(verify_device_signing_upload(&body, USER).unwrap(), public);
    assert!(matches!(
        verify_device_signing_upload(&body, "@mallory:example.org"),
        Err(VerifyError::Mismatch {
            field: "user_id",
            ..
        })
    ));
}

#[test]
fn chain_master_to_self_signing_to_device() {
    let cross_signing = CrossSigningKeys::new();
    let upload = cross_signing.device_signing_upload_body(USER).unwrap();

    let mut account = Account::new();
    let keys_upload = keys_upload_body(&mut account, USER, Some(&cross_signing), 1).unwrap();

    // What a server (or another client) does with only the public objects:
    let master = cross_signing_public_key(&upload["master_key"], USER, KeyUsage::Master).unwrap();
    let self_signing = verify_cross_signing_key(
        &upload["self_signing_key"],
        USER,
        KeyUsage::SelfSigning,
        &master,
    )
    .unwrap();
    verify_device_signed_by(&keys_upload["device_keys"], USER, &self_signing).unwrap();
}

#[test]
fn chain_breaks_on_foreign_or_tampered_keys() {
    let cross_signing = CrossSigningKeys::new();
    let other = CrossSigningKeys::new();
    let upload = cross_signing.device_signing_upload_body(USER).unwrap();
    let foreign = other.device_signing_upload_body(USER).unwrap();
    let master = cross_signing.public_keys().master;

    // Another user's self-signing key object is not signed by our master key.
    assert_eq!(
        verify_cross_signing_key(
            &foreign["self_signing_key"],
            USER,
            KeyUsage::SelfSigning,
            &master
        ),
        Err(VerifyError::Signature(SignatureError::MissingSignature {
            user_id: USER.into(),
            key_id: cross_signing_key_id(&master),
        }))
    );

    // A signature moved under our master key's ID, made by another master key.
    let mut forged = foreign["self_signing_key"].clone();
    let sig = forged["signatures"][USER][cross_signing_key_id(&other.public_keys().master)].clone();
    forged["signatures"][USER][cross_signing_key_id(&master)] = sig;
    assert_eq!(
        verify_cross_signing_key(&forged, USER, KeyUsage::SelfSigning, &master),
        Err(VerifyError::Signature(SignatureError::BadSignature))
    );

    // The wrong usage.
    assert_eq!(
        verify_cross_signing_key(
            &upload["user_signing_key"],
            USER,
            KeyUsage::SelfSigning,
            &master
        ),
        Err(VerifyError::MissingUsage("self_signing"))
    );

    // A key ID that does not name its key.
    let mut renamed = upload["self_signing_key"].clone();
    let value = renamed["keys"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    renamed["keys"] = json!({"ed25519:SOMETHINGELSE": value});
    assert_eq!(
        verify_cross_signing_key(&renamed, USER, KeyUsage::SelfSigning, &master),
        Err(VerifyError::KeyIdMismatch("ed25519:SOMETHINGELSE".into()))
    );

    let mut two = upload["self_signing_key"].clone();
    two["keys"]["ed25519:x"] = json!("x");
    assert_eq!(
        verify_cross_signing_key(&two, USER, KeyUsage::SelfSigning, &master),
        Err(VerifyError::KeyCount(2))
    );

    // A device signed by a self-signing key that is not the user's.
    let account = Account::new();
    let id = device_id(&account);
    let mut device = device_keys(&account, USER, &id).unwrap();
    other.sign_device_keys(&mut device, USER).unwrap();
    assert!(matches!(
        verify_device_signed_by(&device, USER, &cross_signing.public_keys().self_signing),
        Err(VerifyError::Signature(
            SignatureError::MissingSignature { .. }
        ))
    ));
    // And a device field changed after signing.
    cross_signing.sign_device_keys(&mut device, USER).unwrap();
    verify_device_signed_by(&device, USER, &cross_signing.public_keys().self_signing).unwrap();
    device["algorithms"] = json!(["m.olm.v1.curve25519-aes-sha2"]);
    assert_eq!(
        verify_device_signed_by(&device, USER, &cross_signing.public_keys().self_signing),
        Err(VerifyError::Signature(SignatureError::BadSignature))
    );
}

#[test]
fn signatures_upload_body_groups_by_user_and_id() {
    let cross_signing = CrossSigningKeys::new();
    let account = Account::new();
    let id = device_id(&account);
    let mut device = device_keys(&account, USER, &id).unwrap();
    cross_signing.sign_device_keys(&mut device, USER).unwrap();
    let master = cross_signing
        .master_key_signed_by_device(&account, USER, &id)
        .unwrap();
    let master_b64 = cross_signing.public_keys().master.to_base64();

    let body = signatures_upload_body([
        (USER, id.as_str(), device.clone()),
        (USER, master_b64.as_str(), master.clone()),
    ]);
    assert_eq!(body[USER][&id], device);
    assert_eq!(body[USER][&master_b64], master);
    assert_eq!(body.as_object().unwrap().len(), 1);
    verify_json(
        &body[USER][&master_b64],
        USER,
        &format!("ed25519:{id}"),
        &account.ed25519_key(),
    )
    .unwrap();
}

#[test]
fn user_signing_key_signs_other_users_master_key() {
    let ours = CrossSigningKeys::new();
    let theirs = CrossSigningKeys::new();
    let mut their_master = theirs.key_object("@bob:example.org", KeyUsage::Master);
    ours.sign_other_master_key(&mut their_master, USER).unwrap();
    let user_signing = ours.public_keys().user_signing;
    verify_json(
        &their_master,
        USER,
        &cross_signing_key_id(&user_signing),
        &user_signing,
    )
    .unwrap();
}

//! Key backup: the `m.login.secrets` key, its public key and the signed `auth_data`.

use mxqr_keys::backup::BACKUP_ALGORITHM;
use mxqr_keys::{
    Account, BackupImportError, BackupKey, CrossSigningKeys, KeyDecodeError, SignatureError,
    VerifyError, device_id, verify_backup_auth_data, verify_json,
};
use mxqr_proto::messages::{BackupSecrets, Secret};
use serde_json::json;

const USER: &str = "@alice:example.org";

#[test]
fn key_round_trips_through_m_login_secrets() {
    let key = BackupKey::new();
    let secrets = key.to_backup_secrets("7");
    assert_eq!(secrets.algorithm, BACKUP_ALGORITHM);
    assert_eq!(secrets.backup_version, "7");
    assert_eq!(secrets.key.expose().len(), 43);
    let wire = serde_json::to_string(&secrets).unwrap();
    let received: BackupSecrets = serde_json::from_str(&wire).unwrap();
    let imported = BackupKey::from_backup_secrets(&received).unwrap();
    assert_eq!(imported.public_key(), key.public_key());
    assert_eq!(imported.to_secret(), key.to_secret());
}

#[test]
fn public_key_is_the_curve25519_public_of_the_secret() {
    // RFC 7748 section 6.1: Alice's private key and public key.
    let private = [
        0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2, 0x66,
        0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5, 0x1d, 0xb9,
        0x2c, 0x2a,
    ];
    let public = [
        0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e, 0xf7,
        0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e, 0xaa, 0x9b,
        0x4e, 0x6a,
    ];
    let key = BackupKey::from_secret(&Secret::new(mxqr_keys::encode_base64(private))).unwrap();
    assert_eq!(key.public_key().to_bytes(), public);
}

#[test]
fn bad_backup_secrets_are_refused() {
    let key = BackupKey::new();
    let mut secrets = key.to_backup_secrets("1");
    secrets.algorithm = "m.megolm_backup.v1.aes-hmac-sha2".into();
    assert_eq!(
        BackupKey::from_backup_secrets(&secrets).unwrap_err(),
        BackupImportError::UnsupportedAlgorithm("m.megolm_backup.v1.aes-hmac-sha2".into())
    );
    assert_eq!(
        BackupKey::from_secret(&Secret::new("AAAA")).unwrap_err(),
        KeyDecodeError::Length {
            expected: 32,
            actual: 3
        }
    );
    assert!(BackupKey::from_secret(&Secret::new("A".repeat(44))).is_err());
}

#[test]
fn auth_data_signed_by_master_and_device() {
    let key = BackupKey::new();
    let cross_signing = CrossSigningKeys::new();
    let account = Account::new();
    let id = device_id(&account);
    let body = key
        .create_version_body(USER, &cross_signing, Some((&account, &id)))
        .unwrap();
    assert_eq!(body["algorithm"], BACKUP_ALGORITHM);
    let auth_data = &body["auth_data"];
    assert_eq!(auth_data["public_key"], key.public_key().to_base64());
    assert_eq!(auth_data["signatures"][USER].as_object().unwrap().len(), 2);

    let master = cross_signing.public_keys().master;
    assert_eq!(
        verify_backup_auth_data(auth_data, USER, &master).unwrap(),
        key.public_key()
    );
    verify_json(
        auth_data,
        USER,
        &format!("ed25519:{id}"),
        &account.ed25519_key(),
    )
    .unwrap();
}

#[test]
fn auth_data_with_swapped_key_or_foreign_master_is_refused() {
    let key = BackupKey::new();
    let cross_signing = CrossSigningKeys::new();
    let master = cross_signing.public_keys().master;
    let auth_data = key.auth_data(USER, &cross_signing, None).unwrap();
    assert_eq!(auth_data["signatures"][USER].as_object().unwrap().len(), 1);

    // A server swapping in its own backup key (to read future room keys) is caught.
    let mut swapped = auth_data.clone();
    swapped["public_key"] = json!(BackupKey::new().public_key().to_base64());
    assert_eq!(
        verify_backup_auth_data(&swapped, USER, &master),
        Err(VerifyError::Signature(SignatureError::BadSignature))
    );

    let other = CrossSigningKeys::new().public_keys().master;
    assert!(matches!(
        verify_backup_auth_data(&auth_data, USER, &other),
        Err(VerifyError::Signature(
            SignatureError::MissingSignature { .. }
        ))
    ));

    assert_eq!(
        verify_backup_auth_data(&json!({}), USER, &master),
        Err(VerifyError::MissingField("public_key"))
    );
}

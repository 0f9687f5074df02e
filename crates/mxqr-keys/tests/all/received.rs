//! The new device's checks of received `m.login.secrets` against the keys the homeserver
//! publishes: only the user's own published keys are accepted.

use mxqr_keys::cross_signing::KeyUsage;
use mxqr_keys::{
    BACKUP_ALGORITHM, BackupKey, BackupRefusal, CrossSigningKeys, CrossSigningRefusal,
    SeedImportError, VerifyError, check_received_backup, check_received_cross_signing,
    published_cross_signing_keys, seed_to_secret,
};
use mxqr_proto::messages::{CrossSigningSecrets, Secret};
use serde_json::{Value, json};

const USER: &str = "@alice:example.org";

/// A `/keys/query` answer publishing `keys` for `USER`, as the user sees it.
fn published(keys: &CrossSigningKeys) -> Value {
    let body = keys.device_signing_upload_body(USER).unwrap();
    json!({
        "device_keys": { USER: {} },
        "master_keys": { USER: body["master_key"] },
        "self_signing_keys": { USER: body["self_signing_key"] },
        "user_signing_keys": { USER: body["user_signing_key"] },
        "failures": {},
    })
}

fn fresh_seed() -> Secret {
    seed_to_secret(&CrossSigningKeys::new().master)
}

#[test]
fn the_published_keys_are_accepted() {
    let keys = CrossSigningKeys::new();
    let query = published(&keys);
    assert_eq!(
        published_cross_signing_keys(&query, USER).unwrap(),
        keys.public_keys()
    );
    let imported = check_received_cross_signing(&keys.to_secrets(), &query, USER).unwrap();
    assert_eq!(imported.public_keys(), keys.public_keys());
}

#[test]
fn each_key_must_be_the_published_one() {
    let keys = CrossSigningKeys::new();
    let query = published(&keys);
    type Swap = fn(&mut CrossSigningSecrets, Secret);
    let swaps: [(KeyUsage, Swap); 3] = [
        (KeyUsage::Master, |s, k| s.master_key = k),
        (KeyUsage::SelfSigning, |s, k| s.self_signing_key = k),
        (KeyUsage::UserSigning, |s, k| s.user_signing_key = k),
    ];
    for (usage, swap) in swaps {
        let mut received = keys.to_secrets();
        swap(&mut received, fresh_seed());
        let refused = check_received_cross_signing(&received, &query, USER).unwrap_err();
        assert_eq!(refused, CrossSigningRefusal::Mismatch(usage));
        assert!(
            refused.to_string().contains(&usage.to_string()),
            "{refused}"
        );
    }
}

#[test]
fn keys_of_another_user_are_refused() {
    // Whole, self-consistent keys of someone else: each key mismatches.
    let published_keys = CrossSigningKeys::new();
    let other = CrossSigningKeys::new();
    let refused =
        check_received_cross_signing(&other.to_secrets(), &published(&published_keys), USER)
            .unwrap_err();
    assert_eq!(refused, CrossSigningRefusal::Mismatch(KeyUsage::Master));
}

#[test]
fn the_published_self_signing_key_needs_the_master_signature() {
    let keys = CrossSigningKeys::new();
    let other = CrossSigningKeys::new();
    for usage in [KeyUsage::SelfSigning, KeyUsage::UserSigning] {
        let member = match usage {
            KeyUsage::SelfSigning => "self_signing_keys",
            _ => "user_signing_keys",
        };
        // The key object signed by another master key instead.
        let mut query = published(&keys);
        let mut object = keys.key_object(USER, usage);
        other.sign_with_master(&mut object, USER).unwrap();
        query[member][USER] = object;
        let refused = check_received_cross_signing(&keys.to_secrets(), &query, USER).unwrap_err();
        assert!(
            matches!(
                refused,
                CrossSigningRefusal::InvalidPublished {
                    usage: u,
                    source: VerifyError::Signature(_)
                } if u == usage
            ),
            "{usage:?}: {refused:?}"
        );
        // Not signed at all.
        query[member][USER] = keys.key_object(USER, usage);
        assert!(matches!(
            check_received_cross_signing(&keys.to_secrets(), &query, USER),
            Err(CrossSigningRefusal::InvalidPublished { .. })
        ));
    }
}

#[test]
fn nothing_published_refuses_the_keys() {
    let keys = CrossSigningKeys::new();
    let nothing = json!({ "device_keys": { USER: {} }, "failures": {} });
    assert_eq!(
        check_received_cross_signing(&keys.to_secrets(), &nothing, USER).unwrap_err(),
        CrossSigningRefusal::NotPublished(KeyUsage::Master)
    );
    // Keys published for another user do not count.
    let mut elsewhere = published(&keys);
    for member in ["master_keys", "self_signing_keys", "user_signing_keys"] {
        let key = elsewhere[member][USER].take();
        elsewhere[member] = json!({ "@bob:example.org": key });
    }
    assert_eq!(
        check_received_cross_signing(&keys.to_secrets(), &elsewhere, USER).unwrap_err(),
        CrossSigningRefusal::NotPublished(KeyUsage::Master)
    );
    let mut no_usk = published(&keys);
    no_usk["user_signing_keys"] = json!({});
    assert_eq!(
        check_received_cross_signing(&keys.to_secrets(), &no_usk, USER).unwrap_err(),
        CrossSigningRefusal::NotPublished(KeyUsage::UserSigning)
    );
}

#[test]
fn unreadable_keys_are_refused_not_a_panic() {
    let keys = CrossSigningKeys::new();
    let mut received = keys.to_secrets();
    received.self_signing_key = Secret::new("not base64 at all!");
    assert!(matches!(
        check_received_cross_signing(&received, &published(&keys), USER),
        Err(CrossSigningRefusal::Unreadable(SeedImportError {
            usage: KeyUsage::SelfSigning,
            ..
        }))
    ));
}

/// `GET /room_keys/version` for `key` as version `version`.
fn current_version(key: &BackupKey, version: &str) -> Value {
    json!({
        "algorithm": BACKUP_ALGORITHM,
        "auth_data": { "public_key": key.public_key().to_base64(), "signatures": {} },
        "count": 0,
        "etag": "0",
        "version": version,
    })
}

#[test]
fn the_current_backup_key_is_accepted() {
    let key = BackupKey::new();
    let accepted = check_received_backup(
        &key.to_backup_secrets("3"),
        Some(&current_version(&key, "3")),
    )
    .unwrap();
    assert_eq!(accepted.public_key(), key.public_key());
}

#[test]
fn another_backup_key_is_refused() {
    let key = BackupKey::new();
    let current = current_version(&BackupKey::new(), "3");
    assert_eq!(
        check_received_backup(&key.to_backup_secrets("3"), Some(&current)).unwrap_err(),
        BackupRefusal::Mismatch
    );
}

#[test]
fn an_old_backup_version_is_refused() {
    // The right key of a version that is no longer the current one.
    let key = BackupKey::new();
    let current = current_version(&key, "4");
    let refused = check_received_backup(&key.to_backup_secrets("3"), Some(&current)).unwrap_err();
    assert_eq!(
        refused,
        BackupRefusal::VersionMismatch {
            received: "3".into(),
            current: "4".into()
        }
    );
}

#[test]
fn no_or_unusable_backup_refuses_the_key() {
    let key = BackupKey::new();
    let received = key.to_backup_secrets("1");
    assert_eq!(
        check_received_backup(&received, None).unwrap_err(),
        BackupRefusal::NoBackup
    );
    let mut other_algorithm = current_version(&key, "1");
    other_algorithm["algorithm"] = json!("org.example.other");
    assert!(matches!(
        check_received_backup(&received, Some(&other_algorithm)),
        Err(BackupRefusal::UnsupportedAlgorithm(_))
    ));
    let mut no_key = current_version(&key, "1");
    no_key["auth_data"] = json!({});
    assert!(matches!(
        check_received_backup(&received, Some(&no_key)),
        Err(BackupRefusal::InvalidPublished(VerifyError::MissingField(
            "public_key"
        )))
    ));
    let mut bad_key = current_version(&key, "1");
    bad_key["auth_data"]["public_key"] = json!("AAAA");
    assert!(matches!(
        check_received_backup(&received, Some(&bad_key)),
        Err(BackupRefusal::InvalidPublished(
            VerifyError::InvalidKey { .. }
        ))
    ));
    let mut bad_secret = received.clone();
    bad_secret.key = Secret::new("%%%");
    assert!(matches!(
        check_received_backup(&bad_secret, Some(&current_version(&key, "1"))),
        Err(BackupRefusal::Unreadable(_))
    ));
}

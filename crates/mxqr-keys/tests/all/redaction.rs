//! Private keys must never show up in `Debug` output (logs, panic messages, test failures).

use mxqr_keys::{BackupKey, CrossSigningKeys, SeedImportError, seed_from_secret};
use mxqr_proto::messages::Secret;

#[test]
fn cross_signing_keys_debug_shows_public_keys_only() {
    let keys = CrossSigningKeys::new();
    let secrets = keys.to_secrets();
    let public = keys.public_keys();
    for text in [
        format!("{keys:?}"),
        format!("{keys:#?}"),
        format!("{secrets:?}"),
    ] {
        for seed in [
            &secrets.master_key,
            &secrets.self_signing_key,
            &secrets.user_signing_key,
        ] {
            assert!(!text.contains(seed.expose()), "seed leaked in {text}");
        }
    }
    let text = format!("{keys:?}");
    assert!(text.contains(&public.master.to_base64()), "{text}");
    assert!(text.contains(&public.self_signing.to_base64()), "{text}");
}

#[test]
fn backup_key_debug_shows_public_key_only() {
    let key = BackupKey::new();
    let secret = key.to_secret();
    let text = format!("{key:?}");
    assert!(!text.contains(secret.expose()), "{text}");
    assert!(text.contains(&key.public_key().to_base64()), "{text}");
}

#[test]
fn import_errors_do_not_echo_the_input() {
    // A 33-byte "seed": the error must say what is wrong without repeating it.
    let input = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2Vj";
    let Err(error) = seed_from_secret(&Secret::new(input)) else {
        panic!("a 33-byte seed was accepted");
    };
    for text in [format!("{error:?}"), error.to_string()] {
        assert!(!text.contains(input), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
    let import = SeedImportError {
        usage: mxqr_keys::KeyUsage::Master,
        reason: error,
    };
    assert!(!import.to_string().contains(input));
}

//! `/keys/query` answers of a hostile server: read as the client reads every JSON answer,
//! then each user's cross-signing keys and device keys through the checks the client relies
//! on (master key shape, self-signing and user-signing keys signed by the master key, device
//! keys self-signed and signed by the self-signing key), and the new device's check of
//! received secrets against the same answer, read also as a `/room_keys/version` answer.
//! Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxqr_keys::KeyUsage;
use serde_json::Value;

fn user_entries<'a>(
    answer: &'a Value,
    field: &str,
) -> impl Iterator<Item = (&'a String, &'a Value)> {
    answer
        .get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
}

fuzz_target!(|data: &[u8]| {
    let Ok(answer) = mxqr_client::body::parse_json::<Value>(data, "keys/query answer") else {
        return;
    };
    // The new device's checks of received secrets, against a fixed pair of secrets (the
    // inputs it gets from the other device are not the point here: the server's answer is).
    let (cross_signing, backup) = secrets();
    let _ = mxqr_keys::check_received_backup(backup, Some(&answer));
    for (user_id, master) in user_entries(&answer, "master_keys") {
        let _ = mxqr_keys::published_cross_signing_keys(&answer, user_id);
        let _ = mxqr_keys::check_received_cross_signing(cross_signing, &answer, user_id);
        let Ok(master) = mxqr_keys::cross_signing_public_key(master, user_id, KeyUsage::Master)
        else {
            continue;
        };
        let self_signing = answer
            .pointer(&format!("/self_signing_keys/{}", escape(user_id)))
            .and_then(|key| {
                mxqr_keys::verify_cross_signing_key(key, user_id, KeyUsage::SelfSigning, &master)
                    .ok()
            });
        if let Some(key) = answer.pointer(&format!("/user_signing_keys/{}", escape(user_id))) {
            let _ =
                mxqr_keys::verify_cross_signing_key(key, user_id, KeyUsage::UserSigning, &master);
        }
        let devices = answer
            .pointer(&format!("/device_keys/{}", escape(user_id)))
            .and_then(Value::as_object);
        for (device_id, keys) in devices.into_iter().flatten() {
            let _ = mxqr_keys::verify_device_keys(keys, user_id, device_id);
            if let Some(self_signing) = &self_signing {
                let _ = mxqr_keys::verify_device_signed_by(keys, user_id, self_signing);
            }
        }
    }
});

/// Secrets made once per process, as an existing device would send them.
fn secrets() -> &'static (
    mxqr_proto::messages::CrossSigningSecrets,
    mxqr_proto::messages::BackupSecrets,
) {
    static SECRETS: std::sync::OnceLock<(
        mxqr_proto::messages::CrossSigningSecrets,
        mxqr_proto::messages::BackupSecrets,
    )> = std::sync::OnceLock::new();
    SECRETS.get_or_init(|| {
        (
            mxqr_keys::CrossSigningKeys::new().to_secrets(),
            mxqr_keys::BackupKey::new().to_backup_secrets("1"),
        )
    })
}

/// A JSON pointer token for `key` (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

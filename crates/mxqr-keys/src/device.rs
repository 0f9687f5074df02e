//! A device's identity and one-time keys as `POST /_matrix/client/v3/keys/upload` takes them.

use serde_json::{Map, Value, json};
use vodozemac::olm::Account;
use vodozemac::{Curve25519PublicKey, KeyId};

use crate::cross_signing::CrossSigningKeys;
use crate::signing::{SignError, ed25519_key_id, sign_json};

/// Olm, the only to-device encryption algorithm vodozemac's `Account` implements.
pub const OLM_V1_ALGORITHM: &str = "m.olm.v1.curve25519-aes-sha2";
/// Megolm, for room messages.
pub const MEGOLM_V1_ALGORITHM: &str = "m.megolm.v1.aes-sha2";
/// Algorithm name of signed Curve25519 one-time and fallback keys.
pub const SIGNED_CURVE25519: &str = "signed_curve25519";

/// Why a `/keys/upload` body could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysUploadError {
    #[error("{requested} one-time keys requested, the account keeps at most {max}")]
    TooManyOneTimeKeys { requested: usize, max: usize },
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// The device ID matrix-sdk derives from an account: its Curve25519 identity key in unpadded
/// base64 (43 characters, may contain `+` and `/`). Using the same convention lets the ID be
/// announced in `m.login.protocol` before the device ever talks to the homeserver.
pub fn device_id(account: &Account) -> String {
    account.curve25519_key().to_base64()
}

/// The `device_keys` object for `/keys/upload`, self-signed with the device's Ed25519 key.
pub fn device_keys(account: &Account, user_id: &str, device_id: &str) -> Result<Value, SignError> {
    let identity = account.identity_keys();
    let mut keys = Map::new();
    keys.insert(
        format!("curve25519:{device_id}"),
        Value::String(identity.curve25519.to_base64()),
    );
    keys.insert(
        ed25519_key_id(device_id),
        Value::String(identity.ed25519.to_base64()),
    );
    let mut object = json!({
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": [OLM_V1_ALGORITHM, MEGOLM_V1_ALGORITHM],
        "keys": keys,
    });
    sign_json(&mut object, user_id, &ed25519_key_id(device_id), account)?;
    Ok(object)
}

/// `signed_curve25519:<id>` → `{key, [fallback], signatures}` for each given key, each signed
/// by the device so that senders can tell the key came from it.
fn signed_curve25519_keys(
    account: &Account,
    user_id: &str,
    device_id: &str,
    keys: impl IntoIterator<Item = (KeyId, Curve25519PublicKey)>,
    fallback: bool,
) -> Result<Map<String, Value>, SignError> {
    let key_id = ed25519_key_id(device_id);
    let mut out = Map::new();
    for (id, key) in keys {
        let mut object = if fallback {
            json!({ "key": key.to_base64(), "fallback": true })
        } else {
            json!({ "key": key.to_base64() })
        };
        sign_json(&mut object, user_id, &key_id, account)?;
        out.insert(format!("{SIGNED_CURVE25519}:{}", id.to_base64()), object);
    }
    Ok(out)
}

/// The account's one-time keys not yet marked as published, signed, for `one_time_keys`.
pub fn signed_one_time_keys(
    account: &Account,
    user_id: &str,
    device_id: &str,
) -> Result<Map<String, Value>, SignError> {
    signed_curve25519_keys(account, user_id, device_id, account.one_time_keys(), false)
}

/// The account's unpublished fallback key (if any), signed, for `fallback_keys`.
pub fn signed_fallback_keys(
    account: &Account,
    user_id: &str,
    device_id: &str,
) -> Result<Map<String, Value>, SignError> {
    signed_curve25519_keys(account, user_id, device_id, account.fallback_key(), true)
}

/// The whole body of a device's first `POST /keys/upload`: its device keys (also signed by
/// the self-signing key when the cross-signing keys arrived in `m.login.secrets`, so that
/// one request makes the device trusted), at least `one_time_keys` signed one-time keys and
/// a signed fallback key. The device ID follows [`device_id`].
///
/// Keys already generated but not published are reused rather than replaced, so a retried
/// upload sends the same keys. After the server accepted the upload the caller must call
/// [`Account::mark_keys_as_published`]; until then they stay pending here.
pub fn keys_upload_body(
    account: &mut Account,
    user_id: &str,
    cross_signing: Option<&CrossSigningKeys>,
    one_time_keys: usize,
) -> Result<Value, KeysUploadError> {
    let max = account.max_number_of_one_time_keys();
    if one_time_keys > max {
        return Err(KeysUploadError::TooManyOneTimeKeys {
            requested: one_time_keys,
            max,
        });
    }
    let pending = account.one_time_keys().len();
    if one_time_keys > pending {
        account.generate_one_time_keys(one_time_keys - pending);
    }
    if account.fallback_key().is_empty() {
        account.generate_fallback_key();
    }

    let device_id = device_id(account);
    let mut device_keys = device_keys(account, user_id, &device_id)?;
    if let Some(cross_signing) = cross_signing {
        cross_signing.sign_device_keys(&mut device_keys, user_id)?;
    }
    Ok(json!({
        "device_keys": device_keys,
        "one_time_keys": signed_one_time_keys(account, user_id, &device_id)?,
        "fallback_keys": signed_fallback_keys(account, user_id, &device_id)?,
    }))
}

//! Checks a homeserver runs on uploaded keys before storing them: a client must not be able
//! to publish keys for another user or device, or signatures that do not verify.

use serde_json::{Map, Value};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};

use crate::b64::{
    KeyDecodeError, curve25519_public_key_from_base64, ed25519_public_key_from_base64,
};
use crate::cross_signing::{CrossSigningPublicKeys, KeyUsage, cross_signing_key_id};
use crate::signing::{ED25519, SignatureError, ed25519_key_id, verify_json};

/// Why an uploaded key object is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("expected a JSON object")]
    NotAnObject,
    #[error("`{0}` is missing")]
    MissingField(&'static str),
    #[error("`{0}` has the wrong type")]
    WrongType(&'static str),
    #[error("`{field}` is {found:?}, expected {expected:?}")]
    Mismatch {
        field: &'static str,
        expected: String,
        found: String,
    },
    #[error("`usage` does not contain {0:?}")]
    MissingUsage(&'static str),
    #[error("a cross-signing key must have exactly one ed25519 key, found {0} keys")]
    KeyCount(usize),
    #[error("key ID {0:?} does not name its own public key")]
    KeyIdMismatch(String),
    #[error("key {0:?} is missing")]
    MissingKey(String),
    #[error("key {key_id:?} is invalid: {reason}")]
    InvalidKey {
        key_id: String,
        reason: KeyDecodeError,
    },
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

/// The keys of a device whose `device_keys` object checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub user_id: String,
    pub device_id: String,
    pub ed25519: Ed25519PublicKey,
    pub curve25519: Curve25519PublicKey,
}

fn object(value: &Value) -> Result<&Map<String, Value>, VerifyError> {
    value.as_object().ok_or(VerifyError::NotAnObject)
}

fn string_field<'a>(
    map: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, VerifyError> {
    match map.get(field) {
        None => Err(VerifyError::MissingField(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(VerifyError::WrongType(field)),
    }
}

fn object_field<'a>(
    map: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a Map<String, Value>, VerifyError> {
    match map.get(field) {
        None => Err(VerifyError::MissingField(field)),
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(VerifyError::WrongType(field)),
    }
}

fn string_array<'a>(
    map: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Vec<&'a str>, VerifyError> {
    match map.get(field) {
        None => Err(VerifyError::MissingField(field)),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().ok_or(VerifyError::WrongType(field)))
            .collect(),
        Some(_) => Err(VerifyError::WrongType(field)),
    }
}

fn expect_equal(field: &'static str, found: &str, expected: &str) -> Result<(), VerifyError> {
    if found == expected {
        Ok(())
    } else {
        Err(VerifyError::Mismatch {
            field,
            expected: expected.to_owned(),
            found: found.to_owned(),
        })
    }
}

fn key_string<'a>(keys: &'a Map<String, Value>, key_id: &str) -> Result<&'a str, VerifyError> {
    match keys.get(key_id) {
        None => Err(VerifyError::MissingKey(key_id.to_owned())),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(VerifyError::WrongType("keys")),
    }
}

fn invalid(key_id: &str) -> impl FnOnce(KeyDecodeError) -> VerifyError + '_ {
    move |reason| VerifyError::InvalidKey {
        key_id: key_id.to_owned(),
        reason,
    }
}

/// Checks a `device_keys` object uploaded by `device_id` of `user_id` (the authenticated
/// caller): right owner, both identity keys present and well-formed, and self-signed by its
/// Ed25519 key.
pub fn verify_device_keys(
    device_keys: &Value,
    user_id: &str,
    device_id: &str,
) -> Result<DeviceIdentity, VerifyError> {
    let map = object(device_keys)?;
    expect_equal("user_id", string_field(map, "user_id")?, user_id)?;
    expect_equal("device_id", string_field(map, "device_id")?, device_id)?;
    string_array(map, "algorithms")?;
    let keys = object_field(map, "keys")?;

    let ed_id = ed25519_key_id(device_id);
    let ed25519 =
        ed25519_public_key_from_base64(key_string(keys, &ed_id)?).map_err(invalid(&ed_id))?;
    let curve_id = format!("curve25519:{device_id}");
    let curve25519 = curve25519_public_key_from_base64(key_string(keys, &curve_id)?)
        .map_err(invalid(&curve_id))?;

    verify_json(device_keys, user_id, &ed_id, &ed25519)?;
    Ok(DeviceIdentity {
        user_id: user_id.to_owned(),
        device_id: device_id.to_owned(),
        ed25519,
        curve25519,
    })
}

/// Reads the public key out of a cross-signing key object of `user_id` with `usage`,
/// checking its shape (exactly one `ed25519:<pub>` key naming itself). Checks no signature.
pub fn cross_signing_public_key(
    key: &Value,
    user_id: &str,
    usage: KeyUsage,
) -> Result<Ed25519PublicKey, VerifyError> {
    let map = object(key)?;
    expect_equal("user_id", string_field(map, "user_id")?, user_id)?;
    if !string_array(map, "usage")?.contains(&usage.as_str()) {
        return Err(VerifyError::MissingUsage(usage.as_str()));
    }
    let keys = object_field(map, "keys")?;
    let mut entries = keys.iter();
    let (key_id, value) = match (entries.next(), entries.next()) {
        (Some(entry), None) => entry,
        _ => return Err(VerifyError::KeyCount(keys.len())),
    };
    let encoded = value.as_str().ok_or(VerifyError::WrongType("keys"))?;
    let named = key_id
        .strip_prefix(ED25519)
        .and_then(|rest| rest.strip_prefix(':'));
    if named != Some(encoded) {
        return Err(VerifyError::KeyIdMismatch(key_id.clone()));
    }
    ed25519_public_key_from_base64(encoded).map_err(invalid(key_id))
}

/// Checks a self-signing or user-signing key object of `user_id` and its signature by the
/// user's master key; returns its public key.
pub fn verify_cross_signing_key(
    key: &Value,
    user_id: &str,
    usage: KeyUsage,
    master: &Ed25519PublicKey,
) -> Result<Ed25519PublicKey, VerifyError> {
    let public_key = cross_signing_public_key(key, user_id, usage)?;
    verify_json(key, user_id, &cross_signing_key_id(master), master)?;
    Ok(public_key)
}

/// Checks a full `/keys/device_signing/upload` body: three well-formed keys of `user_id`,
/// the self-signing and user-signing keys signed by the master key.
pub fn verify_device_signing_upload(
    body: &Value,
    user_id: &str,
) -> Result<CrossSigningPublicKeys, VerifyError> {
    let map = object(body)?;
    let member = |usage: KeyUsage| {
        map.get(usage.field())
            .ok_or(VerifyError::MissingField(usage.field()))
    };
    let master = cross_signing_public_key(member(KeyUsage::Master)?, user_id, KeyUsage::Master)?;
    let self_signing = verify_cross_signing_key(
        member(KeyUsage::SelfSigning)?,
        user_id,
        KeyUsage::SelfSigning,
        &master,
    )?;
    let user_signing = verify_cross_signing_key(
        member(KeyUsage::UserSigning)?,
        user_id,
        KeyUsage::UserSigning,
        &master,
    )?;
    Ok(CrossSigningPublicKeys {
        master,
        self_signing,
        user_signing,
    })
}

/// Checks that one of `user_id`'s `device_keys` objects carries a valid signature by the
/// user's self-signing key, i.e. that the user vouches for the device.
pub fn verify_device_signed_by(
    device_keys: &Value,
    user_id: &str,
    self_signing: &Ed25519PublicKey,
) -> Result<(), VerifyError> {
    let map = object(device_keys)?;
    expect_equal("user_id", string_field(map, "user_id")?, user_id)?;
    verify_json(
        device_keys,
        user_id,
        &cross_signing_key_id(self_signing),
        self_signing,
    )?;
    Ok(())
}

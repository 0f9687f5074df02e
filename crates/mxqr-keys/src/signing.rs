//! Signing JSON (spec appendix "Signing JSON"): Ed25519 over the canonical JSON of an
//! object without its `signatures` and `unsigned` members, stored under
//! `signatures.<entity>.<algorithm>:<key id>`.

use serde_json::{Map, Value};
use vodozemac::olm::Account;
use vodozemac::{Ed25519PublicKey, Ed25519SecretKey, Ed25519Signature};

use crate::b64;
use crate::canonical::{CanonicalJsonError, canonical_object_without};

/// The only signing algorithm the spec defines; key IDs are `ed25519:<id>`.
pub const ED25519: &str = "ed25519";

/// Members never covered by a signature, so that servers can add data and further
/// signatures without breaking the existing ones.
const UNSIGNED_MEMBERS: [&str; 2] = ["signatures", "unsigned"];

/// Length in bytes of an Ed25519 signature.
const SIGNATURE_LENGTH: usize = 64;

/// Something that holds an Ed25519 private key and can sign with it.
///
/// Needed because a device's key lives inside the vodozemac [`Account`] and cannot be taken
/// out as an [`Ed25519SecretKey`], while cross-signing keys are bare secret keys.
pub trait JsonSigner {
    /// The public half, for callers that name the key by its public key.
    fn ed25519_public_key(&self) -> Ed25519PublicKey;
    /// Signs raw bytes.
    fn sign_bytes(&self, message: &[u8]) -> Ed25519Signature;
}

impl JsonSigner for Ed25519SecretKey {
    fn ed25519_public_key(&self) -> Ed25519PublicKey {
        self.public_key()
    }

    fn sign_bytes(&self, message: &[u8]) -> Ed25519Signature {
        self.sign(message)
    }
}

impl JsonSigner for Account {
    fn ed25519_public_key(&self) -> Ed25519PublicKey {
        self.ed25519_key()
    }

    fn sign_bytes(&self, message: &[u8]) -> Ed25519Signature {
        self.sign(message)
    }
}

/// Why an object could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("only JSON objects can be signed")]
    NotAnObject,
    #[error("signing key ID {0:?} is not of the form ed25519:<id>")]
    UnsupportedKeyId(String),
    #[error("the existing `signatures` member is not an object of objects")]
    MalformedSignatures,
    #[error("object has no canonical JSON form: {0}")]
    NotCanonicalizable(#[from] CanonicalJsonError),
}

/// Why a signature check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("only JSON objects carry signatures")]
    NotAnObject,
    #[error("signing key ID {0:?} is not of the form ed25519:<id>")]
    UnsupportedKeyId(String),
    #[error("`signatures` is not an object of objects of strings")]
    MalformedSignatures,
    #[error("no signature by {user_id} with key {key_id}")]
    MissingSignature { user_id: String, key_id: String },
    #[error("signature is not valid base64")]
    MalformedBase64,
    #[error("signature is {0} bytes long, expected 64")]
    WrongLength(usize),
    #[error("signature does not match the object and key")]
    BadSignature,
    #[error("object has no canonical JSON form: {0}")]
    NotCanonicalizable(#[from] CanonicalJsonError),
}

/// `ed25519:<id>`: the signing key identifier for a device ID or a base64 public key.
pub fn ed25519_key_id(id: &str) -> String {
    format!("{ED25519}:{id}")
}

fn is_ed25519_key_id(key_id: &str) -> bool {
    key_id
        .strip_prefix(ED25519)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|id| !id.is_empty())
}

/// The exact bytes a signature covers: canonical JSON of the object without `signatures`
/// and `unsigned`.
pub fn signing_input(value: &Value) -> Result<String, SignError> {
    let map = value.as_object().ok_or(SignError::NotAnObject)?;
    Ok(canonical_object_without(map, &UNSIGNED_MEMBERS)?)
}

/// Signs `value` as `user_id` with the key `key_id` (`ed25519:<id>`), adding the signature
/// under `signatures.<user_id>.<key_id>` and keeping every signature already there.
///
/// On error `value` is left unchanged.
pub fn sign_json<S: JsonSigner + ?Sized>(
    value: &mut Value,
    user_id: &str,
    key_id: &str,
    key: &S,
) -> Result<(), SignError> {
    if !is_ed25519_key_id(key_id) {
        return Err(SignError::UnsupportedKeyId(key_id.to_owned()));
    }
    let map = value.as_object_mut().ok_or(SignError::NotAnObject)?;
    // Check the shape before signing so a failure never leaves a half-written object.
    match map.get("signatures") {
        None => {}
        Some(Value::Object(signatures)) => match signatures.get(user_id) {
            None | Some(Value::Object(_)) => {}
            Some(_) => return Err(SignError::MalformedSignatures),
        },
        Some(_) => return Err(SignError::MalformedSignatures),
    }
    let message = canonical_object_without(map, &UNSIGNED_MEMBERS)?;
    let signature = b64::encode(key.sign_bytes(message.as_bytes()).to_bytes());

    let signatures = map
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(signatures) = signatures else {
        return Err(SignError::MalformedSignatures);
    };
    let by_user = signatures
        .entry(user_id)
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(by_user) = by_user else {
        return Err(SignError::MalformedSignatures);
    };
    by_user.insert(key_id.to_owned(), Value::String(signature));
    Ok(())
}

/// Checks that `value` carries a valid signature by `user_id`'s key `key_id`, made with the
/// private half of `public_key`.
pub fn verify_json(
    value: &Value,
    user_id: &str,
    key_id: &str,
    public_key: &Ed25519PublicKey,
) -> Result<(), SignatureError> {
    if !is_ed25519_key_id(key_id) {
        return Err(SignatureError::UnsupportedKeyId(key_id.to_owned()));
    }
    let map = value.as_object().ok_or(SignatureError::NotAnObject)?;
    let encoded = find_signature(map, user_id, key_id)?;
    let bytes = b64::decode(encoded).ok_or(SignatureError::MalformedBase64)?;
    if bytes.len() != SIGNATURE_LENGTH {
        return Err(SignatureError::WrongLength(bytes.len()));
    }
    let signature = Ed25519Signature::from_slice(&bytes)
        .map_err(|_| SignatureError::WrongLength(bytes.len()))?;
    let message = canonical_object_without(map, &UNSIGNED_MEMBERS)?;
    public_key
        .verify(message.as_bytes(), &signature)
        .map_err(|_| SignatureError::BadSignature)
}

fn find_signature<'a>(
    map: &'a Map<String, Value>,
    user_id: &str,
    key_id: &str,
) -> Result<&'a str, SignatureError> {
    let missing = || SignatureError::MissingSignature {
        user_id: user_id.to_owned(),
        key_id: key_id.to_owned(),
    };
    let signatures = match map.get("signatures") {
        None => return Err(missing()),
        Some(Value::Object(signatures)) => signatures,
        Some(_) => return Err(SignatureError::MalformedSignatures),
    };
    let by_user = match signatures.get(user_id) {
        None => return Err(missing()),
        Some(Value::Object(by_user)) => by_user,
        Some(_) => return Err(SignatureError::MalformedSignatures),
    };
    match by_user.get(key_id) {
        None => Err(missing()),
        Some(Value::String(signature)) => Ok(signature),
        Some(_) => Err(SignatureError::MalformedSignatures),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_id_forms() {
        assert!(is_ed25519_key_id("ed25519:ABC"));
        assert!(!is_ed25519_key_id("ed25519:"));
        assert!(!is_ed25519_key_id("ed25519"));
        assert!(!is_ed25519_key_id("curve25519:ABC"));
        assert!(!is_ed25519_key_id("ed25519ABC"));
    }

    #[test]
    fn refuses_non_objects_and_bad_key_ids() {
        let key = Ed25519SecretKey::new();
        let mut array = json!([1]);
        assert_eq!(
            sign_json(&mut array, "@a:b", "ed25519:X", &key),
            Err(SignError::NotAnObject)
        );
        let mut object = json!({});
        assert_eq!(
            sign_json(&mut object, "@a:b", "rsa:X", &key),
            Err(SignError::UnsupportedKeyId("rsa:X".into()))
        );
        assert_eq!(
            verify_json(&object, "@a:b", "rsa:X", &key.public_key()),
            Err(SignatureError::UnsupportedKeyId("rsa:X".into()))
        );
    }

    #[test]
    fn malformed_signatures_member_is_refused_and_value_untouched() {
        let key = Ed25519SecretKey::new();
        for original in [
            json!({"signatures": []}),
            json!({"signatures": {"@a:b": "x"}}),
        ] {
            let mut value = original.clone();
            assert_eq!(
                sign_json(&mut value, "@a:b", "ed25519:X", &key),
                Err(SignError::MalformedSignatures)
            );
            assert_eq!(value, original);
            assert_eq!(
                verify_json(&value, "@a:b", "ed25519:X", &key.public_key()),
                Err(SignatureError::MalformedSignatures)
            );
        }
    }

    #[test]
    fn float_in_signed_object_is_refused() {
        let key = Ed25519SecretKey::new();
        let mut value = json!({"a": 0.5});
        assert!(matches!(
            sign_json(&mut value, "@a:b", "ed25519:X", &key),
            Err(SignError::NotCanonicalizable(CanonicalJsonError::Float(_)))
        ));
        assert_eq!(value, json!({"a": 0.5}));
    }
}

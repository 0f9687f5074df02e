//! JSON signing against the spec appendix's test vectors, and tamper checks.

use mxqr_keys::{
    CanonicalJsonError, Ed25519SecretKey, SignatureError, seed_from_secret, sign_json,
    signing_input, verify_json,
};
use mxqr_proto::messages::Secret;
use serde_json::{Value, json};

/// "Cryptographic Test Vectors": this seed, entity `domain`, key ID `ed25519:1`.
const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";
const ENTITY: &str = "domain";
const KEY_ID: &str = "ed25519:1";

fn spec_key() -> Ed25519SecretKey {
    seed_from_secret(&Secret::new(SPEC_SEED)).unwrap()
}

#[test]
fn spec_vector_empty_object() {
    let mut value = json!({});
    sign_json(&mut value, ENTITY, KEY_ID, &spec_key()).unwrap();
    assert_eq!(
        value,
        json!({"signatures": {"domain": {"ed25519:1":
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}})
    );
    verify_json(&value, ENTITY, KEY_ID, &spec_key().public_key()).unwrap();
}

#[test]
fn spec_vector_object_with_data() {
    let mut value = json!({"one": 1, "two": "Two"});
    sign_json(&mut value, ENTITY, KEY_ID, &spec_key()).unwrap();
    assert_eq!(
        value,
        json!({
            "one": 1,
            "signatures": {"domain": {"ed25519:1":
                "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"}},
            "two": "Two"
        })
    );
}

/// The appendix's minimal event: its signature covers the (already redacted, hashed) event
/// without `signatures` and `unsigned`, which is exactly what `sign_json` signs.
#[test]
fn spec_vector_minimal_event() {
    let mut event = json!({
        "auth_events": [],
        "content": {},
        "depth": 3,
        "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
        "origin": "domain",
        "origin_server_ts": 1000000,
        "prev_events": [],
        "room_id": "!x:domain",
        "sender": "@a:domain",
        "signatures": {},
        "type": "X",
        "unsigned": {"age_ts": 1000000}
    });
    sign_json(&mut event, ENTITY, KEY_ID, &spec_key()).unwrap();
    assert_eq!(
        event["signatures"]["domain"]["ed25519:1"],
        "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
    );
    assert_eq!(event["unsigned"], json!({"age_ts": 1000000}));
}

#[test]
fn signing_input_skips_signatures_and_unsigned_only_at_top_level() {
    let value = json!({"b": {"signatures": 1}, "a": 2, "signatures": {}, "unsigned": {}});
    assert_eq!(
        signing_input(&value).unwrap(),
        r#"{"a":2,"b":{"signatures":1}}"#
    );
}

#[test]
fn round_trip_keeps_existing_signatures() {
    let first = Ed25519SecretKey::new();
    let second = Ed25519SecretKey::new();
    let mut value = json!({"user_id": "@alice:example.org", "unsigned": {"note": "x"}});
    sign_json(&mut value, "@alice:example.org", "ed25519:FIRST", &first).unwrap();
    sign_json(&mut value, "@alice:example.org", "ed25519:SECOND", &second).unwrap();
    sign_json(&mut value, "example.org", "ed25519:srv", &second).unwrap();
    verify_json(
        &value,
        "@alice:example.org",
        "ed25519:FIRST",
        &first.public_key(),
    )
    .unwrap();
    verify_json(
        &value,
        "@alice:example.org",
        "ed25519:SECOND",
        &second.public_key(),
    )
    .unwrap();
    verify_json(&value, "example.org", "ed25519:srv", &second.public_key()).unwrap();
    assert_eq!(value["unsigned"], json!({"note": "x"}));
}

#[test]
fn unsigned_and_other_signatures_may_change() {
    let key = Ed25519SecretKey::new();
    let mut value = json!({"a": 1});
    sign_json(&mut value, "@a:b", "ed25519:K", &key).unwrap();
    value["unsigned"] = json!({"age": 5});
    value["signatures"]["@other:b"] = json!({"ed25519:Z": "whatever"});
    verify_json(&value, "@a:b", "ed25519:K", &key.public_key()).unwrap();
}

#[test]
fn tampered_field_is_a_bad_signature() {
    let key = Ed25519SecretKey::new();
    let mut value = json!({"a": 1, "b": "text"});
    sign_json(&mut value, "@a:b", "ed25519:K", &key).unwrap();
    for (field, new) in [("a", json!(2)), ("b", json!("text ")), ("c", json!(null))] {
        let mut tampered = value.clone();
        tampered[field] = new;
        assert_eq!(
            verify_json(&tampered, "@a:b", "ed25519:K", &key.public_key()),
            Err(SignatureError::BadSignature),
            "changing {field} went unnoticed"
        );
    }
}

#[test]
fn signature_by_another_key_is_a_bad_signature() {
    let key = Ed25519SecretKey::new();
    let impostor = Ed25519SecretKey::new();
    let mut value = json!({"a": 1});
    sign_json(&mut value, "@a:b", "ed25519:K", &impostor).unwrap();
    assert_eq!(
        verify_json(&value, "@a:b", "ed25519:K", &key.public_key()),
        Err(SignatureError::BadSignature)
    );
}

#[test]
fn missing_signature_names_who_and_which_key() {
    let key = Ed25519SecretKey::new();
    let mut value = json!({"a": 1});
    let missing = |user: &str, key_id: &str| SignatureError::MissingSignature {
        user_id: user.into(),
        key_id: key_id.into(),
    };
    assert_eq!(
        verify_json(&value, "@a:b", "ed25519:K", &key.public_key()),
        Err(missing("@a:b", "ed25519:K"))
    );
    sign_json(&mut value, "@a:b", "ed25519:K", &key).unwrap();
    assert_eq!(
        verify_json(&value, "@c:d", "ed25519:K", &key.public_key()),
        Err(missing("@c:d", "ed25519:K"))
    );
    assert_eq!(
        verify_json(&value, "@a:b", "ed25519:L", &key.public_key()),
        Err(missing("@a:b", "ed25519:L"))
    );
}

#[test]
fn malformed_signature_values() {
    let key = Ed25519SecretKey::new();
    let with = |signature: Value| json!({"a": 1, "signatures": {"@a:b": {"ed25519:K": signature}}});
    let check =
        |signature: Value| verify_json(&with(signature), "@a:b", "ed25519:K", &key.public_key());
    assert_eq!(
        check(json!("not base64!")),
        Err(SignatureError::MalformedBase64)
    );
    assert_eq!(check(json!("AAAA")), Err(SignatureError::WrongLength(3)));
    assert_eq!(check(json!(42)), Err(SignatureError::MalformedSignatures));
    // 64 zero bytes: well-formed, but no valid signature.
    assert_eq!(
        check(json!(mxqr_keys::encode_base64([0u8; 64]))),
        Err(SignatureError::BadSignature)
    );
}

#[test]
fn padded_signature_is_accepted() {
    let key = Ed25519SecretKey::new();
    let mut value = json!({"a": 1});
    sign_json(&mut value, "@a:b", "ed25519:K", &key).unwrap();
    let padded = format!(
        "{}==",
        value["signatures"]["@a:b"]["ed25519:K"].as_str().unwrap()
    );
    value["signatures"]["@a:b"]["ed25519:K"] = json!(padded);
    verify_json(&value, "@a:b", "ed25519:K", &key.public_key()).unwrap();
}

#[test]
fn uncanonicalizable_object_is_reported() {
    let key = Ed25519SecretKey::new();
    let mut value = json!({"a": 1});
    sign_json(&mut value, "@a:b", "ed25519:K", &key).unwrap();
    value["a"] = json!(1.5);
    assert!(matches!(
        verify_json(&value, "@a:b", "ed25519:K", &key.public_key()),
        Err(SignatureError::NotCanonicalizable(
            CanonicalJsonError::Float(_)
        ))
    ));
    assert_eq!(
        verify_json(&json!([1]), "@a:b", "ed25519:K", &key.public_key()),
        Err(SignatureError::NotAnObject)
    );
}

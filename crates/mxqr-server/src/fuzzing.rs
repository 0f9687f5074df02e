//! Entry points for the cargo-fuzz targets in `fuzz/`: the request-body parsers and
//! validators the handlers run before any store is touched, callable without a server (the
//! handlers themselves need one). Each returns whether the input was accepted, so a target
//! can check what acceptance promises; none may panic on any input.

use serde_json::Value;

use crate::matrix::{backup, keys, parse_body};
use crate::oauth::endpoints::Params;
use crate::rendezvous::{msc4108, msc4388};

/// `POST`/`PUT` bodies of both rendezvous transports.
pub fn rendezvous_bodies(body: &[u8]) -> bool {
    let created = msc4388::parse_body::<msc4388::CreateBody>(body)
        .and_then(|b| msc4388::check_data(&b.data).map(|()| b.data));
    let written = msc4388::parse_body::<msc4388::WriteBody>(body).and_then(|b| {
        crate::rendezvous::parse_id(&b.sequence_token).ok();
        msc4388::check_data(&b.data).map(|()| b.data)
    });
    let payload = msc4108::payload(body);
    for data in [&created, &written].into_iter().flatten() {
        assert!(!data.contains('\0'), "accepted data holds NUL");
    }
    if let Ok(text) = &payload {
        assert!(!text.contains('\0') && text.len() <= crate::rendezvous::MAX_PAYLOAD);
    }
    created.is_ok() || written.is_ok() || payload.is_ok()
}

/// `POST /oauth2/registration`: the body as the handler reads it, then metadata validation.
pub fn client_metadata(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    match crate::oauth::client::validate(&value) {
        Ok(metadata) => {
            assert!(
                !crate::response::has_nul(&Value::Object(metadata.json)),
                "accepted metadata holds NUL"
            );
            true
        }
        Err(_) => false,
    }
}

/// Form bodies and query strings of `/oauth2/token`, `/oauth2/device`, `/oauth2/revoke`,
/// `/oauth2/authorize` and the pages: the one parser, then the scope parser on `scope`.
pub fn form_params(body: &[u8]) -> bool {
    let Ok(params) = Params::parse(body) else {
        return false;
    };
    for key in [
        "grant_type",
        "client_id",
        "code",
        "redirect_uri",
        "code_verifier",
        "refresh_token",
        "device_code",
        "token",
        "response_type",
        "response_mode",
        "state",
        "prompt",
        "code_challenge",
        "code_challenge_method",
    ] {
        if let Some(value) = params.get(key) {
            assert!(!value.is_empty() && !value.contains('\0'));
        }
    }
    if let Some(scope) = params.get("scope") {
        let _ = crate::oauth::scope::parse(scope);
    }
    true
}

/// The client-server bodies that carry keys: `/keys/upload`, `/keys/device_signing/upload`,
/// `/keys/signatures/upload` and `/room_keys/version`, through `parse_body` and the checks
/// that need no store (signatures are verified against a fixed key).
pub fn key_bodies(body: &[u8]) -> bool {
    const USER: &str = "@fuzz:example.test";
    let key = mxqr_keys::Ed25519SecretKey::from_slice(&[7u8; 32]).public_key();
    let key_id = mxqr_keys::ed25519_key_id("FUZZDEV");
    let mut accepted = false;
    if let Ok(upload) = parse_body::<keys::UploadBody>(body) {
        accepted = true;
        if let Some(device_keys) = &upload.device_keys {
            let _ = mxqr_keys::verify_device_keys(device_keys, USER, "FUZZDEV");
        }
        for map in [&upload.one_time_keys, &upload.fallback_keys]
            .into_iter()
            .flatten()
        {
            for value in map.values() {
                let _ = mxqr_keys::verify_json(value, USER, &key_id, &key);
            }
        }
    }
    if let Ok(signing) = parse_body::<keys::DeviceSigningBody>(body) {
        accepted = true;
        for (value, usage) in [
            (&signing.master_key, mxqr_keys::KeyUsage::Master),
            (&signing.self_signing_key, mxqr_keys::KeyUsage::SelfSigning),
            (&signing.user_signing_key, mxqr_keys::KeyUsage::UserSigning),
        ] {
            if let Some(value) = value {
                let _ = mxqr_keys::cross_signing_public_key(value, USER, usage);
            }
        }
    }
    if let Ok(signatures) = parse_body::<serde_json::Map<String, Value>>(body) {
        for objects in signatures.values().filter_map(Value::as_object) {
            for uploaded in objects.values() {
                // The stored copy without the new signatures: what an honest upload re-signs.
                let mut stored = uploaded.clone();
                if let Some(map) = stored.as_object_mut() {
                    map.remove("signatures");
                }
                if !keys::same_content(uploaded, &stored) {
                    continue;
                }
                for (signer_key, _) in keys::new_signatures(uploaded, &stored, USER) {
                    let _ = mxqr_keys::verify_json(uploaded, USER, &signer_key, &key);
                }
            }
        }
    }
    if let Ok(version) = parse_body::<backup::VersionBody>(body) {
        accepted |= backup::check(&version).is_ok();
    }
    accepted
}

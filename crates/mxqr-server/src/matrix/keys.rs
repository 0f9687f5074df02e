//! `/_matrix/client/v3/keys/*`: device, one-time, fallback and cross-signing keys, and
//! signatures between them.
//!
//! Everything stored has been checked with `mxqr-keys` (canonical JSON, Ed25519): a device can
//! publish only its own device keys, self-signed; a signature is stored only if it verifies
//! against the key it names; replacing the cross-signing keys needs the account page's reset
//! approval. In `/keys/upload` a signature the server cannot check is refused; in
//! `/keys/signatures/upload` it is reported in `failures`.

use std::collections::HashMap;

use axum::response::Response;
use mxqr_keys::{
    Ed25519PublicKey, KeyUsage, cross_signing_key_id, cross_signing_public_key, ed25519_key_id,
    ed25519_public_key_from_base64, signing_input, verify_cross_signing_key, verify_device_keys,
    verify_json,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::bearer::Authed;
use super::devices::oauth_uia;
use super::{ok, parse_body, parse_user_id};
use crate::accounts::{SharedDb, StoredDeviceKeys, UploadedKey};
use crate::error::ApiError;
use crate::response::RawBody;

/// Compare-and-swap attempts before giving up on a key object under heavy concurrent writes.
const CAS_ATTEMPTS: usize = 8;

/// One-time plus fallback keys accepted in one upload (matrix-sdk sends at most 50).
const MAX_KEYS_PER_UPLOAD: usize = 1000;

/// Algorithm of signed Curve25519 one-time and fallback keys: the only one the server checks.
const SIGNED_CURVE25519: &str = "signed_curve25519";

/// A key object from the key tables, parsed.
fn stored_json(text: &str) -> Result<Value, ApiError> {
    super::stored_json(text, "key object")
}

/// Whether two key objects sign the same content (ignoring `signatures` and `unsigned`).
pub(crate) fn same_content(a: &Value, b: &Value) -> bool {
    matches!((signing_input(a), signing_input(b)), (Ok(x), Ok(y)) if x == y)
}

/// `signatures.<user_id>` as `(key ID, signature)` pairs (non-string entries skipped).
fn signatures_by(value: &Value, user_id: &str) -> Vec<(String, String)> {
    value
        .get("signatures")
        .and_then(|s| s.get(user_id))
        .and_then(Value::as_object)
        .map(|by_user| {
            by_user
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Signatures of `user_id` in `uploaded` that `stored` does not have yet.
pub(crate) fn new_signatures(
    uploaded: &Value,
    stored: &Value,
    user_id: &str,
) -> Vec<(String, String)> {
    let known = signatures_by(stored, user_id);
    signatures_by(uploaded, user_id)
        .into_iter()
        .filter(|entry| !known.contains(entry))
        .collect()
}

/// Adds signatures of `user_id` to a stored object (which always is a JSON object).
fn add_signatures(target: &mut Value, user_id: &str, signatures: &[(String, String)]) {
    // Indexing a JSON object inserts missing keys; indexing anything else would panic, so
    // each level is made an object first.
    if !target.is_object() {
        return;
    }
    let all = &mut target["signatures"];
    if !all.is_object() {
        *all = json!({});
    }
    let by_user = &mut all[user_id];
    if !by_user.is_object() {
        *by_user = json!({});
    }
    for (key_id, signature) in signatures {
        by_user[key_id.as_str()] = signature.as_str().into();
    }
}

/// Keeps, of `value`'s signatures, only those of `user_id` whose key is in `keyring` and that
/// verify; returns the cleaned object (without `unsigned`, which the server fills in).
fn retain_verified(
    mut value: Value,
    user_id: &str,
    keyring: &HashMap<String, Ed25519PublicKey>,
) -> Value {
    let good: Vec<(String, String)> = signatures_by(&value, user_id)
        .into_iter()
        .filter(|(key_id, _)| {
            keyring
                .get(key_id)
                .is_some_and(|key| verify_json(&value, user_id, key_id, key).is_ok())
        })
        .collect();
    if let Some(map) = value.as_object_mut() {
        map.remove("unsigned");
        map.remove("signatures");
    }
    add_signatures(&mut value, user_id, &good);
    value
}

/// A stored cross-signing key.
struct CrossSigningKey {
    /// The JSON text as stored: the compare-and-swap operand when signatures are merged in.
    text: String,
    value: Value,
    key: Ed25519PublicKey,
}

/// A user's stored cross-signing keys, by usage.
type CrossSigning = HashMap<KeyUsage, CrossSigningKey>;

async fn load_cross_signing(
    db: &SharedDb,
    localpart: &str,
    user_id: &str,
) -> Result<CrossSigning, ApiError> {
    let usages = [
        KeyUsage::Master,
        KeyUsage::SelfSigning,
        KeyUsage::UserSigning,
    ];
    let mut out = CrossSigning::new();
    for (usage, text) in db.cross_signing_keys(localpart).await? {
        let Some(usage) = usages.into_iter().find(|u| u.as_str() == usage) else {
            continue;
        };
        let value = stored_json(&text)?;
        let key = cross_signing_public_key(&value, user_id, usage).map_err(|err| {
            tracing::error!(%err, "stored cross-signing key does not parse");
            ApiError::Database
        })?;
        out.insert(usage, CrossSigningKey { text, value, key });
    }
    Ok(out)
}

/// The Ed25519 key of stored device keys.
fn device_ed25519(stored: &StoredDeviceKeys) -> Result<Option<Ed25519PublicKey>, ApiError> {
    let value = stored_json(&stored.key_json)?;
    let encoded = value
        .get("keys")
        .and_then(|keys| keys.get(ed25519_key_id(&stored.device_id)))
        .and_then(Value::as_str);
    Ok(encoded.and_then(|encoded| ed25519_public_key_from_base64(encoded).ok()))
}

/// `ed25519:<device_id>` → key, for the user's devices with uploaded keys.
async fn device_keyring(
    db: &SharedDb,
    localpart: &str,
) -> Result<HashMap<String, Ed25519PublicKey>, ApiError> {
    let mut ring = HashMap::new();
    for stored in db.device_keys(localpart, &[]).await? {
        if let Some(key) = device_ed25519(&stored)? {
            ring.insert(ed25519_key_id(&stored.device_id), key);
        }
    }
    Ok(ring)
}

// ---------------------------------------------------------------------------------------
// POST /keys/upload

#[derive(Deserialize)]
pub(crate) struct UploadBody {
    pub(crate) device_keys: Option<Value>,
    pub(crate) one_time_keys: Option<Map<String, Value>>,
    #[serde(alias = "org.matrix.msc2732.fallback_keys")]
    pub(crate) fallback_keys: Option<Map<String, Value>>,
}

/// Splits `algorithm:key_id` and checks a signed Curve25519 key's signature when the
/// device's Ed25519 key is known.
fn check_one_time_key(
    auth: &Authed,
    full_id: &str,
    value: &Value,
    device_key: Option<&Ed25519PublicKey>,
) -> Result<UploadedKey, ApiError> {
    let (algorithm, key_id) = full_id
        .split_once(':')
        .filter(|(a, k)| !a.is_empty() && !k.is_empty())
        .ok_or_else(|| ApiError::Invalid(format!("key ID {full_id:?} is not algorithm:id")))?;
    if algorithm == SIGNED_CURVE25519 {
        if !value.get("key").is_some_and(Value::is_string) {
            return Err(ApiError::Invalid(format!(
                "{full_id}: a signed_curve25519 key needs a `key` string"
            )));
        }
        if let Some(device_key) = device_key {
            verify_json(
                value,
                &auth.user_id,
                &ed25519_key_id(auth.device_id()),
                device_key,
            )
            .map_err(|err| ApiError::Invalid(format!("{full_id}: {err}")))?;
        }
    }
    Ok(UploadedKey {
        algorithm: algorithm.to_owned(),
        key_id: key_id.to_owned(),
        key_json: value.to_string(),
    })
}

/// Stores the caller's `device_keys`, already verified as its own and self-signed with
/// `ed25519`, plus a verifying self-signing-key signature if present.
async fn store_device_keys(
    auth: &Authed,
    uploaded: &Value,
    ed25519: Ed25519PublicKey,
) -> Result<(), ApiError> {
    let db = auth.oauth.db();
    let cross = load_cross_signing(db, auth.localpart(), &auth.user_id).await?;
    let self_key_id = ed25519_key_id(auth.device_id());
    let mut keyring = HashMap::from([(self_key_id, ed25519)]);
    if let Some(ssk) = cross.get(&KeyUsage::SelfSigning) {
        keyring.insert(cross_signing_key_id(&ssk.key), ssk.key);
    }
    // Own-user signatures can only be the device's and the self-signing key's; each must
    // verify, since a device that sent one believes itself cross-signed (docs/protocol.md §7).
    // Before any self-signing key is published, an own-user signature by another key is
    // dropped instead: matrix-sdk's cross-signing bootstrap uploads its device keys already
    // signed by the self-signing key it publishes in the next request, and sends that
    // signature again through `/keys/signatures/upload` (docs/interop-matrix-sdk.md).
    // Another user's signature on device keys means nothing and is dropped.
    for (key_id, _) in signatures_by(uploaded, &auth.user_id) {
        match keyring.get(&key_id) {
            Some(key) => verify_json(uploaded, &auth.user_id, &key_id, key)
                .map_err(|err| ApiError::Invalid(format!("device_keys: {key_id}: {err}")))?,
            None if cross.contains_key(&KeyUsage::SelfSigning) => {
                return Err(ApiError::Invalid(format!(
                    "device_keys: signature by {key_id}, which is neither this device's key \
                     nor the published self-signing key"
                )));
            }
            None => {}
        }
    }
    let cleaned = retain_verified(uploaded.clone(), &auth.user_id, &keyring);
    let ids = [auth.device_id().to_owned()];
    for _ in 0..CAS_ATTEMPTS {
        let stored = db.device_keys(auth.localpart(), &ids).await?.pop();
        let (old, new) = match &stored {
            None => (None, cleaned.to_string()),
            Some(stored) => {
                let current = stored_json(&stored.key_json)?;
                if !same_content(&current, &cleaned) {
                    return Err(ApiError::Invalid(
                        "device_keys: this device already has different keys; \
                         a new identity needs a new device ID"
                            .into(),
                    ));
                }
                let added = new_signatures(&cleaned, &current, &auth.user_id);
                if added.is_empty() {
                    return Ok(());
                }
                let mut merged = current;
                add_signatures(&mut merged, &auth.user_id, &added);
                (Some(stored.key_json.as_str()), merged.to_string())
            }
        };
        if db
            .swap_device_keys(
                auth.localpart(),
                auth.device_id(),
                old,
                &new,
                auth.oauth.now_ms(),
            )
            .await?
        {
            return Ok(());
        }
    }
    tracing::warn!("device keys kept changing under a concurrent writer");
    Err(ApiError::Database)
}

/// `POST /_matrix/client/v3/keys/upload`.
pub async fn upload(auth: Authed, RawBody(body): RawBody) -> Result<Response, ApiError> {
    let request: UploadBody = parse_body(&body)?;
    let one_time = request.one_time_keys.unwrap_or_default();
    let fallback = request.fallback_keys.unwrap_or_default();
    if one_time.len() + fallback.len() > MAX_KEYS_PER_UPLOAD {
        return Err(ApiError::InvalidParam(
            "too many keys in one upload (at most 1000)",
        ));
    }
    let db = auth.oauth.db();
    // Everything is checked before anything is stored: a refused request changes nothing.
    let device_key = match &request.device_keys {
        Some(device_keys) => Some(
            verify_device_keys(device_keys, &auth.user_id, auth.device_id())
                .map_err(|err| ApiError::Invalid(format!("device_keys: {err}")))?
                .ed25519,
        ),
        None => {
            let ids = [auth.device_id().to_owned()];
            match db.device_keys(auth.localpart(), &ids).await?.pop() {
                Some(stored) => device_ed25519(&stored)?,
                None => None,
            }
        }
    };
    let check_all = |keys: &Map<String, Value>| {
        keys.iter()
            .map(|(id, value)| check_one_time_key(&auth, id, value, device_key.as_ref()))
            .collect::<Result<Vec<_>, _>>()
    };
    let one_time = check_all(&one_time)?;
    let fallback = check_all(&fallback)?;
    if let (Some(device_keys), Some(ed25519)) = (&request.device_keys, device_key) {
        store_device_keys(&auth, device_keys, ed25519).await?;
    }
    let now = auth.oauth.now_ms();
    if !one_time.is_empty() {
        db.add_one_time_keys(auth.localpart(), auth.device_id(), &one_time, now)
            .await
            .map_err(|err| match err {
                crate::accounts::DbError::Conflict => ApiError::Invalid(
                    "a one-time key ID was already uploaded with a different key".into(),
                ),
                other => other.into(),
            })?;
    }
    for key in &fallback {
        db.set_fallback_key(auth.localpart(), auth.device_id(), key, now)
            .await?;
    }
    let mut counts: Map<String, Value> = db
        .one_time_key_counts(auth.localpart(), auth.device_id())
        .await?
        .into_iter()
        .map(|(algorithm, n)| (algorithm, n.into()))
        .collect();
    // Clients read this count to decide how many keys to top up: always present.
    counts.entry(SIGNED_CURVE25519).or_insert(0.into());
    ok(json!({ "one_time_key_counts": counts }))
}

// ---------------------------------------------------------------------------------------
// POST /keys/query and /keys/claim

#[derive(Deserialize)]
struct QueryBody {
    device_keys: Map<String, Value>,
}

/// The local user's localpart; `None` for a remote user, whose server is then reported in
/// `failures` (this homeserver does not federate); 400 for a malformed ID.
fn local_user<'a>(
    auth: &Authed,
    user_id: &'a str,
    failures: &mut Map<String, Value>,
) -> Result<Option<&'a str>, ApiError> {
    let parsed = parse_user_id(user_id)
        .ok_or_else(|| ApiError::Invalid(format!("{user_id:?} is not a user ID")))?;
    if parsed.server_name == auth.oauth.server_name() {
        return Ok(Some(parsed.localpart));
    }
    failures.insert(
        parsed.server_name.to_owned(),
        json!({ "errcode": "M_UNRECOGNIZED", "error": "this server does not federate" }),
    );
    Ok(None)
}

/// `POST /_matrix/client/v3/keys/query`.
pub async fn query(auth: Authed, RawBody(body): RawBody) -> Result<Response, ApiError> {
    let request: QueryBody = parse_body(&body)?;
    let db = auth.oauth.db();
    let mut device_keys = Map::new();
    let mut masters = Map::new();
    let mut self_signing = Map::new();
    let mut user_signing = Map::new();
    let mut failures = Map::new();
    for (user_id, wanted) in &request.device_keys {
        let wanted: Vec<String> = serde_json::from_value(wanted.clone()).map_err(|_| {
            ApiError::BadJson(format!(
                "device_keys.{user_id} must be a list of device IDs"
            ))
        })?;
        let Some(localpart) = local_user(&auth, user_id, &mut failures)? else {
            continue;
        };
        let mut devices = Map::new();
        for stored in db.device_keys(localpart, &wanted).await? {
            let mut value = stored_json(&stored.key_json)?;
            if let (Some(name), Some(map)) = (&stored.display_name, value.as_object_mut()) {
                map.insert("unsigned".into(), json!({ "device_display_name": name }));
            }
            devices.insert(stored.device_id, value);
        }
        device_keys.insert(user_id.clone(), Value::Object(devices));

        let mut cross = load_cross_signing(db, localpart, user_id).await?;
        if let Some(mut master) = cross.remove(&KeyUsage::Master) {
            if *user_id != auth.user_id {
                // The caller's own user-signing signatures of this master key: only for it.
                let mine = db
                    .user_signatures(auth.localpart(), user_id, &master.key.to_base64())
                    .await?;
                add_signatures(&mut master.value, &auth.user_id, &mine);
            }
            masters.insert(user_id.clone(), master.value);
        }
        if let Some(ssk) = cross.remove(&KeyUsage::SelfSigning) {
            self_signing.insert(user_id.clone(), ssk.value);
        }
        if *user_id == auth.user_id
            && let Some(usk) = cross.remove(&KeyUsage::UserSigning)
        {
            user_signing.insert(user_id.clone(), usk.value);
        }
    }
    ok(json!({
        "device_keys": device_keys,
        "master_keys": masters,
        "self_signing_keys": self_signing,
        "user_signing_keys": user_signing,
        "failures": failures,
    }))
}

#[derive(Deserialize)]
struct ClaimBody {
    one_time_keys: Map<String, Value>,
}

/// `POST /_matrix/client/v3/keys/claim`: one one-time key per device, else its fallback key.
pub async fn claim(auth: Authed, RawBody(body): RawBody) -> Result<Response, ApiError> {
    let request: ClaimBody = parse_body(&body)?;
    let db = auth.oauth.db();
    let mut claimed = Map::new();
    let mut failures = Map::new();
    for (user_id, wanted) in &request.one_time_keys {
        let wanted: HashMap<String, String> =
            serde_json::from_value(wanted.clone()).map_err(|_| {
                ApiError::BadJson(format!(
                    "one_time_keys.{user_id} must map device IDs to algorithms"
                ))
            })?;
        let Some(localpart) = local_user(&auth, user_id, &mut failures)? else {
            continue;
        };
        let mut devices = Map::new();
        for (device_id, algorithm) in &wanted {
            if let Some(key) = db.claim_key(localpart, device_id, algorithm).await? {
                let value = stored_json(&key.key_json)?;
                devices.insert(
                    device_id.clone(),
                    json!({ format!("{}:{}", key.algorithm, key.key_id): value }),
                );
            }
        }
        claimed.insert(user_id.clone(), Value::Object(devices));
    }
    ok(json!({ "one_time_keys": claimed, "failures": failures }))
}

// ---------------------------------------------------------------------------------------
// POST /keys/device_signing/upload

#[derive(Deserialize)]
pub(crate) struct DeviceSigningBody {
    pub(crate) master_key: Option<Value>,
    pub(crate) self_signing_key: Option<Value>,
    pub(crate) user_signing_key: Option<Value>,
    pub(crate) auth: Option<Map<String, Value>>,
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`.
///
/// The first upload needs no approval; so does re-uploading the keys in force. Replacing a
/// key needs the reset approval from the account page (`org.matrix.cross_signing_reset`),
/// else 401 with the `m.oauth` flow; the approval is used up by the replacement.
pub async fn device_signing_upload(
    auth: Authed,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let request: DeviceSigningBody = parse_body(&body)?;
    let user_id = auth.user_id.as_str();
    let db = auth.oauth.db();
    let stored = load_cross_signing(db, auth.localpart(), user_id).await?;
    let invalid = |usage: KeyUsage, err: mxqr_keys::VerifyError| {
        ApiError::Invalid(format!("{}: {err}", usage.field()))
    };

    let new_master = request
        .master_key
        .as_ref()
        .map(|value| cross_signing_public_key(value, user_id, KeyUsage::Master))
        .transpose()
        .map_err(|e| invalid(KeyUsage::Master, e))?;
    let stored_master = stored.get(&KeyUsage::Master).map(|master| master.key);
    let Some(master) = new_master.or(stored_master) else {
        return Err(ApiError::Invalid(
            "master_key is required: no master key is stored yet".into(),
        ));
    };
    let mut uploads: Vec<(KeyUsage, Value, Ed25519PublicKey)> = Vec::new();
    if let (Some(value), Some(key)) = (&request.master_key, new_master) {
        // Device signatures on the master key are kept if they verify.
        let ring = device_keyring(db, auth.localpart()).await?;
        uploads.push((
            KeyUsage::Master,
            retain_verified(value.clone(), user_id, &ring),
            key,
        ));
    }
    let master_ring = HashMap::from([(cross_signing_key_id(&master), master)]);
    for (usage, value) in [
        (KeyUsage::SelfSigning, &request.self_signing_key),
        (KeyUsage::UserSigning, &request.user_signing_key),
    ] {
        if let Some(value) = value {
            let key = verify_cross_signing_key(value, user_id, usage, &master)
                .map_err(|e| invalid(usage, e))?;
            uploads.push((
                usage,
                retain_verified(value.clone(), user_id, &master_ring),
                key,
            ));
        }
    }
    if uploads.is_empty() {
        return ok(json!({}));
    }
    // A new master key invalidates the subkeys it did not sign.
    if new_master.is_some_and(|m| stored_master.is_some_and(|old| old != m)) {
        for usage in [KeyUsage::SelfSigning, KeyUsage::UserSigning] {
            if stored.contains_key(&usage) && !uploads.iter().any(|(u, _, _)| *u == usage) {
                return Err(ApiError::Invalid(format!(
                    "a new master key needs a new {} too",
                    usage.field()
                )));
            }
        }
    }
    let replaces = uploads
        .iter()
        .any(|(usage, _, key)| stored.get(usage).is_some_and(|old| old.key != *key));
    if !replaces
        && uploads
            .iter()
            .all(|(usage, _, _)| stored.contains_key(usage))
    {
        // Re-upload of the keys in force (a retried bootstrap): nothing changes.
        return ok(json!({}));
    }
    if replaces
        && !auth
            .oauth
            .cross_signing_reset_allowed(auth.localpart())
            .await?
    {
        let url = format!(
            "{}?action=org.matrix.cross_signing_reset",
            auth.oauth.url("account")
        );
        return Err(oauth_uia(&url, request.auth.is_some()));
    }
    let rows: Vec<(String, String)> = uploads
        .iter()
        .map(|(usage, value, _)| (usage.as_str().to_owned(), value.to_string()))
        .collect();
    db.put_cross_signing_keys(auth.localpart(), &rows, replaces, auth.oauth.now_ms())
        .await?;
    ok(json!({}))
}

// ---------------------------------------------------------------------------------------
// POST /keys/signatures/upload

/// Why one signed object of `/keys/signatures/upload` was refused (reported per object in
/// `failures`, the request itself succeeds).
#[derive(Debug, thiserror::Error)]
enum SignatureFailure {
    #[error("no such device or key of this user")]
    UnknownTarget,
    #[error("the signed object differs from the published key")]
    ContentMismatch,
    #[error("signature by {0} does not verify")]
    Invalid(String),
    #[error("signature by {0}: the signing key is not one this object can be signed with")]
    WrongSigner(String),
    #[error("the signed object is not a JSON object")]
    NotAnObject,
}

impl SignatureFailure {
    fn to_json(&self) -> Value {
        let errcode = match self {
            Self::UnknownTarget => "M_NOT_FOUND",
            Self::NotAnObject => "M_BAD_JSON",
            Self::ContentMismatch | Self::Invalid(_) | Self::WrongSigner(_) => {
                "M_INVALID_SIGNATURE"
            }
        };
        json!({ "errcode": errcode, "error": self.to_string() })
    }
}

/// Verifies the new signatures of `signer` on `uploaded` (same content as `stored`) with
/// `keyring`; returns them, or the first failure.
fn verified_new_signatures(
    uploaded: &Value,
    stored: &Value,
    signer: &str,
    keyring: &HashMap<String, Ed25519PublicKey>,
) -> Result<Vec<(String, String)>, SignatureFailure> {
    if !same_content(uploaded, stored) {
        return Err(SignatureFailure::ContentMismatch);
    }
    let added = new_signatures(uploaded, stored, signer);
    for (key_id, _) in &added {
        let key = keyring
            .get(key_id)
            .ok_or_else(|| SignatureFailure::WrongSigner(key_id.clone()))?;
        verify_json(uploaded, signer, key_id, key)
            .map_err(|_| SignatureFailure::Invalid(key_id.clone()))?;
    }
    Ok(added)
}

/// Which stored object a signatures-upload entry targets.
enum Target {
    Device(StoredDeviceKeys),
    OwnMaster(CrossSigningKey),
}

/// `POST /_matrix/client/v3/keys/signatures/upload`.
pub async fn signatures_upload(auth: Authed, RawBody(body): RawBody) -> Result<Response, ApiError> {
    let request: Map<String, Value> = parse_body(&body)?;
    let mut failures = Map::new();
    for (user_id, objects) in &request {
        let objects = objects.as_object().ok_or_else(|| {
            ApiError::BadJson(format!("{user_id} must map key IDs to signed objects"))
        })?;
        let mut user_failures = Map::new();
        for (id, uploaded) in objects {
            let outcome = if !uploaded.is_object() {
                Err(SignatureFailure::NotAnObject)
            } else if *user_id == auth.user_id {
                sign_own_key(&auth, id, uploaded).await?
            } else {
                sign_other_master(&auth, user_id, id, uploaded).await?
            };
            if let Err(failure) = outcome {
                user_failures.insert(id.clone(), failure.to_json());
            }
        }
        if !user_failures.is_empty() {
            failures.insert(user_id.clone(), Value::Object(user_failures));
        }
    }
    ok(json!({ "failures": failures }))
}

/// The caller signs one of its own devices (with the self-signing key) or its own master key
/// (with a device key).
async fn sign_own_key(
    auth: &Authed,
    id: &str,
    uploaded: &Value,
) -> Result<Result<(), SignatureFailure>, ApiError> {
    let db = auth.oauth.db();
    let user_id = auth.user_id.as_str();
    for _ in 0..CAS_ATTEMPTS {
        let mut cross = load_cross_signing(db, auth.localpart(), user_id).await?;
        let ids = [id.to_owned()];
        let target = match db.device_keys(auth.localpart(), &ids).await?.pop() {
            Some(device) => Target::Device(device),
            None => match cross.remove(&KeyUsage::Master) {
                Some(master) if master.key.to_base64() == id => Target::OwnMaster(master),
                _ => return Ok(Err(SignatureFailure::UnknownTarget)),
            },
        };
        // The exact stored text is the compare-and-swap operand.
        let (text, ring) = match &target {
            Target::Device(device) => {
                let Some(ssk) = cross.get(&KeyUsage::SelfSigning) else {
                    return Ok(Err(SignatureFailure::WrongSigner(
                        "the self-signing key (none is published)".into(),
                    )));
                };
                let ring = HashMap::from([(cross_signing_key_id(&ssk.key), ssk.key)]);
                (device.key_json.as_str(), ring)
            }
            Target::OwnMaster(master) => (
                master.text.as_str(),
                device_keyring(db, auth.localpart()).await?,
            ),
        };
        let current = stored_json(text)?;
        let added = match verified_new_signatures(uploaded, &current, user_id, &ring) {
            Ok(added) if added.is_empty() => return Ok(Ok(())),
            Ok(added) => added,
            Err(failure) => return Ok(Err(failure)),
        };
        let mut merged = current;
        add_signatures(&mut merged, user_id, &added);
        let (merged, now) = (merged.to_string(), auth.oauth.now_ms());
        let swapped = match &target {
            Target::Device(_) => {
                db.swap_device_keys(auth.localpart(), id, Some(text), &merged, now)
                    .await?
            }
            Target::OwnMaster(_) => {
                let master = KeyUsage::Master.as_str();
                db.swap_cross_signing_key(auth.localpart(), master, text, &merged, now)
                    .await?
            }
        };
        if swapped {
            return Ok(Ok(()));
        }
    }
    tracing::warn!("key object kept changing under a concurrent writer");
    Err(ApiError::Database)
}

/// The caller signs another local user's master key with its user-signing key; the
/// signature is stored apart and shown only to the caller.
async fn sign_other_master(
    auth: &Authed,
    user_id: &str,
    id: &str,
    uploaded: &Value,
) -> Result<Result<(), SignatureFailure>, ApiError> {
    let Some(localpart) = parse_user_id(user_id)
        .filter(|u| u.server_name == auth.oauth.server_name())
        .map(|u| u.localpart)
    else {
        return Ok(Err(SignatureFailure::UnknownTarget));
    };
    let db = auth.oauth.db();
    let mut target = load_cross_signing(db, localpart, user_id).await?;
    let Some(master) = target
        .remove(&KeyUsage::Master)
        .filter(|master| master.key.to_base64() == id)
    else {
        return Ok(Err(SignatureFailure::UnknownTarget));
    };
    let mut own = load_cross_signing(db, auth.localpart(), &auth.user_id).await?;
    let Some(usk) = own.remove(&KeyUsage::UserSigning) else {
        return Ok(Err(SignatureFailure::WrongSigner(
            "the user-signing key (none is published)".into(),
        )));
    };
    let ring = HashMap::from([(cross_signing_key_id(&usk.key), usk.key)]);
    let added = match verified_new_signatures(uploaded, &master.value, &auth.user_id, &ring) {
        Ok(added) => added,
        Err(failure) => return Ok(Err(failure)),
    };
    for (signer_key_id, signature) in &added {
        db.add_user_signature(auth.localpart(), user_id, id, signer_key_id, signature)
            .await?;
    }
    Ok(Ok(()))
}

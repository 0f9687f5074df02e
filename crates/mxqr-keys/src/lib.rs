//! Matrix end-to-end-encryption key handling shared by both ends of QR sign-in.
//!
//! The new device signs (its device keys, one-time keys, and itself with the self-signing key
//! it received in `m.login.secrets`); the homeserver verifies what gets uploaded. Both must
//! agree byte for byte on canonical JSON and signatures, so both use this crate. It does no
//! I/O: no HTTP, no async, only JSON values in and out.
//!
//! - [`canonical`]: canonical JSON, the bytes that are signed.
//! - [`signing`]: signing and verifying JSON objects.
//! - [`device`]: a vodozemac `Account`'s `/keys/upload` body.
//! - [`cross_signing`]: master, self-signing and user-signing keys; `m.login.secrets` import
//!   and export; `/keys/device_signing/upload` and `/keys/signatures/upload` bodies.
//! - [`backup`]: the `m.megolm_backup.v1.curve25519-aes-sha2` key and its signed `auth_data`.
//! - [`verify`]: the server's checks of uploaded key objects.
//! - [`received`]: the new device's checks of received secrets against the published keys.
//!
//! Private keys are never shown by `Debug` and are wiped when dropped.

mod b64;
pub mod backup;
pub mod canonical;
pub mod cross_signing;
pub mod device;
pub mod received;
pub mod signing;
pub mod verify;

pub use b64::{KeyDecodeError, curve25519_public_key_from_base64, ed25519_public_key_from_base64};
pub use backup::{BACKUP_ALGORITHM, BackupImportError, BackupKey, verify_backup_auth_data};
pub use canonical::{CanonicalJsonError, canonical_json};
pub use cross_signing::{
    CrossSigningKeys, CrossSigningPublicKeys, KeyUsage, SeedImportError, cross_signing_key_id,
    seed_from_secret, seed_to_secret, signatures_upload_body,
};
pub use device::{KeysUploadError, device_id, device_keys, keys_upload_body};
pub use received::{
    BackupRefusal, CrossSigningRefusal, check_received_backup, check_received_cross_signing,
    published_cross_signing_keys,
};
pub use signing::{
    JsonSigner, SignError, SignatureError, ed25519_key_id, sign_json, signing_input, verify_json,
};
pub use verify::{
    DeviceIdentity, VerifyError, cross_signing_public_key, verify_cross_signing_key,
    verify_device_keys, verify_device_signed_by, verify_device_signing_upload,
};

/// Re-exported so callers name the same key types this crate takes.
pub use vodozemac::olm::Account;
pub use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519SecretKey, Ed25519Signature};

/// `base64` encoding as Matrix uses it (standard alphabet, no padding).
pub fn encode_base64(bytes: impl AsRef<[u8]>) -> String {
    b64::encode(bytes)
}

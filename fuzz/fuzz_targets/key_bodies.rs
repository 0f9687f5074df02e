//! `/keys/upload`, `/keys/device_signing/upload`, `/keys/signatures/upload` and
//! `/room_keys/version` bodies through `parse_body` and the key checks that need no store
//! (canonical JSON, signature lookup and verification, cross-signing key shape).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mxqr_server::fuzzing::key_bodies(data);
});

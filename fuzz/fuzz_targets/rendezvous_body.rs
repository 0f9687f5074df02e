//! Rendezvous request bodies (MSC4388 create/write JSON, MSC4108 payload) through the
//! server's own parsers and checks: never a panic, and nothing accepted holds NUL or exceeds
//! the payload limit (asserted inside).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mxqr_server::fuzzing::rendezvous_bodies(data);
});

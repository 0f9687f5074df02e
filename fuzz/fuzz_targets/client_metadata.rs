//! `POST /oauth2/registration` bodies through the server's client metadata validation: never
//! a panic, and accepted metadata holds no NUL (asserted inside).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mxqr_server::fuzzing::client_metadata(data);
});

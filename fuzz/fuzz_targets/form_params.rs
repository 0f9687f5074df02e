//! Form bodies and query strings of the OAuth endpoints and pages (token, device, revoke,
//! authorize, login, link) through the server's one form parser and the scope parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mxqr_server::fuzzing::form_params(data);
});

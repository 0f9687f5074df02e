//! The `m.login.*` decoder on arbitrary bytes: never a panic, and whatever decodes
//! re-encodes to JSON that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxqr_proto::messages::LoginMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = LoginMessage::from_json(data) {
        let json = message.to_json();
        let again = LoginMessage::from_json(&json).expect("our own encoding decodes");
        assert_eq!(again.to_json().as_slice(), json.as_slice());
    }
});

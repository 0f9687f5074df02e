//! The OAuth loopback redirect listener's request parser on arbitrary bytes (any local
//! process can connect): never a panic, and a callback is only ever accepted for the right
//! state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxqr_client::loopback::{Callback, parse_request};

const STATE: &str = "s7Xq2";

fuzz_target!(|data: &[u8]| {
    if let Ok(callback) = parse_request(data, STATE) {
        let text = std::str::from_utf8(data).expect("accepted requests are UTF-8");
        assert!(text.starts_with("GET /"), "accepted {text:?}");
        if let Callback::Code(code) = callback {
            assert!(!code.is_empty());
        }
    }
});

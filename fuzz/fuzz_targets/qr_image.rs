//! Reading QR codes from PNG/JPEG bytes: image decoding and rqrr must not take the process
//! down. Slow per input (a full image decode), so run it after qr_decode, not instead.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use mxqr_proto::qr::QrCode;
use mxqr_proto::qr::render::decode_image;

static QUIET_HOOK: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts even on a panic that is caught. `decode_image` catches
    // rqrr's known geometry assertion (upstream issue 54) and reports it as an error, so a
    // caught panic must not count as a crash here. A panic that escapes is still one:
    // libfuzzer-sys aborts on any panic leaving this closure.
    QUIET_HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    if let Ok(payload) = decode_image(data) {
        let _ = QrCode::decode(&payload);
    }
});

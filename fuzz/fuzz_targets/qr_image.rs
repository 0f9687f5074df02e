//! Reading QR codes from PNG/JPEG bytes: image decoding and rqrr must not take the process
//! down. Slow per input (a full image decode), so run it after qr_decode, not instead.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxqr_proto::qr::QrCode;
use mxqr_proto::qr::render::decode_image;

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = decode_image(data) {
        let _ = QrCode::decode(&payload);
    }
});

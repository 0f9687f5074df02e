//! QR payload decoding: never panics on any bytes, and whatever it accepts re-encodes (in
//! both MSC4388 ID length layouts) to bytes that decode to the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxqr_proto::DeviceKind;
use mxqr_proto::qr::{EncodeSettings, Msc4388IdLength, QrCode};

fuzz_target!(|data: &[u8]| {
    let Ok(code) = QrCode::decode(data) else {
        return;
    };
    assert_eq!(QrCode::decode(&code.encode()).as_ref(), Ok(&code));
    // A decoded ID is non-empty; if it also fits a u8 length, the short layout must round-trip.
    let u8_layout = EncodeSettings {
        msc4388_id_length: Msc4388IdLength::U8,
    };
    if let Ok(short) = code.encode_with(u8_layout) {
        assert_eq!(QrCode::decode(&short).as_ref(), Ok(&code));
    }
    // Exactly one of the two kinds of device may scan any code.
    let new_ok = code.check_scannable_by(DeviceKind::New).is_ok();
    let existing_ok = code.check_scannable_by(DeviceKind::Existing).is_ok();
    assert!(new_ok != existing_ok);
    let _ = code.to_json();
});

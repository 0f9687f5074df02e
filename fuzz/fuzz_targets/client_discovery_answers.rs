//! Discovery answers of a hostile server through the client's parsers:
//! `.well-known/matrix/client` and `/versions`. Never a panic; an accepted base URL follows
//! the QR decoder's rule (asserted).
//!
//! Input: one byte picks the answer kind, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxqr_client::discovery::base_url_from_well_known;
use mxqr_client::rendezvous::RendezvousSupport;

fuzz_target!(|data: &[u8]| {
    let [kind, body @ ..] = data else {
        return;
    };
    if kind % 2 == 0 {
        if let Ok(url) = base_url_from_well_known(body) {
            assert!(mxqr_proto::qr::is_secure_url(&url), "{url}");
        }
    } else {
        let _ = RendezvousSupport::from_versions_body(body);
    }
});

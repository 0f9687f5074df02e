//! Every channel entry point that reads a peer's payload, fed arbitrary text: G reading S's
//! first payload, S reading G's OK, and an established channel reading a message, for both
//! generations. None may panic; none may accept what it did not seal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxqr_proto::Generation;
use std::sync::{Mutex, OnceLock};

use mxqr_proto::channel::{Binding, EstablishedChannel, GeneratorChannel, ScannerChannel};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let payload = String::from_utf8_lossy(rest);
    let generation = if selector & 1 == 0 { Generation::Msc4108v2024 } else { Generation::Msc4388 };
    let binding = Binding::new("https://hs.example/", "fuzz", "t0");

    let g = GeneratorChannel::from_secret_bytes(generation, [0x11; 32]);
    let g_key = g.public_key();
    assert!(g.receive_initiate(&payload, &binding).is_err());

    let (s, _) = ScannerChannel::initiate_with_secret_bytes(generation, g_key, &binding, [0x22; 32]).unwrap();
    assert!(s.receive_ok(&payload, &binding).is_err());

    // An established pair (built once per generation: failed opens leave it unchanged).
    let mut pairs = PAIRS.get_or_init(|| Mutex::new([established(Generation::Msc4108v2024), established(Generation::Msc4388)])).lock().unwrap();
    let (g, s) = &mut pairs[usize::from(selector & 1)];
    assert!(s.open(&payload, &binding).is_err());
    assert!(g.open(&payload, &binding).is_err());
});

static PAIRS: OnceLock<Mutex<[(EstablishedChannel, EstablishedChannel); 2]>> = OnceLock::new();

fn established(generation: Generation) -> (EstablishedChannel, EstablishedChannel) {
    let binding = Binding::new("https://hs.example/", "fuzz", "t0");
    let g = GeneratorChannel::from_secret_bytes(generation, [0x11; 32]);
    let (s, initiate) = ScannerChannel::initiate_with_secret_bytes(generation, g.public_key(), &binding, [0x22; 32]).unwrap();
    let mut g = g.receive_initiate(&initiate, &binding).unwrap();
    let ok = g.seal_ok(&binding, &mut rand::rng());
    let s = s.receive_ok(&ok, &binding).unwrap();
    let g = g.confirm(s.check_code().digits()).unwrap();
    (g, s)
}

//! Properties of the channels over arbitrary inputs.

use mxqr_proto::Generation;
use mxqr_proto::channel::{Binding, GeneratorChannel, ScannerChannel};
use proptest::prelude::*;

fn generation() -> impl Strategy<Value = Generation> {
    prop_oneof![Just(Generation::Msc4108v2024), Just(Generation::Msc4388)]
}

fn binding() -> impl Strategy<Value = Binding> {
    (
        "https://[a-z]{1,12}\\.example/",
        "[A-Za-z0-9_-]{1,40}",
        "[A-Za-z0-9_-]{0,40}",
    )
        .prop_map(|(u, i, t)| Binding::new(u, i, t))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever is sealed opens to the same bytes, in order, in both directions.
    #[test]
    fn seal_then_open_is_identity(
        generation in generation(),
        b in binding(),
        messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..6),
    ) {
        let mut rng = rand::rng();
        let g = GeneratorChannel::new(generation, &mut rng);
        let (s, initiate) = ScannerChannel::initiate(generation, g.public_key(), &b, &mut rng).unwrap();
        let mut g = g.receive_initiate(&initiate, &b).unwrap();
        let ok = g.seal_ok(&b, &mut rng);
        let mut s = s.receive_ok(&ok, &b).unwrap();
        let mut g = g.confirm(s.check_code().digits()).unwrap();
        for (i, m) in messages.iter().enumerate() {
            if i % 2 == 0 {
                let p = s.seal(m, &b);
                prop_assert_eq!(&g.open(&p, &b).unwrap(), m);
            } else {
                let p = g.seal(m, &b);
                prop_assert_eq!(&s.open(&p, &b).unwrap(), m);
            }
        }
    }

    /// Arbitrary text as a payload is refused without a panic at every step.
    #[test]
    fn arbitrary_payloads_never_panic(generation in generation(), b in binding(), junk in ".{0,300}") {
        let mut rng = rand::rng();
        let g = GeneratorChannel::new(generation, &mut rng);
        let key = g.public_key();
        prop_assert!(g.receive_initiate(&junk, &b).is_err());
        let (s, _) = ScannerChannel::initiate(generation, key, &b, &mut rng).unwrap();
        prop_assert!(s.receive_ok(&junk, &b).is_err());
    }

    /// Arbitrary bytes, validly base64-encoded, are refused too.
    #[test]
    fn arbitrary_ciphertexts_are_refused(generation in generation(), b in binding(), bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes);
        let mut rng = rand::rng();
        let g = GeneratorChannel::new(generation, &mut rng);
        let (s, initiate) = ScannerChannel::initiate(generation, g.public_key(), &b, &mut rng).unwrap();
        let mut g = g.receive_initiate(&initiate, &b).unwrap();
        let ok = g.seal_ok(&b, &mut rng);
        let mut s = s.receive_ok(&ok, &b).unwrap();
        prop_assert!(s.open(&payload, &b).is_err());
        let with_key = format!("{payload}|{}", g_key_b64(&initiate));
        let fresh = GeneratorChannel::new(generation, &mut rng);
        prop_assert!(fresh.receive_initiate(&with_key, &b).is_err());
    }
}

fn g_key_b64(initiate: &str) -> String {
    initiate.split('|').nth(1).unwrap_or("AAAA").to_owned()
}

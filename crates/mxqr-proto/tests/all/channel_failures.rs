//! Every way a payload can go wrong is refused, for both generations; what authenticates
//! elsewhere (a replay, an early payload) is named, everything else is one generic error.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use mxqr_proto::Generation;
use mxqr_proto::channel::{
    Binding, ChannelError, EstablishedChannel, GeneratorChannel, ScannerChannel,
};

const GENERATIONS: [Generation; 2] = [Generation::Msc4108v2024, Generation::Msc4388];

fn b(token: &str) -> Binding {
    Binding::new("https://hs.example/", "rv1", token)
}

/// A completed handshake: (G, S), with S's check code typed correctly on G.
fn established(generation: Generation) -> (EstablishedChannel, EstablishedChannel) {
    let mut rng = rand::rng();
    let g = GeneratorChannel::new(generation, &mut rng);
    let (s, initiate) =
        ScannerChannel::initiate(generation, g.public_key(), &b("t0"), &mut rng).unwrap();
    let mut g = g.receive_initiate(&initiate, &b("t0")).unwrap();
    let ok = g.seal_ok(&b("t1"), &mut rng);
    let s = s.receive_ok(&ok, &b("t1")).unwrap();
    let g = g.confirm(s.check_code().digits()).unwrap();
    (g, s)
}

fn flip(payload: &str, at: usize) -> String {
    let mut bytes = STANDARD_NO_PAD.decode(payload).unwrap();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0xff;
    STANDARD_NO_PAD.encode(bytes)
}

fn cut(payload: &str, keep: usize) -> String {
    let bytes = STANDARD_NO_PAD.decode(payload).unwrap();
    STANDARD_NO_PAD.encode(&bytes[..keep.min(bytes.len())])
}

#[test]
fn handshake_and_check_code_agree() {
    for generation in GENERATIONS {
        for _ in 0..20 {
            let (g, s) = established(generation);
            assert_eq!(g.check_code(), s.check_code());
            if generation == Generation::Msc4388 {
                assert!((10..=99).contains(&s.check_code().digits()));
            }
        }
    }
}

#[test]
fn wrong_check_code() {
    for generation in GENERATIONS {
        let mut rng = rand::rng();
        let g = GeneratorChannel::new(generation, &mut rng);
        let (s, initiate) =
            ScannerChannel::initiate(generation, g.public_key(), &b("t0"), &mut rng).unwrap();
        let mut g = g.receive_initiate(&initiate, &b("t0")).unwrap();
        let ok = g.seal_ok(&b("t1"), &mut rng);
        assert_eq!(
            g.seal_ok(&b("t1"), &mut rng),
            ok,
            "resending OK gives the same payload"
        );
        let s = s.receive_ok(&ok, &b("t1")).unwrap();
        let wrong = (s.check_code().digits() + 1) % 100;
        assert_eq!(
            g.confirm(wrong).unwrap_err(),
            ChannelError::CheckCodeMismatch
        );
    }
}

#[test]
fn confirm_before_ok_is_refused() {
    for generation in GENERATIONS {
        let mut rng = rand::rng();
        let g = GeneratorChannel::new(generation, &mut rng);
        let (s, initiate) =
            ScannerChannel::initiate(generation, g.public_key(), &b("t0"), &mut rng).unwrap();
        let g = g.receive_initiate(&initiate, &b("t0")).unwrap();
        let _ = s;
        assert_eq!(
            g.confirm(42).unwrap_err(),
            ChannelError::HandshakeIncomplete
        );
    }
}

#[test]
fn tampered() {
    for generation in GENERATIONS {
        let (mut g, mut s) = established(generation);
        let sealed = s.seal(br#"{"type":"m.login.protocol"}"#, &b("t2"));
        assert_eq!(
            g.open(&flip(&sealed, 3), &b("t2")).unwrap_err(),
            ChannelError::Tampered
        );
        // The genuine payload still opens: a forgery does not consume the position.
        assert!(g.open(&sealed, &b("t2")).is_ok());
    }
}

#[test]
fn tampered_handshake() {
    for generation in GENERATIONS {
        let mut rng = rand::rng();
        let g = GeneratorChannel::new(generation, &mut rng);
        let (_, initiate) =
            ScannerChannel::initiate(generation, g.public_key(), &b("t0"), &mut rng).unwrap();
        let tampered = match generation {
            // ciphertext|key: flip a ciphertext byte
            Generation::Msc4108v2024 => {
                let (ct, key) = initiate.split_once('|').unwrap();
                format!("{}|{key}", flip(ct, 0))
            }
            Generation::Msc4388 => flip(&initiate, 33),
        };
        assert_eq!(
            g.receive_initiate(&tampered, &b("t0")).unwrap_err(),
            ChannelError::Tampered
        );
    }
}

#[test]
fn replayed() {
    for generation in GENERATIONS {
        let (mut g, mut s) = established(generation);
        let first = s.seal(br#"{"type":"m.login.protocols"}"#, &b("t2"));
        g.open(&first, &b("t2")).unwrap();
        // Same payload again, whether the attacker presents it at its old place or a new one.
        assert_eq!(
            g.open(&first, &b("t2")).unwrap_err(),
            ChannelError::Replayed
        );
        assert_eq!(
            g.open(&first, &b("t4")).unwrap_err(),
            ChannelError::Replayed
        );
    }
}

#[test]
fn reordered() {
    for generation in GENERATIONS {
        let (mut g, mut s) = established(generation);
        let first = s.seal(br#"{"type":"m.login.protocols"}"#, &b("t2"));
        let second = s.seal(br#"{"type":"m.login.protocol_accepted"}"#, &b("t3"));
        // MSC4388 binds each payload to the token it replaces, which G cannot know ahead:
        // the early payload does not authenticate and is not told apart from tampering.
        let expected = match generation {
            Generation::Msc4108v2024 => ChannelError::OutOfOrder,
            Generation::Msc4388 => ChannelError::Tampered,
        };
        assert_eq!(g.open(&second, &b("t2")).unwrap_err(), expected);
        assert!(g.open(&first, &b("t2")).is_ok());
        assert!(g.open(&second, &b("t3")).is_ok());
    }
}

#[test]
fn truncated() {
    for generation in GENERATIONS {
        let (mut g, mut s) = established(generation);
        let sealed = s.seal(br#"{"type":"m.login.success"}"#, &b("t2"));
        assert_eq!(
            g.open(&cut(&sealed, 10), &b("t2")).unwrap_err(),
            ChannelError::Truncated
        );
        assert_eq!(g.open("", &b("t2")).unwrap_err(), ChannelError::Truncated);
        // Cut inside the tag: long enough to parse, but it no longer authenticates.
        let len = STANDARD_NO_PAD.decode(&sealed).unwrap().len();
        assert_eq!(
            g.open(&cut(&sealed, len - 1), &b("t2")).unwrap_err(),
            ChannelError::Tampered
        );
    }
    // A handshake too short for its key prefix.
    let g = GeneratorChannel::new(Generation::Msc4388, &mut rand::rng());
    assert_eq!(
        g.receive_initiate(&STANDARD_NO_PAD.encode([1u8; 40]), &b("t0"))
            .unwrap_err(),
        ChannelError::Truncated
    );
}

/// Sealed for another place: refused, as tampering (see [`ChannelError::Tampered`]).
#[test]
fn bound_to_another_rendezvous() {
    let (mut g, mut s) = established(Generation::Msc4388);
    let other = Binding::new("https://hs.example/", "another-rendezvous", "t2");
    let sealed = s.seal(br#"{"type":"m.login.protocols"}"#, &other);
    assert_eq!(
        g.open(&sealed, &b("t2")).unwrap_err(),
        ChannelError::Tampered
    );
    let (mut g, mut s) = established(Generation::Msc4388);
    let other_server = Binding::new("https://evil.example/", "rv1", "t2");
    let sealed = s.seal(br#"{"type":"m.login.protocols"}"#, &other_server);
    assert_eq!(
        g.open(&sealed, &b("t2")).unwrap_err(),
        ChannelError::Tampered
    );
}

#[test]
fn malformed() {
    for generation in GENERATIONS {
        let (mut g, _) = established(generation);
        assert_eq!(
            g.open("not base64 !!", &b("t2")).unwrap_err(),
            ChannelError::Malformed
        );
        let fresh = GeneratorChannel::new(generation, &mut rand::rng());
        assert_eq!(
            fresh.receive_initiate("%%%", &b("t0")).unwrap_err(),
            ChannelError::Malformed
        );
    }
    let fresh = GeneratorChannel::new(Generation::Msc4108v2024, &mut rand::rng());
    // No `|key` part.
    assert_eq!(
        fresh.receive_initiate("AAAA", &b("t0")).unwrap_err(),
        ChannelError::Malformed
    );
}

#[test]
fn low_order_keys_are_refused() {
    for generation in GENERATIONS {
        let zero = mxqr_proto::PublicKey([0; 32]);
        let err =
            ScannerChannel::initiate(generation, zero, &b("t0"), &mut rand::rng()).unwrap_err();
        assert_eq!(err, ChannelError::NonContributoryKey);
    }
}

#[test]
fn wrong_handshake_message() {
    // A correctly sealed first payload that is not INITIATE (built with vodozemac, since our
    // own API cannot produce one).
    let g = GeneratorChannel::new(Generation::Msc4108v2024, &mut rand::rng());
    let their = vodozemac::Curve25519PublicKey::from_bytes(g.public_key().0);
    let out = vodozemac::ecies::Ecies::new()
        .establish_outbound_channel(their, b"HELLO")
        .unwrap();
    let err = g
        .receive_initiate(&out.message.encode(), &b("t0"))
        .unwrap_err();
    assert_eq!(err, ChannelError::UnexpectedHandshake);
}

/// Whatever was changed in a sealed payload, the answer is the one generic error: naming the
/// kind of damage would mean reading bytes that did not authenticate.
#[test]
fn a_tampered_payload_gets_one_error_whatever_the_tampering() {
    for generation in GENERATIONS {
        let (mut g, mut s) = established(generation);
        let sealed = s.seal(br#"{"type":"m.login.protocol"}"#, &b("t2"));
        let len = STANDARD_NO_PAD.decode(&sealed).unwrap().len();
        let mut appended = STANDARD_NO_PAD.decode(&sealed).unwrap();
        appended.push(0);
        let mut tampered = vec![
            ("first body byte", flip(&sealed, 0)),
            ("last body byte", flip(&sealed, len - 17)),
            ("a tag byte", flip(&sealed, len - 1)),
            ("cut inside the tag", cut(&sealed, len - 1)),
            ("a byte appended", STANDARD_NO_PAD.encode(appended)),
        ];
        if generation == Generation::Msc4388 {
            let elsewhere = Binding::new("https://evil.example/", "rv1", "t2");
            tampered.push(("sealed for another place", s.seal(b"{}", &elsewhere)));
        }
        for (what, payload) in tampered {
            assert_eq!(
                g.open(&payload, &b("t2")).unwrap_err(),
                ChannelError::Tampered,
                "{generation:?}: {what}"
            );
        }
    }
    // The handshake too: a tag flipped on INITIATE.
    for generation in GENERATIONS {
        let mut rng = rand::rng();
        let g = GeneratorChannel::new(generation, &mut rng);
        let (_, initiate) =
            ScannerChannel::initiate(generation, g.public_key(), &b("t0"), &mut rng).unwrap();
        let tampered = match generation {
            Generation::Msc4108v2024 => {
                let (ct, key) = initiate.split_once('|').unwrap();
                let len = STANDARD_NO_PAD.decode(ct).unwrap().len();
                format!("{}|{key}", flip(ct, len - 1))
            }
            Generation::Msc4388 => {
                let len = STANDARD_NO_PAD.decode(&initiate).unwrap().len();
                flip(&initiate, len - 1)
            }
        };
        assert_eq!(
            g.receive_initiate(&tampered, &b("t0")).unwrap_err(),
            ChannelError::Tampered,
            "{generation:?}"
        );
    }
}

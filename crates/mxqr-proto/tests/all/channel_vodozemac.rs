//! Byte-level interop: one side is mxqr-proto, the other vodozemac 0.11.1's own `ecies` and
//! `hpke` API, for both generations and both roles. They must agree on every payload and on
//! the check code.

use mxqr_proto::channel::{Binding, ChannelError, GeneratorChannel, INITIATE, OK, ScannerChannel};
use mxqr_proto::{Generation, PublicKey};
use vodozemac::Curve25519PublicKey;
use vodozemac::ecies::{self, DigitMode, Ecies};
use vodozemac::hpke::{self, HpkeRecipientChannel, HpkeSenderChannel};

fn rng() -> rand::rngs::ThreadRng {
    rand::rng()
}

fn binding(token: &str) -> Binding {
    Binding::new("https://matrix.example.org/", "01JRENDEZVOUSID", token)
}

fn vodo_key(k: PublicKey) -> Curve25519PublicKey {
    Curve25519PublicKey::from_bytes(k.0)
}

#[test]
fn ecies_vodozemac_scans_mxqr_generates() {
    let g = GeneratorChannel::new(Generation::Msc4108v2024, &mut rng());
    let s = Ecies::new();
    let ecies::OutboundCreationResult {
        ecies: mut s,
        message,
    } = s
        .establish_outbound_channel(vodo_key(g.public_key()), INITIATE)
        .unwrap();

    let b = binding("ignored by ECIES");
    let mut g = g.receive_initiate(&message.encode(), &b).unwrap();
    let ok = g.seal_ok(&b, &mut rng());
    let ok = s.decrypt(&ecies::Message::decode(&ok).unwrap()).unwrap();
    assert_eq!(ok, OK);

    let s_code = s.check_code().to_digit(DigitMode::AllowLeadingZero);
    let mut g = g.confirm(s_code).expect("check codes agree");
    assert_eq!(g.check_code().digits(), s_code);

    // Conversation in both directions.
    let from_s = s.encrypt(br#"{"type":"m.login.protocols"}"#).encode();
    assert_eq!(
        g.open(&from_s, &b).unwrap(),
        br#"{"type":"m.login.protocols"}"#
    );
    let from_g = g.seal(br#"{"type":"m.login.protocol"}"#, &b);
    let opened = s
        .decrypt(&ecies::Message::decode(&from_g).unwrap())
        .unwrap();
    assert_eq!(opened, br#"{"type":"m.login.protocol"}"#);
}

#[test]
fn ecies_mxqr_scans_vodozemac_generates() {
    let g = Ecies::new();
    let g_key = PublicKey(g.public_key().to_bytes());
    let b = binding("");
    let (s, initiate) =
        ScannerChannel::initiate(Generation::Msc4108v2024, g_key, &b, &mut rng()).unwrap();

    let ecies::InboundCreationResult {
        ecies: mut g,
        message,
    } = g
        .establish_inbound_channel(&ecies::InitialMessage::decode(&initiate).unwrap())
        .unwrap();
    assert_eq!(message, INITIATE);
    let ok = g.encrypt(OK).encode();
    let mut s = s.receive_ok(&ok, &b).unwrap();
    assert_eq!(
        s.check_code().digits(),
        g.check_code().to_digit(DigitMode::AllowLeadingZero)
    );

    let sealed = s.seal(b"{\"type\":\"m.login.success\"}", &b);
    assert_eq!(
        g.decrypt(&ecies::Message::decode(&sealed).unwrap())
            .unwrap(),
        b"{\"type\":\"m.login.success\"}"
    );
    let back = g.encrypt(b"{\"type\":\"m.login.secrets\"}").encode();
    assert_eq!(
        s.open(&back, &b).unwrap(),
        b"{\"type\":\"m.login.secrets\"}"
    );
}

#[test]
fn hpke_vodozemac_scans_mxqr_generates() {
    let g = GeneratorChannel::new(Generation::Msc4388, &mut rng());
    let t0 = binding("token-0");
    let t1 = binding("token-1");
    let hpke::SenderCreationResult {
        channel: s,
        message,
    } = HpkeSenderChannel::new()
        .establish_channel(vodo_key(g.public_key()), INITIATE, &t0.aad())
        .unwrap();

    let mut g = g.receive_initiate(&message.encode(), &t0).unwrap();
    let ok = g.seal_ok(&t1, &mut rng());
    let hpke::BidirectionalCreationResult {
        channel: mut s,
        message,
    } = s
        .establish_bidirectional_channel(&hpke::InitialResponse::decode(&ok).unwrap(), &t1.aad())
        .unwrap();
    assert_eq!(message, OK);

    let s_code = s.check_code().to_digit(DigitMode::NoLeadingZero);
    assert!((10..=99).contains(&s_code));
    let mut g = g.confirm(s_code).expect("check codes agree");

    let t2 = binding("token-2");
    let from_s = s
        .seal(b"{\"type\":\"m.login.protocols\"}", &t2.aad())
        .encode();
    assert_eq!(
        g.open(&from_s, &t2).unwrap(),
        b"{\"type\":\"m.login.protocols\"}"
    );
    let t3 = binding("token-3");
    let from_g = g.seal(b"{\"type\":\"m.login.protocol\"}", &t3);
    let opened = s
        .open(&hpke::Message::decode(&from_g).unwrap(), &t3.aad())
        .unwrap();
    assert_eq!(opened, b"{\"type\":\"m.login.protocol\"}");
}

#[test]
fn hpke_mxqr_scans_vodozemac_generates() {
    let g = HpkeRecipientChannel::new();
    let g_key = PublicKey(g.public_key().to_bytes());
    let t0 = binding("t0");
    let (s, initiate) =
        ScannerChannel::initiate(Generation::Msc4388, g_key, &t0, &mut rng()).unwrap();

    let hpke::RecipientCreationResult {
        channel: g,
        message,
    } = g
        .establish_channel(&hpke::InitialMessage::decode(&initiate).unwrap(), &t0.aad())
        .unwrap();
    assert_eq!(message, INITIATE);
    let t1 = binding("t1");
    let hpke::BidirectionalCreationResult {
        channel: mut g,
        message: ok,
    } = g.establish_bidirectional_channel(OK, &t1.aad());
    let mut s = s.receive_ok(&ok.encode(), &t1).unwrap();
    assert_eq!(
        s.check_code().digits(),
        g.check_code().to_digit(DigitMode::NoLeadingZero)
    );

    let t2 = binding("t2");
    let sealed = s.seal(b"{\"a\":1}", &t2);
    assert_eq!(
        g.open(&hpke::Message::decode(&sealed).unwrap(), &t2.aad())
            .unwrap(),
        b"{\"a\":1}"
    );
    let t3 = binding("t3");
    let back = g.seal(b"{\"b\":2}", &t3.aad()).encode();
    assert_eq!(s.open(&back, &t3).unwrap(), b"{\"b\":2}");
}

/// The HPKE binding is real: vodozemac sealing for one rendezvous, mxqr opening as another,
/// is refused.
#[test]
fn hpke_binding_mismatch_with_vodozemac() {
    let g = GeneratorChannel::new(Generation::Msc4388, &mut rng());
    let here = binding("t0");
    let elsewhere = Binding::new("https://matrix.example.org/", "ANOTHER", "t0");
    let hpke::SenderCreationResult { message, .. } = HpkeSenderChannel::new()
        .establish_channel(vodo_key(g.public_key()), INITIATE, &elsewhere.aad())
        .unwrap();
    let err = g.receive_initiate(&message.encode(), &here).unwrap_err();
    assert_eq!(err, ChannelError::Tampered);
}

/// Fixed secrets give fixed bytes: a known-answer check of our HPKE key schedule against
/// the `hpke` crate's RFC 9180 implementation (the one vodozemac builds on).
#[test]
fn hpke_known_answer_against_rfc9180_crate() {
    use hpke_crate::{Deserializable, Kem as _, OpModeR, Serializable};
    type Kem = hpke_crate::kem::X25519HkdfSha256;
    type Kdf = hpke_crate::kdf::HkdfSha256;
    type Aead = hpke_crate::aead::ChaCha20Poly1305;

    let g_secret = [0x42u8; 32];
    let s_secret = [0x17u8; 32];
    let g = GeneratorChannel::from_secret_bytes(Generation::Msc4388, g_secret);
    let b = binding("tok");
    let (_s, initiate) = ScannerChannel::initiate_with_secret_bytes(
        Generation::Msc4388,
        g.public_key(),
        &b,
        s_secret,
    )
    .unwrap();
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD_NO_PAD, &initiate)
            .unwrap();
    let (enc, ciphertext) = bytes.split_at(32);

    let sk_r = <Kem as hpke_crate::Kem>::PrivateKey::from_bytes(&g_secret).unwrap();
    let encapped = <Kem as hpke_crate::Kem>::EncappedKey::from_bytes(enc).unwrap();
    let mut ctx = hpke_crate::setup_receiver::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &sk_r,
        &encapped,
        b"MATRIX_QR_CODE_LOGIN",
    )
    .unwrap();
    assert_eq!(ctx.open(ciphertext, &b.aad()).unwrap(), INITIATE);

    let pk_r = Kem::sk_to_pk(&sk_r);
    assert_eq!(pk_r.to_bytes().as_slice(), g.public_key().as_bytes());
}

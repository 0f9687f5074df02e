//! The shared QR vectors (tests/vectors/qr.json), hand-made edge cases, and properties of the
//! codec over arbitrary codes and arbitrary bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use mxqr_proto::qr::{
    EncodeSettings, Msc4388IdLength, Msc4388Prefix, QrCode, QrError, QrField, QrIntent,
    QrRendezvous, UrlProblem,
};
use mxqr_proto::{DeviceKind, PublicKey};
use proptest::prelude::*;
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("../vectors/qr.json")).expect("qr.json is JSON")
}

fn vector_bytes(v: &Value) -> Vec<u8> {
    hex::decode(v["hex"].as_str().expect("hex field")).expect("valid hex")
}

fn str_field<'a>(fields: &'a Value, key: &str) -> &'a str {
    fields[key]
        .as_str()
        .unwrap_or_else(|| panic!("field {key} is a string"))
}

/// Compares every key of `fields` with the decoded code; an unknown key fails the test, so a
/// new field in the vectors cannot go unchecked.
fn assert_fields(name: &str, bytes: &[u8], code: &QrCode, fields: &Value) {
    let fields_map = fields.as_object().expect("fields is an object");
    for (key, want) in fields_map {
        let ctx = format!("{name}: field {key}");
        match (key.as_str(), &code.rendezvous) {
            ("version", QrRendezvous::Msc4108 { .. }) => {
                assert_eq!(want.as_u64(), Some(bytes[6].into()), "{ctx}")
            }
            ("mode", QrRendezvous::Msc4108 { .. }) => {
                let mode = want.as_u64().expect("mode is a number");
                assert_eq!(mode, u64::from(bytes[7]), "{ctx}");
                let intent = if mode == 3 {
                    QrIntent::Login
                } else {
                    QrIntent::Reciprocate
                };
                assert_eq!(code.intent, intent, "{ctx}");
            }
            ("type", QrRendezvous::Msc4388 { prefix, .. }) => {
                let at = prefix.as_bytes().len();
                assert_eq!(want.as_u64(), Some(bytes[at].into()), "{ctx}")
            }
            ("prefix", QrRendezvous::Msc4388 { prefix, .. }) => {
                assert_eq!(want.as_str(), Some(prefix.as_str()), "{ctx}");
                assert!(bytes.starts_with(prefix.as_bytes()), "{ctx}");
            }
            ("intent", _) => assert_eq!(want.as_str(), Some(code.intent.as_str()), "{ctx}"),
            ("public_key_b64", _) => {
                let want = PublicKey::from_base64(want.as_str().unwrap()).expect("key");
                assert_eq!(code.public_key, want, "{ctx}");
            }
            ("rendezvous_url", QrRendezvous::Msc4108 { rendezvous_url, .. }) => {
                assert_eq!(want.as_str(), Some(rendezvous_url.as_str()), "{ctx}")
            }
            ("homeserver", QrRendezvous::Msc4108 { homeserver, .. }) => {
                assert_eq!(want.as_str(), homeserver.as_deref(), "{ctx}")
            }
            ("rendezvous_id", QrRendezvous::Msc4388 { rendezvous_id, .. }) => {
                assert_eq!(want.as_str(), Some(rendezvous_id.as_str()), "{ctx}")
            }
            ("base_url", QrRendezvous::Msc4388 { base_url, .. }) => {
                assert_eq!(want.as_str(), Some(base_url.as_str()), "{ctx}")
            }
            _ => panic!("{ctx}: unknown field, or field of the wrong generation"),
        }
    }
    // Absent fields must be absent in the code too.
    if let QrRendezvous::Msc4108 { homeserver, .. } = &code.rendezvous {
        assert_eq!(
            fields_map.contains_key("homeserver"),
            homeserver.is_some(),
            "{name}"
        );
    }
}

#[test]
fn valid_vectors_decode_to_their_fields_and_reencode() {
    let vectors = vectors();
    let valid = vectors["valid"].as_array().unwrap();
    assert_eq!(valid.len(), 9);
    for v in valid {
        let name = v["name"].as_str().unwrap();
        let bytes = vector_bytes(v);
        let code = QrCode::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            code.generation().as_str(),
            str_field(v, "generation"),
            "{name}"
        );
        assert_fields(name, &bytes, &code, &v["fields"]);
        code.validate_urls().unwrap();

        if v["reencode_may_differ"].as_bool() == Some(true) {
            // The one such vector uses the one-byte ID length of the newest upstream branch.
            let u8_layout = EncodeSettings {
                msc4388_id_length: Msc4388IdLength::U8,
            };
            assert_eq!(code.encode_with(u8_layout).unwrap(), bytes, "{name}");
            let reencoded = code.encode();
            assert_ne!(reencoded, bytes, "{name}: default layout is u16");
            assert_eq!(QrCode::decode(&reencoded).unwrap(), code, "{name}");
        } else {
            assert_eq!(code.encode(), bytes, "{name}");
        }

        if let Some(b64) = v["base64"].as_str() {
            assert_eq!(STANDARD_NO_PAD.decode(b64).unwrap(), bytes, "{name}");
        }
    }
}

/// The variant each invalid vector must produce, by vector name.
fn expected_error(name: &str) -> QrError {
    match name {
        "device verification QR (version 2, mode 0x00) is not a login QR" => {
            QrError::DeviceVerificationQr { mode: 0 }
        }
        "unknown type 0x05" => QrError::UnknownVersion(5),
        "unknown intent 0x02" => QrError::UnknownIntent(2),
        "truncated public key" => QrError::Truncated {
            field: QrField::PublicKey,
        },
        "length prefix past end" => QrError::LengthPastEnd {
            field: QrField::RendezvousId,
            len: 0x01f4,
            available: 3,
        },
        "trailing garbage" => QrError::TrailingBytes(1),
        "rendezvous id not UTF-8" => QrError::NotUtf8 {
            field: QrField::RendezvousId,
        },
        "base URL not a URL" => QrError::InvalidUrl {
            field: QrField::BaseUrl,
            reason: UrlProblem::WhitespaceOrControl,
        },
        "wrong prefix" => QrError::NotMatrix,
        "empty" => QrError::Empty,
        other => panic!("no expected error for invalid vector {other:?}"),
    }
}

#[test]
fn invalid_vectors_give_their_specific_error() {
    let vectors = vectors();
    let invalid = vectors["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 10);
    for v in invalid {
        let name = v["name"].as_str().unwrap();
        let err = QrCode::decode(&vector_bytes(v)).expect_err(name);
        assert_eq!(err, expected_error(name), "{name}");
        let msg = err.to_string();
        assert!(!msg.contains('\n') && !msg.is_empty(), "{name}: {msg:?}");
    }
}

#[test]
fn device_verification_message_says_what_it_is() {
    for mode in 0..=2u8 {
        let mut bytes = b"MATRIX\x02".to_vec();
        bytes.push(mode);
        bytes.extend_from_slice(&[0; 40]);
        let err = QrCode::decode(&bytes).unwrap_err();
        assert_eq!(err, QrError::DeviceVerificationQr { mode });
        assert_eq!(
            err.to_string(),
            "this is a device-verification QR code, not a login QR code"
        );
    }
}

fn msc4108(intent: QrIntent, url: &str, homeserver: Option<&str>) -> QrCode {
    QrCode {
        intent,
        public_key: PublicKey([9; 32]),
        rendezvous: QrRendezvous::Msc4108 {
            rendezvous_url: url.into(),
            homeserver: homeserver.map(Into::into),
        },
    }
}

fn msc4388(id: &str, base_url: &str) -> QrCode {
    QrCode {
        intent: QrIntent::Reciprocate,
        public_key: PublicKey([9; 32]),
        rendezvous: QrRendezvous::Msc4388 {
            prefix: Msc4388Prefix::Unstable,
            rendezvous_id: id.into(),
            base_url: base_url.into(),
        },
    }
}

#[test]
fn hand_made_invalid_payloads() {
    let cases: Vec<(&str, Vec<u8>, QrError)> = vec![
        (
            "short prefix",
            b"MATR".to_vec(),
            QrError::Truncated {
                field: QrField::Prefix,
            },
        ),
        (
            "short unstable prefix",
            b"IO_EL".to_vec(),
            QrError::Truncated {
                field: QrField::Prefix,
            },
        ),
        (
            "no version",
            b"MATRIX".to_vec(),
            QrError::Truncated {
                field: QrField::Version,
            },
        ),
        (
            "unstable with v2",
            b"IO_ELEMENT_MSC4388\x02\x03".to_vec(),
            QrError::UnknownVersion(2),
        ),
        (
            "no mode",
            b"MATRIX\x02".to_vec(),
            QrError::Truncated {
                field: QrField::Mode,
            },
        ),
        (
            "mode 5",
            b"MATRIX\x02\x05".to_vec(),
            QrError::UnknownMode(5),
        ),
        (
            "no intent",
            b"MATRIX\x03".to_vec(),
            QrError::Truncated {
                field: QrField::Intent,
            },
        ),
        (
            "http rendezvous",
            msc4108(QrIntent::Login, "http://rendezvous.example.org/1", None).encode(),
            QrError::InsecureUrl {
                field: QrField::RendezvousUrl,
            },
        ),
        (
            "bad server name",
            msc4108(
                QrIntent::Reciprocate,
                "https://r.example.org/1",
                Some("not a name"),
            )
            .encode(),
            QrError::InvalidServerName,
        ),
        (
            "missing homeserver",
            msc4108(QrIntent::Reciprocate, "https://r.example.org/1", None).encode(),
            QrError::InvalidServerName,
        ),
        (
            "http homeserver URL",
            msc4108(
                QrIntent::Reciprocate,
                "https://r.example.org/1",
                Some("http://hs.org/"),
            )
            .encode(),
            QrError::InsecureUrl {
                field: QrField::Homeserver,
            },
        ),
        (
            "homeserver truncated",
            {
                let mut b =
                    msc4108(QrIntent::Reciprocate, "https://r.org/1", Some("a.org")).encode();
                b.truncate(b.len() - 6);
                b
            },
            QrError::Truncated {
                field: QrField::Homeserver,
            },
        ),
        (
            "empty id",
            msc4388("", "https://hs.org").encode(),
            QrError::EmptyRendezvousId,
        ),
        (
            "ftp base URL",
            msc4388("abc", "ftp://hs.org").encode(),
            QrError::InvalidUrl {
                field: QrField::BaseUrl,
                reason: UrlProblem::NotHttps("ftp".into()),
            },
        ),
        (
            "insecure base URL",
            msc4388("abc", "http://hs.org").encode(),
            QrError::InsecureUrl {
                field: QrField::BaseUrl,
            },
        ),
        (
            "base URL missing",
            {
                let mut b = msc4388("abc", "https://hs.org").encode();
                b.truncate(b.len() - 15);
                b
            },
            QrError::Truncated {
                field: QrField::BaseUrl,
            },
        ),
        (
            "base URL not UTF-8",
            {
                let mut b = msc4388("abc", "https://hs.org").encode();
                *b.last_mut().unwrap() = 0xff;
                b
            },
            QrError::NotUtf8 {
                field: QrField::BaseUrl,
            },
        ),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(QrCode::decode(&bytes), Err(want), "{name}");
    }
}

#[test]
fn u8_id_length_with_a_bad_base_url_reports_the_base_url() {
    // The u8 reading gets further than the u16 reading, so its error is the useful one.
    let code = msc4388("abc", "http://hs.org");
    let bytes = code.encode_with(EncodeSettings {
        msc4388_id_length: Msc4388IdLength::U8,
    });
    assert_eq!(
        QrCode::decode(&bytes.unwrap()),
        Err(QrError::InsecureUrl {
            field: QrField::BaseUrl
        })
    );
}

#[test]
fn loopback_http_is_accepted_for_development() {
    for url in [
        "http://localhost:8008",
        "http://127.0.0.1:8008",
        "http://[::1]:8008",
    ] {
        let code = msc4388("abc", url);
        assert_eq!(QrCode::decode(&code.encode()), Ok(code), "{url}");
    }
}

#[test]
fn to_json_has_the_documented_keys() {
    let vectors = vectors();
    for v in vectors["valid"].as_array().unwrap() {
        let code = QrCode::decode(&vector_bytes(v)).unwrap();
        let json = code.to_json();
        let f = &v["fields"];
        assert_eq!(json["generation"], v["generation"]);
        assert_eq!(json["intent"], f["intent"]);
        assert_eq!(json["public_key"], f["public_key_b64"]);
        match code.generation().as_str() {
            "msc4108-2024" => {
                assert_eq!(json["prefix"], "MATRIX");
                assert_eq!(json["rendezvous_url"], f["rendezvous_url"]);
                assert_eq!(json.get("homeserver"), f.get("homeserver"));
                assert_eq!(json.get("rendezvous_id"), None);
            }
            _ => {
                assert_eq!(json["prefix"], f["prefix"]);
                assert_eq!(json["rendezvous_id"], f["rendezvous_id"]);
                assert_eq!(json["homeserver"], f["base_url"]);
                assert_eq!(json.get("rendezvous_url"), None);
            }
        }
    }
}

#[test]
fn scanner_must_not_share_the_showers_kind() {
    let vectors = vectors();
    for v in vectors["valid"].as_array().unwrap() {
        let code = QrCode::decode(&vector_bytes(v)).unwrap();
        let shower = code.intent.shown_by();
        let other = match shower {
            DeviceKind::New => DeviceKind::Existing,
            DeviceKind::Existing => DeviceKind::New,
        };
        assert_eq!(code.check_scannable_by(other), Ok(()));
        let err = code.check_scannable_by(shower).unwrap_err();
        let want = match shower {
            DeviceKind::New => QrError::BothNewDevices,
            DeviceKind::Existing => QrError::BothExistingDevices,
        };
        assert_eq!(err, want);
    }
}

// ---- properties ----

fn https_url() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        "[a-z0-9]{1,12}(\\.[a-z]{2,6}){1,2}",
        // Non-ASCII host names go through IDNA; keep to letters that are always valid.
        "[a-zäöüéß]{1,10}\\.[a-z]{2,4}",
    ];
    let port = proptest::option::of(1u16..);
    let path = "(/[a-zA-Z0-9._~äöü€日本-]{0,12}){0,4}";
    (host, port, path).prop_map(|(host, port, path)| match port {
        Some(p) => format!("https://{host}:{p}{path}"),
        None => format!("https://{host}{path}"),
    })
}

fn url() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => https_url(),
        1 => ("(localhost|127\\.0\\.0\\.1|\\[::1\\])", 1u16..).prop_map(|(h, p)| format!("http://{h}:{p}")),
    ]
}

fn server_name() -> impl Strategy<Value = String> {
    (
        "[a-z0-9-]{1,20}(\\.[a-z]{2,6}){0,2}",
        proptest::option::of(0u32..100_000),
    )
        .prop_map(|(host, port)| match port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        })
}

fn intent() -> impl Strategy<Value = QrIntent> {
    prop_oneof![Just(QrIntent::Login), Just(QrIntent::Reciprocate)]
}

fn msc4108_code() -> impl Strategy<Value = QrCode> {
    let homeserver = prop_oneof![server_name(), url()];
    (intent(), any::<[u8; 32]>(), url(), homeserver).prop_map(|(intent, key, url, hs)| QrCode {
        intent,
        public_key: PublicKey(key),
        rendezvous: QrRendezvous::Msc4108 {
            rendezvous_url: url,
            homeserver: (intent == QrIntent::Reciprocate).then_some(hs),
        },
    })
}

fn msc4388_code() -> impl Strategy<Value = QrCode> {
    let prefix = prop_oneof![Just(Msc4388Prefix::Stable), Just(Msc4388Prefix::Unstable)];
    // Any non-empty UTF-8, up to well past 255 bytes so both ID length readings are exercised.
    let id = "(?s).{1,300}";
    (intent(), any::<[u8; 32]>(), prefix, id, url()).prop_map(
        |(intent, key, prefix, rendezvous_id, base_url)| QrCode {
            intent,
            public_key: PublicKey(key),
            rendezvous: QrRendezvous::Msc4388 {
                prefix,
                rendezvous_id,
                base_url,
            },
        },
    )
}

fn any_code() -> impl Strategy<Value = QrCode> {
    prop_oneof![msc4108_code(), msc4388_code()]
}

proptest! {
    #[test]
    fn decode_inverts_encode(code in any_code()) {
        let bytes = code.encode();
        prop_assert_eq!(QrCode::decode(&bytes), Ok(code.clone()));
        if let QrRendezvous::Msc4388 { rendezvous_id, .. } = &code.rendezvous
            && rendezvous_id.len() <= 255
        {
            let u8_layout = EncodeSettings { msc4388_id_length: Msc4388IdLength::U8 };
            let short = code.encode_with(u8_layout).unwrap();
            prop_assert_eq!(short.len() + 1, bytes.len());
            prop_assert_eq!(QrCode::decode(&short), Ok(code));
        }
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_decode(&bytes)?;
    }

    #[test]
    fn decode_never_panics_on_prefixed_bytes(
        prefix in prop_oneof![
            Just(&b"MATRIX\x02\x03"[..]), Just(&b"MATRIX\x02\x04"[..]),
            Just(&b"MATRIX\x03\x00"[..]), Just(&b"IO_ELEMENT_MSC4388\x03\x01"[..]),
        ],
        rest in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(&rest);
        check_decode(&bytes)?;
    }

    #[test]
    fn decode_never_panics_on_mutated_vectors(
        which in 0usize..9,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let vectors = vectors();
        let mut bytes = vector_bytes(&vectors["valid"][which]);
        for (at, byte, op) in edits {
            match op {
                0 if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes[i] = byte }
                1 => { let i = at.index(bytes.len() + 1); bytes.insert(i, byte) }
                2 if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes.remove(i); }
                _ => { let i = at.index(bytes.len() + 1); bytes.truncate(i) }
            }
        }
        check_decode(&bytes)?;
    }
}

/// Decoding returns without panicking, and whatever it accepts survives a round trip.
fn check_decode(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(code) = QrCode::decode(bytes) {
        let again = QrCode::decode(&code.encode());
        prop_assert_eq!(again, Ok(code));
    }
    Ok(())
}

//! JSON forms of the `m.login.*` messages: round trips, what matrix-sdk sends, redaction of
//! secrets, and robustness against garbage.

use mxqr_proto::Generation;
use mxqr_proto::messages::{
    BackupSecrets, CrossSigningSecrets, DeviceAuthorizationGrant, DeviceId, FailureMessage,
    FailureReason, HomeserverField, LoginMessage, LoginProtocol, MessageError, MessageType,
    Protocol, ProtocolMessage, ProtocolsMessage, Secret, SecretsMessage,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// matrix-sdk's device IDs are base64 Curve25519 keys, with `+` and `/`.
const SDK_DEVICE_ID: &str = "wMMTDKJ5CYj0aC9Wj0pjB0gx1/tG+c8Ie2XyHcD8eWg";

fn decode(value: Value) -> Result<LoginMessage, MessageError> {
    LoginMessage::from_json(value.to_string().as_bytes())
}

fn encode(message: &LoginMessage) -> Value {
    serde_json::from_slice(&message.to_json()).expect("to_json writes JSON")
}

fn secrets(backup: bool) -> SecretsMessage {
    SecretsMessage {
        cross_signing: CrossSigningSecrets {
            master_key: Secret::new("bWFzdGVyLWtleS1zZWVkLW9mLTMyLWJ5dGVzLWxvbmc"),
            self_signing_key: Secret::new("c2VsZi1zaWduaW5nLWtleS1zZWVkLTMyLWJ5dGVzIQ"),
            user_signing_key: Secret::new("dXNlci1zaWduaW5nLWtleS1zZWVkLTMyLWJ5dGVzIQ"),
        },
        backup: backup.then(|| BackupSecrets {
            algorithm: "m.megolm_backup.v1.curve25519-aes-sha2".into(),
            key: Secret::new("YmFja3VwLWtleS1vZi0zMi1ieXRlcy1mb3ItdGVzdHM"),
            backup_version: "3".into(),
        }),
    }
}

fn all_messages() -> Vec<LoginMessage> {
    vec![
        LoginMessage::Protocols(ProtocolsMessage {
            protocols: vec![Protocol::DeviceAuthorizationGrant],
            homeserver: HomeserverField::Homeserver("https://example.org/".into()),
        }),
        LoginMessage::Protocols(ProtocolsMessage {
            protocols: vec![
                Protocol::DeviceAuthorizationGrant,
                Protocol::Other("future".into()),
            ],
            homeserver: HomeserverField::BaseUrl("https://matrix-client.example.org/".into()),
        }),
        LoginMessage::Protocol(ProtocolMessage {
            protocol: LoginProtocol::DeviceAuthorizationGrant(DeviceAuthorizationGrant {
                verification_uri: "https://auth.example.org/device".into(),
                verification_uri_complete: Some(
                    "https://auth.example.org/device?code=ABCDEF".into(),
                ),
            }),
            device_id: DeviceId::new(SDK_DEVICE_ID).unwrap(),
        }),
        LoginMessage::Protocol(ProtocolMessage {
            protocol: LoginProtocol::DeviceAuthorizationGrant(DeviceAuthorizationGrant {
                verification_uri: "https://auth.example.org/device".into(),
                verification_uri_complete: None,
            }),
            device_id: DeviceId::new("ABCDEFGHIJ").unwrap(),
        }),
        LoginMessage::Protocol(ProtocolMessage {
            protocol: LoginProtocol::Unsupported("carrier_pigeon".into()),
            device_id: DeviceId::new("ABCDEFGHIJ").unwrap(),
        }),
        LoginMessage::ProtocolAccepted,
        LoginMessage::Success,
        LoginMessage::Declined,
        LoginMessage::Failure(FailureMessage::new(FailureReason::UserCancelled)),
        LoginMessage::Failure(FailureMessage {
            reason: FailureReason::Unknown("solar_flare".into()),
            homeserver: Some("https://example.org/".into()),
        }),
        LoginMessage::Secrets(secrets(true)),
        LoginMessage::Secrets(secrets(false)),
    ]
}

#[test]
fn every_message_round_trips() {
    for message in all_messages() {
        let json = message.to_json();
        let back = LoginMessage::from_json(&json)
            .unwrap_or_else(|e| panic!("{message:?} did not read back: {e}"));
        assert_eq!(back, message);
        assert_eq!(
            encode(&message)["type"],
            message.message_type().as_str(),
            "type tag of {message:?}"
        );
    }
}

#[test]
fn message_type_names_round_trip() {
    for t in MessageType::ALL {
        assert_eq!(MessageType::from_wire(t.as_str()), Some(t));
    }
    assert_eq!(MessageType::from_wire("m.login.unknown"), None);
}

#[test]
fn matrix_sdk_protocols_with_homeserver_url() {
    let sdk = json!({
        "type": "m.login.protocols",
        "protocols": ["device_authorization_grant"],
        "homeserver": "https://example.org/"
    });
    let message = decode(sdk.clone()).unwrap();
    let LoginMessage::Protocols(protocols) = &message else {
        panic!("decoded as {message:?}");
    };
    assert!(protocols.offers_device_authorization_grant());
    assert_eq!(
        protocols.homeserver,
        HomeserverField::Homeserver("https://example.org/".into())
    );
    // Written back exactly as matrix-sdk wrote it.
    assert_eq!(encode(&message), sdk);
}

#[test]
fn protocols_with_base_url_keeps_spelling() {
    let current = json!({
        "type": "m.login.protocols",
        "protocols": ["device_authorization_grant"],
        "base_url": "https://matrix-client.example.org/"
    });
    let message = decode(current.clone()).unwrap();
    let LoginMessage::Protocols(protocols) = &message else {
        panic!("decoded as {message:?}");
    };
    assert_eq!(
        protocols.homeserver,
        HomeserverField::BaseUrl("https://matrix-client.example.org/".into())
    );
    assert_eq!(encode(&message), current);
}

#[test]
fn homeserver_spelling_follows_generation() {
    let url = "https://example.org/";
    assert_eq!(
        HomeserverField::for_generation(Generation::Msc4108v2024, url),
        HomeserverField::Homeserver(url.into())
    );
    assert_eq!(
        HomeserverField::for_generation(Generation::Msc4388, url),
        HomeserverField::BaseUrl(url.into())
    );
}

#[test]
fn protocols_needs_exactly_one_homeserver_spelling() {
    let neither = json!({"type": "m.login.protocols", "protocols": []});
    let both = json!({
        "type": "m.login.protocols",
        "protocols": [],
        "base_url": "https://a/",
        "homeserver": "https://b/"
    });
    for value in [neither, both] {
        assert!(matches!(
            decode(value),
            Err(MessageError::Malformed {
                message_type: MessageType::Protocols,
                ..
            })
        ));
    }
}

#[test]
fn unknown_protocols_are_kept_not_rejected() {
    let message = decode(json!({
        "type": "m.login.protocols",
        "protocols": ["carrier_pigeon"],
        "homeserver": "https://example.org/"
    }))
    .unwrap();
    let LoginMessage::Protocols(protocols) = message else {
        panic!("decoded as {message:?}");
    };
    assert_eq!(
        protocols.protocols,
        vec![Protocol::Other("carrier_pigeon".into())]
    );
    assert!(!protocols.offers_device_authorization_grant());
}

#[test]
fn matrix_sdk_protocol_with_base64_device_id() {
    let sdk = json!({
        "type": "m.login.protocol",
        "protocol": "device_authorization_grant",
        "device_authorization_grant": {
            "verification_uri": "https://auth.example.org/link",
            "verification_uri_complete": "https://auth.example.org/link?code=XYZ123"
        },
        "device_id": SDK_DEVICE_ID
    });
    let message = decode(sdk.clone()).unwrap();
    let LoginMessage::Protocol(protocol) = &message else {
        panic!("decoded as {message:?}");
    };
    assert_eq!(protocol.device_id.as_str(), SDK_DEVICE_ID);
    let LoginProtocol::DeviceAuthorizationGrant(grant) = &protocol.protocol else {
        panic!("protocol {:?}", protocol.protocol);
    };
    assert_eq!(
        grant.uri_to_open(),
        "https://auth.example.org/link?code=XYZ123"
    );
    assert_eq!(encode(&message), sdk);
}

#[test]
fn protocol_without_its_parameters_is_malformed() {
    let missing = json!({
        "type": "m.login.protocol",
        "protocol": "device_authorization_grant",
        "device_id": "ABCDEFGHIJ"
    });
    assert!(matches!(
        decode(missing),
        Err(MessageError::Malformed {
            message_type: MessageType::Protocol,
            ..
        })
    ));
}

#[test]
fn protocol_with_unusable_device_id_is_malformed() {
    for device_id in ["", "two words", "tab\there"] {
        let value = json!({
            "type": "m.login.protocol",
            "protocol": "device_authorization_grant",
            "device_authorization_grant": {"verification_uri": "https://a/"},
            "device_id": device_id
        });
        assert!(decode(value).is_err(), "device_id {device_id:?} accepted");
    }
}

#[test]
fn verification_uri_complete_is_optional() {
    let grant = DeviceAuthorizationGrant {
        verification_uri: "https://a/device".into(),
        verification_uri_complete: None,
    };
    assert_eq!(grant.uri_to_open(), "https://a/device");
    let json = serde_json::to_value(&grant).unwrap();
    assert_eq!(json, json!({"verification_uri": "https://a/device"}));
}

#[test]
fn every_failure_reason_by_name() {
    let known = [
        ("authorization_expired", FailureReason::AuthorizationExpired),
        ("device_already_exists", FailureReason::DeviceAlreadyExists),
        ("device_not_found", FailureReason::DeviceNotFound),
        (
            "unexpected_message_received",
            FailureReason::UnexpectedMessageReceived,
        ),
        ("unsupported_protocol", FailureReason::UnsupportedProtocol),
        ("user_cancelled", FailureReason::UserCancelled),
    ];
    for (name, reason) in known {
        let value = json!({"type": "m.login.failure", "reason": name});
        let message = decode(value.clone()).unwrap();
        assert_eq!(
            message,
            LoginMessage::Failure(FailureMessage::new(reason.clone()))
        );
        assert_eq!(encode(&message), value);
        assert_eq!(reason.to_string(), name);
    }
}

#[test]
fn unknown_failure_reason_is_kept_verbatim() {
    let value = json!({
        "type": "m.login.failure",
        "reason": "solar_flare",
        "homeserver": "https://example.org/"
    });
    let message = decode(value.clone()).unwrap();
    assert_eq!(
        message,
        LoginMessage::Failure(FailureMessage {
            reason: FailureReason::Unknown("solar_flare".into()),
            homeserver: Some("https://example.org/".into()),
        })
    );
    assert_eq!(encode(&message), value);
}

#[test]
fn fieldless_messages_are_just_a_type() {
    for (message, name) in [
        (LoginMessage::ProtocolAccepted, "m.login.protocol_accepted"),
        (LoginMessage::Success, "m.login.success"),
        (LoginMessage::Declined, "m.login.declined"),
    ] {
        assert_eq!(encode(&message), json!({ "type": name }));
        assert_eq!(
            decode(json!({ "type": name, "extra": [1, 2] })).unwrap(),
            message
        );
    }
}

#[test]
fn matrix_sdk_secrets_with_null_backup() {
    let sdk = json!({
        "type": "m.login.secrets",
        "cross_signing": {
            "master_key": "bWFzdGVyLWtleS1zZWVkLW9mLTMyLWJ5dGVzLWxvbmc",
            "self_signing_key": "c2VsZi1zaWduaW5nLWtleS1zZWVkLTMyLWJ5dGVzIQ",
            "user_signing_key": "dXNlci1zaWduaW5nLWtleS1zZWVkLTMyLWJ5dGVzIQ"
        },
        "backup": null
    });
    let message = decode(sdk.clone()).unwrap();
    assert_eq!(message, LoginMessage::Secrets(secrets(false)));
    assert_eq!(encode(&message), sdk);
}

#[test]
fn secrets_without_backup_field_and_with_backup() {
    let mut absent = encode(&LoginMessage::Secrets(secrets(false)));
    absent.as_object_mut().unwrap().remove("backup");
    assert_eq!(
        decode(absent).unwrap(),
        LoginMessage::Secrets(secrets(false))
    );

    let with_backup = encode(&LoginMessage::Secrets(secrets(true)));
    assert_eq!(
        with_backup["backup"],
        json!({
            "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "key": "YmFja3VwLWtleS1vZi0zMi1ieXRlcy1mb3ItdGVzdHM",
            "backup_version": "3"
        })
    );
}

#[test]
fn secrets_need_all_three_cross_signing_keys() {
    let mut value = encode(&LoginMessage::Secrets(secrets(false)));
    value["cross_signing"]
        .as_object_mut()
        .unwrap()
        .remove("user_signing_key");
    assert!(matches!(
        decode(value),
        Err(MessageError::Malformed {
            message_type: MessageType::Secrets,
            ..
        })
    ));
}

#[test]
fn debug_never_prints_secrets() {
    let message = LoginMessage::Secrets(secrets(true));
    let debug = format!("{message:?} {message:#?}");
    let LoginMessage::Secrets(s) = &message else {
        unreachable!()
    };
    let values = [
        s.cross_signing.master_key.expose(),
        s.cross_signing.self_signing_key.expose(),
        s.cross_signing.user_signing_key.expose(),
        s.backup.as_ref().unwrap().key.expose(),
    ];
    for value in values {
        assert!(!debug.contains(value), "secret leaked into {debug}");
    }
    assert!(debug.contains("[redacted]"));
    assert_eq!(format!("{:?}", Secret::new("hunter2")), "[redacted]");
}

#[test]
fn errors_never_quote_secret_values() {
    // A key where an object belongs: serde would quote the string in its message.
    let value = json!({
        "type": "m.login.secrets",
        "cross_signing": "bWFzdGVyLWtleS1zZWVkLW9mLTMyLWJ5dGVzLWxvbmc"
    });
    let error = decode(value).unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(!text.contains("bWFzdGVy"), "{text}");
}

#[test]
fn secrets_compare_by_value() {
    assert_eq!(Secret::new("abc"), Secret::new("abc"));
    assert_ne!(Secret::new("abc"), Secret::new("abd"));
    assert_ne!(Secret::new("abc"), Secret::new("abcd"));
}

#[test]
fn unknown_type_is_its_own_error() {
    assert_eq!(
        decode(json!({"type": "m.login.teleport", "to": "mars"})),
        Err(MessageError::UnknownType("m.login.teleport".into()))
    );
}

#[test]
fn not_an_object_with_type() {
    for text in [
        "",
        "null",
        "[\"m.login.success\"]",
        "\"m.login.success\"",
        "{}",
        "{\"type\": 7}",
        "{\"type\": \"m.login.success\"",
        "{\"type\": \"m.login.success\"} trailing",
    ] {
        assert!(
            matches!(
                LoginMessage::from_json(text.as_bytes()),
                Err(MessageError::NoType { .. })
            ),
            "{text:?} was not refused as NoType"
        );
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let message = decode(json!({
        "type": "m.login.failure",
        "reason": "user_cancelled",
        "from_the_future": {"nested": true}
    }))
    .unwrap();
    assert_eq!(
        message,
        LoginMessage::Failure(FailureMessage::new(FailureReason::UserCancelled))
    );
}

proptest! {
    #[test]
    fn garbage_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = LoginMessage::from_json(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(
        index in 0usize..12,
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let messages = all_messages();
        let mut json = messages[index % messages.len()].to_json().to_vec();
        let at = position.index(json.len());
        json[at] = byte;
        if let Ok(message) = LoginMessage::from_json(&json) {
            // Whatever still decodes must write and read back as itself.
            prop_assert_eq!(LoginMessage::from_json(&message.to_json()).ok(), Some(message));
        }
    }

    #[test]
    fn typed_json_with_random_fields_never_panics(
        index in 0usize..7,
        key in "[a-z_]{1,20}",
        value in prop_oneof![
            Just(json!(null)),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,40}".prop_map(|s| json!(s)),
            Just(json!([])),
            Just(json!({})),
        ],
    ) {
        let mut object = serde_json::Map::new();
        object.insert("type".into(), json!(MessageType::ALL[index].as_str()));
        object.insert(key, value);
        let _ = LoginMessage::from_json(Value::Object(object).to_string().as_bytes());
    }
}

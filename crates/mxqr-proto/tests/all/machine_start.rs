//! Starting the machines, the rendezvous bookkeeping, and robustness against any sequence
//! of events.

use std::time::Duration;

use mxqr_proto::channel::{Binding, GeneratorChannel, ScannerChannel};
use mxqr_proto::machine::{
    Action, ConsentOrigin, CreatedRendezvous, DeviceAuthorization, DeviceLookup, Event,
    ExistingDevice, Failure, Instant, MAX_HELD_PAYLOADS, NewDevice, RECEIVE_SLICE, StartError,
    TokenAnswer,
};
use mxqr_proto::messages::{CrossSigningSecrets, DeviceId, FailureReason, Secret, SecretsMessage};
use mxqr_proto::qr::{Msc4388Prefix, QrCode, QrError, QrIntent, QrRendezvous};
use mxqr_proto::{Generation, PublicKey};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const HOMESERVER: &str = "https://matrix.example.org";
const RENDEZVOUS_URL: &str = "https://matrix.example.org/_synapse/client/rendezvous/abc";

/// Any instant will do where time plays no part.
fn now() -> Instant {
    Instant::now()
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(1)
}

fn consent() -> ConsentOrigin {
    ConsentOrigin::of_endpoint(&url::Url::parse("https://matrix.example.org/device").unwrap())
        .unwrap()
}

fn device_id() -> DeviceId {
    DeviceId::new("ABCDEFGHIJ").unwrap()
}

fn created(generation: Generation) -> CreatedRendezvous {
    match generation {
        Generation::Msc4108v2024 => CreatedRendezvous::Msc4108 {
            url: RENDEZVOUS_URL.into(),
            etag: "t0".into(),
        },
        Generation::Msc4388 => CreatedRendezvous::Msc4388 {
            prefix: Msc4388Prefix::Stable,
            base_url: HOMESERVER.into(),
            rendezvous_id: "abc".into(),
            sequence_token: "t0".into(),
        },
    }
}

fn shown_qr(actions: &[Action]) -> &QrCode {
    match actions {
        [Action::ShowQrCode(qr)] => qr,
        other => panic!("expected only ShowQrCode, got {other:?}"),
    }
}

/// A code as another device would show it, with a usable key.
fn code(generation: Generation, intent: QrIntent) -> QrCode {
    let public_key = GeneratorChannel::new(generation, &mut rng()).public_key();
    let rendezvous = match generation {
        Generation::Msc4108v2024 => QrRendezvous::Msc4108 {
            rendezvous_url: RENDEZVOUS_URL.into(),
            homeserver: (intent == QrIntent::Reciprocate).then(|| format!("{HOMESERVER}/")),
        },
        Generation::Msc4388 => QrRendezvous::Msc4388 {
            prefix: Msc4388Prefix::Unstable,
            rendezvous_id: "abc".into(),
            base_url: HOMESERVER.into(),
        },
    };
    QrCode {
        intent,
        public_key,
        rendezvous,
    }
}

#[test]
fn new_device_shows_a_login_code() {
    let (_, actions) =
        NewDevice::show_qr(created(Generation::Msc4388), device_id(), &mut rng()).unwrap();
    let qr = shown_qr(&actions);
    assert_eq!(qr.intent, QrIntent::Login);
    assert_eq!(
        qr.rendezvous,
        QrRendezvous::Msc4388 {
            prefix: Msc4388Prefix::Stable,
            rendezvous_id: "abc".into(),
            // Without the trailing `/` of an empty path, as the MSC4388 layout wants.
            base_url: HOMESERVER.into(),
        }
    );

    let (_, actions) =
        NewDevice::show_qr(created(Generation::Msc4108v2024), device_id(), &mut rng()).unwrap();
    assert_eq!(
        shown_qr(&actions).rendezvous,
        QrRendezvous::Msc4108 {
            rendezvous_url: RENDEZVOUS_URL.into(),
            homeserver: None,
        }
    );
}

#[test]
fn existing_device_shows_a_reciprocate_code_with_its_homeserver() {
    let (_, actions) = ExistingDevice::show_qr(
        created(Generation::Msc4108v2024),
        HOMESERVER,
        consent(),
        &mut rng(),
    )
    .unwrap();
    let qr = shown_qr(&actions);
    assert_eq!(qr.intent, QrIntent::Reciprocate);
    // matrix-sdk writes the base URL with its trailing `/` into 2024 codes.
    assert_eq!(
        qr.rendezvous,
        QrRendezvous::Msc4108 {
            rendezvous_url: RENDEZVOUS_URL.into(),
            homeserver: Some(format!("{HOMESERVER}/")),
        }
    );
}

#[test]
fn msc4388_base_url_with_a_path_keeps_it() {
    let rendezvous = CreatedRendezvous::Msc4388 {
        prefix: Msc4388Prefix::Unstable,
        base_url: "https://example.org/matrix/".into(),
        rendezvous_id: "abc".into(),
        sequence_token: "t0".into(),
    };
    let (_, actions) = NewDevice::show_qr(rendezvous, device_id(), &mut rng()).unwrap();
    let QrRendezvous::Msc4388 { base_url, .. } = &shown_qr(&actions).rendezvous else {
        panic!("wrong generation");
    };
    assert_eq!(base_url, "https://example.org/matrix/");
}

#[test]
fn msc4388_existing_device_must_use_its_own_homeserver() {
    let err = ExistingDevice::show_qr(
        created(Generation::Msc4388),
        "https://other.example.net",
        consent(),
        &mut rng(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        StartError::HomeserverMismatch {
            homeserver: "https://other.example.net/".into(),
            rendezvous: format!("{HOMESERVER}/"),
        }
    );
    // The same URL spelled with the trailing `/` is the same homeserver.
    assert!(
        ExistingDevice::show_qr(
            created(Generation::Msc4388),
            &format!("{HOMESERVER}/"),
            consent(),
            &mut rng()
        )
        .is_ok()
    );
}

#[test]
fn invalid_urls_are_refused() {
    let err = ExistingDevice::show_qr(
        created(Generation::Msc4108v2024),
        "not a url",
        consent(),
        &mut rng(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        StartError::InvalidUrl {
            what: "homeserver",
            ..
        }
    ));
    let rendezvous = CreatedRendezvous::Msc4388 {
        prefix: Msc4388Prefix::Unstable,
        base_url: "::".into(),
        rendezvous_id: "abc".into(),
        sequence_token: "t0".into(),
    };
    assert!(matches!(
        NewDevice::show_qr(rendezvous, device_id(), &mut rng()),
        Err(StartError::InvalidUrl { .. })
    ));
}

#[test]
fn codes_too_long_to_write_are_refused() {
    let rendezvous = CreatedRendezvous::Msc4108 {
        url: format!("{RENDEZVOUS_URL}/{}", "a".repeat(70_000)),
        etag: "t0".into(),
    };
    assert!(matches!(
        NewDevice::show_qr(rendezvous, device_id(), &mut rng()),
        Err(StartError::QrEncode(_))
    ));
}

#[test]
fn a_device_refuses_a_code_of_its_own_kind() {
    for generation in [Generation::Msc4108v2024, Generation::Msc4388] {
        assert_eq!(
            NewDevice::scan(
                &code(generation, QrIntent::Login),
                "t0".into(),
                device_id(),
                &mut rng()
            )
            .unwrap_err(),
            StartError::Qr(QrError::BothNewDevices)
        );
        assert_eq!(
            ExistingDevice::scan(
                &code(generation, QrIntent::Reciprocate),
                "t0".into(),
                HOMESERVER,
                consent(),
                &mut rng()
            )
            .unwrap_err(),
            StartError::Qr(QrError::BothExistingDevices)
        );
    }
}

#[test]
fn new_device_needs_the_homeserver_from_a_2024_code() {
    let mut qr = code(Generation::Msc4108v2024, QrIntent::Reciprocate);
    qr.rendezvous = QrRendezvous::Msc4108 {
        rendezvous_url: RENDEZVOUS_URL.into(),
        homeserver: None,
    };
    assert_eq!(
        NewDevice::scan(&qr, "t0".into(), device_id(), &mut rng()).unwrap_err(),
        StartError::MissingHomeserver
    );
}

#[test]
fn a_low_order_key_is_refused_before_anything_is_sent() {
    for generation in [Generation::Msc4108v2024, Generation::Msc4388] {
        let mut qr = code(generation, QrIntent::Login);
        qr.public_key = PublicKey([0; 32]);
        assert!(matches!(
            ExistingDevice::scan(&qr, "t0".into(), HOMESERVER, consent(), &mut rng()),
            Err(StartError::Channel(_))
        ));
    }
}

#[test]
fn scanner_starts_by_sending_initiate_against_the_first_token() {
    for generation in [Generation::Msc4108v2024, Generation::Msc4388] {
        let qr = code(generation, QrIntent::Reciprocate);
        let (device, actions) = NewDevice::scan(&qr, "t0".into(), device_id(), &mut rng()).unwrap();
        assert!(matches!(
            actions.as_slice(),
            [Action::Send { sequence_token, .. }] if sequence_token == "t0"
        ));
        // Nothing to read against while the PUT is in flight.
        assert_eq!(device.sequence_token(), None);
        assert_eq!(device.generation(), generation);
    }
}

#[test]
fn events_during_a_put_wait_for_its_outcome() {
    let qr = code(Generation::Msc4388, QrIntent::Reciprocate);
    let (mut device, _) = NewDevice::scan(&qr, "t0".into(), device_id(), &mut rng()).unwrap();
    assert_eq!(device.handle(now(), Event::Cancelled, &mut rng()), vec![]);
    assert!(!device.is_finished());
    let actions = device.handle(
        now(),
        Event::PayloadSent {
            sequence_token: "t1".into(),
        },
        &mut rng(),
    );
    assert_eq!(
        actions,
        vec![
            Action::DeleteRendezvous,
            Action::Failed {
                failure: Failure::Local(FailureReason::UserCancelled),
                told_peer: false
            }
        ]
    );
    assert!(device.is_finished());
    assert_eq!(device.sequence_token(), None);
}

#[test]
fn a_read_lasts_a_receive_slice_and_none_is_made_while_writing() {
    let qr = code(Generation::Msc4388, QrIntent::Reciprocate);
    let (mut device, _) = NewDevice::scan(&qr, "t0".into(), device_id(), &mut rng()).unwrap();
    let start = now();
    // INITIATE is being written: there is nothing to read for, and nothing is timed.
    assert_eq!(device.read(start), None);
    assert_eq!(device.poll_timeout(), None);
    device.handle(
        start,
        Event::PayloadSent {
            sequence_token: "t1".into(),
        },
        &mut rng(),
    );
    let later = start + Duration::from_secs(3);
    let read = device.read(later).unwrap();
    assert_eq!(read.sequence_token, "t1");
    let until = read.until;
    assert_eq!(until, later + RECEIVE_SLICE);
    // The slice ending with nothing read changes nothing.
    assert_eq!(device.handle_timeout(until), vec![]);
    assert_eq!(device.read(until).unwrap().sequence_token, "t1");
}

#[test]
fn seen_tokens_and_foreign_events_are_ignored() {
    let (mut device, _) =
        NewDevice::show_qr(created(Generation::Msc4388), device_id(), &mut rng()).unwrap();
    let ignored = [
        // The creation read again.
        Event::PayloadReceived {
            data: String::new(),
            sequence_token: "t0".into(),
        },
        // No PUT in flight.
        Event::PayloadSent {
            sequence_token: "t9".into(),
        },
        // Not asked for yet, or for the other kind of device.
        Event::CheckCodeEntered(42),
        Event::TokenPolled(TokenAnswer::Granted),
        Event::DeviceLookup(DeviceLookup::NotFound),
        Event::DeviceAppeared,
    ];
    for event in ignored {
        assert_eq!(
            device.handle(now(), event.clone(), &mut rng()),
            vec![],
            "{event:?}"
        );
    }
    assert_eq!(device.sequence_token(), Some("t0"));
}

#[test]
fn garbage_instead_of_initiate_fails_silently() {
    let (mut device, _) = ExistingDevice::show_qr(
        created(Generation::Msc4388),
        HOMESERVER,
        consent(),
        &mut rng(),
    )
    .unwrap();
    let actions = device.handle(
        now(),
        Event::PayloadReceived {
            data: "not a payload!".into(),
            sequence_token: "t1".into(),
        },
        &mut rng(),
    );
    assert!(matches!(
        actions.as_slice(),
        [
            Action::DeleteRendezvous,
            Action::Failed {
                failure: Failure::Channel(_),
                told_peer: false
            }
        ]
    ));
}

#[test]
fn generator_holds_a_bounded_number_of_payloads_before_confirmation() {
    let generation = Generation::Msc4388;
    let (mut device, actions) =
        NewDevice::show_qr(created(generation), device_id(), &mut rng()).unwrap();
    let qr = shown_qr(&actions).clone();
    let binding = Binding::new(format!("{HOMESERVER}/"), "abc", "t0");
    let (_, initiate) =
        ScannerChannel::initiate(generation, qr.public_key, &binding, &mut rng()).unwrap();
    let actions = device.handle(
        now(),
        Event::PayloadReceived {
            data: initiate,
            sequence_token: "t1".into(),
        },
        &mut rng(),
    );
    assert!(matches!(
        actions.as_slice(),
        [Action::Send { sequence_token, .. }, Action::AskCheckCode] if sequence_token == "t1"
    ));
    device.handle(
        now(),
        Event::PayloadSent {
            sequence_token: "t2".into(),
        },
        &mut rng(),
    );
    for n in 0..MAX_HELD_PAYLOADS {
        let actions = device.handle(
            now(),
            Event::PayloadReceived {
                data: format!("held {n}"),
                sequence_token: format!("h{n}"),
            },
            &mut rng(),
        );
        assert_eq!(actions, vec![], "payload {n} must be held unopened");
    }
    let actions = device.handle(
        now(),
        Event::PayloadReceived {
            data: "one too many".into(),
            sequence_token: "h-last".into(),
        },
        &mut rng(),
    );
    assert_eq!(
        actions,
        vec![
            Action::DeleteRendezvous,
            Action::Failed {
                failure: Failure::Flooded,
                told_peer: false
            }
        ]
    );
}

fn any_event() -> impl Strategy<Value = Event> {
    let token = "t[0-9]{1,2}";
    prop_oneof![
        (".{0,80}", token).prop_map(|(data, sequence_token)| Event::PayloadReceived {
            data,
            sequence_token
        }),
        token.prop_map(|sequence_token| Event::PayloadSent { sequence_token }),
        any::<u8>().prop_map(Event::CheckCodeEntered),
        Just(Event::DeviceAuthorizationStarted(DeviceAuthorization {
            verification_uri: "https://a/".into(),
            verification_uri_complete: None,
            user_code: "X".into(),
            expires_in: Duration::from_secs(30),
            interval: None,
        })),
        Just(Event::DeviceAuthorizationUnsupported),
        Just(Event::TokenPolled(TokenAnswer::Granted)),
        Just(Event::TokenPolled(TokenAnswer::Pending)),
        Just(Event::TokenPolled(TokenAnswer::SlowDown)),
        Just(Event::TokenPolled(TokenAnswer::Denied)),
        Just(Event::TokenPolled(TokenAnswer::Unavailable)),
        Just(Event::DeviceLookup(DeviceLookup::NotFound)),
        Just(Event::DeviceLookup(DeviceLookup::Found)),
        Just(Event::DeviceAppeared),
        Just(Event::DeviceNotSeen),
        Just(Event::SecretsObtained(SecretsMessage {
            cross_signing: CrossSigningSecrets {
                master_key: Secret::new("m"),
                self_signing_key: Secret::new("s"),
                user_signing_key: Secret::new("u"),
            },
            backup: None,
        })),
        Just(Event::Cancelled),
        Just(Event::TransportFailed),
    ]
}

/// What the driver does next: report an event, or let time pass (milliseconds) and hand
/// the machine its due deadlines.
#[derive(Clone, Debug)]
enum Input {
    Event(Event),
    Wait(u64),
}

fn any_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        3 => any_event().prop_map(Input::Event),
        1 => (0u64..20_000).prop_map(Input::Wait),
    ]
}

/// Which machine to start, and how.
#[derive(Clone, Copy, Debug)]
enum Start {
    NewShows,
    NewScans,
    ExistingShows,
    ExistingScans,
}

enum Machine {
    New(NewDevice),
    Existing(ExistingDevice),
}

impl Machine {
    fn start(start: Start, generation: Generation) -> (Self, Vec<Action>) {
        let rng = &mut rng();
        match start {
            Start::NewShows => {
                let (d, a) = NewDevice::show_qr(created(generation), device_id(), rng).unwrap();
                (Machine::New(d), a)
            }
            Start::NewScans => {
                let qr = code(generation, QrIntent::Reciprocate);
                let (d, a) = NewDevice::scan(&qr, "t0".into(), device_id(), rng).unwrap();
                (Machine::New(d), a)
            }
            Start::ExistingShows => {
                let (d, a) =
                    ExistingDevice::show_qr(created(generation), HOMESERVER, consent(), rng)
                        .unwrap();
                (Machine::Existing(d), a)
            }
            Start::ExistingScans => {
                let qr = code(generation, QrIntent::Login);
                let (d, a) =
                    ExistingDevice::scan(&qr, "t0".into(), HOMESERVER, consent(), rng).unwrap();
                (Machine::Existing(d), a)
            }
        }
    }

    fn handle(&mut self, now: Instant, event: Event, rng: &mut StdRng) -> Vec<Action> {
        match self {
            Machine::New(d) => d.handle(now, event, rng),
            Machine::Existing(d) => d.handle(now, event, rng),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Machine::New(d) => d.poll_timeout(),
            Machine::Existing(d) => d.poll_timeout(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        match self {
            Machine::New(d) => d.handle_timeout(now),
            Machine::Existing(d) => d.handle_timeout(now),
        }
    }

    fn is_finished(&self) -> bool {
        match self {
            Machine::New(d) => d.is_finished(),
            Machine::Existing(d) => d.is_finished(),
        }
    }
}

proptest! {
    /// Whatever the driver and the network do: no panic, at most one PUT in flight, exactly
    /// one final action once finished, and silence afterwards.
    #[test]
    fn any_event_sequence_keeps_the_invariants(
        start in prop_oneof![
            Just(Start::NewShows),
            Just(Start::NewScans),
            Just(Start::ExistingShows),
            Just(Start::ExistingScans),
        ],
        msc4388 in any::<bool>(),
        inputs in proptest::collection::vec(any_input(), 0..40),
    ) {
        let generation = if msc4388 { Generation::Msc4388 } else { Generation::Msc4108v2024 };
        let (mut machine, first) = Machine::start(start, generation);
        let mut rng = rng();
        let mut writing = false;
        let mut finals = 0;
        let check = |actions: &[Action], finals: &mut usize, writing: &mut bool| -> Result<(), TestCaseError> {
            for action in actions {
                prop_assert_eq!(*finals, 0, "action after the end: {:?}", action);
                match action {
                    Action::Send { .. } => {
                        prop_assert!(!*writing, "second PUT while one is in flight");
                        *writing = true;
                    }
                    Action::Done | Action::Failed { .. } => *finals += 1,
                    _ => {}
                }
            }
            Ok(())
        };
        check(&first, &mut finals, &mut writing)?;
        let mut now = now();
        for input in inputs {
            let actions = match input {
                Input::Event(event) => {
                    if matches!(event, Event::PayloadSent { .. }) {
                        writing = false;
                    }
                    machine.handle(now, event, &mut rng)
                }
                Input::Wait(millis) => {
                    now += Duration::from_millis(millis);
                    machine.handle_timeout(now)
                }
            };
            check(&actions, &mut finals, &mut writing)?;
            prop_assert_eq!(machine.is_finished(), finals == 1);
            // Nothing is timed once finished, nor while a PUT is in flight.
            if finals == 1 || writing {
                prop_assert_eq!(machine.poll_timeout(), None);
            }
        }
    }
}

#[test]
fn failures_name_their_wire_reason() {
    use mxqr_proto::machine::Unexpected;
    use mxqr_proto::messages::MessageType;
    assert_eq!(
        Failure::PeerFailed(FailureReason::DeviceNotFound).reason(),
        Some(&FailureReason::DeviceNotFound)
    );
    assert_eq!(
        Failure::Local(FailureReason::UserCancelled).reason(),
        Some(&FailureReason::UserCancelled)
    );
    assert_eq!(
        Failure::Unexpected(Unexpected::OutOfOrder(MessageType::Success)).reason(),
        Some(&FailureReason::UnexpectedMessageReceived)
    );
    assert_eq!(Failure::CheckCodeMismatch.reason(), None);
    assert_eq!(Failure::Transport.reason(), None);
}

//! Both state machines wired through an in-memory rendezvous and the real secure channel:
//! every QR direction and generation to completion, then every way a sign-in can fail.

use std::collections::VecDeque;
use std::time::Duration;

use mxqr_proto::Generation;
use mxqr_proto::channel::{Binding, CheckCode, EstablishedChannel, ScannerChannel};
use mxqr_proto::machine::{
    Action, ConsentOrigin, CreatedRendezvous, DeviceAuthorization, DeviceLookup, Event,
    ExistingDevice, Failure, Instant, NewDevice, RECEIVE_SLICE, Read, TokenAnswer, Unexpected,
    UntrustedConsentPage,
};
use mxqr_proto::messages::{
    BackupSecrets, CrossSigningSecrets, DeviceId, FailureReason, HomeserverField, LoginMessage,
    MessageType, Protocol, ProtocolsMessage, Secret, SecretsMessage,
};
use mxqr_proto::qr::{Msc4388Prefix, QrCode, QrIntent};
use rand::SeedableRng;
use rand::rngs::StdRng;

const HOMESERVER: &str = "https://matrix.example.org";
const RENDEZVOUS_URL: &str = "https://matrix.example.org/_synapse/client/rendezvous/abc123";
const RENDEZVOUS_ID: &str = "e8da6355-550b-4a32-a193-1619d9830668";
const DEVICE_ID: &str = "wMMTDKJ5CYj0aC9Wj0pjB0gx1/tG+c8Ie2XyHcD8eWg";
const VERIFICATION_URI: &str = "https://auth.example.org/device";
const VERIFICATION_URI_COMPLETE: &str = "https://auth.example.org/device?code=QWERTY";
const USER_CODE: &str = "QWERTY";
/// The existing device's homeserver's `device_authorization_endpoint`.
const DEVICE_ENDPOINT: &str = "https://auth.example.org/oauth2/device";

fn consent() -> ConsentOrigin {
    ConsentOrigin::of_endpoint(&url::Url::parse(DEVICE_ENDPOINT).unwrap()).unwrap()
}

const GENERATIONS: [Generation; 2] = [Generation::Msc4108v2024, Generation::Msc4388];

/// Who shows the QR code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shows {
    New,
    Existing,
}

const DIRECTIONS: [Shows; 2] = [Shows::New, Shows::Existing];

fn combos() -> impl Iterator<Item = (Generation, Shows)> {
    GENERATIONS
        .into_iter()
        .flat_map(|g| DIRECTIONS.into_iter().map(move |d| (g, d)))
}

fn secrets() -> SecretsMessage {
    SecretsMessage {
        cross_signing: CrossSigningSecrets {
            master_key: Secret::new("bWFzdGVyLWtleS1zZWVkLW9mLTMyLWJ5dGVzLWxvbmc"),
            self_signing_key: Secret::new("c2VsZi1zaWduaW5nLWtleS1zZWVkLTMyLWJ5dGVzIQ"),
            user_signing_key: Secret::new("dXNlci1zaWduaW5nLWtleS1zZWVkLTMyLWJ5dGVzIQ"),
        },
        backup: Some(BackupSecrets {
            algorithm: "m.megolm_backup.v1.curve25519-aes-sha2".into(),
            key: Secret::new("YmFja3VwLWtleS1vZi0zMi1ieXRlcy1mb3ItdGVzdHM"),
            backup_version: "7".into(),
        }),
    }
}

/// A rendezvous session: one payload slot, a fresh token on every write.
struct Rendezvous {
    generation: Generation,
    data: String,
    token: String,
    writes: u32,
    deleted: bool,
    /// Writes (counted from 1) whose stored data an attacker alters.
    tamper_write: Option<u32>,
}

impl Rendezvous {
    fn create(generation: Generation) -> Self {
        let mut rv = Self {
            generation,
            data: String::new(),
            token: String::new(),
            writes: 0,
            deleted: false,
            tamper_write: None,
        };
        rv.token = rv.next_token();
        rv
    }

    fn next_token(&self) -> String {
        match self.generation {
            // ETags, quoted as servers send them.
            Generation::Msc4108v2024 => format!("\"etag-{}\"", self.writes),
            Generation::Msc4388 => format!("token-{}", self.writes),
        }
    }

    fn created(&self) -> CreatedRendezvous {
        match self.generation {
            Generation::Msc4108v2024 => CreatedRendezvous::Msc4108 {
                url: RENDEZVOUS_URL.into(),
                etag: self.token.clone(),
            },
            Generation::Msc4388 => CreatedRendezvous::Msc4388 {
                prefix: Msc4388Prefix::Unstable,
                base_url: HOMESERVER.into(),
                rendezvous_id: RENDEZVOUS_ID.into(),
                sequence_token: self.token.clone(),
            },
        }
    }

    /// The binding a hand-driven peer uses, as the machines compute it.
    fn binding(&self, sequence_token: &str) -> Binding {
        match self.generation {
            Generation::Msc4108v2024 => Binding::new(RENDEZVOUS_URL, "", sequence_token),
            Generation::Msc4388 => {
                Binding::new(format!("{HOMESERVER}/"), RENDEZVOUS_ID, sequence_token)
            }
        }
    }

    fn read(&self) -> Option<(String, String)> {
        (!self.deleted).then(|| (self.data.clone(), self.token.clone()))
    }

    /// A PUT replacing `replaces`: `None` for a stale token (409/412) or a deleted session.
    fn write(&mut self, replaces: &str, data: String) -> Option<String> {
        if self.deleted || replaces != self.token {
            return None;
        }
        self.writes += 1;
        self.data = if self.tamper_write == Some(self.writes) {
            tamper(&data)
        } else {
            data
        };
        self.token = self.next_token();
        Some(self.token.clone())
    }
}

/// Changes one base64 character in the middle of a payload, keeping it valid base64.
fn tamper(payload: &str) -> String {
    let mut bytes = payload.as_bytes().to_vec();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("base64 is ASCII")
}

enum Device {
    New(NewDevice),
    Existing(ExistingDevice),
}

impl Device {
    fn handle(&mut self, now: Instant, event: Event, rng: &mut StdRng) -> Vec<Action> {
        match self {
            Device::New(d) => d.handle(now, event, rng),
            Device::Existing(d) => d.handle(now, event, rng),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Device::New(d) => d.poll_timeout(),
            Device::Existing(d) => d.poll_timeout(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        match self {
            Device::New(d) => d.handle_timeout(now),
            Device::Existing(d) => d.handle_timeout(now),
        }
    }

    fn read(&self, now: Instant) -> Option<Read<'_>> {
        match self {
            Device::New(d) => d.read(now),
            Device::Existing(d) => d.read(now),
        }
    }

    fn is_finished(&self) -> bool {
        match self {
            Device::New(d) => d.is_finished(),
            Device::Existing(d) => d.is_finished(),
        }
    }
}

/// How the fake driver of a side answers the machine's requests.
#[derive(Clone)]
struct Script {
    authorization_supported: bool,
    /// The grant's `expires_in` and `interval` as the server sends them.
    expires_in: Duration,
    interval: Option<Duration>,
    /// The token endpoint's answers, poll after poll; the last one repeats.
    token: Vec<TokenAnswer>,
    lookup: DeviceLookup,
    /// Existing device: the look-up that first finds the new device (1: the first one);
    /// `None`: it never appears.
    device_appears: Option<usize>,
    /// Added to the correct check code before typing it (mod 100).
    code_offset: u8,
    /// The user cancels right after this action was carried out.
    cancel_after: Option<fn(&Action) -> bool>,
    /// New device: the consent page it names instead of its server's.
    consent_page: Option<&'static str>,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            authorization_supported: true,
            expires_in: Duration::from_secs(600),
            interval: Some(Duration::from_secs(5)),
            token: vec![TokenAnswer::Granted],
            lookup: DeviceLookup::NotFound,
            device_appears: Some(1),
            code_offset: 0,
            cancel_after: None,
            consent_page: None,
        }
    }
}

#[derive(Debug, Clone)]
enum Entry {
    In(Event),
    Out(Action),
}

struct Side {
    device: Device,
    script: Script,
    actions: VecDeque<Action>,
    inbox: VecDeque<Event>,
    log: Vec<Entry>,
    /// When each entry of `log` happened.
    times: Vec<Instant>,
    /// The reads the machine asked for: when, and until when.
    reads: Vec<(Instant, Instant)>,
    asked_for_code: bool,
    code_entered: bool,
}

impl Side {
    fn new(device: Device, script: Script, actions: Vec<Action>) -> Self {
        Self {
            device,
            script,
            actions: actions.into(),
            inbox: VecDeque::new(),
            log: Vec::new(),
            times: Vec::new(),
            reads: Vec::new(),
            asked_for_code: false,
            code_entered: false,
        }
    }

    fn outcome(&self) -> &Action {
        self.log
            .iter()
            .rev()
            .find_map(|entry| match entry {
                Entry::Out(action @ (Action::Done | Action::Failed { .. })) => Some(action),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no outcome; log: {:#?}", self.log))
    }

    fn did(&self, pred: impl Fn(&Action) -> bool) -> Option<usize> {
        self.log
            .iter()
            .position(|entry| matches!(entry, Entry::Out(a) if pred(a)))
    }

    fn record(&mut self, entry: Entry, now: Instant) {
        self.log.push(entry);
        self.times.push(now);
    }

    /// When each action matching `pred` was asked for.
    fn times_of(&self, pred: impl Fn(&Action) -> bool) -> Vec<Instant> {
        self.log
            .iter()
            .zip(&self.times)
            .filter(|(entry, _)| matches!(entry, Entry::Out(a) if pred(a)))
            .map(|(_, at)| *at)
            .collect()
    }

    /// When the outcome was reached.
    fn outcome_time(&self) -> Instant {
        self.times_of(|a| matches!(a, Action::Done | Action::Failed { .. }))[0]
    }

    fn sent_messages(&self) -> usize {
        self.log
            .iter()
            .filter(|entry| matches!(entry, Entry::Out(Action::Send { .. })))
            .count()
    }
}

struct World {
    rng: StdRng,
    /// The clock both drivers read; it moves only when nothing else can happen.
    start: Instant,
    now: Instant,
    rv: Rendezvous,
    sides: Vec<Side>,
    /// The check code S shows; G's user types it.
    shown_code: Option<CheckCode>,
    qr: QrCode,
    homeserver_asked: Option<String>,
    opened_uri: Option<String>,
    user_code_shown: Option<String>,
    imported: Option<SecretsMessage>,
    /// Actions the fake drivers never answer, as a server that does not respond.
    unanswered: Option<fn(&Action) -> bool>,
}

impl World {
    /// G creates the rendezvous and shows its code; S scans (through the QR byte codec).
    fn start(generation: Generation, shows: Shows, new: Script, existing: Script) -> Self {
        let mut rng = StdRng::seed_from_u64(7);
        let rv = Rendezvous::create(generation);
        let device_id = DeviceId::new(DEVICE_ID).unwrap();
        let (g, g_actions, g_script) = match shows {
            Shows::New => {
                let (d, a) = NewDevice::show_qr(rv.created(), device_id.clone(), &mut rng).unwrap();
                (Device::New(d), a, new.clone())
            }
            Shows::Existing => {
                let (d, a) =
                    ExistingDevice::show_qr(rv.created(), HOMESERVER, consent(), &mut rng).unwrap();
                (Device::Existing(d), a, existing.clone())
            }
        };
        let [Action::ShowQrCode(qr)] = g_actions.as_slice() else {
            panic!("G must start by showing its code, got {g_actions:?}");
        };
        let scanned = QrCode::decode(&qr.encode()).expect("the shown code reads back");
        assert_eq!(&scanned, qr);
        let (_, first_token) = rv.read().unwrap();
        let (s, s_actions, s_script) = match shows {
            Shows::New => {
                let (d, a) =
                    ExistingDevice::scan(&scanned, first_token, HOMESERVER, consent(), &mut rng)
                        .unwrap();
                (Device::Existing(d), a, existing)
            }
            Shows::Existing => {
                let (d, a) = NewDevice::scan(&scanned, first_token, device_id, &mut rng).unwrap();
                (Device::New(d), a, new)
            }
        };
        let start = Instant::now();
        let mut g_side = Side::new(g, g_script, Vec::new());
        g_side.record(Entry::Out(Action::ShowQrCode(qr.clone())), start);
        Self {
            rng,
            start,
            now: start,
            rv,
            sides: vec![g_side, Side::new(s, s_script, s_actions)],
            shown_code: None,
            qr: scanned,
            homeserver_asked: None,
            opened_uri: None,
            user_code_shown: None,
            imported: None,
            unanswered: None,
        }
    }

    fn g(&self) -> &Side {
        &self.sides[0]
    }

    fn s(&self) -> &Side {
        &self.sides[1]
    }

    fn new_side(&self) -> &Side {
        match self.qr.intent {
            QrIntent::Login => self.g(),
            QrIntent::Reciprocate => self.s(),
        }
    }

    fn existing_side(&self) -> &Side {
        match self.qr.intent {
            QrIntent::Login => self.s(),
            QrIntent::Reciprocate => self.g(),
        }
    }

    /// Runs until nothing more can happen. Priority: carry out actions, then deliver
    /// events, then read the rendezvous; when all is quiet the user types the check code
    /// (so G sees S's early payloads before confirmation), and only then does the clock
    /// move on to the next deadline of a machine.
    fn run(&mut self) {
        for _ in 0..10000 {
            if self.step() {
                continue;
            }
            return;
        }
        panic!("no quiescence after 10000 steps");
    }

    fn step(&mut self) -> bool {
        for i in 0..self.sides.len() {
            if let Some(action) = self.sides[i].actions.pop_front() {
                self.carry_out(i, action);
                return true;
            }
        }
        for i in 0..self.sides.len() {
            if let Some(event) = self.sides[i].inbox.pop_front() {
                let side = &mut self.sides[i];
                side.record(Entry::In(event.clone()), self.now);
                let actions = side.device.handle(self.now, event, &mut self.rng);
                side.actions.extend(actions);
                return true;
            }
        }
        for i in 0..self.sides.len() {
            let side = &mut self.sides[i];
            if side.device.is_finished() {
                continue;
            }
            let Some(read) = side.device.read(self.now) else {
                continue;
            };
            // A read lasts a slice at most, and ends by the machine's next deadline.
            assert!(read.until <= self.now + RECEIVE_SLICE);
            if let Some(deadline) = side.device.poll_timeout() {
                assert!(read.until <= deadline);
            }
            let (token, until) = (read.sequence_token.to_owned(), read.until);
            side.reads.push((self.now, until));
            match self.rv.read() {
                None => {
                    side.inbox.push_back(Event::TransportFailed);
                    return true;
                }
                Some((data, current)) if current != token => {
                    side.inbox.push_back(Event::PayloadReceived {
                        data,
                        sequence_token: current,
                    });
                    return true;
                }
                Some(_) => {}
            }
        }
        for i in 0..self.sides.len() {
            let side = &mut self.sides[i];
            if side.asked_for_code
                && !side.code_entered
                && !side.device.is_finished()
                && let Some(code) = self.shown_code
            {
                side.code_entered = true;
                let typed = (code.digits() + side.script.code_offset) % 100;
                side.inbox.push_back(Event::CheckCodeEntered(typed));
                return true;
            }
        }
        self.advance_clock()
    }

    /// Moves the clock to the earliest deadline of an unfinished machine and lets every
    /// machine whose deadline passed act on it.
    fn advance_clock(&mut self) -> bool {
        let Some(next) = self
            .sides
            .iter()
            .filter(|side| !side.device.is_finished())
            .filter_map(|side| side.device.poll_timeout())
            .min()
        else {
            return false;
        };
        assert!(
            next < self.start + Duration::from_secs(2 * 60 * 60),
            "a deadline beyond every bound"
        );
        self.now = self.now.max(next);
        for side in &mut self.sides {
            if side.device.poll_timeout().is_some_and(|at| at <= self.now) {
                let actions = side.device.handle_timeout(self.now);
                side.actions.extend(actions);
            }
        }
        true
    }

    fn carry_out(&mut self, i: usize, action: Action) {
        self.sides[i].record(Entry::Out(action.clone()), self.now);
        let script = self.sides[i].script.clone();
        let reply = match &action {
            Action::ShowQrCode(_) => None,
            Action::Send {
                payload,
                sequence_token,
            } => Some(match self.rv.write(sequence_token, payload.clone()) {
                Some(token) => Event::PayloadSent {
                    sequence_token: token,
                },
                None => Event::TransportFailed,
            }),
            Action::ShowCheckCode(code) => {
                self.shown_code = Some(*code);
                None
            }
            Action::AskCheckCode => {
                self.sides[i].asked_for_code = true;
                None
            }
            Action::StartDeviceAuthorization {
                homeserver,
                device_id,
            } => {
                assert_eq!(device_id.as_str(), DEVICE_ID);
                self.homeserver_asked = Some(homeserver.clone());
                Some(if script.authorization_supported {
                    Event::DeviceAuthorizationStarted(DeviceAuthorization {
                        verification_uri: script.consent_page.unwrap_or(VERIFICATION_URI).into(),
                        verification_uri_complete: Some(
                            script
                                .consent_page
                                .unwrap_or(VERIFICATION_URI_COMPLETE)
                                .into(),
                        ),
                        user_code: USER_CODE.into(),
                        expires_in: script.expires_in,
                        interval: script.interval,
                    })
                } else {
                    Event::DeviceAuthorizationUnsupported
                })
            }
            Action::ShowUserCode { user_code, .. } => {
                self.user_code_shown = Some(user_code.clone());
                None
            }
            Action::PollToken => {
                let polls = self.sides[i].times_of(|a| *a == Action::PollToken).len();
                let answer = script.token[(polls - 1).min(script.token.len() - 1)];
                Some(Event::TokenPolled(answer))
            }
            Action::ImportSecrets(secrets) => {
                self.imported = Some(secrets.clone());
                None
            }
            Action::LookUpDevice { device_id } => {
                assert_eq!(device_id.as_str(), DEVICE_ID);
                Some(Event::DeviceLookup(script.lookup))
            }
            Action::OpenVerificationUri { uri } => {
                self.opened_uri = Some(uri.clone());
                None
            }
            Action::LookForDevice { device_id } => {
                assert_eq!(device_id.as_str(), DEVICE_ID);
                let looks = self.sides[i]
                    .times_of(|a| matches!(a, Action::LookForDevice { .. }))
                    .len();
                Some(if script.device_appears.is_some_and(|n| looks >= n) {
                    Event::DeviceAppeared
                } else {
                    Event::DeviceNotSeen
                })
            }
            Action::ExportSecrets => Some(Event::SecretsObtained(secrets())),
            Action::DeleteRendezvous => {
                self.rv.deleted = true;
                None
            }
            Action::Done | Action::Failed { .. } => None,
        };
        let side = &mut self.sides[i];
        if !self.unanswered.is_some_and(|pred| pred(&action)) {
            side.inbox.extend(reply);
        }
        if script.cancel_after.is_some_and(|pred| pred(&action)) {
            side.inbox.push_back(Event::Cancelled);
        }
    }
}

fn failed(failure: Failure, told_peer: bool) -> Action {
    Action::Failed { failure, told_peer }
}

fn run(generation: Generation, shows: Shows, new: Script, existing: Script) -> World {
    let mut world = World::start(generation, shows, new, existing);
    world.run();
    for side in &world.sides {
        assert!(
            side.device.is_finished(),
            "unfinished side: {:#?}",
            side.log
        );
    }
    world
}

#[test]
fn every_direction_and_generation_signs_in() {
    for (generation, shows) in combos() {
        let world = run(generation, shows, Script::default(), Script::default());
        let context = format!("{generation:?}, {shows:?} shows");
        assert_eq!(world.new_side().outcome(), &Action::Done, "{context}");
        assert_eq!(world.existing_side().outcome(), &Action::Done, "{context}");
        assert_eq!(world.imported, Some(secrets()), "{context}");
        assert_eq!(world.opened_uri.as_deref(), Some(VERIFICATION_URI_COMPLETE));
        assert_eq!(world.user_code_shown.as_deref(), Some(USER_CODE));
        // The new device deletes the rendezvous after reading the last message.
        assert!(world.rv.deleted, "{context}");
        assert!(
            world
                .new_side()
                .did(|a| *a == Action::DeleteRendezvous)
                .is_some()
        );
        assert!(
            world
                .existing_side()
                .did(|a| *a == Action::DeleteRendezvous)
                .is_none()
        );

        // As G the new device learns the homeserver from `m.login.protocols` (2024:
        // `homeserver`, MSC4388: `base_url`); as S from the QR code. Always as parsed.
        assert_eq!(
            world.homeserver_asked.as_deref(),
            Some(format!("{HOMESERVER}/").as_str()),
            "{context}"
        );
    }
}

#[test]
fn existing_device_announces_protocols_only_when_it_scanned() {
    for generation in GENERATIONS {
        // Existing scans: INITIATE, m.login.protocols, protocol_accepted, m.login.secrets.
        let world = run(generation, Shows::New, Script::default(), Script::default());
        assert_eq!(world.existing_side().sent_messages(), 4);
        // Existing shows: OK, protocol_accepted, m.login.secrets.
        let world = run(
            generation,
            Shows::Existing,
            Script::default(),
            Script::default(),
        );
        assert_eq!(world.existing_side().sent_messages(), 3);
    }
}

#[test]
fn generator_acts_only_after_the_check_code_matched() {
    for (generation, shows) in combos() {
        let world = run(generation, shows, Script::default(), Script::default());
        let g = world.g();
        let entered = g
            .log
            .iter()
            .position(|e| matches!(e, Entry::In(Event::CheckCodeEntered(_))))
            .unwrap();
        // S's next payload reached G before the user typed the code...
        let first_payload_after_ok = g
            .log
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, Entry::In(Event::PayloadReceived { .. })))
            .nth(1)
            .map(|(i, _)| i)
            .unwrap();
        assert!(first_payload_after_ok < entered, "{generation:?} {shows:?}");
        // ...but G only acted on it afterwards.
        let acted = g
            .did(|a| {
                matches!(
                    a,
                    Action::LookUpDevice { .. } | Action::StartDeviceAuthorization { .. }
                )
            })
            .unwrap();
        assert!(acted > entered, "{generation:?} {shows:?}");
    }
}

#[test]
fn new_device_polls_only_after_protocol_accepted() {
    for (generation, shows) in combos() {
        let world = run(generation, shows, Script::default(), Script::default());
        let new = world.new_side();
        let start = new
            .did(|a| matches!(a, Action::StartDeviceAuthorization { .. }))
            .unwrap();
        let poll = new.did(|a| *a == Action::PollToken).unwrap();
        let accepted_at = world
            .existing_side()
            .did(|a| matches!(a, Action::OpenVerificationUri { .. }));
        assert!(accepted_at.is_some());
        assert!(start < poll);
        // Between starting the grant and polling, the new device read exactly one payload
        // of the existing device: protocol_accepted.
        let reads = new.log[start..poll]
            .iter()
            .filter(|e| matches!(e, Entry::In(Event::PayloadReceived { .. })))
            .count();
        assert_eq!(reads, 1, "{generation:?} {shows:?}");
    }
}

#[test]
fn authorization_expired() {
    for (generation, shows) in combos() {
        let new = Script {
            token: vec![TokenAnswer::Expired],
            ..Script::default()
        };
        let world = run(generation, shows, new, Script::default());
        let reason = FailureReason::AuthorizationExpired;
        assert_eq!(
            world.new_side().outcome(),
            &failed(Failure::Local(reason.clone()), true)
        );
        assert_eq!(
            world.existing_side().outcome(),
            &failed(Failure::PeerFailed(reason), false)
        );
        assert!(world.rv.deleted);
        assert!(world.imported.is_none());
    }
}

/// The gaps between the new device's token polls, and its outcome.
fn token_polls(new: Script) -> (Vec<Duration>, World) {
    let world = run(Generation::Msc4388, Shows::Existing, new, Script::default());
    let times = world.new_side().times_of(|a| *a == Action::PollToken);
    let gaps = times.windows(2).map(|w| w[1] - w[0]).collect();
    (gaps, world)
}

fn secs(list: &[u64]) -> Vec<Duration> {
    list.iter().map(|s| Duration::from_secs(*s)).collect()
}

#[test]
fn token_polls_follow_the_interval_and_slow_down() {
    let (gaps, world) = token_polls(Script {
        token: vec![
            TokenAnswer::Pending,
            TokenAnswer::SlowDown,
            TokenAnswer::Pending,
            TokenAnswer::SlowDown,
            TokenAnswer::Granted,
        ],
        ..Script::default()
    });
    // Every 5 s, then 10 s after the first `slow_down`, 15 s after the second.
    assert_eq!(gaps, secs(&[5, 10, 10, 15]));
    assert_eq!(world.new_side().outcome(), &Action::Done);
    assert_eq!(world.existing_side().outcome(), &Action::Done);

    // The first poll comes as `m.login.protocol_accepted` arrives, not an interval later.
    let new = world.new_side();
    // Between polls the new device reads the rendezvous until the next poll is due.
    let waits: Vec<Duration> = new.reads.iter().map(|(at, until)| *until - *at).collect();
    assert!(waits.contains(&Duration::from_secs(15)), "{waits:?}");
    assert!(waits.contains(&RECEIVE_SLICE), "{waits:?}");
    let accepted = new.times_of(|a| matches!(a, Action::ShowUserCode { .. }))[0];
    assert_eq!(new.times_of(|a| *a == Action::PollToken)[0], accepted);
}

#[test]
fn slow_down_never_stretches_the_interval_beyond_a_minute() {
    let (gaps, _) = token_polls(Script {
        interval: Some(Duration::from_secs(50)),
        token: vec![
            TokenAnswer::SlowDown,
            TokenAnswer::SlowDown,
            TokenAnswer::SlowDown,
            TokenAnswer::Granted,
        ],
        ..Script::default()
    });
    assert_eq!(gaps, secs(&[55, 60, 60]));

    // Nor does a server's own interval, however large; one of 0 is held to a second.
    for (interval, gap) in [(u64::MAX, 60), (0, 1)] {
        let (gaps, _) = token_polls(Script {
            expires_in: Duration::from_secs(u64::MAX),
            interval: Some(Duration::from_secs(interval)),
            token: vec![TokenAnswer::Pending, TokenAnswer::Granted],
            ..Script::default()
        });
        assert_eq!(gaps, secs(&[gap]));
    }
}

#[test]
fn token_polling_stops_when_the_grant_expires() {
    for (generation, shows) in combos() {
        let new = Script {
            expires_in: Duration::from_secs(12),
            token: vec![TokenAnswer::Pending],
            ..Script::default()
        };
        let world = run(generation, shows, new, Script::default());
        let side = world.new_side();
        let polls = side.times_of(|a| *a == Action::PollToken);
        let issued = side.times_of(|a| matches!(a, Action::ShowUserCode { .. }))[0];
        // Polls at 0, 5 and 10 s; one at 15 s would come after the expiry at 12 s.
        let at: Vec<Duration> = polls.iter().map(|t| *t - issued).collect();
        assert_eq!(at, secs(&[0, 5, 10]));
        let reason = FailureReason::AuthorizationExpired;
        assert_eq!(
            side.outcome(),
            &failed(Failure::Local(reason.clone()), true)
        );
        assert!(side.outcome_time() - issued < Duration::from_secs(12));
        assert_eq!(
            world.existing_side().outcome(),
            &failed(Failure::PeerFailed(reason), false)
        );
    }
}

#[test]
fn an_unreachable_token_endpoint_ends_the_sign_in() {
    let new = Script {
        interval: Some(Duration::from_secs(1)),
        token: vec![TokenAnswer::Pending, TokenAnswer::Unavailable],
        ..Script::default()
    };
    let world = run(Generation::Msc4388, Shows::New, new, Script::default());
    let side = world.new_side();
    // Retried for ten seconds after the first unanswered poll, never faster than the
    // interval, then given up.
    let polls = side.times_of(|a| *a == Action::PollToken);
    let gaps: Vec<u128> = polls
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, [1000, 1000, 1000, 1000, 2000, 2000, 2000]);
    let reason = FailureReason::UserCancelled;
    assert_eq!(
        side.outcome(),
        &failed(Failure::Local(reason.clone()), true)
    );
    assert_eq!(
        world.existing_side().outcome(),
        &failed(Failure::PeerFailed(reason), false)
    );
}

#[test]
fn device_already_exists() {
    for (generation, shows) in combos() {
        let existing = Script {
            lookup: DeviceLookup::Found,
            ..Script::default()
        };
        let world = run(generation, shows, Script::default(), existing);
        let reason = FailureReason::DeviceAlreadyExists;
        assert_eq!(
            world.existing_side().outcome(),
            &failed(Failure::Local(reason.clone()), true)
        );
        assert_eq!(
            world.new_side().outcome(),
            &failed(Failure::PeerFailed(reason), false)
        );
        // Consent was never asked for.
        assert!(world.opened_uri.is_none());
        assert!(world.new_side().did(|a| *a == Action::PollToken).is_none());
        assert!(world.rv.deleted);
    }
}

#[test]
fn a_consent_page_off_the_account_origin_is_refused_before_the_lookup() {
    let other = || UntrustedConsentPage::OtherOrigin {
        expected: "https://auth.example.org".into(),
    };
    let pages = [
        (
            "https://auth.example.org.evil.test/device?code=QWERTY",
            other(),
        ),
        ("https://evil.test/device", other()),
        ("https://auth.example.org:8443/device", other()),
        ("javascript:alert(1)", UntrustedConsentPage::Insecure),
        ("file:///etc/passwd", UntrustedConsentPage::Insecure),
        (
            "http://auth.example.org/device",
            UntrustedConsentPage::Insecure,
        ),
        (
            "https://auth.example.org/\u{1b}[2J",
            UntrustedConsentPage::NotAUrl,
        ),
    ];
    for (generation, shows) in combos() {
        for (page, why) in pages.clone() {
            let new = Script {
                consent_page: Some(page),
                ..Script::default()
            };
            let world = run(generation, shows, new, Script::default());
            let context = format!("{generation:?}, {shows:?} shows, {page:?}");
            assert_eq!(
                world.existing_side().outcome(),
                &failed(Failure::UntrustedConsentPage(why), true),
                "{context}"
            );
            assert_eq!(
                world.new_side().outcome(),
                &failed(
                    Failure::PeerFailed(FailureReason::UnsupportedProtocol),
                    false
                ),
                "{context}"
            );
            // Neither looked up nor opened nor accepted.
            assert!(world.opened_uri.is_none(), "{context}");
            let existing = world.existing_side();
            assert!(
                existing
                    .did(|a| matches!(a, Action::LookUpDevice { .. }))
                    .is_none(),
                "{context}"
            );
            assert!(world.new_side().did(|a| *a == Action::PollToken).is_none());
            assert!(world.rv.deleted, "{context}");
        }
    }
}

#[test]
fn device_not_found() {
    for (generation, shows) in combos() {
        let existing = Script {
            device_appears: None,
            ..Script::default()
        };
        let world = run(generation, shows, Script::default(), existing);
        let reason = FailureReason::DeviceNotFound;
        assert_eq!(
            world.existing_side().outcome(),
            &failed(Failure::Local(reason.clone()), true)
        );
        assert_eq!(
            world.new_side().outcome(),
            &failed(Failure::PeerFailed(reason), false)
        );
        assert!(world.imported.is_none());
        assert!(world.rv.deleted);
    }
}

/// When the existing device looked for the new device, and when it gave up or went on,
/// relative to `m.login.success`.
fn device_wait(existing: Script) -> (Vec<Duration>, Duration, World) {
    let world = run(Generation::Msc4388, Shows::New, Script::default(), existing);
    let side = world.existing_side();
    let looks = side.times_of(|a| matches!(a, Action::LookForDevice { .. }));
    let success = looks[0];
    let at = looks.iter().map(|t| *t - success).collect();
    (at, side.outcome_time() - success, world)
}

#[test]
fn existing_device_gives_up_waiting_for_the_new_device_at_the_deadline() {
    let (looks, ended, world) = device_wait(Script {
        device_appears: None,
        ..Script::default()
    });
    // A look every 500 ms from `m.login.success` on, and not one at or past 10 s.
    let expected: Vec<Duration> = (0..20).map(|n| Duration::from_millis(500 * n)).collect();
    assert_eq!(looks, expected);
    assert_eq!(ended, Duration::from_secs(10));
    assert_eq!(
        world.existing_side().outcome(),
        &failed(Failure::Local(FailureReason::DeviceNotFound), true)
    );
}

#[test]
fn a_device_that_appears_within_the_wait_gets_the_secrets() {
    let (looks, ended, world) = device_wait(Script {
        device_appears: Some(20),
        ..Script::default()
    });
    assert_eq!(looks.len(), 20);
    assert_eq!(ended, Duration::from_millis(9500));
    assert_eq!(world.existing_side().outcome(), &Action::Done);
    assert_eq!(world.imported, Some(secrets()));
}

#[test]
fn a_look_up_still_in_flight_at_the_deadline_does_not_hold_the_wait_open() {
    let existing = Script {
        device_appears: None,
        ..Script::default()
    };
    let mut world = World::start(Generation::Msc4388, Shows::New, Script::default(), existing);
    // The server never answers the look-up: the machine alone ends the wait.
    world.unanswered = Some(|a| matches!(a, Action::LookForDevice { .. }));
    world.run();
    let side = world.existing_side();
    let looks = side.times_of(|a| matches!(a, Action::LookForDevice { .. }));
    assert_eq!(looks.len(), 1);
    assert_eq!(side.outcome_time() - looks[0], Duration::from_secs(10));
    assert_eq!(
        side.outcome(),
        &failed(Failure::Local(FailureReason::DeviceNotFound), true)
    );
}

#[test]
fn unsupported_protocol_from_new_device_homeserver() {
    for (generation, shows) in combos() {
        let new = Script {
            authorization_supported: false,
            ..Script::default()
        };
        let world = run(generation, shows, new, Script::default());
        let reason = FailureReason::UnsupportedProtocol;
        assert_eq!(
            world.new_side().outcome(),
            &failed(Failure::Local(reason.clone()), true)
        );
        assert_eq!(
            world.existing_side().outcome(),
            &failed(Failure::PeerFailed(reason), false)
        );
        assert!(world.rv.deleted);
    }
}

#[test]
fn user_cancelled_on_new_device() {
    for (generation, shows) in combos() {
        let new = Script {
            cancel_after: Some(|a| matches!(a, Action::ShowUserCode { .. })),
            ..Script::default()
        };
        let world = run(generation, shows, new, Script::default());
        let reason = FailureReason::UserCancelled;
        assert_eq!(
            world.new_side().outcome(),
            &failed(Failure::Local(reason.clone()), true)
        );
        assert_eq!(
            world.existing_side().outcome(),
            &failed(Failure::PeerFailed(reason), false)
        );
        assert!(world.rv.deleted);
    }
}

#[test]
fn user_cancelled_on_existing_device() {
    for (generation, shows) in combos() {
        let existing = Script {
            cancel_after: Some(|a| matches!(a, Action::LookForDevice { .. })),
            ..Script::default()
        };
        let world = run(generation, shows, Script::default(), existing);
        let reason = FailureReason::UserCancelled;
        assert_eq!(
            world.existing_side().outcome(),
            &failed(Failure::Local(reason.clone()), true)
        );
        assert_eq!(
            world.new_side().outcome(),
            &failed(Failure::PeerFailed(reason), false)
        );
        assert!(world.imported.is_none());
        assert!(world.rv.deleted);
    }
}

#[test]
fn cancel_before_the_channel_is_up_deletes_the_rendezvous() {
    for (generation, shows) in combos() {
        // G cancels as soon as it asks for the code: nothing can be sealed for S yet.
        let cancel_on_ask = Script {
            cancel_after: Some(|a| *a == Action::AskCheckCode),
            ..Script::default()
        };
        let (new, existing) = match shows {
            Shows::New => (cancel_on_ask, Script::default()),
            Shows::Existing => (Script::default(), cancel_on_ask),
        };
        let world = run(generation, shows, new, existing);
        assert_eq!(
            world.g().outcome(),
            &failed(Failure::Local(FailureReason::UserCancelled), false)
        );
        assert_eq!(world.s().outcome(), &failed(Failure::Transport, false));
        assert!(world.rv.deleted);
    }
}

#[test]
fn declined() {
    for (generation, shows) in combos() {
        let new = Script {
            token: vec![TokenAnswer::Denied],
            ..Script::default()
        };
        let world = run(generation, shows, new, Script::default());
        assert_eq!(world.new_side().outcome(), &failed(Failure::Declined, true));
        assert_eq!(
            world.existing_side().outcome(),
            &failed(Failure::PeerDeclined, false)
        );
        assert!(world.imported.is_none());
        assert!(world.rv.deleted);
    }
}

#[test]
fn wrong_check_code_fails_generator_silently() {
    for (generation, shows) in combos() {
        let wrong = Script {
            code_offset: 1,
            ..Script::default()
        };
        let (new, existing) = match shows {
            Shows::New => (wrong, Script::default()),
            Shows::Existing => (Script::default(), wrong),
        };
        let world = run(generation, shows, new, existing);
        let context = format!("{generation:?}, {shows:?} shows");
        assert_eq!(
            world.g().outcome(),
            &failed(Failure::CheckCodeMismatch, false),
            "{context}"
        );
        // G sent nothing after its OK, and deleted the rendezvous; S sees it vanish.
        assert_eq!(world.g().sent_messages(), 1, "{context}");
        assert!(world.rv.deleted);
        assert_eq!(
            world.s().outcome(),
            &failed(Failure::Transport, false),
            "{context}"
        );
        // The existing device never looked the device up nor opened the consent page.
        assert!(world.opened_uri.is_none());
    }
}

#[test]
fn tampered_payload_is_refused_and_reported() {
    for (generation, shows) in combos() {
        let mut world = World::start(generation, shows, Script::default(), Script::default());
        // Writes: 1 INITIATE, 2 OK, then (existing scans) 3 protocols, 4 protocol,
        // 5 protocol_accepted; (existing shows) 3 protocol, 4 protocol_accepted.
        world.rv.tamper_write = Some(match shows {
            Shows::New => 5,
            Shows::Existing => 4,
        });
        world.run();
        let context = format!("{generation:?}, {shows:?} shows");
        assert!(
            matches!(
                world.new_side().outcome(),
                Action::Failed {
                    failure: Failure::Channel(_),
                    told_peer: true
                }
            ),
            "{context}: {:?}",
            world.new_side().outcome()
        );
        assert_eq!(
            world.existing_side().outcome(),
            &failed(
                Failure::PeerFailed(FailureReason::UnexpectedMessageReceived),
                false
            ),
            "{context}"
        );
        assert!(world.new_side().did(|a| *a == Action::PollToken).is_none());
        assert!(world.rv.deleted);
    }
}

/// A hand-driven existing device that scans the new device's code, to send what a
/// correct machine never would.
struct RogueScanner {
    channel: EstablishedChannel,
    token: String,
}

impl RogueScanner {
    /// Runs the handshake with a new device G and lets it confirm the check code.
    fn connect(generation: Generation) -> (World, RogueScanner) {
        let mut world = World::start(generation, Shows::New, Script::default(), Script::default());
        // Replace the machine S by hand: drop it before it wrote anything.
        world.sides.truncate(1);
        let mut rng = StdRng::seed_from_u64(99);
        let (_, t0) = world.rv.read().unwrap();
        let (scanner, initiate) = ScannerChannel::initiate(
            generation,
            world.qr.public_key,
            &world.rv.binding(&t0),
            &mut rng,
        )
        .unwrap();
        let t1 = world.rv.write(&t0, initiate).unwrap();
        world.run();
        let (ok, t2) = world.rv.read().unwrap();
        assert_ne!(t1, t2, "G must have answered");
        let channel = scanner.receive_ok(&ok, &world.rv.binding(&t1)).unwrap();
        world.shown_code = Some(channel.check_code());
        world.run();
        (world, RogueScanner { channel, token: t2 })
    }

    fn send_raw(&mut self, world: &mut World, plaintext: &[u8]) {
        let payload = self.channel.seal(plaintext, &world.rv.binding(&self.token));
        self.token = world.rv.write(&self.token, payload).unwrap();
        world.run();
    }

    fn send(&mut self, world: &mut World, message: LoginMessage) {
        self.send_raw(world, &message.to_json());
    }

    /// Opens G's latest payload.
    fn receive(&mut self, world: &World) -> LoginMessage {
        let (data, token) = world.rv.read().expect("G left its answer in place");
        assert_ne!(token, self.token, "G wrote nothing");
        let plaintext = self
            .channel
            .open(&data, &world.rv.binding(&self.token))
            .unwrap();
        self.token = token;
        LoginMessage::from_json(&plaintext).unwrap()
    }
}

fn failure_message(reason: FailureReason) -> LoginMessage {
    LoginMessage::Failure(mxqr_proto::messages::FailureMessage::new(reason))
}

#[test]
fn out_of_order_message_is_answered_with_unexpected_message_received() {
    for generation in GENERATIONS {
        let (mut world, mut rogue) = RogueScanner::connect(generation);
        // m.login.success before anything else.
        rogue.send(&mut world, LoginMessage::Success);
        assert_eq!(
            world.g().outcome(),
            &failed(
                Failure::Unexpected(Unexpected::OutOfOrder(MessageType::Success)),
                true
            )
        );
        assert_eq!(
            rogue.receive(&world),
            failure_message(FailureReason::UnexpectedMessageReceived)
        );
        assert!(
            world
                .g()
                .did(|a| matches!(a, Action::StartDeviceAuthorization { .. }))
                .is_none()
        );
    }
}

#[test]
fn undecodable_message_is_answered_with_unexpected_message_received() {
    for generation in GENERATIONS {
        let (mut world, mut rogue) = RogueScanner::connect(generation);
        rogue.send_raw(&mut world, br#"{"type":"m.login.teleport"}"#);
        assert!(matches!(
            world.g().outcome(),
            Action::Failed {
                failure: Failure::Unexpected(Unexpected::Undecodable(_)),
                told_peer: true
            }
        ));
        assert_eq!(
            rogue.receive(&world),
            failure_message(FailureReason::UnexpectedMessageReceived)
        );
    }
}

#[test]
fn unsupported_protocol_list_is_refused_by_new_device() {
    for generation in GENERATIONS {
        let (mut world, mut rogue) = RogueScanner::connect(generation);
        rogue.send(
            &mut world,
            LoginMessage::Protocols(ProtocolsMessage {
                protocols: vec![Protocol::Other("carrier_pigeon".into())],
                homeserver: HomeserverField::for_generation(generation, format!("{HOMESERVER}/")),
            }),
        );
        assert_eq!(
            world.g().outcome(),
            &failed(Failure::Local(FailureReason::UnsupportedProtocol), true)
        );
        assert_eq!(
            rogue.receive(&world),
            failure_message(FailureReason::UnsupportedProtocol)
        );
        assert!(world.homeserver_asked.is_none());
    }
}

#[test]
fn replayed_payload_is_refused() {
    for generation in GENERATIONS {
        let (mut world, mut rogue) = RogueScanner::connect(generation);
        let protocols = LoginMessage::Protocols(ProtocolsMessage {
            protocols: vec![Protocol::DeviceAuthorizationGrant],
            homeserver: HomeserverField::for_generation(generation, format!("{HOMESERVER}/")),
        });
        rogue.send(&mut world, protocols);
        // G started the grant and sent m.login.protocol; read it.
        assert!(matches!(rogue.receive(&world), LoginMessage::Protocol(_)));
        // The server hands G the earlier m.login.protocols again, under a fresh token.
        let old = world
            .g()
            .log
            .iter()
            .filter_map(|e| match e {
                Entry::In(Event::PayloadReceived { data, .. }) => Some(data.clone()),
                _ => None,
            })
            .nth(1)
            .unwrap();
        let current = world.rv.token.clone();
        world.rv.write(&current, old).unwrap();
        world.run();
        assert!(
            matches!(
                world.g().outcome(),
                Action::Failed {
                    failure: Failure::Channel(_),
                    told_peer: true
                }
            ),
            "{:?}",
            world.g().outcome()
        );
    }
}

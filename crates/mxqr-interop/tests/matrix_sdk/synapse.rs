//! matrix-sdk 0.18.0 against a real Synapse 1.163.2 whose authentication is delegated to a
//! spawned `mxqr serve` in synapse mode (docs/synapse-delegated.md): the acceptance criterion
//! "a new device signed in by QR joins a room created by the existing device and decrypts a
//! message sent from it".
//!
//! Both clients use Synapse as their homeserver: OAuth metadata relayed by Synapse's
//! `auth_metadata`, Synapse's own MSC4108 rendezvous, and the client-server API (keys, key
//! backup, rooms, sync). Only the login and consent pages and `/oauth2/*` are mxqr's. Synapse
//! comes from `scripts/synapse-test-server.sh` (cached venv, installed when missing); the test
//! fails, never skips, when it cannot start.

use std::future::IntoFuture as _;
use std::hash::{BuildHasher as _, RandomState};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::{EncryptionInfo, TimelineEventKind, VerificationState};
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{EventId, OwnedEventId};
use matrix_sdk::{Client, Room, RoomState};
use serde_json::Value;
use url::Url;

use super::{assert_sdk_device_verified, sdk_new_device_scans_existing};
use crate::harness::{WAIT, sdk_existing_device, start_server};

const SERVER_NAME: &str = "mxqr.test";
/// Longest wait for Synapse to answer: the script may first have to install it (about 40 s).
const SYNAPSE_START: Duration = Duration::from_secs(240);

/// The test's directory (shared secret, Synapse's configuration and database), removed at
/// the end, pass or fail.
struct TestDir(PathBuf);

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Synapse run by `scripts/synapse-test-server.sh`, which stops it on SIGTERM. Its log is
/// printed when the test fails.
struct Synapse {
    script: Child,
    url: Url,
    log: PathBuf,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- Synapse log (last 60 lines) ---");
            for line in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{line}");
            }
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.script.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.script.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}

/// A port nobody listens on yet: Synapse's, which mxqr must know before either starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throw-away shared secret between Synapse and mxqr (loopback only).
fn random_secret() -> String {
    let state = RandomState::new();
    format!("{:016x}{:016x}", state.hash_one(1), state.hash_one(2))
}

/// Synapse on `port`, delegating authentication to `mxqr`, configured in `dir`; panics (the
/// test fails) when it cannot be installed or started within [`SYNAPSE_START`].
fn start_synapse(mxqr: &Url, port: u16, secret_file: &Path, dir: &Path) -> Synapse {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/synapse-test-server.sh");
    let mut script = Command::new("bash")
        .arg(script)
        .args(["--mxqr-url", mxqr.as_str(), "--server-name", SERVER_NAME])
        .args(["--port", &port.to_string()])
        .arg("--secret-file")
        .arg(secret_file)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run scripts/synapse-test-server.sh");
    let (tx, lines) = mpsc::channel();
    let stdout = script.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + SYNAPSE_START;
    let url = loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(wait) {
            Ok(line) => {
                if let Some(url) = line.strip_prefix("synapse_url=") {
                    break Url::parse(&format!("{url}/")).unwrap();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = script.kill();
                panic!("Synapse did not answer within {SYNAPSE_START:?}");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("Synapse could not be installed or started (see the script's output)")
            }
        }
    };
    Synapse {
        script,
        url,
        log: dir.join("homeserver.log"),
    }
}

/// An end-to-end-encrypted room of `client`'s: `m.room.encryption` is in the initial state,
/// so nothing in it is ever sent in the clear.
async fn create_encrypted_room(client: &Client) -> Room {
    let mut request = create_room::v3::Request::new();
    request.name = Some("mxqr interop".to_owned());
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    tokio::time::timeout(WAIT, client.create_room(request))
        .await
        .expect("room created in time")
        .expect("Synapse creates the room")
}

/// Sends `body` to `room` as a text message, which the SDK must have encrypted.
async fn send_text(room: &Room, body: &str) -> OwnedEventId {
    let sent = tokio::time::timeout(
        WAIT,
        room.send(RoomMessageEventContent::text_plain(body))
            .into_future(),
    )
    .await
    .expect("message sent in time")
    .expect("Synapse accepts the message");
    assert!(
        sent.encryption_info.is_some(),
        "{body:?} was sent in the clear"
    );
    sent.response.event_id
}

/// One `/sync` on Synapse; the SDK then sends what it queued (key queries, room keys).
async fn sync(client: &Client) {
    tokio::time::timeout(
        WAIT,
        client.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))),
    )
    .await
    .expect("sync in time")
    .expect("sync");
}

/// `event_id` fetched from Synapse by `room`'s client: the decrypted event and who encrypted
/// it, or `None` while the client lacks its room key. Either way it was `m.room.encrypted` as
/// Synapse served it (the SDK decrypts only those).
async fn decrypted(room: &Room, event_id: &EventId) -> Option<(Value, Arc<EncryptionInfo>)> {
    let event = tokio::time::timeout(WAIT, room.event(event_id, None))
        .await
        .expect("event fetched in time")
        .expect("Synapse serves the event");
    match event.kind {
        TimelineEventKind::Decrypted(decrypted) => Some((
            decrypted.event.deserialize_as_unchecked().unwrap(),
            decrypted.encryption_info,
        )),
        other => {
            let wire: Value = other.raw().deserialize_as_unchecked().unwrap();
            assert_eq!(wire["type"], "m.room.encrypted", "{wire}");
            None
        }
    }
}

/// Checks a decrypted event: a text message with `body`, encrypted by `sender`'s device.
fn assert_text_from(event: &Value, info: &EncryptionInfo, body: &str, sender: &Client) {
    assert_eq!(event["type"], "m.room.message", "{event}");
    assert_eq!(event["content"]["body"], body, "{event}");
    assert_eq!(Some(&*info.sender), sender.user_id(), "{info:?}");
    assert_eq!(
        info.sender_device.as_deref(),
        sender.device_id(),
        "{info:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_qr_new_device_joins_room_and_decrypts() {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!(
        "mxqr-interop-synapse-{}-{}",
        std::process::id(),
        RandomState::new().hash_one(0)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TestDir(dir.clone());
    let secret_file = dir.join("shared-secret");
    std::fs::write(&secret_file, format!("{}\n", random_secret())).unwrap();

    // mxqr first (it must know Synapse's address), then Synapse (it fetches mxqr's metadata).
    let synapse_port = free_port();
    let synapse_url = format!("http://127.0.0.1:{synapse_port}");
    let mxqr = start_server(&[
        ("MXQR_SERVER_NAME", SERVER_NAME),
        ("MXQR_HOMESERVER__MODE", "synapse"),
        ("MXQR_HOMESERVER__SYNAPSE_URL", &synapse_url),
        (
            "MXQR_HOMESERVER__SECRET_PATH",
            secret_file.to_str().unwrap(),
        ),
    ]);
    mxqr.add_alice();
    let synapse = start_synapse(&mxqr.base, synapse_port, &secret_file, &dir.join("synapse"));
    eprintln!("mxqr and Synapse up after {:?}", started.elapsed());

    // The existing device: signed in through Synapse's discovery and mxqr's pages,
    // cross-signing bootstrapped on Synapse, and a key backup on Synapse.
    let existing = sdk_existing_device(&synapse.url, &mxqr.base).await;
    assert_eq!(
        existing.user_id().unwrap().as_str(),
        format!("@alice:{SERVER_NAME}")
    );
    let backups = existing.encryption().backups();
    tokio::time::timeout(WAIT, backups.create())
        .await
        .expect("backup created in time")
        .expect("Synapse stores a key backup version");

    // An encrypted room with a first message, before the new device exists; its room key
    // reaches the backup.
    let room = create_encrypted_room(&existing).await;
    const BEFORE: &str = "sent before the new device existed";
    let before = send_text(&room, BEFORE).await;
    tokio::time::timeout(WAIT, backups.wait_for_steady_state().into_future())
        .await
        .expect("room key backed up in time")
        .expect("room key backed up");
    // A first sync, so that the next one reports the new device as a device-list change.
    sync(&existing).await;

    // QR sign-in through Synapse's MSC4108 rendezvous, approved on mxqr's consent page. The
    // existing device's QR code names Synapse by its URL, so the new device's client is built
    // from the code as Element X builds it.
    let new = sdk_new_device_scans_existing(&existing, &mxqr.base).await;
    assert_eq!(new.homeserver(), synapse.url);
    assert_eq!(new.user_id(), existing.user_id());
    assert_sdk_device_verified(&new).await;
    eprintln!("new device signed in by QR after {:?}", started.elapsed());

    // The existing device learns of the new one, trusts it (cross-signed), and sends.
    sync(&existing).await;
    let new_device = tokio::time::timeout(
        WAIT,
        existing
            .encryption()
            .get_device(new.user_id().unwrap(), new.device_id().unwrap()),
    )
    .await
    .expect("device looked up in time")
    .unwrap()
    .expect("the existing device knows the new one after a sync");
    assert!(new_device.is_verified(), "{new_device:?}");
    const AFTER: &str = "sent after the new device signed in by QR";
    let after = send_text(&room, AFTER).await;

    // The new device: the room is joined, and the message decrypts with the room key the
    // existing device sent it (to-device, Olm), from a device it verified.
    sync(&new).await;
    let new_room = new
        .get_room(room.room_id())
        .expect("the new device's sync has the room");
    assert_eq!(new_room.state(), RoomState::Joined);
    let (event, info) = decrypted(&new_room, &after)
        .await
        .expect("the new device decrypts the message sent after it signed in");
    assert_text_from(&event, &info, AFTER, &existing);
    assert_eq!(info.verification_state, VerificationState::Verified);

    // The first message used the same session before it was shared, so the shared copy
    // (which starts at the next message) cannot decrypt it; the key backup, whose key came
    // with the QR sign-in's secrets, can.
    assert!(
        decrypted(&new_room, &before).await.is_none(),
        "decrypted without the backup"
    );
    tokio::time::timeout(
        WAIT,
        new.encryption()
            .backups()
            .download_room_keys_for_room(room.room_id()),
    )
    .await
    .expect("backup downloaded in time")
    .expect("the new device reads the key backup");
    let (event, info) = decrypted(&new_room, &before)
        .await
        .expect("the new device decrypts the earlier message from the backup");
    assert_text_from(&event, &info, BEFORE, &existing);

    // The rendezvous was Synapse's: mxqr saw none of it.
    let requests = mxqr.requests();
    assert!(
        requests.iter().all(|r| !r.route.contains("rendezvous")),
        "{requests:?}"
    );
    mxqr.assert_no_server_errors();
    mxqr.print_requests("matrix-sdk against Synapse with mxqr as its auth service");
    eprintln!("whole test: {:?}", started.elapsed());
}

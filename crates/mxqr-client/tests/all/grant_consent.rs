//! The existing device's driver opens only consent pages of its own homeserver's OAuth server:
//! a hostile new device that names another page gets `m.login.failure`, and the page never
//! reaches the [`Ui`]. And it waits for the new device to appear only as long as its machine
//! says.
//!
//! The rendezvous runs on the real `mxqr-server`; the existing device's homeserver is a small
//! fake that serves `auth_metadata` and answers the device lookup with 404, so the old code
//! would have gone on to open the page.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as Clock};

use mxqr_client::ClientError;
use mxqr_client::driver::{DriverError, ExistingSession, Ui, UiEvent, grant_scan};
use mxqr_client::rendezvous::{Rendezvous, RendezvousSupport};
use mxqr_proto::Generation;
use mxqr_proto::machine::{
    Action, DeviceAuthorization, Event, Failure, Instant, NewDevice, TokenAnswer,
};
use mxqr_proto::messages::{CrossSigningSecrets, DeviceId, FailureReason, Secret, SecretsMessage};
use mxqr_proto::qr::{Msc4388Prefix, QrCode};
use mxqr_testkit::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use url::Url;

/// Where the existing device's homeserver sends people to approve devices.
const DEVICE_ENDPOINT: &str = "https://account.example.org/oauth2/device";

/// A rendezvous server on loopback.
async fn rendezvous_server() -> Url {
    TestServer::start().await.detach()
}

/// The existing device's homeserver: OAuth metadata naming [`DEVICE_ENDPOINT`], and 404 for
/// every device (the new device's ID is free, and it never appears). Counts the device
/// look-ups.
async fn fake_homeserver() -> (Url, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let lookups = Arc::new(AtomicUsize::new(0));
    let counter = lookups.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 8192];
                let n = stream.read(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]);
                let path = head.split(' ').nth(1).unwrap_or_default();
                let (status, body) = if path.ends_with("/auth_metadata") {
                    let metadata = serde_json::json!({
                        "issuer": "https://account.example.org/",
                        "authorization_endpoint": "https://account.example.org/authorize",
                        "token_endpoint": "https://account.example.org/oauth2/token",
                        "device_authorization_endpoint": DEVICE_ENDPOINT,
                        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:device_code"],
                    });
                    ("200 OK", metadata.to_string())
                } else {
                    if path.contains("/devices/") {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    (
                        "404 Not Found",
                        r#"{"errcode":"M_NOT_FOUND","error":"no such device"}"#.to_owned(),
                    )
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, lookups)
}

/// The existing device's screen: records everything, and passes the check code it shows to
/// the new device.
struct RecordingUi {
    seen: Arc<Mutex<Vec<UiEvent>>>,
    check_code: mpsc::UnboundedSender<u8>,
}

impl Ui for RecordingUi {
    fn show(&mut self, event: UiEvent) {
        if let UiEvent::ShowCheckCode(code) = &event {
            let _ = self.check_code.send(code.digits());
        }
        self.seen.lock().unwrap().push(event);
    }

    async fn ask_check_code(&mut self) -> Option<u8> {
        None
    }
}

/// A new device that names `page` as its consent page: the state machine, driven by hand
/// over the rendezvous, with the token endpoint answering `token` at once. Returns how it
/// ended.
async fn hostile_new_device(
    mut rendezvous: Rendezvous,
    mut machine: NewDevice,
    initial: Vec<Action>,
    mut check_code: mpsc::UnboundedReceiver<u8>,
    page: &str,
    token: TokenAnswer,
) -> Option<Failure> {
    let mut queue: std::collections::VecDeque<Action> = initial.into();
    loop {
        while let Some(action) = queue.pop_front() {
            let events = match action {
                Action::Send {
                    payload,
                    sequence_token,
                } => match rendezvous.send_replacing(&sequence_token, &payload).await {
                    Ok(token) => vec![Event::PayloadSent {
                        sequence_token: token,
                    }],
                    Err(_) => vec![Event::TransportFailed],
                },
                Action::AskCheckCode => vec![Event::CheckCodeEntered(
                    check_code
                        .recv()
                        .await
                        .expect("the existing device shows its code"),
                )],
                Action::StartDeviceAuthorization { .. } => {
                    vec![Event::DeviceAuthorizationStarted(DeviceAuthorization {
                        verification_uri: page.to_owned(),
                        verification_uri_complete: Some(page.to_owned()),
                        user_code: "ABCD-1234".into(),
                        expires_in: Duration::from_secs(600),
                        interval: None,
                    })]
                }
                Action::PollToken => vec![Event::TokenPolled(token)],
                Action::DeleteRendezvous => {
                    rendezvous.delete_session().await;
                    vec![]
                }
                Action::Done => return None,
                Action::Failed { failure, .. } => return Some(failure),
                _ => vec![],
            };
            for event in events {
                queue.extend(machine.handle(Instant::now(), event, &mut rand::rng()));
            }
        }
        let token = machine.sequence_token().expect("waiting").to_owned();
        let event = match rendezvous
            .receive_after(&token, Duration::from_secs(5))
            .await
        {
            Ok((data, sequence_token)) => Event::PayloadReceived {
                data,
                sequence_token,
            },
            Err(ClientError::Timeout) => continue,
            Err(_) => Event::TransportFailed,
        };
        queue.extend(machine.handle(Instant::now(), event, &mut rand::rng()));
    }
}

fn secrets() -> SecretsMessage {
    SecretsMessage {
        cross_signing: CrossSigningSecrets {
            master_key: Secret::new("bWFzdGVyLWtleS1zZWVkLW9mLTMyLWJ5dGVzLWxvbmc"),
            self_signing_key: Secret::new("c2VsZi1zaWduaW5nLWtleS1zZWVkLTMyLWJ5dGVzIQ"),
            user_signing_key: Secret::new("dXNlci1zaWduaW5nLWtleS1zZWVkLTMyLWJ5dGVzIQ"),
        },
        backup: None,
    }
}

/// One sign-in attempt: the new device shows its code, the existing device scans it.
/// Returns what the existing device's screen showed, how each side ended.
async fn attempt(
    rendezvous_base: &Url,
    homeserver: &Url,
    generation: Generation,
    page: &str,
    token: TokenAnswer,
) -> (Vec<UiEvent>, Result<(), DriverError>, Option<Failure>) {
    let http = reqwest::Client::new();
    let support = RendezvousSupport::discover(&http, rendezvous_base)
        .await
        .unwrap();
    let rendezvous = match generation {
        Generation::Msc4388 => Rendezvous::create_msc4388(
            http.clone(),
            rendezvous_base,
            Msc4388Prefix::Stable,
            &support,
            None,
        )
        .await
        .unwrap(),
        Generation::Msc4108v2024 => {
            Rendezvous::create_msc4108(http.clone(), rendezvous_base, &support)
                .await
                .unwrap()
        }
    };
    let device_id = DeviceId::new("HOSTILE").unwrap();
    let (machine, initial) =
        NewDevice::show_qr(rendezvous.created(), device_id, &mut rand::rng()).unwrap();
    let qr: QrCode = match initial.first() {
        Some(Action::ShowQrCode(qr)) => qr.clone(),
        other => panic!("the new device shows a code first, not {other:?}"),
    };
    let (code_tx, code_rx) = mpsc::unbounded_channel();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut ui = RecordingUi {
        seen: seen.clone(),
        check_code: code_tx,
    };
    let session = ExistingSession {
        homeserver: homeserver.clone(),
        access_token: "token".into(),
        secrets: secrets(),
        refresh: None,
    };
    let page = page.to_owned();
    let new_device = tokio::spawn(async move {
        hostile_new_device(
            rendezvous,
            machine,
            initial[1..].to_vec(),
            code_rx,
            &page,
            token,
        )
        .await
    });
    let existing = tokio::time::timeout(
        Duration::from_secs(60),
        grant_scan(http, &session, &qr, &mut ui),
    )
    .await
    .expect("the existing device ends");
    let new_ending = tokio::time::timeout(Duration::from_secs(60), new_device)
        .await
        .expect("the new device ends")
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    (seen, existing.map(|_| ()), new_ending)
}

fn opened(seen: &[UiEvent]) -> Vec<&str> {
    seen.iter()
        .filter_map(|event| match event {
            UiEvent::OpenVerificationUri(uri) => Some(uri.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_consent_page_off_the_account_origin_never_reaches_the_ui() {
    let rendezvous_base = rendezvous_server().await;
    let (homeserver, _) = fake_homeserver().await;
    let hostile = [
        "https://account.example.org.evil.test/link?code=ABCD-1234",
        "https://evil.test/link",
        "javascript:alert(document.cookie)",
        "file:///etc/passwd",
        "http://account.example.org/link?code=ABCD-1234",
        "https://account.example.org/link\u{1b}]8;;https://evil.test\u{7}",
    ];
    for (i, page) in hostile.into_iter().enumerate() {
        let generation = if i % 2 == 0 {
            Generation::Msc4388
        } else {
            Generation::Msc4108v2024
        };
        let (seen, existing, new_ending) =
            // Consent was asked for: refuse, to end the honest case too.
            attempt(&rendezvous_base, &homeserver, generation, page, TokenAnswer::Denied).await;
        assert_eq!(opened(&seen), Vec::<&str>::new(), "{page:?}");
        match existing {
            Err(DriverError::Failed {
                failure, told_peer, ..
            }) => {
                assert!(told_peer, "{page:?}");
                assert_eq!(
                    failure.reason(),
                    Some(&FailureReason::UnsupportedProtocol),
                    "{page:?}: {failure:?}"
                );
            }
            other => panic!("{page:?}: the existing device must refuse, got {other:?}"),
        }
        assert_eq!(
            new_ending,
            Some(Failure::PeerFailed(FailureReason::UnsupportedProtocol)),
            "{page:?}"
        );
    }
}

/// The control: a page on the account's own origin is opened (and refused there).
#[tokio::test]
async fn a_consent_page_of_the_account_origin_is_opened() {
    let rendezvous_base = rendezvous_server().await;
    let (homeserver, _) = fake_homeserver().await;
    let page = "https://account.example.org/link?code=ABCD-1234";
    for generation in [Generation::Msc4388, Generation::Msc4108v2024] {
        let (seen, existing, new_ending) =
            // Consent was asked for: refuse, to end the honest case too.
            attempt(&rendezvous_base, &homeserver, generation, page, TokenAnswer::Denied).await;
        assert_eq!(opened(&seen), vec![page], "{generation:?}");
        assert!(
            matches!(
                existing,
                Err(DriverError::Failed {
                    failure: Failure::PeerDeclined,
                    ..
                })
            ),
            "{existing:?}"
        );
        assert_eq!(new_ending, Some(Failure::Declined));
    }
}

/// The new device says it signed in but never appears: the driver looks it up at the
/// machine's pace (every 500 ms) and gives up when the machine's 10 s are over.
#[tokio::test]
async fn a_new_device_that_never_appears_is_given_up_on_at_the_machines_deadline() {
    let rendezvous_base = rendezvous_server().await;
    let (homeserver, lookups) = fake_homeserver().await;
    let page = "https://account.example.org/link?code=ABCD-1234";
    let started = Clock::now();
    let (_, existing, new_ending) = attempt(
        &rendezvous_base,
        &homeserver,
        Generation::Msc4388,
        page,
        TokenAnswer::Granted,
    )
    .await;
    let took = started.elapsed();
    match existing {
        Err(DriverError::Failed {
            failure: Failure::Local(FailureReason::DeviceNotFound),
            told_peer: true,
            ..
        }) => {}
        other => panic!("the existing device must give up, got {other:?}"),
    }
    assert_eq!(
        new_ending,
        Some(Failure::PeerFailed(FailureReason::DeviceNotFound))
    );
    assert!(took >= Duration::from_secs(10), "{took:?}");
    // One look-up before consent, then one about every 500 ms for 10 s.
    let lookups = lookups.load(Ordering::Relaxed);
    assert!((12..=21).contains(&lookups), "{lookups} look-ups");
}

//! The client's rendezvous transports against the real `mxqr-server` over HTTP on loopback.

use std::time::Duration;

use mxqr_client::ClientError;
use mxqr_client::rendezvous::{Rendezvous, RendezvousSupport};
use mxqr_proto::qr::Msc4388Prefix;
use mxqr_testkit::TestServer;
use mxqr_testkit::rendezvous::{limits, test_config};
use url::Url;

async fn server(ttl: Duration) -> Url {
    let mut session_limits = limits(ttl);
    session_limits.max_sessions = 1000;
    TestServer::with(test_config(), session_limits)
        .await
        .detach()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Stable,
    Unstable,
    Msc4108,
}

const KINDS: [Kind; 3] = [Kind::Stable, Kind::Unstable, Kind::Msc4108];

async fn create(
    http: &reqwest::Client,
    base: &Url,
    kind: Kind,
    support: &RendezvousSupport,
) -> Rendezvous {
    match kind {
        Kind::Stable => {
            Rendezvous::create_msc4388(http.clone(), base, Msc4388Prefix::Stable, support, None)
                .await
        }
        Kind::Unstable => {
            Rendezvous::create_msc4388(http.clone(), base, Msc4388Prefix::Unstable, support, None)
                .await
        }
        Kind::Msc4108 => Rendezvous::create_msc4108(http.clone(), base, support).await,
    }
    .unwrap()
}

async fn pair(base: &Url, kind: Kind, long_poll: bool) -> (Rendezvous, Rendezvous) {
    let http = reqwest::Client::new();
    let mut support = RendezvousSupport::discover(&http, base).await.unwrap();
    assert!(
        support.msc4388 && support.msc4108 && support.long_poll,
        "{support:?}"
    );
    support.long_poll = long_poll;
    let a = create(&http, base, kind, &support).await;
    let qr = a.qr_rendezvous(None);
    let b = Rendezvous::join(http, &qr, long_poll).await.unwrap();
    (a, b)
}

#[tokio::test]
async fn conversation_over_every_transport_with_and_without_long_poll() {
    let base = server(Duration::from_secs(60)).await;
    for kind in KINDS {
        for long_poll in [true, false] {
            let (mut a, mut b) = pair(&base, kind, long_poll).await;
            for round in 0..3 {
                let msg = format!("b to a, round {round}");
                let sealed_for = b.binding();
                assert_eq!(
                    a.binding(),
                    sealed_for,
                    "{kind:?}: both sides bind the next payload alike"
                );
                b.send(&msg).await.unwrap();
                assert_eq!(a.receive(Duration::from_secs(5)).await.unwrap(), msg);

                let reply = format!("a to b, round {round}");
                assert_eq!(a.binding(), b.binding());
                a.send(&reply).await.unwrap();
                assert_eq!(b.receive(Duration::from_secs(5)).await.unwrap(), reply);
            }
            a.delete().await;
            assert!(
                matches!(
                    b.receive(Duration::from_secs(2)).await,
                    Err(ClientError::Gone)
                ),
                "{kind:?}"
            );
        }
    }
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_the_peer_writes() {
    let base = server(Duration::from_secs(60)).await;
    for kind in KINDS {
        let (mut a, mut b) = pair(&base, kind, true).await;
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            b.send("late hello").await.unwrap();
            b
        });
        let started = std::time::Instant::now();
        assert_eq!(
            a.receive(Duration::from_secs(10)).await.unwrap(),
            "late hello"
        );
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(3),
            "{kind:?}: woke after {waited:?}"
        );
        writer.await.unwrap();
    }
}

#[tokio::test]
async fn waiting_too_long_is_a_timeout_not_a_hang() {
    let base = server(Duration::from_secs(60)).await;
    for kind in KINDS {
        for long_poll in [true, false] {
            let (mut a, _b) = pair(&base, kind, long_poll).await;
            let started = std::time::Instant::now();
            let err = a.receive(Duration::from_millis(600)).await.unwrap_err();
            assert!(matches!(err, ClientError::Timeout), "{kind:?}: {err:?}");
            assert!(started.elapsed() < Duration::from_secs(3));
        }
    }
}

#[tokio::test]
async fn concurrent_writes_are_resolved_by_rereading() {
    let base = server(Duration::from_secs(60)).await;
    for kind in KINDS {
        let (mut a, mut b) = pair(&base, kind, true).await;
        // Both write against the same version: one wins, the other learns the winner's payload.
        b.send("from b").await.unwrap();
        let err = a.send("from a").await.unwrap_err();
        assert!(
            matches!(err, ClientError::ConcurrentWrite),
            "{kind:?}: {err:?}"
        );
        assert_eq!(a.receive(Duration::from_secs(1)).await.unwrap(), "from b");
        // The conversation goes on from the winner's version.
        a.send("a answers").await.unwrap();
        assert_eq!(
            b.receive(Duration::from_secs(5)).await.unwrap(),
            "a answers"
        );
    }
}

#[tokio::test]
async fn expiry_is_reported() {
    let base = server(Duration::from_millis(700)).await;
    for kind in KINDS {
        let (mut a, _b) = pair(&base, kind, false).await;
        let err = a.receive(Duration::from_secs(10)).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Expired | ClientError::Gone),
            "{kind:?}: {err:?}"
        );
        assert!(matches!(
            a.send("too late").await,
            Err(ClientError::Expired | ClientError::Gone)
        ));
    }
}

#[tokio::test]
async fn qr_carries_the_base_url_without_trailing_slash() {
    let base = server(Duration::from_secs(60)).await;
    let (a, _) = pair(&base, Kind::Unstable, true).await;
    match a.qr_rendezvous(None) {
        mxqr_proto::qr::QrRendezvous::Msc4388 {
            base_url,
            prefix,
            rendezvous_id,
        } => {
            assert!(!base_url.ends_with('/'));
            assert_eq!(prefix, Msc4388Prefix::Unstable);
            assert!(!rendezvous_id.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
}

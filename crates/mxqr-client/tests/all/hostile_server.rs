//! A malicious server, reachable by showing someone a QR code that names it: its answers must
//! neither crash the client nor exhaust its memory, and the addresses it names must follow
//! the QR decoder's rule (https, plain http only on loopback).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mxqr_client::ClientError;
use mxqr_client::oauth::{self, AuthMetadata, DeviceAuthorization, DeviceGrantOutcome};
use mxqr_client::rendezvous::Rendezvous;
use mxqr_proto::qr::{Msc4388Prefix, QrRendezvous};
use serde_json::{Value, json};
use url::Url;

const MIB: usize = 1024 * 1024;
/// What the server offers to send when it floods.
const FLOOD: usize = 100 * MIB;
/// What the server may have pushed before a client that stopped reading at the cap closed
/// the connection: the cap plus the kernel's socket buffers, far below [`FLOOD`].
const PUSHED_AT_MOST: usize = 32 * MIB;

/// Serves `app` on loopback from its own thread and runtime, apart from the client's.
fn serve(app: Router) -> Url {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
    });
    Url::parse(&format!("http://{addr}/")).unwrap()
}

/// A body of `total` bytes of `fill` in 64 KiB chunks, produced only as the client reads
/// (no length announced); `pushed` counts what was produced.
fn flood(fill: u8, total: usize, pushed: Arc<AtomicUsize>) -> Body {
    let chunk = Bytes::from(vec![fill; 64 * 1024]);
    Body::from_stream(futures_util::stream::unfold(0, move |sent| {
        let (chunk, pushed) = (chunk.clone(), pushed.clone());
        async move {
            (sent < total).then(|| {
                pushed.fetch_add(chunk.len(), Ordering::Relaxed);
                (Ok::<_, Infallible>(chunk), sent + 64 * 1024)
            })
        }
    }))
}

/// An answer announcing `Content-Length: 100 MiB` that then sends one chunk and stalls: only
/// a client that believes the announcement before reading returns at once.
fn announced_flood() -> Response {
    let first = futures_util::stream::once(async { Ok::<_, Infallible>(Bytes::from("{")) });
    let body = Body::from_stream(futures_util::StreamExt::chain(
        first,
        futures_util::stream::pending(),
    ));
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_LENGTH,
        HeaderValue::from_str(&FLOOD.to_string()).unwrap(),
    );
    response
}

fn too_large(result: Result<impl std::fmt::Debug, ClientError>, limit: usize) {
    match result {
        Err(ClientError::BodyTooLarge { limit: l }) if l == limit => {}
        other => panic!("expected the {limit}-byte cap to stop the answer, got {other:?}"),
    }
}

/// Bounds a call that a capped client ends at once but an uncapped one would not.
async fn promptly<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the call should end as soon as the cap is passed")
}

#[tokio::test]
async fn an_endless_metadata_answer_is_cut_at_one_mib() {
    let pushed = Arc::new(AtomicUsize::new(0));
    let p = pushed.clone();
    let base = serve(Router::new().route(
        "/_matrix/client/v1/auth_metadata",
        get(move || async move { flood(b' ', FLOOD, p) }),
    ));
    let http = reqwest::Client::new();
    too_large(promptly(AuthMetadata::discover(&http, &base)).await, MIB);
    // Give the server a moment to notice the closed connection, then check it was not
    // drained: the client stopped at the cap instead of reading 100 MiB.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pushed = pushed.load(Ordering::Relaxed);
    assert!(pushed < PUSHED_AT_MOST, "the client read {pushed} bytes");
}

#[tokio::test]
async fn a_content_length_above_the_cap_is_refused_before_reading() {
    // Through the key set-up's request helper (e2ee), which every `/whoami` uses.
    let base = serve(Router::new().route(
        "/_matrix/client/v3/account/whoami",
        get(|| async { announced_flood() }),
    ));
    let http = reqwest::Client::new();
    too_large(
        promptly(mxqr_client::e2ee::whoami(&http, &base, "token")).await,
        MIB,
    );
}

#[tokio::test]
async fn an_endless_error_answer_is_cut_at_the_cap() {
    let base = serve(Router::new().route(
        "/_matrix/client/versions",
        get(|| async {
            let pushed = Arc::new(AtomicUsize::new(0));
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                flood(b' ', FLOOD, pushed),
            )
        }),
    ));
    let http = reqwest::Client::new();
    too_large(
        promptly(mxqr_client::rendezvous::RendezvousSupport::discover(
            &http, &base,
        ))
        .await,
        MIB,
    );
}

#[tokio::test]
async fn rendezvous_answers_are_capped_at_64_kib() {
    // A well-formed payload just past the rendezvous cap, far below the general one.
    let data = "A".repeat(64 * 1024 + 1);
    let state = json!({ "data": data, "sequence_token": "1", "expires_in_ms": 60_000 });
    let base = serve(
        Router::new()
            .route(
                "/_matrix/client/v1/rendezvous/abc",
                get(move || {
                    let state = state.clone();
                    async move { axum::Json(state) }
                }),
            )
            .route(
                "/msc4108/session",
                get(move || {
                    let data = data.clone();
                    async move { ([(header::ETAG, "\"1\"")], data) }
                }),
            )
            .route(
                "/msc4108/exact",
                get(|| async { ([(header::ETAG, "\"1\"")], "A".repeat(64 * 1024)) }),
            ),
    );
    let http = reqwest::Client::new();
    let msc4388 = QrRendezvous::Msc4388 {
        prefix: Msc4388Prefix::Stable,
        rendezvous_id: "abc".into(),
        base_url: base.to_string(),
    };
    too_large(
        promptly(Rendezvous::join(http.clone(), &msc4388, false)).await,
        64 * 1024,
    );
    let msc4108 = QrRendezvous::Msc4108 {
        rendezvous_url: base.join("msc4108/session").unwrap().to_string(),
        homeserver: None,
    };
    too_large(
        promptly(Rendezvous::join(http.clone(), &msc4108, false)).await,
        64 * 1024,
    );
    // Exactly the cap is still a valid answer.
    let exact = QrRendezvous::Msc4108 {
        rendezvous_url: base.join("msc4108/exact").unwrap().to_string(),
        homeserver: None,
    };
    promptly(Rendezvous::join(http, &exact, false))
        .await
        .expect("an answer of exactly the cap is read");
}

#[tokio::test]
async fn an_endless_rendezvous_answer_is_cut_at_the_cap() {
    let pushed = Arc::new(AtomicUsize::new(0));
    let p = pushed.clone();
    let base = serve(Router::new().route(
        "/msc4108/session",
        get(move || async move { ([(header::ETAG, "\"1\"")], flood(b'A', FLOOD, p)) }),
    ));
    let msc4108 = QrRendezvous::Msc4108 {
        rendezvous_url: base.join("msc4108/session").unwrap().to_string(),
        homeserver: None,
    };
    too_large(
        promptly(Rendezvous::join(reqwest::Client::new(), &msc4108, false)).await,
        64 * 1024,
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pushed = pushed.load(Ordering::Relaxed);
    assert!(pushed < PUSHED_AT_MOST, "the client read {pushed} bytes");
}

/// Auth metadata on `base` whose endpoints all live on `base` (loopback, so allowed).
fn metadata_on(base: &Url) -> Value {
    let at = |path: &str| base.join(path).unwrap().to_string();
    json!({
        "issuer": base.to_string(),
        "authorization_endpoint": at("authorize"),
        "token_endpoint": at("token"),
        "registration_endpoint": at("register"),
        "revocation_endpoint": at("revoke"),
        "device_authorization_endpoint": at("device"),
        "account_management_uri": at("account"),
        "grant_types_supported": [oauth::DEVICE_CODE_GRANT],
    })
}

/// A server whose auth metadata is `metadata(base)`, serving `routes` too.
fn metadata_server_with(
    routes: Router,
    metadata: impl Fn(&Url) -> Value + Send + Sync + 'static,
) -> Url {
    let slot: Arc<std::sync::OnceLock<Value>> = Arc::default();
    let s = slot.clone();
    let base = serve(routes.route(
        "/_matrix/client/v1/auth_metadata",
        get(move || {
            let s = s.clone();
            async move { axum::Json(s.get().cloned().unwrap_or_default()) }
        }),
    ));
    slot.set(metadata(&base)).unwrap();
    base
}

fn metadata_server(metadata: impl Fn(&Url) -> Value + Send + Sync + 'static) -> Url {
    metadata_server_with(Router::new(), metadata)
}

#[tokio::test]
async fn metadata_endpoints_on_plain_http_are_refused() {
    let http = reqwest::Client::new();
    for field in [
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "registration_endpoint",
        "revocation_endpoint",
        "device_authorization_endpoint",
        "account_management_uri",
    ] {
        for bad in [
            "http://account.example.org/x",
            "http://192.168.1.1/x",
            "ftp://127.0.0.1/x",
        ] {
            let base = metadata_server(move |base| {
                let mut m = metadata_on(base);
                m[field] = bad.into();
                m
            });
            match AuthMetadata::discover(&http, &base).await {
                Err(ClientError::InsecureUrl { url, .. }) => assert_eq!(url.as_str(), bad),
                other => panic!("{field} = {bad}: expected a refusal, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn metadata_on_loopback_and_https_is_accepted() {
    let http = reqwest::Client::new();
    for host in ["127.0.0.1", "localhost", "[::1]", "127.0.0.2"] {
        let base = metadata_server(move |base| {
            let mut m = metadata_on(base);
            m["account_management_uri"] = format!("http://{host}:8080/account").into();
            m["token_endpoint"] = "https://auth.example.org/token".into();
            m
        });
        let metadata = AuthMetadata::discover(&http, &base)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(
            metadata.token_endpoint.as_str(),
            "https://auth.example.org/token"
        );
    }
}

#[tokio::test]
async fn a_plain_http_homeserver_is_refused() {
    // What the other device names in `m.login.protocols` reaches the new device's discovery
    // as it is.
    let http = reqwest::Client::new();
    for bad in ["http://matrix.example.org", "http://10.0.0.1:8008/"] {
        match mxqr_client::discovery::homeserver_base_url(&http, bad).await {
            Err(ClientError::InsecureUrl { .. }) => {}
            other => panic!("{bad}: expected a refusal, got {other:?}"),
        }
    }
    for ok in [
        "http://127.0.0.1:8008",
        "http://localhost:8008/",
        "http://[::1]:8008",
        "https://matrix.example.org",
    ] {
        assert!(
            mxqr_client::discovery::homeserver_base_url(&http, ok)
                .await
                .is_ok(),
            "{ok}"
        );
    }
}

/// A server granting a device code with `expires_in` and `interval` as given, whose token
/// endpoint always answers the OAuth error `poll_answer`; counts the polls.
fn grant_server(
    expires_in: u64,
    interval: u64,
    poll_answer: &'static str,
) -> (Url, Arc<AtomicUsize>) {
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let grant = json!({
        "device_code": "dc",
        "user_code": "UC",
        "verification_uri": "https://auth.example.org/link",
        "expires_in": expires_in,
        "interval": interval,
    });
    let routes = Router::new()
        .route(
            "/device",
            post(move || {
                let grant = grant.clone();
                async move { axum::Json(grant) }
            }),
        )
        .route(
            "/token",
            post(move || {
                p.fetch_add(1, Ordering::Relaxed);
                async move {
                    (
                        StatusCode::BAD_REQUEST,
                        axum::Json(json!({ "error": poll_answer })),
                    )
                }
            }),
        );
    (metadata_server_with(routes, metadata_on), polls)
}

async fn poll(
    expires_in: u64,
    interval: u64,
    poll_answer: &'static str,
) -> (DeviceAuthorization, DeviceGrantOutcome, usize) {
    let (base, polls) = grant_server(expires_in, interval, poll_answer);
    let http = reqwest::Client::new();
    let metadata = AuthMetadata::discover(&http, &base).await.unwrap();
    let grant = oauth::start_device_authorization(&http, &metadata, "client", "scope")
        .await
        .unwrap();
    let outcome = promptly(oauth::wait_for_device_token(
        &http,
        &metadata,
        "client",
        &grant,
        tokio::time::Instant::now(),
    ))
    .await
    .unwrap();
    (grant, outcome, polls.load(Ordering::Relaxed))
}

#[tokio::test]
async fn huge_expiry_and_interval_do_not_panic_the_poller() {
    // The largest values JSON can carry: held to an hour and a minute.
    let (grant, outcome, polls) = poll(u64::MAX, u64::MAX, "access_denied").await;
    assert_eq!(grant.expires_in, 60 * 60);
    assert_eq!(grant.interval, 60);
    assert!(matches!(outcome, DeviceGrantOutcome::Denied), "{outcome:?}");
    assert_eq!(polls, 1);

    // A pending grant with 30 s left and an interval held to a minute: the next poll would
    // come too late, so the grant ends as expired at once (rather than the poller adding the
    // server's interval to the clock and overflowing).
    let (grant, outcome, polls) = poll(30, u64::MAX, "authorization_pending").await;
    assert_eq!(grant.interval, 60);
    assert!(
        matches!(outcome, DeviceGrantOutcome::Expired),
        "{outcome:?}"
    );
    assert_eq!(polls, 1);

    // A grant built by hand, not through the parser, is bounded by the poller itself.
    let (base, _) = grant_server(0, 0, "access_denied");
    let http = reqwest::Client::new();
    let metadata = AuthMetadata::discover(&http, &base).await.unwrap();
    let raw: DeviceAuthorization = serde_json::from_value(json!({
        "device_code": "dc",
        "user_code": "UC",
        "verification_uri": "https://auth.example.org/link",
        "expires_in": u64::MAX,
        "interval": u64::MAX,
    }))
    .unwrap();
    let outcome = promptly(oauth::wait_for_device_token(
        &http,
        &metadata,
        "client",
        &raw,
        tokio::time::Instant::now(),
    ))
    .await
    .unwrap();
    assert!(matches!(outcome, DeviceGrantOutcome::Denied), "{outcome:?}");
}

#[tokio::test]
async fn a_huge_rendezvous_lifetime_is_held_to_an_hour() {
    let far = "Fri, 31 Dec 9999 23:59:59 GMT";
    let base = serve(
        Router::new()
            .route(
                "/_matrix/client/v1/rendezvous/abc",
                get(|| async {
                    axum::Json(json!({
                        "data": "",
                        "sequence_token": "1",
                        "expires_in_ms": u64::MAX,
                    }))
                }),
            )
            .route(
                "/msc4108/session",
                get(move || async move {
                    (
                        [
                            (header::ETAG, "\"1\""),
                            (header::EXPIRES, far),
                            (header::DATE, "Thu, 01 Jan 1970 00:00:00 GMT"),
                        ],
                        "",
                    )
                }),
            ),
    );
    let http = reqwest::Client::new();
    for qr in [
        QrRendezvous::Msc4388 {
            prefix: Msc4388Prefix::Stable,
            rendezvous_id: "abc".into(),
            base_url: base.to_string(),
        },
        QrRendezvous::Msc4108 {
            rendezvous_url: base.join("msc4108/session").unwrap().to_string(),
            homeserver: None,
        },
    ] {
        let rv = promptly(Rendezvous::join(http.clone(), &qr, false))
            .await
            .unwrap();
        let remaining = rv.remaining();
        assert!(
            remaining <= mxqr_client::rendezvous::MAX_SESSION_LIFETIME
                && remaining > Duration::from_secs(60 * 59),
            "{qr:?}: {remaining:?}"
        );
    }
}

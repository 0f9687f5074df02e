//! Synapse mode against a stand-in for Synapse's `/_synapse/mas/*` API: introspection as
//! Synapse calls it, and the provisioning outbox surviving a Synapse that is down at first
//! (jobs kept, retried with back-off, delivered in order once it is up), then a revocation
//! reaching Synapse before its response. The real Synapse runs in
//! `crates/mxqr/tests/all/synapse_delegated.rs`. Each scenario runs on both back ends.

use mxqr_testkit::Backend;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use mxqr_testkit::api::accounts::{Grant, OutboxJob, OutboxKind};
use mxqr_testkit::api::config::HomeserverMode;
use mxqr_testkit::api::oauth::{OAuthState, SystemClock, password};
use mxqr_testkit::api::synapse::{SynapseHooks, SynapseLink};
use mxqr_testkit::api::{AppState, Config};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const SECRET: &str = "test-shared-secret-0123456789abcdef";
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// What the stand-in Synapse received: endpoint, body, and whether the secret was right.
type Calls = Arc<Mutex<Vec<(String, Value, bool)>>>;

async fn fake_mas(
    State(calls): State<Calls>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {SECRET}"));
    calls.lock().unwrap().push((op, body.0, authorized));
    if authorized {
        (StatusCode::OK, axum::Json(json!({})))
    } else {
        (StatusCode::FORBIDDEN, axum::Json(json!({})))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    base: String,
    oauth: OAuthState,
    link: Arc<SynapseLink>,
    http: reqwest::Client,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start(backend: Backend, synapse_port: u16) -> Server {
    let dir = std::env::temp_dir().join(format!(
        "mxqr-synapse-mode-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config {
        listen: addr,
        data_dir: dir.clone(),
        public_url: Some(format!("http://{addr}/")),
        server_name: Some("example.test".into()),
        ..Config::default()
    };
    config.rate_limit.enabled = false;
    config.homeserver.mode = HomeserverMode::Synapse;
    config.homeserver.synapse_url = Some(format!("http://127.0.0.1:{synapse_port}"));
    config.homeserver.secret = Some(SECRET.into());
    config.validate().unwrap();
    if backend == Backend::Postgres {
        config.database.url = Some(mxqr_testkit::pg::fresh_database().await.0);
    }
    let db = mxqr_testkit::api::accounts::open(&config).await.unwrap();
    let link = Arc::new(SynapseLink::new(
        config.homeserver.synapse_url.as_deref().unwrap(),
        config.homeserver.load_secret().unwrap(),
    ));
    let hooks = Arc::new(SynapseHooks::new(link.clone(), db.clone()));
    let oauth = OAuthState::new(&config, db, hooks, Arc::new(SystemClock));
    let state = AppState::new(config)
        .with_oauth(oauth.clone())
        .with_synapse(link.clone());
    tokio::spawn(mxqr_testkit::api::serve(
        state,
        listener,
        std::future::pending::<()>(),
    ));
    Server {
        base: format!("http://{addr}/"),
        oauth,
        link,
        http: reqwest::Client::new(),
        dir,
    }
}

impl Server {
    async fn introspect(&self, secret: &str, token: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}oauth2/introspect", self.base))
            .bearer_auth(secret)
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// A device grant approved for alice, redeemed at the token endpoint (which provisions).
    async fn sign_in(&self, device_id: &str, scope_ns: &str) -> Value {
        let registered: Value = self
            .http
            .post(format!("{}oauth2/registration", self.base))
            .json(&json!({
                "client_name": "Test App",
                "client_uri": "https://app.example.com/",
                "application_type": "native",
                "redirect_uris": ["http://127.0.0.1/callback"],
                "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let client_id = registered["client_id"].as_str().unwrap().to_owned();
        let scope = format!("{scope_ns}:api:* {scope_ns}:device:{device_id}");
        let authorization: Value = self
            .http
            .post(format!("{}oauth2/device", self.base))
            .form(&[("client_id", client_id.as_str()), ("scope", &scope)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let user_code: String = authorization["user_code"]
            .as_str()
            .unwrap()
            .chars()
            .filter(char::is_ascii_alphabetic)
            .collect();
        assert!(
            self.oauth
                .db()
                .decide_device_grant(&user_code, "alice", true, self.oauth.now_ms())
                .await
                .unwrap()
        );
        let response = self
            .http
            .post(format!("{}oauth2/token", self.base))
            .form(&[
                ("grant_type", DEVICE_GRANT),
                (
                    "device_code",
                    authorization["device_code"].as_str().unwrap(),
                ),
                ("client_id", &client_id),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.json().await.unwrap()
    }
}

async fn introspection_and_an_outbox_that_outlives_a_synapse_outage(backend: Backend) {
    let synapse_port = free_port();
    let server = start(backend, synapse_port).await;
    let db = server.oauth.db().clone();
    let hash = password::hash("a long passphrase").unwrap();
    db.create_user("alice", Some(&hash), server.oauth.now_ms())
        .await
        .unwrap();

    // Synapse is down: the sign-in still completes (after the bounded wait) and the two
    // provisioning jobs stay queued.
    let t = Instant::now();
    let tokens = server
        .sign_in("DEVONE", "urn:matrix:org.matrix.msc2967.client")
        .await;
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    // The start-up reconciliation runs on its own task: on a loaded machine it lists alice
    // (created just after the start) and queues her `sync_devices` ahead of the sign-in's jobs.
    // That job is harmless and not what this test is about, so it is left out here and below.
    let queued: Vec<_> = db
        .outbox_head(10)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.job.kind != OutboxKind::SyncDevices)
        .collect();
    let kinds: Vec<OutboxKind> = queued.iter().map(|e| e.job.kind).collect();
    assert_eq!(kinds, [OutboxKind::ProvisionUser, OutboxKind::UpsertDevice]);
    let head = db.outbox_head(1).await.unwrap();
    assert!(head[0].attempts >= 1, "retried while down: {head:?}");

    // Introspection, as Synapse sends it.
    let (status, body) = server.introspect("wrong", &access).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let missing = server
        .http
        .post(format!("{}oauth2/introspect", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 401);
    let (status, body) = server.introspect(SECRET, &access).await;
    assert_eq!(status, 200);
    assert_eq!(body["active"], true);
    assert_eq!(body["username"], "alice");
    assert_eq!(body["sub"], "@alice:example.test");
    assert_eq!(body["device_id"], "DEVONE");
    assert_eq!(
        body["scope"],
        "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:DEVONE"
    );
    let expires_in = body["expires_in"].as_i64().unwrap();
    assert!((1..=300).contains(&expires_in), "{body}");
    for not_active in [refresh.as_str(), "mxqr_at_unknown", ""] {
        let (status, body) = server.introspect(SECRET, not_active).await;
        assert_eq!((status, body), (200, json!({ "active": false })));
    }
    // An expired token is inactive too.
    let minted = server.oauth.mint();
    let mut stored = minted.stored.clone();
    stored.access_expires_at = server.oauth.now_ms() - 1;
    let grant = Grant {
        localpart: "alice".into(),
        device_id: "DEVOLD".into(),
        client_id: None,
        scope: "urn:matrix:client:api:* urn:matrix:client:device:DEVOLD".into(),
    };
    db.issue_session(&grant, &stored, server.oauth.now_ms())
        .await
        .unwrap();
    let (_, body) = server.introspect(SECRET, &minted.access_token).await;
    assert_eq!(body, json!({ "active": false }));

    // Synapse comes up: the queued jobs arrive, in order, with the secret.
    let calls: Calls = Arc::default();
    let app = Router::new()
        .route("/_synapse/mas/{op}", post(fake_mas))
        .with_state(calls.clone());
    let listener = TcpListener::bind(("127.0.0.1", synapse_port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !db.outbox_head(1).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let provisioning = || -> Vec<_> {
        let seen = calls.lock().unwrap().clone();
        seen.into_iter()
            .filter(|(op, ..)| op != "sync_devices")
            .collect()
    };
    assert_eq!(
        provisioning(),
        [
            (
                "provision_user".to_owned(),
                json!({ "localpart": "alice", "locked": false }),
                true
            ),
            (
                "upsert_device".to_owned(),
                json!({ "localpart": "alice", "device_id": "DEVONE", "display_name": "Test App" }),
                true
            ),
        ]
    );

    // A session made outside the token endpoint (as `mxqr admin issue-token` does) is
    // provisioned at its first introspection, before Synapse gets the answer; once only.
    let minted = server.oauth.mint();
    let grant = Grant {
        localpart: "alice".into(),
        device_id: "DEVADMIN".into(),
        client_id: None,
        scope: "urn:matrix:client:api:* urn:matrix:client:device:DEVADMIN".into(),
    };
    db.issue_session(&grant, &minted.stored, server.oauth.now_ms())
        .await
        .unwrap();
    for _ in 0..2 {
        let (_, body) = server.introspect(SECRET, &minted.access_token).await;
        assert_eq!(body["device_id"], "DEVADMIN");
    }
    let seen = provisioning()[2..].to_vec();
    assert_eq!(
        seen,
        [
            (
                "provision_user".to_owned(),
                json!({ "localpart": "alice", "locked": false }),
                true
            ),
            (
                "upsert_device".to_owned(),
                json!({ "localpart": "alice", "device_id": "DEVADMIN" }),
                true
            ),
        ]
    );

    // A revocation reaches Synapse before its response: Synapse's cached "active" for the
    // token ends with the device.
    let revoked = server
        .http
        .post(format!("{}oauth2/revoke", server.base))
        .form(&[("token", refresh.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 200);
    let last = calls.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last,
        (
            "delete_device".to_owned(),
            json!({ "localpart": "alice", "device_id": "DEVONE" }),
            true
        )
    );
    let (_, body) = server.introspect(SECRET, &access).await;
    assert_eq!(body, json!({ "active": false }));

    // mxqr's own client-server API is off in this mode.
    let whoami = server
        .http
        .get(format!("{}_matrix/client/v3/account/whoami", server.base))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(whoami.status().as_u16(), 404);
}

/// [`fake_mas`], taking its time over `sync_devices` as a real Synapse does with many
/// devices.
async fn slow_sync_mas(
    state: State<Calls>,
    op: Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    if op.0 == "sync_devices" {
        tokio::time::sleep(SLOW_SYNC).await;
    }
    fake_mas(state, op, headers, body).await
}

const SLOW_SYNC: Duration = Duration::from_millis(30);

/// A stand-in Synapse on `port` recording the provisioning calls it gets.
async fn fake_synapse(port: u16) -> Calls {
    let calls: Calls = Arc::default();
    let app = Router::new()
        .route("/_synapse/mas/{op}", post(slow_sync_mas))
        .with_state(calls.clone());
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    calls
}

async fn display_names_and_device_list_reconciliation_reach_synapse(backend: Backend) {
    let synapse_port = free_port();
    let calls = fake_synapse(synapse_port).await;
    let server = start(backend, synapse_port).await;
    let db = server.oauth.db().clone();
    let link = server.link.clone();
    let hash = password::hash("a long passphrase").unwrap();
    for user in ["alice", "bob"] {
        db.create_user(user, Some(&hash), server.oauth.now_ms())
            .await
            .unwrap();
    }
    // alice: two sessions, one then signed out; bob: none.
    let mut ended = None;
    for device in ["DEVLIVE", "DEVENDED"] {
        let minted = server.oauth.mint();
        let grant = Grant {
            localpart: "alice".into(),
            device_id: device.into(),
            client_id: None,
            scope: format!("urn:matrix:client:api:* urn:matrix:client:device:{device}"),
        };
        db.issue_session(&grant, &minted.stored, server.oauth.now_ms())
            .await
            .unwrap();
        ended = Some(minted.refresh_token);
    }
    let revoked = server
        .http
        .post(format!("{}oauth2/revoke", server.base))
        .form(&[("token", ended.unwrap().as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 200);
    calls.lock().unwrap().clear();

    let name = |display_name: Option<&str>| OutboxJob {
        kind: OutboxKind::SetDisplayName,
        localpart: "alice".into(),
        device_id: None,
        display_name: display_name.map(str::to_owned),
    };
    let delivered = link
        .enqueue_and_wait(
            &db,
            &[name(Some("Alice")), name(None)],
            server.oauth.now_ms(),
        )
        .await
        .unwrap();
    assert!(delivered);
    assert_eq!(link.reconcile_all(&db).await.unwrap(), 2);
    let expected = [
        (
            "set_displayname".to_owned(),
            json!({ "localpart": "alice", "displayname": "Alice" }),
            true,
        ),
        (
            "unset_displayname".to_owned(),
            json!({ "localpart": "alice" }),
            true,
        ),
        (
            "sync_devices".to_owned(),
            json!({ "localpart": "alice", "devices": ["DEVLIVE"] }),
            true,
        ),
        (
            "sync_devices".to_owned(),
            json!({ "localpart": "bob", "devices": [] }),
            true,
        ),
    ];
    // The start-up reconciliation runs on its own task: on a loaded machine it lists the
    // users after they were created, and its `sync_devices` calls (the same as the ones asked
    // for here) can come before, between or after this test's calls. What this test asks for
    // must arrive in order; anything else may only be such a copy.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = calls.lock().unwrap().clone();
        let mut next = 0;
        let mut others = Vec::new();
        for call in &seen {
            if next < expected.len() && *call == expected[next] {
                next += 1;
            } else {
                others.push(call);
            }
        }
        assert!(
            others.iter().all(|c| expected[2..].contains(c)),
            "unexpected calls: {seen:?}"
        );
        if next == expected.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reconciliation not sent in order: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_sign_in_is_provisioned_during_a_long_reconciliation(backend: Backend) {
    const USERS: usize = 300;
    let synapse_port = free_port();
    let calls = fake_synapse(synapse_port).await;
    let server = start(backend, synapse_port).await;
    let db = server.oauth.db().clone();
    let now = server.oauth.now_ms();
    let hash = password::hash("a long passphrase").unwrap();
    db.create_user("alice", Some(&hash), now).await.unwrap();
    for i in 1..USERS {
        db.create_user(&format!("user{i:03}"), None, now)
            .await
            .unwrap();
    }
    // A pass over all users takes USERS x SLOW_SYNC (9 s), longer than a request waits
    // for its provisioning (DELIVERY_WAIT, 5 s).
    let link = server.link.clone();
    assert_eq!(link.reconcile_all(&db).await.unwrap(), USERS);
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "reconciliation not started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    server.sign_in("DEVNOW", "urn:matrix:client").await;
    // The device reached Synapse before the token went out, in the middle of the pass.
    let seen = calls.lock().unwrap().clone();
    let syncs = seen
        .iter()
        .filter(|(op, _, _)| op == "sync_devices")
        .count();
    assert!(
        seen.iter()
            .any(|(op, body, _)| op == "upsert_device" && body["device_id"] == "DEVNOW"),
        "provisioning waited behind the reconciliation ({syncs} of {USERS} users done)"
    );
    assert!(syncs < USERS, "the pass was over already: {syncs}");
}

/// Synapse's introspection is the use of an access token in this mode: once Synapse has
/// asked about the successor of a refresh token, a replay of that refresh token is theft
/// (RFC 9700 §4.14). The session ends, and the device deletion reaches Synapse through the
/// outbox before the answer.
async fn refresh_replay_after_introspection_deletes_the_device_in_synapse(backend: Backend) {
    let synapse_port = free_port();
    let calls = fake_synapse(synapse_port).await;
    let server = start(backend, synapse_port).await;
    let db = server.oauth.db().clone();
    let hash = password::hash("a long passphrase").unwrap();
    db.create_user("alice", Some(&hash), server.oauth.now_ms())
        .await
        .unwrap();
    let tokens = server.sign_in("DEVRT", "urn:matrix:client").await;
    let r0 = tokens["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |token: String| {
        let http = server.http.clone();
        let url = format!("{}oauth2/token", server.base);
        async move {
            let response = http
                .post(url)
                .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, rotated) = refresh(r0.clone()).await;
    assert_eq!(status, 200, "{rotated}");
    let a1 = rotated["access_token"].as_str().unwrap().to_owned();
    let (_, body) = server.introspect(SECRET, &a1).await;
    assert_eq!(body["active"], true);
    calls.lock().unwrap().clear();

    let (status, body) = refresh(r0).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (_, body) = server.introspect(SECRET, &a1).await;
    assert_eq!(body, json!({ "active": false }));
    assert!(db.device("alice", "DEVRT").await.unwrap().is_none());
    let seen = calls.lock().unwrap().clone();
    assert!(
        seen.contains(&(
            "delete_device".to_owned(),
            json!({ "localpart": "alice", "device_id": "DEVRT" }),
            true
        )),
        "{seen:?}"
    );
}

/// Wrong shared secrets are throttled per address: after 10 misses, introspection answers
/// 429 with `Retry-After`, even to the right secret (a blocked guesser learns nothing).
async fn wrong_shared_secrets_are_throttled(backend: Backend) {
    let server = start(backend, free_port()).await;
    let token = "mxqr_at_unknown";
    for attempt in 0..10 {
        let (status, body) = server
            .introspect(&format!("wrong-secret-{attempt}"), token)
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client"))
        );
    }
    let response = server
        .http
        .post(format!("{}oauth2/introspect", server.base))
        .bearer_auth("wrong-secret-10")
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    // Synapse behind the same address is not locked out by the guesser.
    let (status, body) = server.introspect(SECRET, token).await;
    assert_eq!((status, &body["active"]), (200, &json!(false)), "{body}");
}

mxqr_testkit::backend_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    introspection_and_an_outbox_that_outlives_a_synapse_outage,
    display_names_and_device_list_reconciliation_reach_synapse,
    a_sign_in_is_provisioned_during_a_long_reconciliation,
    refresh_replay_after_introspection_deletes_the_device_in_synapse,
    wrong_shared_secrets_are_throttled,
}

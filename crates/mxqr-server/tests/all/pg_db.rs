//! Accounts, OAuth and the client-server store on PostgreSQL (`SqlDb::connect`).
//!
//! The accounts, OAuth and client-server suites run their scenarios on both back ends
//! themselves (`mxqr_testkit::backend_tests!`). The tests here need PostgreSQL: two instances
//! racing on one code, refresh token or device grant, concurrent start-up, re-opening, and an
//! outage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mxqr_testkit::api::accounts::{
    DbError, Grant, GrantAdmission, NewDeviceGrant, NewTokens, PendingGrantCaps, SqlDb,
};
use mxqr_testkit::api::oauth::model::auth_code::{CodeError, IssuedCode, Presented};
use mxqr_testkit::api::oauth::model::device_grant::PollError;
use mxqr_testkit::api::oauth::model::refresh::RefreshError;
use mxqr_testkit::api::oauth::{Clock, Minted, OAuthState, Standalone, SystemClock, token};
use mxqr_testkit::pg::{admin, fresh_database};
use mxqr_testkit::rendezvous::test_config;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::postgres::PgPool;
use tokio::net::TcpListener;

/// Races per test: enough to interleave the two transactions many ways, quick on loopback.
const ROUNDS: usize = 10;

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn new_tokens(now: i64) -> NewTokens {
    NewTokens {
        access_hash: random_hex(),
        refresh_hash: random_hex(),
        access_expires_at: now + 300_000,
    }
}

/// Mints `stored` (the secrets are not needed here).
fn with_tokens(stored: NewTokens) -> impl FnOnce() -> Minted + Send {
    move || Minted {
        access_token: String::new(),
        refresh_token: String::new(),
        stored,
    }
}

/// Exchanges refresh token `presented` of `client` for `tokens`.
async fn refresh(
    db: &SqlDb,
    presented: &str,
    tokens: &NewTokens,
    now: i64,
    grace_ms: i64,
) -> Result<Grant, RefreshError> {
    let minted = with_tokens(tokens.clone());
    token::exchange_refresh(db, presented, Some("client"), now, grace_ms, minted)
        .await
        .unwrap()
        .map(|issued| issued.grant)
}

/// Two instances (each with its own pool) on one fresh database, with user `alice`.
async fn two_instances() -> (Arc<SqlDb>, Arc<SqlDb>, PgPool) {
    let (url, _) = fresh_database().await;
    let a = Arc::new(SqlDb::connect(&url, 4).await.unwrap());
    let b = Arc::new(SqlDb::connect(&url, 4).await.unwrap());
    a.create_user("alice", None, SystemClock.now_ms())
        .await
        .unwrap();
    (a, b, PgPool::connect(&url).await.unwrap())
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_redeeming_one_code_exactly_one_wins() {
    let (a, b, pool) = two_instances().await;
    let now = SystemClock.now_ms();
    for round in 0..ROUNDS {
        let code_hash = random_hex();
        let code = IssuedCode {
            client_id: "client".into(),
            localpart: "alice".into(),
            device_id: format!("DEV{round}"),
            scope: "urn:matrix:client:api:*".into(),
            redirect_uri: "http://127.0.0.1/callback".into(),
            code_challenge: "challenge".into(),
            expires_at: now + 60_000,
        };
        a.create_auth_code(&code_hash, &code, now).await.unwrap();
        let redeem = |db: Arc<SqlDb>| {
            let (code_hash, redirect_uri) = (code_hash.clone(), code.redirect_uri.clone());
            tokio::spawn(async move {
                let presented = Presented {
                    client_id: "client",
                    redirect_uri: &redirect_uri,
                    verifier_challenge: "challenge",
                };
                let minted = with_tokens(new_tokens(now));
                token::redeem_code(&db, &code_hash, &presented, now, minted)
                    .await
                    .unwrap()
                    .map(|issued| issued.grant)
            })
        };
        let (first, second) = (redeem(a.clone()), redeem(b.clone()));
        let outcomes = [first.await.unwrap(), second.await.unwrap()];
        let issued = outcomes.iter().filter(|o| o.is_ok()).count();
        let reused = outcomes
            .iter()
            .filter(|o| **o == Err(CodeError::Reused))
            .count();
        assert_eq!((issued, reused), (1, 1), "round {round}: {outcomes:?}");
    }
    // One session per code, never two; the reuse revoked each.
    let sessions = count(&pool, "SELECT COUNT(*) FROM oauth_sessions").await;
    assert_eq!(sessions, ROUNDS as i64);
    let live = count(
        &pool,
        "SELECT COUNT(*) FROM oauth_sessions WHERE revoked_at IS NULL",
    )
    .await;
    assert_eq!(live, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_refreshing_one_token_leave_exactly_one_live_pair() {
    let (a, b, _pool) = two_instances().await;
    let now = SystemClock.now_ms();
    let grace_ms = 60_000;
    for round in 0..ROUNDS {
        let grant = Grant {
            localpart: "alice".into(),
            device_id: format!("DEV{round}"),
            client_id: Some("client".into()),
            scope: "urn:matrix:client:api:*".into(),
        };
        let first = new_tokens(now);
        a.issue_session(&grant, &first, now).await.unwrap();
        let exchange = |db: Arc<SqlDb>| {
            let presented = first.refresh_hash.clone();
            let tokens = new_tokens(now);
            tokio::spawn(async move {
                let outcome = refresh(&db, &presented, &tokens, now, grace_ms).await;
                (outcome, tokens)
            })
        };
        let (x, y) = (exchange(a.clone()), exchange(b.clone()));
        let results = [x.await.unwrap(), y.await.unwrap()];
        // The later exchange is a lost-response retry: it gets a pair, the earlier one dies.
        for (outcome, _) in &results {
            assert!(outcome.is_ok(), "round {round}: {outcome:?}");
        }
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for (_, tokens) in results {
            match a.token_info(&tokens.access_hash, now).await.unwrap() {
                Some(_) => live.push(tokens),
                None => dead.push(tokens),
            }
        }
        assert_eq!(live.len(), 1, "round {round}: two live pairs");
        let later = new_tokens(now);
        assert!(
            refresh(&b, &live[0].refresh_hash, &later, now, grace_ms)
                .await
                .is_ok()
        );
        assert_eq!(
            refresh(&a, &dead[0].refresh_hash, &new_tokens(now), now, grace_ms).await,
            Err(RefreshError::Invalid)
        );
        assert!(
            a.token_info(&later.access_hash, now)
                .await
                .unwrap()
                .is_some()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_polling_one_approved_device_grant_issue_once() {
    let (a, b, pool) = two_instances().await;
    let now = SystemClock.now_ms();
    for round in 0..ROUNDS {
        let grant = NewDeviceGrant {
            device_code_hash: random_hex(),
            user_code: format!("ABCDEFG{round}"),
            client_id: "client".into(),
            scope: "urn:matrix:client:api:*".into(),
            device_id: format!("DEV{round}"),
            requester_ip: "127.0.0.1".into(),
            requester_key: "127.0.0.1".into(),
            requester_ua: "test".into(),
            expires_at: now + 600_000,
            interval_secs: 5,
        };
        let caps = PendingGrantCaps {
            per_address: None,
            per_client: 1000,
        };
        assert_eq!(
            a.create_device_grant(&grant, caps, now).await.unwrap(),
            GrantAdmission::Stored
        );
        assert!(
            b.decide_device_grant(&grant.user_code, "alice", true, now)
                .await
                .unwrap()
        );
        let poll = |db: Arc<SqlDb>| {
            let device_code = grant.device_code_hash.clone();
            tokio::spawn(async move {
                let minted = with_tokens(new_tokens(now));
                token::poll_device(&db, &device_code, "client", now, minted)
                    .await
                    .unwrap()
                    .map(|issued| issued.grant)
            })
        };
        let (x, y) = (poll(a.clone()), poll(b.clone()));
        let outcomes = [x.await.unwrap(), y.await.unwrap()];
        let issued = outcomes.iter().filter(|o| o.is_ok()).count();
        let redeemed = outcomes
            .iter()
            .filter(|o| **o == Err(PollError::AlreadyRedeemed))
            .count();
        assert_eq!((issued, redeemed), (1, 1), "round {round}: {outcomes:?}");
    }
    let sessions = count(&pool, "SELECT COUNT(*) FROM oauth_sessions").await;
    assert_eq!(sessions, ROUNDS as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_at_once_share_one_schema() {
    let (url, _) = fresh_database().await;
    let mut config = test_config();
    config.database.url = Some(url.clone());
    // Accounts and rendezvous migrations, four instances at once, on one `_sqlx_migrations`.
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move {
                let db = mxqr_testkit::api::accounts::open(&config).await.map(|_| ());
                let store = mxqr_testkit::api::rendezvous::store::open_configured(&config)
                    .await
                    .map(|_| ());
                (db, store)
            })
        })
        .collect();
    for start in starts {
        let (db, store) = start.await.unwrap();
        db.unwrap();
        store.unwrap();
    }
    let pool = PgPool::connect(&url).await.unwrap();
    let applied = count(&pool, "SELECT COUNT(*) FROM _sqlx_migrations WHERE success").await;
    let on_disk = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/accounts-postgres"
    ))
    .unwrap()
    .count()
        + std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/rendezvous-postgres"
        ))
        .unwrap()
        .count();
    assert_eq!(applied, on_disk as i64);
}

#[tokio::test]
async fn tokens_survive_reopening_the_store() {
    let (url, _) = fresh_database().await;
    let mut config = test_config();
    config.database.url = Some(url);
    let grant = Grant {
        localpart: "alice".into(),
        device_id: "DEV".into(),
        client_id: Some("client".into()),
        scope: "urn:matrix:client:api:*".into(),
    };
    // `OAuthState::open` is what `mxqr serve` and `mxqr admin` open the store with.
    let minted = {
        let oauth = OAuthState::open(&config).await.unwrap();
        oauth
            .db()
            .create_user("alice", None, oauth.now_ms())
            .await
            .unwrap();
        let minted = oauth.mint();
        oauth
            .db()
            .issue_session(&grant, &minted.stored, oauth.now_ms())
            .await
            .unwrap();
        assert!(
            oauth
                .token_info(&minted.access_token)
                .await
                .unwrap()
                .is_some()
        );
        minted
    };
    let oauth = OAuthState::open(&config).await.unwrap();
    let info = oauth.token_info(&minted.access_token).await.unwrap();
    assert_eq!(info.map(|i| i.device_id), Some("DEV".to_owned()));
    let next = oauth.mint().stored;
    let outcome = refresh(
        oauth.db(),
        &minted.stored.refresh_hash,
        &next,
        oauth.now_ms(),
        0,
    )
    .await;
    assert_eq!(outcome, Ok(grant));
    assert_eq!(oauth.db().users().await.unwrap().len(), 1);
    assert_eq!(oauth.db().devices("alice").await.unwrap().len(), 1);
}

#[tokio::test]
async fn database_url_puts_accounts_and_rendezvous_in_postgres() {
    let (url, _) = fresh_database().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = test_config();
    config.listen = addr;
    config.public_url = Some(format!("http://{addr}/"));
    config.server_name = Some("example.test".into());
    config.database.url = Some(url.clone());
    let state = mxqr_testkit::api::app_state(config).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mxqr_testkit::api::serve(state, listener, async {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");

    // A token stored through another instance is accepted: accounts are in PostgreSQL.
    let other = SqlDb::connect(&url, 2).await.unwrap();
    let now = SystemClock.now_ms();
    other.create_user("alice", None, now).await.unwrap();
    let oauth = OAuthState::new(
        &test_config(),
        Arc::new(other),
        Arc::new(Standalone),
        Arc::new(SystemClock),
    );
    let minted = oauth.mint();
    let grant = Grant {
        localpart: "alice".into(),
        device_id: "DEV".into(),
        client_id: None,
        scope: "urn:matrix:client:api:* urn:matrix:client:device:DEV".into(),
    };
    oauth
        .db()
        .issue_session(&grant, &minted.stored, now)
        .await
        .unwrap();
    let whoami = http
        .get(format!("{base}/_matrix/client/v3/account/whoami"))
        .bearer_auth(&minted.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(whoami.status(), StatusCode::OK);
    let body: Value = whoami.json().await.unwrap();
    assert_eq!(body["user_id"], "@alice:example.test");

    // Without `rendezvous.postgres_url`, sessions go to the same database.
    let created = http
        .post(format!("{base}/_matrix/client/v1/rendezvous"))
        .json(&json!({ "data": "shared" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    let pool = PgPool::connect(&url).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM rendezvous_sessions").await,
        1
    );
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_database_outage_is_a_503_with_retry_after_then_recovers() {
    let server = mxqr_testkit::cs::start(mxqr_testkit::Backend::Postgres).await;
    let name = server
        .pg_database
        .clone()
        .expect("a PostgreSQL test server");
    let access = mxqr_testkit::cs::token(&server, "DEV").await;
    let client_id = server.native_client().await;
    let minted = server.oauth.mint();
    let grant = Grant {
        localpart: "alice".into(),
        device_id: "DEV2".into(),
        client_id: Some(client_id),
        scope: mxqr_testkit::oauth::scope("DEV2"),
    };
    server
        .db()
        .issue_session(&grant, &minted.stored, server.oauth.now_ms())
        .await
        .unwrap();

    admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;

    let started = Instant::now();
    let whoami = server
        .http
        .get(server.url("/_matrix/client/v3/account/whoami"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8), "whoami hung");
    assert_eq!(whoami.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(whoami.headers()["retry-after"], "2");
    let body: Value = whoami.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNKNOWN", "{body}");

    let started = Instant::now();
    let refresh = server
        .http
        .post(server.url("/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", minted.refresh_token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8), "token hung");
    assert_eq!(refresh.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refresh.headers()["retry-after"], "2");
    let body: Value = refresh.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");

    admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let whoami = server
            .http
            .get(server.url("/_matrix/client/v3/account/whoami"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        if whoami.status() == StatusCode::OK {
            break;
        }
        assert_eq!(whoami.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "no recovery after the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The refresh token was not consumed by the failed attempt.
    let (status, body) = server
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", minted.refresh_token.as_str()),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_stalled_database_fails_the_call_instead_of_hanging() {
    let (a, _b, pool) = two_instances().await;
    // Connections succeed, but every query on `users` waits behind this lock.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let started = Instant::now();
    let result = a.user("alice").await;
    assert!(matches!(result, Err(DbError::Unavailable(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "the call hung");
    blocker.rollback().await.unwrap();
    assert!(a.user("alice").await.unwrap().is_some());
}

#[tokio::test]
async fn an_unreachable_database_fails_start_up_quickly_without_the_password() {
    let mut config = test_config();
    config.database.url = Some("postgres://mxqr:s3cret@127.0.0.1:1/none".into());
    let started = Instant::now();
    let err = OAuthState::open(&config)
        .await
        .err()
        .expect("no database there");
    assert!(started.elapsed() < Duration::from_secs(10));
    let message = err.to_string();
    assert!(message.contains("cannot open database"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

/// More calls than connections through a stall longer than the pool's 3 s acquire timeout:
/// the surplus queues for its turn and every call succeeds instead of failing as unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_pool_queue_through_a_stall_instead_of_failing() {
    let (a, _b, pool) = two_instances().await; // pools of 4
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let stall = Duration::from_millis(3800);
    let started = Instant::now();
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let db = a.clone();
            tokio::spawn(async move { db.user("alice").await })
        })
        .collect();
    tokio::time::sleep(stall).await;
    blocker.commit().await.unwrap();
    for call in calls {
        let user = call.await.unwrap().expect("a queued call failed");
        assert_eq!(user.expect("alice exists").localpart, "alice");
    }
    assert!(started.elapsed() >= stall);
}

/// The server name is pinned in the database at first start, shared by every instance: a
/// start naming another one is refused, one without a name gets the pinned one.
#[tokio::test]
async fn server_name_is_pinned_in_postgres() {
    let (url, _) = fresh_database().await;
    let config = |public_url: Option<&str>, server_name: Option<&str>| {
        let mut config = test_config();
        config.public_url = public_url.map(str::to_owned);
        config.server_name = server_name.map(str::to_owned);
        config.database.url = Some(url.clone());
        config
    };
    let first = mxqr_testkit::api::app_state(config(Some("https://one.example/"), None))
        .await
        .unwrap();
    assert_eq!(first.oauth().unwrap().server_name(), "one.example");
    for (public_url, server_name) in [
        (Some("https://two.example/"), None),
        (Some("https://one.example/"), Some("two.example")),
    ] {
        match mxqr_testkit::api::app_state(config(public_url, server_name)).await {
            Err(DbError::ServerNameMismatch { configured, pinned }) => {
                assert_eq!(
                    (configured.as_str(), pinned.as_str()),
                    ("two.example", "one.example")
                );
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("started with another server name"),
        }
    }
    let admin = OAuthState::open(&config(None, None)).await.unwrap();
    assert_eq!(admin.user_id("erin"), "@erin:one.example");
}

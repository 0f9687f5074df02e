//! The rendezvous over HTTP with sessions in PostgreSQL where it takes two instances sharing
//! one database, or PostgreSQL itself (outage, pool, configuration). The single-instance
//! scenarios run on both back ends in `msc4388` and `msc4108`.

use std::time::{Duration, Instant};

use mxqr_testkit::TestServer;
use mxqr_testkit::pg::{admin, fresh_database};
use mxqr_testkit::rendezvous::{MSC4108, STABLE, expect_error, metric};
use mxqr_testkit::rendezvous::{limits, test_config};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn create(server: &TestServer, prefix: &str, data: &str) -> (String, String) {
    let response = server
        .client
        .post(server.url(prefix))
        .json(&json!({ "data": data }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["sequence_token"].as_str().unwrap().to_owned(),
    )
}

async fn put(
    server: &TestServer,
    prefix: &str,
    id: &str,
    token: &str,
    data: &str,
) -> reqwest::Response {
    server
        .client
        .put(server.url(&format!("{prefix}/{id}")))
        .json(&json!({ "sequence_token": token, "data": data }))
        .send()
        .await
        .unwrap()
}

async fn read(server: &TestServer, prefix: &str, id: &str) -> Value {
    let response = server.get(&format!("{prefix}/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn token_of(response: reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["sequence_token"].as_str().unwrap().to_owned()
}

/// Creates an MSC4108 session; returns (session path, ETag).
async fn create_msc4108(server: &TestServer, body: &str) -> (String, String) {
    let response = server
        .client
        .post(server.url(MSC4108))
        .header("content-type", "text/plain")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let url = body["url"].as_str().unwrap();
    let path = url.strip_prefix(&server.base).unwrap().to_owned();
    (path, etag)
}

#[tokio::test]
async fn concurrent_writers_on_two_instances_exactly_one_wins() {
    let (db, _) = fresh_database().await;
    let a = TestServer::postgres_default(&db).await;
    let b = TestServer::postgres_default(&db).await;
    for round in 0..5 {
        let (id, token) = create(&a, STABLE, "start").await;
        let writers = (0..8).map(|i| {
            let server = if i % 2 == 0 { &a } else { &b };
            let request = server
                .client
                .put(server.url(&format!("{STABLE}/{id}")))
                .json(&json!({ "sequence_token": token, "data": format!("writer {i}") }));
            tokio::spawn(async move { request.send().await.unwrap().status() })
        });
        let mut statuses = Vec::new();
        for writer in writers {
            statuses.push(writer.await.unwrap());
        }
        let wins = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        let conflicts = statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count();
        assert_eq!((wins, conflicts), (1, 7), "round {round}: {statuses:?}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_session_created_on_one_instance_is_served_by_the_other() {
    let (db, _) = fresh_database().await;
    let a = TestServer::postgres_default(&db).await;
    let b = TestServer::postgres_default(&db).await;
    let (id, token0) = create(&a, STABLE, "from a").await;
    assert_eq!(read(&b, STABLE, &id).await["data"], "from a");
    let token1 = token_of(put(&b, STABLE, &id, &token0, "from b").await).await;
    let body = read(&a, STABLE, &id).await;
    assert_eq!(
        (body["data"].as_str(), body["sequence_token"].as_str()),
        (Some("from b"), Some(token1.as_str()))
    );
    // A retry through the other instance is recognised too.
    assert_eq!(
        token_of(put(&a, STABLE, &id, &token0, "from b").await).await,
        token1
    );
    let deleted = b
        .client
        .delete(b.url(&format!("{STABLE}/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    expect_error(
        a.get(&format!("{STABLE}/{id}")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;

    // MSC4108: the URL names instance A; the same path on B reaches the same session.
    let (path, etag0) = create_msc4108(&a, "hi").await;
    let on_b = b.get(&path).await;
    assert_eq!(on_b.status(), StatusCode::OK);
    assert_eq!(on_b.headers()["etag"].to_str().unwrap(), etag0);
    let written = b
        .client
        .put(b.url(&path))
        .header("if-match", &etag0)
        .body("reply")
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), StatusCode::ACCEPTED);
    assert_eq!(a.get(&path).await.text().await.unwrap(), "reply");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_long_poll_on_one_instance_wakes_on_a_write_through_the_other() {
    let (db, _) = fresh_database().await;
    let a = TestServer::postgres_default(&db).await;
    let b = TestServer::postgres_default(&db).await;
    let (id, token0) = create(&a, STABLE, "first").await;
    let session = format!("{STABLE}/{id}");

    let poll = tokio::spawn(
        a.client
            .get(a.url(&format!("{session}?since={token0}&timeout_ms=20000")))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the poll must wait");
    let started = Instant::now();
    let token1 = token_of(put(&b, STABLE, &id, &token0, "second").await).await;
    let body: Value = poll.await.unwrap().unwrap().json().await.unwrap();
    let woke = started.elapsed();
    assert!(woke < Duration::from_secs(2), "woke after {woke:?}");
    assert_eq!(
        (body["data"].as_str(), body["sequence_token"].as_str()),
        (Some("second"), Some(token1.as_str()))
    );

    // A delete through B ends A's wait with 404.
    let poll = tokio::spawn(
        a.client
            .get(a.url(&format!("{session}?since={token1}&timeout_ms=20000")))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    b.client.delete(b.url(&session)).send().await.unwrap();
    expect_error(
        poll.await.unwrap().unwrap(),
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));

    // MSC4108 long-poll with If-None-Match on A, written through B.
    let (path, etag0) = create_msc4108(&a, "").await;
    let poll = tokio::spawn(
        a.client
            .get(a.url(&format!("{path}?timeout_ms=20000")))
            .header("if-none-match", &etag0)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let written = b
        .client
        .put(b.url(&path))
        .header("if-match", &etag0)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), StatusCode::ACCEPTED);
    let response = poll.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "hello");

    // Without a write, the poll lasts its timeout.
    let (id, token) = create(&a, STABLE, "quiet").await;
    let started = Instant::now();
    let response = a
        .get(&format!("{STABLE}/{id}?since={token}&timeout_ms=500"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(490));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_cap_evicts_the_session_closest_to_expiry_across_instances() {
    let (db, _) = fresh_database().await;
    let mut session_limits = limits(Duration::from_secs(60));
    session_limits.max_sessions = 3;
    // None of them counts as in use: sessions written within it are never evicted.
    session_limits.protect_written_within = Duration::ZERO;
    let a = TestServer::postgres(&db, test_config(), session_limits.clone()).await;
    let b = TestServer::postgres(&db, test_config(), session_limits).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let server = if i % 2 == 0 { &a } else { &b };
        ids.push(create(server, STABLE, &format!("s{i}")).await.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    expect_error(
        a.get(&format!("{STABLE}/{}", ids[0])).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;
    for id in &ids[1..] {
        assert_eq!(
            a.get(&format!("{STABLE}/{id}")).await.status(),
            StatusCode::OK
        );
    }
    // B made the fourth session, so B evicted.
    let metrics = b.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mxqr_rendezvous_sessions_evicted_total{transport=\"msc4388\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mxqr_rendezvous_sessions_live{transport=\"msc4388\"}"
        ),
        Some(3.0)
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_database_outage_is_a_503_with_retry_after_then_recovers() {
    let (db, name) = fresh_database().await;
    let server = TestServer::postgres_default(&db).await;
    let (id, _) = create(&server, STABLE, "before").await;

    admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    for attempt in 0..3 {
        let started = Instant::now();
        let response = server.get(&format!("{STABLE}/{id}")).await;
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "attempt {attempt} hung"
        );
        assert_eq!(response.headers()["retry-after"], "2");
        expect_error(response, StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN").await;
    }
    let response = server
        .client
        .post(server.url(STABLE))
        .json(&json!({ "data": "during" }))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN").await;

    admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = server.get(&format!("{STABLE}/{id}")).await;
        if response.status() == StatusCode::OK {
            assert_eq!(response.json::<Value>().await.unwrap()["data"], "before");
            break;
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "no recovery after the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Long-polls work again once the listening connection is back.
    let (id, token) = create(&server, STABLE, "after").await;
    let poll = tokio::spawn(
        server
            .client
            .get(server.url(&format!("{STABLE}/{id}?since={token}&timeout_ms=20000")))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    token_of(put(&server, STABLE, &id, &token, "woken").await).await;
    let body: Value = poll.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(body["data"], "woken");
    assert!(started.elapsed() < Duration::from_secs(2));
    server.stop().await;
}

#[tokio::test]
async fn postgres_url_in_the_config_selects_the_shared_store() {
    let (db, _) = fresh_database().await;
    let server = TestServer::postgres_default(&db).await;
    let mut config = test_config();
    config.rendezvous.postgres_url = Some(db.clone());
    let store = mxqr_testkit::api::rendezvous::store::open_configured(&config)
        .await
        .unwrap();
    let (id, meta) = store
        .create(
            mxqr_testkit::api::rendezvous::store::Transport::Msc4388,
            "via config".into(),
        )
        .await
        .unwrap();
    let body = read(&server, STABLE, &id.to_string()).await;
    assert_eq!(body["data"], "via config");
    assert_eq!(body["sequence_token"], meta.token.to_string());

    // Unreachable database: start-up fails with an error, quickly.
    config.rendezvous.postgres_url = Some("postgres://postgres@127.0.0.1:1/none".into());
    let started = Instant::now();
    let err = mxqr_testkit::api::rendezvous::store::open_configured(&config)
        .await
        .err()
        .expect("no database there");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.to_string().contains("cannot connect"), "{err}");
    server.stop().await;
}

/// A stall longer than the pool's 3 s acquire timeout, with more requests than connections:
/// the surplus waits its turn and every request succeeds, where without admission control the
/// queued ones were shed as 503 after 3 s (and, retried under load, collapsed the service).
#[tokio::test]
async fn requests_beyond_the_pool_queue_through_a_stall_instead_of_failing() {
    use sqlx::{Connection, PgConnection};

    let (db, _) = fresh_database().await;
    let server = TestServer::postgres_default(&db).await; // a pool of 8 connections
    let mut blocker = PgConnection::connect(&db).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE rendezvous_sessions IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();

    let stall = Duration::from_millis(3800);
    let started = Instant::now();
    let requests: Vec<_> = (0..24)
        .map(|i| {
            let client = server.client.clone();
            let url = server.url(STABLE);
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .json(&json!({ "data": format!("queued {i}") }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                (status, response.text().await.unwrap())
            })
        })
        .collect();
    tokio::time::sleep(stall).await;
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();

    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert!(started.elapsed() >= stall);
    let created = metric(
        &server.metrics().await,
        "mxqr_rendezvous_sessions_created_total{transport=\"msc4388\"}",
    );
    assert_eq!(created, Some(24.0));
}

/// A 503 `M_LIMIT_EXCEEDED` with a `Retry-After` of at least a second.
async fn expect_at_capacity(response: reqwest::Response) {
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    expect_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "M_LIMIT_EXCEEDED",
    )
    .await;
}

#[tokio::test]
async fn at_the_cap_sessions_in_use_are_kept_across_instances() {
    let (db, _) = fresh_database().await;
    let mut session_limits = limits(Duration::from_secs(60));
    session_limits.max_sessions = 3;
    let a = TestServer::postgres(&db, test_config(), session_limits.clone()).await;
    let b = TestServer::postgres(&db, test_config(), session_limits).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let server = if i % 2 == 0 { &a } else { &b };
        ids.push(create(server, STABLE, &format!("s{i}")).await.0);
    }
    for server in [&a, &b] {
        let refused = server
            .client
            .post(server.url(STABLE))
            .json(&json!({ "data": "flood" }))
            .send()
            .await
            .unwrap();
        expect_at_capacity(refused).await;
    }
    for id in &ids {
        read(&a, STABLE, id).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn payload_bytes_of_all_sessions_are_budgeted_across_instances() {
    let (db, _) = fresh_database().await;
    let mut session_limits = limits(Duration::from_secs(60));
    session_limits.max_total_bytes = 8_000;
    let a = TestServer::postgres(&db, test_config(), session_limits.clone()).await;
    let b = TestServer::postgres(&db, test_config(), session_limits.clone()).await;
    let full = "x".repeat(4096);
    let (first, _) = create(&a, STABLE, &full).await;
    let (small, small_token) = create(&b, STABLE, "tiny").await;
    let refused = b
        .client
        .post(b.url(STABLE))
        .json(&json!({ "data": full }))
        .send()
        .await
        .unwrap();
    expect_at_capacity(refused).await;
    expect_at_capacity(put(&a, STABLE, &small, &small_token, &full).await).await;
    let small_token =
        token_of(put(&a, STABLE, &small, &small_token, &"y".repeat(1000)).await).await;
    // 4096 + 1000 + 3000 is over; shrinking always fits, and the budget follows it.
    let refused = b
        .client
        .post(b.url(STABLE))
        .json(&json!({ "data": "w".repeat(3000) }))
        .send()
        .await
        .unwrap();
    expect_at_capacity(refused).await;
    token_of(put(&b, STABLE, &small, &small_token, &"z".repeat(10)).await).await;
    create(&b, STABLE, &"w".repeat(3000)).await;
    read(&a, STABLE, &first).await;
    a.stop().await;
    b.stop().await;

    // Sessions not written recently make room instead.
    let (db, _) = fresh_database().await;
    session_limits.protect_written_within = Duration::ZERO;
    let a = TestServer::postgres(&db, test_config(), session_limits).await;
    let (first, _) = create(&a, STABLE, &full).await;
    create(&a, STABLE, &full).await;
    create(&a, STABLE, &full).await;
    expect_error(
        a.get(&format!("{STABLE}/{first}")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;
    a.stop().await;
}

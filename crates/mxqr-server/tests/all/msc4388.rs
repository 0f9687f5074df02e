//! MSC4388 rendezvous over real HTTP.

use std::time::{Duration, Instant};

use mxqr_testkit::Backend;
use mxqr_testkit::api::config::CreatePolicy;
use mxqr_testkit::rendezvous::{
    MSC4108, STABLE, TestServer, UNSTABLE, expect_error, limits, metric, test_config,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn full_session_life_on_both_prefixes(backend: Backend) {
    let server = TestServer::start_on(backend).await;
    for prefix in [STABLE, UNSTABLE] {
        let discovery: Value = server.get(prefix).await.json().await.unwrap();
        assert_eq!(discovery, json!({ "create_available": true }));

        let response = server
            .client
            .post(server.url(prefix))
            .json(&json!({ "data": "hello" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["cache-control"],
            "no-store, no-transform"
        );
        let length: usize = response.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let created: Value = response.json().await.unwrap();
        assert_eq!(serde_json::to_vec(&created).unwrap().len(), length);
        let id = created["id"].as_str().unwrap();
        let token0 = created["sequence_token"].as_str().unwrap();
        let expires = created["expires_in_ms"].as_u64().unwrap();
        assert!(expires > 170_000 && expires <= 180_000, "{expires}");

        let read: Value = server
            .get(&format!("{prefix}/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(read["data"], "hello");
        assert_eq!(read["sequence_token"], token0);
        assert!(read["expires_in_ms"].as_u64().unwrap() <= expires);

        let put = server.put(prefix, id, token0, "world").await;
        assert_eq!(put.status(), StatusCode::OK);
        let put: Value = put.json().await.unwrap();
        let token1 = put["sequence_token"].as_str().unwrap();
        assert_ne!(token1, token0);
        assert_eq!(put.as_object().unwrap().len(), 1);

        let read: Value = server
            .get(&format!("{prefix}/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(read["data"], "world");
        assert_eq!(read["sequence_token"], token1);

        let deleted = server
            .client
            .delete(server.url(&format!("{prefix}/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), StatusCode::OK);
        assert_eq!(deleted.json::<Value>().await.unwrap(), json!({}));

        expect_error(
            server.get(&format!("{prefix}/{id}")).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        )
        .await;
        let again = server
            .client
            .delete(server.url(&format!("{prefix}/{id}")))
            .send()
            .await
            .unwrap();
        expect_error(again, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
        expect_error(
            server.put(prefix, id, token1, "x").await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        )
        .await;
    }
    // Sessions are shared by the two prefixes.
    let (id, _) = server.create(STABLE, "shared").await;
    let read: Value = server
        .get(&format!("{UNSTABLE}/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["data"], "shared");
    // A session is visible only through its own API.
    expect_error(
        server.get(&format!("{MSC4108}/{id}")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mxqr_rendezvous_sessions_created_total{transport=\"msc4388\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    server.stop().await;
}

async fn stale_token_conflicts_with_the_prefix_errcode(backend: Backend) {
    let server = TestServer::start_on(backend).await;
    for (prefix, errcode) in [
        (STABLE, "M_CONCURRENT_WRITE"),
        (UNSTABLE, "IO_ELEMENT_MSC4388_CONCURRENT_WRITE"),
    ] {
        let (id, token0) = server.create(prefix, "a").await;
        let token1: Value = server
            .put(prefix, &id, &token0, "b")
            .await
            .json()
            .await
            .unwrap();
        let token1 = token1["sequence_token"].as_str().unwrap().to_owned();
        let token2: Value = server
            .put(prefix, &id, &token1, "c")
            .await
            .json()
            .await
            .unwrap();
        assert!(token2["sequence_token"].is_string());
        // token0 is two writes old: stale.
        expect_error(
            server.put(prefix, &id, &token0, "d").await,
            StatusCode::CONFLICT,
            errcode,
        )
        .await;
        // A token this server never issued is stale too, not a bad request.
        expect_error(
            server.put(prefix, &id, "not-a-token", "d").await,
            StatusCode::CONFLICT,
            errcode,
        )
        .await;
    }
    server.stop().await;
}

async fn every_write_gets_a_new_token_even_with_identical_data(backend: Backend) {
    let server = TestServer::start_on(backend).await;
    let (id, mut token) = server.create(STABLE, "same").await;
    let mut seen = vec![token.clone()];
    for _ in 0..20 {
        let body: Value = server
            .put(STABLE, &id, &token, "same")
            .await
            .json()
            .await
            .unwrap();
        token = body["sequence_token"].as_str().unwrap().to_owned();
        assert!(!seen.contains(&token), "token {token} reused");
        seen.push(token.clone());
    }
    server.stop().await;
}

async fn retried_put_with_previous_token_and_same_data_succeeds(backend: Backend) {
    let server = TestServer::start_on(backend).await;
    let (id, token0) = server.create(STABLE, "").await;
    let first: Value = server
        .put(STABLE, &id, &token0, "msg")
        .await
        .json()
        .await
        .unwrap();
    let token1 = first["sequence_token"].as_str().unwrap().to_owned();

    // The response was "lost": the client sends the same PUT again.
    let retry = server.put(STABLE, &id, &token0, "msg").await;
    assert_eq!(retry.status(), StatusCode::OK);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["sequence_token"], token1.as_str());
    let read: Value = server
        .get(&format!("{STABLE}/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["sequence_token"], token1.as_str());

    // Same old token with other data is a real conflict.
    expect_error(
        server.put(STABLE, &id, &token0, "other").await,
        StatusCode::CONFLICT,
        "M_CONCURRENT_WRITE",
    )
    .await;

    // Once the other side has written, the retry window is gone.
    let second: Value = server
        .put(STABLE, &id, &token1, "reply")
        .await
        .json()
        .await
        .unwrap();
    assert!(second["sequence_token"].is_string());
    expect_error(
        server.put(STABLE, &id, &token0, "msg").await,
        StatusCode::CONFLICT,
        "M_CONCURRENT_WRITE",
    )
    .await;
    server.stop().await;
}

async fn transaction_ids_make_puts_idempotent(backend: Backend) {
    let server = TestServer::start_on(backend).await;
    let (id, token0) = server.create(UNSTABLE, "").await;
    let put_txn = |txn: &str, token: &str, data: &str| {
        server
            .client
            .put(server.url(&format!("{UNSTABLE}/{id}/{txn}")))
            .json(&json!({ "sequence_token": token, "data": data }))
            .send()
    };
    let first = put_txn("t1", &token0, "one").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let token1 = first.json::<Value>().await.unwrap()["sequence_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The other side writes in between; the retry of t1 still gets t1's answer.
    let other: Value = server
        .put(UNSTABLE, &id, &token1, "two")
        .await
        .json()
        .await
        .unwrap();
    let token2 = other["sequence_token"].as_str().unwrap().to_owned();
    let again = put_txn("t1", &token0, "one").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(
        again.json::<Value>().await.unwrap()["sequence_token"],
        token1.as_str()
    );
    let read: Value = server
        .get(&format!("{UNSTABLE}/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["data"], "two", "the repeat must not write again");
    assert_eq!(read["sequence_token"], token2.as_str());

    // Same transaction ID, different body.
    expect_error(
        put_txn("t1", &token0, "changed").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    )
    .await;

    // A transaction that conflicted conflicts again on repeat.
    for _ in 0..2 {
        expect_error(
            put_txn("t2", &token0, "late").await.unwrap(),
            StatusCode::CONFLICT,
            "IO_ELEMENT_MSC4388_CONCURRENT_WRITE",
        )
        .await;
    }

    // Only the last four transaction IDs are kept: t1 is forgotten after four more.
    let mut token = token2;
    for txn in ["t3", "t4", "t5", "t6"] {
        let body: Value = put_txn(txn, &token, txn)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        token = body["sequence_token"].as_str().unwrap().to_owned();
    }
    expect_error(
        put_txn("t1", &token0, "one").await.unwrap(),
        StatusCode::CONFLICT,
        "IO_ELEMENT_MSC4388_CONCURRENT_WRITE",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn payload_limits_are_counted_in_bytes() {
    let server = TestServer::start().await;
    // 2048 two-byte characters: 4096 bytes, still allowed.
    let (id, token) = server.create(STABLE, &"é".repeat(2048)).await;
    let too_long = format!("{}a", "é".repeat(2048));
    let response = server
        .client
        .post(server.url(STABLE))
        .json(&json!({ "data": too_long }))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE").await;
    expect_error(
        server.put(STABLE, &id, &token, &"a".repeat(4097)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    )
    .await;
    // A body over the request limit is refused before parsing.
    let huge = format!("{{\"data\":\"{}\"}}", "a".repeat(70_000));
    let response = server
        .client
        .post(server.url(STABLE))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE").await;
    server.stop().await;
}

#[tokio::test]
async fn malformed_bodies_get_not_json_or_bad_json() {
    let server = TestServer::start().await;
    let (id, _) = server.create(STABLE, "x").await;
    let session = format!("{STABLE}/{id}");
    let cases = [
        ("", "M_NOT_JSON"),
        ("{", "M_NOT_JSON"),
        ("data=1", "M_NOT_JSON"),
        ("{}", "M_BAD_JSON"),
        ("[]", "M_BAD_JSON"),
        ("{\"data\": 5}", "M_BAD_JSON"),
    ];
    for (body, errcode) in cases {
        let create = server
            .client
            .post(server.url(STABLE))
            .body(body)
            .send()
            .await
            .unwrap();
        expect_error(create, StatusCode::BAD_REQUEST, errcode).await;
        let put = server
            .client
            .put(server.url(&session))
            .body(body)
            .send()
            .await
            .unwrap();
        expect_error(put, StatusCode::BAD_REQUEST, errcode).await;
    }
    // PUT needs the token as well as the data.
    let put = server
        .client
        .put(server.url(&session))
        .json(&json!({ "data": "x" }))
        .send()
        .await
        .unwrap();
    expect_error(put, StatusCode::BAD_REQUEST, "M_BAD_JSON").await;
    server.stop().await;
}

#[tokio::test]
async fn browser_navigation_is_refused() {
    let server = TestServer::start().await;
    let (id, _) = server.create(STABLE, "secret").await;
    for (name, value) in [
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
    ] {
        let response = server
            .client
            .get(server.url(&format!("{STABLE}/{id}")))
            .header(name, value)
            .send()
            .await
            .unwrap();
        let body = expect_error(response, StatusCode::FORBIDDEN, "M_FORBIDDEN").await;
        assert!(!body.to_string().contains("secret"));
    }
    // fetch() from a page is fine.
    let response = server
        .client
        .get(server.url(&format!("{STABLE}/{id}")))
        .header("sec-fetch-mode", "cors")
        .header("sec-fetch-dest", "empty")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn authenticated_policy_needs_a_bearer_token() {
    let mut config = test_config();
    config.rendezvous.create_policy = CreatePolicy::Authenticated;
    let server = TestServer::with_config(config).await;
    let discovery: Value = server.get(STABLE).await.json().await.unwrap();
    assert_eq!(discovery, json!({ "create_available": false }));
    let discovery: Value = server
        .client
        .get(server.url(STABLE))
        .bearer_auth("token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery, json!({ "create_available": true }));

    let refused = server
        .client
        .post(server.url(STABLE))
        .json(&json!({ "data": "x" }))
        .send()
        .await
        .unwrap();
    expect_error(refused, StatusCode::FORBIDDEN, "M_FORBIDDEN").await;
    let allowed = server
        .client
        .post(server.url(UNSTABLE))
        .bearer_auth("token")
        .json(&json!({ "data": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_writers_with_the_same_token_exactly_one_wins() {
    let server = TestServer::start().await;
    for round in 0..5 {
        let (id, token) = server.create(STABLE, "start").await;
        let writers = (0..8).map(|i| {
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
    server.stop().await;
}

#[tokio::test]
async fn long_poll_wakes_on_write_and_times_out_otherwise() {
    let server = TestServer::start().await;
    let (id, token0) = server.create(STABLE, "first").await;
    let session = format!("{STABLE}/{id}");

    // Timeout: nothing changes, the current state comes back after the wait.
    let started = Instant::now();
    let response = server
        .get(&format!("{session}?since={token0}&timeout_ms=400"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(390));
    assert_eq!(body["sequence_token"], token0.as_str());

    // Wake-up: a write during the wait ends it early with the new payload.
    let poll_url = server.url(&format!("{session}?since={token0}&timeout_ms=20000"));
    let poll = tokio::spawn(server.client.get(poll_url).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let put: Value = server
        .put(STABLE, &id, &token0, "second")
        .await
        .json()
        .await
        .unwrap();
    let body: Value = poll.await.unwrap().unwrap().json().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(body["data"], "second");
    assert_eq!(body["sequence_token"], put["sequence_token"]);

    // A stale `since` answers at once.
    let started = Instant::now();
    let body: Value = server
        .get(&format!("{session}?since={token0}&timeout_ms=20000"))
        .await
        .json()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(body["data"], "second");

    // A delete ends the wait with 404.
    let current = put["sequence_token"].as_str().unwrap();
    let poll_url = server.url(&format!("{session}?since={current}&timeout_ms=20000"));
    let poll = tokio::spawn(server.client.get(poll_url).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .client
        .delete(server.url(&session))
        .send()
        .await
        .unwrap();
    expect_error(
        poll.await.unwrap().unwrap(),
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;

    let (id, _) = server.create(STABLE, "x").await;
    expect_error(
        server
            .get(&format!("{STABLE}/{id}?since=A&timeout_ms=soon"))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn long_poll_is_capped_by_configuration() {
    let mut config = test_config();
    config.rendezvous.long_poll_max_ms = 300;
    let server = TestServer::with_config(config).await;
    let (id, token) = server.create(STABLE, "x").await;
    let started = Instant::now();
    let response = server
        .get(&format!("{STABLE}/{id}?since={token}&timeout_ms=60000"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    server.stop().await;
}

async fn sessions_expire_and_are_counted(backend: Backend) {
    let server = TestServer::on(backend, test_config(), limits(Duration::from_millis(400))).await;
    let (id, _) = server.create(STABLE, "short").await;
    let body: Value = server
        .get(&format!("{STABLE}/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(body["expires_in_ms"].as_u64().unwrap() <= 400);
    tokio::time::sleep(Duration::from_millis(600)).await;
    expect_error(
        server.get(&format!("{STABLE}/{id}")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;
    // The periodic purge removes sessions nobody asks for again.
    let (_unread, _) = server.create(STABLE, "never read").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mxqr_rendezvous_sessions_expired_total{transport=\"msc4388\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mxqr_rendezvous_sessions_live{transport=\"msc4388\"}"
        ),
        Some(0.0)
    );
    server.stop().await;
}

async fn writes_renew_the_life_up_to_the_maximum(backend: Backend) {
    let mut session_limits = limits(Duration::from_millis(600));
    session_limits.renew_on_write = true;
    session_limits.max_lifetime = Duration::from_millis(1500);
    let server = TestServer::on(backend, test_config(), session_limits).await;
    let (id, mut token) = server.create(STABLE, "a").await;
    // Three writes 400 ms apart keep it alive past its first 600 ms.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let response = server.put(STABLE, &id, &token, "b").await;
        assert_eq!(response.status(), StatusCode::OK, "round {round}");
        token = response.json::<Value>().await.unwrap()["sequence_token"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let body: Value = server
        .get(&format!("{STABLE}/{id}"))
        .await
        .json()
        .await
        .unwrap();
    // 1200 ms in: renewal is capped at 1500 ms from creation.
    assert!(body["expires_in_ms"].as_u64().unwrap() <= 300, "{body}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    expect_error(
        server.put(STABLE, &id, &token, "c").await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn the_cap_evicts_the_session_closest_to_expiry() {
    let mut session_limits = limits(Duration::from_secs(60));
    session_limits.max_sessions = 3;
    // None of them counts as in use: sessions written within it are never evicted.
    session_limits.protect_written_within = Duration::ZERO;
    let server = TestServer::with(test_config(), session_limits).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(server.create(STABLE, &format!("s{i}")).await.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    expect_error(
        server.get(&format!("{STABLE}/{}", ids[0])).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;
    for id in &ids[1..] {
        assert_eq!(
            server.get(&format!("{STABLE}/{id}")).await.status(),
            StatusCode::OK
        );
    }
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mxqr_rendezvous_sessions_evicted_total{transport=\"msc4388\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "mxqr_rendezvous_sessions_live{transport=\"msc4388\"}"
        ),
        Some(3.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn creates_and_writes_are_rate_limited_per_address() {
    let mut config = test_config();
    config.rate_limit.enabled = true;
    config.rate_limit.create_burst = 2;
    config.rate_limit.create_per_second = 0.5;
    config.rate_limit.write_burst = 3;
    config.rate_limit.write_per_second = 0.5;
    let server = TestServer::with_config(config).await;
    let (id, mut token) = server.create(STABLE, "a").await;
    server.create(UNSTABLE, "b").await;
    let refused = server
        .client
        .post(server.url(STABLE))
        .json(&json!({ "data": "c" }))
        .send()
        .await
        .unwrap();
    let retry_header: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = expect_error(refused, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED").await;
    let retry_ms = body["retry_after_ms"].as_u64().unwrap();
    assert!(retry_ms > 0 && retry_ms <= 2000, "{retry_ms}");
    assert!((1..=2).contains(&retry_header));

    for _ in 0..3 {
        let ok: Value = server
            .put(STABLE, &id, &token, "x")
            .await
            .json()
            .await
            .unwrap();
        token = ok["sequence_token"].as_str().unwrap().to_owned();
    }
    expect_error(
        server.put(STABLE, &id, &token, "y").await,
        StatusCode::TOO_MANY_REQUESTS,
        "M_LIMIT_EXCEEDED",
    )
    .await;
    // Reads are not limited.
    assert_eq!(
        server.get(&format!("{STABLE}/{id}")).await.status(),
        StatusCode::OK
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_methods_paths_and_ids() {
    let server = TestServer::start().await;
    let (id, _) = server.create(STABLE, "x").await;
    let patch = server
        .client
        .patch(server.url(&format!("{STABLE}/{id}")))
        .send()
        .await
        .unwrap();
    expect_error(patch, StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED").await;
    let delete_prefix = server
        .client
        .delete(server.url(STABLE))
        .send()
        .await
        .unwrap();
    expect_error(
        delete_prefix,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
    )
    .await;
    expect_error(
        server.get("/_matrix/client/v1/rendezvouz").await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    )
    .await;
    for bad in [
        "nope",
        "0000000000000000000000000U",
        &id.to_lowercase()[1..],
    ] {
        expect_error(
            server.get(&format!("{STABLE}/{bad}")).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        )
        .await;
    }
    // An MSC4388 session is not reachable through the MSC4108 API.
    expect_error(
        server
            .get(&format!("{}/{id}", mxqr_testkit::rendezvous::MSC4108))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn disabled_api_is_unrecognized() {
    let mut config = test_config();
    config.rendezvous.msc4388_enabled = false;
    let server = TestServer::with_config(config).await;
    expect_error(
        server.get(STABLE).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    )
    .await;
    let post = server
        .client
        .post(server.url(UNSTABLE))
        .json(&json!({ "data": "x" }))
        .send()
        .await
        .unwrap();
    expect_error(post, StatusCode::NOT_FOUND, "M_UNRECOGNIZED").await;
    let versions: Value = server
        .get("/_matrix/client/versions")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(versions["unstable_features"]["io.element.msc4388"], false);
    server.stop().await;
}

#[tokio::test]
async fn rate_limits_follow_the_trusted_proxy_header() {
    let mut config = test_config();
    config.rate_limit.enabled = true;
    config.rate_limit.create_burst = 1;
    config.rate_limit.create_per_second = 0.1;
    config.rate_limit.client_ip_header = Some("x-forwarded-for".into());
    let server = TestServer::with_config(config).await;
    let create = |forwarded: &'static str| {
        server
            .client
            .post(server.url(STABLE))
            .header("x-forwarded-for", forwarded)
            .json(&json!({ "data": "x" }))
            .send()
    };
    // The proxy appends the real client last; earlier entries are client-controlled.
    assert_eq!(
        create("203.0.113.9, 192.0.2.1").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(create("192.0.2.2").await.unwrap().status(), StatusCode::OK);
    expect_error(
        create("198.51.100.7, 192.0.2.1").await.unwrap(),
        StatusCode::TOO_MANY_REQUESTS,
        "M_LIMIT_EXCEEDED",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_pending_long_polls_at_once() {
    let server = TestServer::start().await;
    let (id, token) = server.create(STABLE, "waiting").await;
    let poll_url = server.url(&format!("{STABLE}/{id}?since={token}&timeout_ms=25000"));
    let poll = tokio::spawn(server.client.get(poll_url).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    server.stop().await;
    let response = poll.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["sequence_token"], token.as_str());
}

async fn expiry_ends_a_pending_long_poll_with_not_found(backend: Backend) {
    let server = TestServer::on(backend, test_config(), limits(Duration::from_millis(500))).await;
    let (id, token) = server.create(STABLE, "soon gone").await;
    let started = Instant::now();
    let response = server
        .get(&format!("{STABLE}/{id}?since={token}&timeout_ms=20000"))
        .await;
    let elapsed = started.elapsed();
    // Woken by the periodic purge (every second), not by the 20 s timeout.
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    expect_error(response, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
    server.stop().await;
}

#[tokio::test]
async fn payloads_are_limited_in_bytes_not_characters() {
    let server = TestServer::start().await;
    // 1025 four-byte characters: 4100 bytes, well under 4096 characters.
    let wide = "𝄞".repeat(1025);
    let refused = server
        .client
        .post(server.url(STABLE))
        .json(&json!({ "data": wide }))
        .send()
        .await
        .unwrap();
    expect_error(refused, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE").await;
    let (id, token) = server.create(STABLE, &"𝄞".repeat(1024)).await;
    expect_error(
        server.put(STABLE, &id, &token, &wide).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    )
    .await;
    let refused = server
        .client
        .post(server.url(mxqr_testkit::rendezvous::MSC4108))
        .body(wide)
        .send()
        .await
        .unwrap();
    expect_error(refused, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE").await;
    server.stop().await;
}

/// A 503 `M_LIMIT_EXCEEDED` with a `Retry-After` of at least a second.
async fn expect_at_capacity(response: reqwest::Response) {
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body = expect_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "M_LIMIT_EXCEEDED",
    )
    .await;
    assert!(body["retry_after_ms"].as_u64().unwrap() >= 1000, "{body}");
}

#[tokio::test]
async fn at_the_cap_sessions_in_use_are_kept_and_creation_is_refused() {
    let mut session_limits = limits(Duration::from_secs(60));
    session_limits.max_sessions = 3;
    let server = TestServer::with(test_config(), session_limits).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(server.create(STABLE, &format!("s{i}")).await.0);
    }
    let refused = server
        .client
        .post(server.url(STABLE))
        .json(&json!({ "data": "flood" }))
        .send()
        .await
        .unwrap();
    expect_at_capacity(refused).await;
    for id in &ids {
        assert_eq!(
            server.get(&format!("{STABLE}/{id}")).await.status(),
            StatusCode::OK,
            "a session written in the last minute is never evicted"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn payload_bytes_of_all_sessions_are_budgeted() {
    let mut session_limits = limits(Duration::from_secs(60));
    session_limits.max_total_bytes = 8_000;
    let server = TestServer::with(test_config(), session_limits.clone()).await;
    let full = "x".repeat(4096);
    let (first, _) = server.create(STABLE, &full).await;
    let (small, small_token) = server.create(STABLE, "tiny").await;
    // 4096 + 4 + 4096 > 8000: a second large payload does not fit.
    let refused = server
        .client
        .post(server.url(STABLE))
        .json(&json!({ "data": full }))
        .send()
        .await
        .unwrap();
    expect_at_capacity(refused).await;
    // Nor may a write grow a payload past the budget.
    expect_at_capacity(server.put(STABLE, &small, &small_token, &full).await).await;
    // A write that fits still works, and every session is still there.
    assert_eq!(
        server
            .put(STABLE, &small, &small_token, &"y".repeat(1000))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        server.get(&format!("{STABLE}/{first}")).await.status(),
        StatusCode::OK
    );
    server.stop().await;

    // Sessions not written recently make room instead.
    session_limits.protect_written_within = Duration::ZERO;
    let server = TestServer::with(test_config(), session_limits).await;
    let (first, _) = server.create(STABLE, &full).await;
    server.create(STABLE, &full).await;
    server.create(STABLE, &full).await;
    expect_error(
        server.get(&format!("{STABLE}/{first}")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn long_polls_past_a_cap_answer_at_once() {
    let mut config = test_config();
    config.rendezvous.long_polls_per_session = 1;
    config.rendezvous.long_polls_per_address = 2;
    let server = TestServer::with_config(config).await;
    let (first, first_token) = server.create(STABLE, "a").await;
    let (second, second_token) = server.create(STABLE, "b").await;
    let (third, third_token) = server.create(STABLE, "c").await;
    let poll = |id: &str, token: &str| {
        server
            .client
            .get(server.url(&format!("{STABLE}/{id}?since={token}&timeout_ms=3000")))
            .send()
    };
    let held = tokio::spawn(poll(&first, &first_token));
    let held_too = tokio::spawn(poll(&second, &second_token));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (id, token, cap) in [
        (&first, &first_token, "per session"),
        (&third, &third_token, "per address"),
    ] {
        let started = Instant::now();
        let response = poll(id, token).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1), "{cap}");
        assert_eq!(response.status(), StatusCode::OK, "{cap}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["sequence_token"], token.as_str(), "{cap}");
    }
    let started = Instant::now();
    held.await.unwrap().unwrap();
    held_too.await.unwrap().unwrap();
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the granted polls waited"
    );
    server.stop().await;
}

mxqr_testkit::backend_tests! {
    full_session_life_on_both_prefixes,
    stale_token_conflicts_with_the_prefix_errcode,
    every_write_gets_a_new_token_even_with_identical_data,
    retried_put_with_previous_token_and_same_data_succeeds,
    transaction_ids_make_puts_idempotent,
    sessions_expire_and_are_counted,
    writes_renew_the_life_up_to_the_maximum,
    expiry_ends_a_pending_long_poll_with_not_found,
}

//! MSC4108 (2024) ETag rendezvous over real HTTP, checked against what matrix-sdk requires.

use std::time::{Duration, Instant};

use mxqr_testkit::Backend;
use mxqr_testkit::rendezvous::{MSC4108, TestServer, expect_error, test_config};
use reqwest::header::HeaderMap;
use reqwest::{Response, StatusCode};
use serde_json::Value;

/// matrix-sdk reads these on 200 and 304 and fails without them.
fn assert_version_headers(headers: &HeaderMap) -> String {
    for name in ["expires", "last-modified"] {
        let value = headers[name].to_str().unwrap();
        httpdate::parse_http_date(value).unwrap_or_else(|_| panic!("{name}: {value}"));
    }
    assert_eq!(headers["cache-control"], "no-store, no-transform");
    assert_eq!(headers["pragma"], "no-cache");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2);
    etag
}

/// Creates a session; returns (session URL, ETag).
async fn create(server: &TestServer, body: &str) -> (String, String) {
    let response = server
        .client
        .post(server.url(MSC4108))
        .header("content-type", "text/plain")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let etag = assert_version_headers(response.headers());
    let body: Value = response.json().await.unwrap();
    (body["url"].as_str().unwrap().to_owned(), etag)
}

async fn put(server: &TestServer, url: &str, if_match: Option<&str>, body: &str) -> Response {
    let mut request = server.client.put(url).body(body.to_owned());
    if let Some(etag) = if_match {
        request = request.header("if-match", etag);
    }
    request.send().await.unwrap()
}

async fn get(server: &TestServer, url: &str, if_none_match: Option<&str>) -> Response {
    let mut request = server.client.get(url);
    if let Some(etag) = if_none_match {
        request = request.header("if-none-match", etag);
    }
    request.send().await.unwrap()
}

async fn create_read_write_delete(backend: Backend) {
    let server = TestServer::start_on(backend).await;
    let (url, etag0) = create(&server, "").await;
    assert!(
        url.starts_with(&format!("{}{MSC4108}/", server.base)),
        "{url}"
    );

    // The creator polls with its own ETag: unchanged → 304 with the version headers.
    let unchanged = get(&server, &url, Some(&etag0)).await;
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(assert_version_headers(unchanged.headers()), etag0);

    // The scanner writes.
    let written = put(&server, &url, Some(&etag0), "c2Nhbm5lcg|a2V5").await;
    assert_eq!(written.status(), StatusCode::ACCEPTED);
    let etag1 = assert_version_headers(written.headers());
    assert_ne!(etag1, etag0);

    let changed = get(&server, &url, Some(&etag0)).await;
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(changed.headers()["content-type"], "text/plain");
    assert_eq!(changed.headers()["content-length"], "15");
    assert_eq!(assert_version_headers(changed.headers()), etag1);
    let modified = changed.headers()["last-modified"].to_str().unwrap();
    let modified = httpdate::parse_http_date(modified).unwrap();
    let skew = std::time::SystemTime::now()
        .duration_since(modified)
        .unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(60),
        "Last-Modified off by {skew:?}"
    );
    assert_eq!(changed.text().await.unwrap(), "c2Nhbm5lcg|a2V5");

    let star = get(&server, &url, Some("*")).await;
    assert_eq!(star.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(assert_version_headers(star.headers()), etag1);

    // A GET without If-None-Match always gets the payload.
    let plain = get(&server, &url, None).await;
    assert_eq!(plain.status(), StatusCode::OK);
    assert_eq!(plain.text().await.unwrap(), "c2Nhbm5lcg|a2V5");

    // Identical bodies still get a new ETag.
    let again = put(&server, &url, Some(&etag1), "c2Nhbm5lcg|a2V5").await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let etag2 = assert_version_headers(again.headers());
    assert_ne!(etag2, etag1);

    let deleted = server.client.delete(&url).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    expect_error(
        get(&server, &url, None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;
    expect_error(
        server.client.delete(&url).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;
    expect_error(
        put(&server, &url, Some(&etag2), "x").await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    )
    .await;
    server.stop().await;
}

async fn write_preconditions(backend: Backend) {
    let server = TestServer::start_on(backend).await;
    let (url, etag0) = create(&server, "init").await;
    expect_error(
        put(&server, &url, None, "x").await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    )
    .await;
    let written = put(&server, &url, Some(&etag0), "one").await;
    let etag1 = written.headers()["etag"].to_str().unwrap().to_owned();
    // Stale and foreign ETags.
    for stale in [etag0.as_str(), "\"bogus\"", "*"] {
        expect_error(
            put(&server, &url, Some(stale), "two").await,
            StatusCode::PRECONDITION_FAILED,
            "M_CONCURRENT_WRITE",
        )
        .await;
    }
    // A proxy that weakened the ETag does not break the flow.
    let weak = put(&server, &url, Some(&format!("W/{etag1}")), "two").await;
    assert_eq!(weak.status(), StatusCode::ACCEPTED);
    // Retried write after a lost 202: previous ETag, same body → same new ETag.
    let etag2 = weak.headers()["etag"].to_str().unwrap().to_owned();
    let retry = put(&server, &url, Some(&etag1), "two").await;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    assert_eq!(retry.headers()["etag"].to_str().unwrap(), etag2);

    expect_error(
        put(&server, &url, Some(&etag2), &"a".repeat(4097)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    )
    .await;
    let at_limit = put(&server, &url, Some(&etag2), &"a".repeat(4096)).await;
    assert_eq!(at_limit.status(), StatusCode::ACCEPTED);
    let too_big_create = server
        .client
        .post(server.url(MSC4108))
        .body("a".repeat(4097))
        .send()
        .await
        .unwrap();
    expect_error(too_big_create, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE").await;
    server.stop().await;
}

#[tokio::test]
async fn unknown_sessions_and_navigation() {
    let server = TestServer::start().await;
    for id in ["nope", "01ARZ3NDEKTSV4RRFFQ69G5FAV"] {
        let url = server.url(&format!("{MSC4108}/{id}"));
        expect_error(
            get(&server, &url, None).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        )
        .await;
    }
    let (url, _) = create(&server, "payload").await;
    let response = server
        .client
        .get(&url)
        .header("sec-fetch-dest", "document")
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::FORBIDDEN, "M_FORBIDDEN").await;
    let patch = server.client.patch(&url).send().await.unwrap();
    expect_error(patch, StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED").await;
    server.stop().await;
}

#[tokio::test]
async fn concurrent_writers_with_the_same_etag_exactly_one_wins() {
    let server = TestServer::start().await;
    let (url, etag) = create(&server, "").await;
    let writers = (0..6).map(|i| {
        let request = server
            .client
            .put(&url)
            .header("if-match", etag.clone())
            .body(format!("writer {i}"));
        tokio::spawn(async move { request.send().await.unwrap().status() })
    });
    let mut statuses = Vec::new();
    for writer in writers {
        statuses.push(writer.await.unwrap());
    }
    let wins = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    let conflicts = statuses
        .iter()
        .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
        .count();
    assert_eq!((wins, conflicts), (1, 5), "{statuses:?}");
    server.stop().await;
}

#[tokio::test]
async fn long_poll_with_if_none_match() {
    let server = TestServer::start().await;
    let (url, etag0) = create(&server, "").await;

    // Timeout → 304.
    let started = Instant::now();
    let waited = get(&server, &format!("{url}?timeout_ms=300"), Some(&etag0)).await;
    assert_eq!(waited.status(), StatusCode::NOT_MODIFIED);
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_eq!(assert_version_headers(waited.headers()), etag0);

    // Prefer: wait=1 (seconds) → 304 after about a second.
    let started = Instant::now();
    let waited = server
        .client
        .get(&url)
        .header("if-none-match", &etag0)
        .header("prefer", "wait=1")
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), StatusCode::NOT_MODIFIED);
    assert!(started.elapsed() >= Duration::from_millis(990));

    // Wake-up on write → 200 with the new payload.
    let poll = tokio::spawn(
        server
            .client
            .get(format!("{url}?timeout_ms=20000"))
            .header("if-none-match", &etag0)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let written = put(&server, &url, Some(&etag0), "hello").await;
    let etag1 = written.headers()["etag"].to_str().unwrap().to_owned();
    let response = poll.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"].to_str().unwrap(), etag1);
    assert_eq!(response.text().await.unwrap(), "hello");
    server.stop().await;
}

#[tokio::test]
async fn sessions_path_is_configurable() {
    let mut config = test_config();
    config.rendezvous.msc4108_sessions_path = "_synapse/client/rendezvous".into();
    config.public_url = Some("http://rendezvous.test/base/".into());
    let server = TestServer::with_config(config).await;
    let (url, _) = create(&server, "x").await;
    let id = url
        .strip_prefix("http://rendezvous.test/base/_synapse/client/rendezvous/")
        .unwrap_or_else(|| panic!("{url}"));
    let response = server
        .client
        .get(server.url(&format!("/_synapse/client/rendezvous/{id}")))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // CORS follows the sessions wherever they are configured to live.
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert_eq!(response.text().await.unwrap(), "x");
    server.stop().await;
}

#[tokio::test]
async fn text_payloads_are_never_sniffed_or_run_as_pages() {
    let server = TestServer::start().await;
    let (url, _) = create(&server, "<script>alert(1)</script>").await;
    let response = get(&server, &url, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["content-security-policy"], "sandbox");
    server.stop().await;
}

#[tokio::test]
async fn cors_preflight_and_exposed_etag() {
    let server = TestServer::start().await;
    let (url, etag) = create(&server, "").await;
    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "if-match, content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    for method in ["GET", "PUT", "DELETE", "POST"] {
        assert!(methods.contains(method), "{methods}");
    }
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in ["authorization", "content-type", "if-match", "if-none-match"] {
        assert!(allowed.contains(header), "{allowed}");
    }
    let response = server
        .client
        .get(&url)
        .header("origin", "https://app.example")
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(
        response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("etag")
    );
    server.stop().await;
}

#[tokio::test]
async fn non_text_payloads_and_rate_limits() {
    let mut config = test_config();
    config.rate_limit.enabled = true;
    config.rate_limit.create_burst = 1;
    config.rate_limit.create_per_second = 0.1;
    let server = TestServer::with_config(config).await;
    let binary = server
        .client
        .post(server.url(MSC4108))
        .body(vec![0xff_u8, 0xfe, 0x00])
        .send()
        .await
        .unwrap();
    expect_error(binary, StatusCode::BAD_REQUEST, "M_INVALID_PARAM").await;
    // The refused request above still used the one token of the burst.
    let limited = server
        .client
        .post(server.url(MSC4108))
        .body("x")
        .send()
        .await
        .unwrap();
    let body = expect_error(limited, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED").await;
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
    server.stop().await;
}

mxqr_testkit::backend_tests! {
    create_read_write_delete,
    write_preconditions,
}

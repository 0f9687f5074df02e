//! Health, metrics, `/versions` and the headers every response carries.

use mxqr_testkit::rendezvous::{MSC4108, STABLE, TestServer, metric, test_config};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn health_is_json_ok() {
    let server = TestServer::start().await;
    let response = server.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "status": "ok" })
    );
    server.stop().await;
}

#[tokio::test]
async fn versions_advertise_spec_range_and_rendezvous_features() {
    let server = TestServer::start().await;
    let body: Value = server
        .get("/_matrix/client/versions")
        .await
        .json()
        .await
        .unwrap();
    let versions: Vec<&str> = body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let expected: Vec<String> = (1..=18).map(|minor| format!("v1.{minor}")).collect();
    assert_eq!(versions, expected);
    assert_eq!(
        body["unstable_features"],
        json!({
            "org.matrix.msc4108": true,
            "io.element.msc4388": true,
            "io.mxqr.rendezvous_long_poll": true,
        })
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_sessions_and_requests_by_route_template() {
    let server = TestServer::start().await;
    let (id, _) = server.create(STABLE, "x").await;
    server.get(&format!("{STABLE}/{id}")).await;
    server.get(&format!("{STABLE}/{id}")).await;
    server.get("/does/not/exist").await;
    let response = server
        .client
        .post(server.url(MSC4108))
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let response = server.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    assert!(
        !text.contains(&id),
        "session IDs must not appear in metrics"
    );
    for (series, value) in [
        ("mxqr_rendezvous_sessions_live{transport=\"msc4388\"}", 1.0),
        ("mxqr_rendezvous_sessions_live{transport=\"msc4108\"}", 1.0),
        (
            "mxqr_rendezvous_sessions_created_total{transport=\"msc4388\"}",
            1.0,
        ),
        (
            "mxqr_rendezvous_sessions_expired_total{transport=\"msc4388\"}",
            0.0,
        ),
        (
            "mxqr_http_requests_total{route=\"/_matrix/client/v1/rendezvous/{id}\",method=\"GET\",status=\"200\"}",
            2.0,
        ),
        (
            "mxqr_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}",
            1.0,
        ),
        (
            "mxqr_http_request_duration_seconds_count{route=\"/_matrix/client/v1/rendezvous/{id}\"}",
            2.0,
        ),
        (
            "mxqr_http_request_duration_seconds_bucket{route=\"/_matrix/client/v1/rendezvous/{id}\",le=\"+Inf\"}",
            2.0,
        ),
    ] {
        assert_eq!(metric(&text, series), Some(value), "{series}\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn every_response_has_no_store_and_a_content_length() {
    let server = TestServer::start().await;
    let (id, token) = server.create(STABLE, "x").await;
    let responses = [
        server.get("/health").await,
        server.get("/metrics").await,
        server.get("/_matrix/client/versions").await,
        server.get(STABLE).await,
        server.get(&format!("{STABLE}/{id}")).await,
        server.get("/unknown").await,
        server.put(STABLE, &id, "stale", "y").await,
        server.put(STABLE, &id, &token, "y").await,
        server
            .client
            .post(server.url(MSC4108))
            .body("")
            .send()
            .await
            .unwrap(),
        server
            .client
            .delete(server.url(&format!("{STABLE}/{id}")))
            .send()
            .await
            .unwrap(),
    ];
    for response in responses {
        let status = response.status();
        let headers = response.headers().clone();
        assert_eq!(
            headers["cache-control"], "no-store, no-transform",
            "{status}"
        );
        let declared: usize = headers["content-length"].to_str().unwrap().parse().unwrap();
        assert_eq!(response.bytes().await.unwrap().len(), declared, "{status}");
    }
    server.stop().await;
}

#[tokio::test]
async fn cors_only_on_api_routes() {
    let server = TestServer::start().await;
    let from_elsewhere = |path: &str| {
        server
            .client
            .get(server.url(path))
            .header("origin", "https://app.example")
            .send()
    };
    let api = from_elsewhere("/_matrix/client/versions").await.unwrap();
    assert_eq!(api.headers()["access-control-allow-origin"], "*");
    for page in [
        "/health",
        "/login",
        "/account",
        "/link",
        "/oauth2/authorize",
    ] {
        let response = from_elsewhere(page).await.unwrap();
        assert!(
            !response
                .headers()
                .contains_key("access-control-allow-origin"),
            "{page}"
        );
        let preflight = server
            .client
            .request(reqwest::Method::OPTIONS, server.url(page))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert!(
            !preflight
                .headers()
                .contains_key("access-control-allow-origin"),
            "{page}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn metrics_on_a_separate_listener_and_off_the_public_one() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = free.local_addr().unwrap();
    drop(free);
    let mut config = test_config();
    config.http.metrics_listen = Some(metrics_addr);
    config.http.public_metrics = false;
    let server = TestServer::with_config(config).await;
    assert_eq!(server.get("/metrics").await.status(), StatusCode::NOT_FOUND);
    let mut text = None;
    for _ in 0..50 {
        if let Ok(response) = server
            .client
            .get(format!("http://{metrics_addr}/metrics"))
            .send()
            .await
        {
            text = Some(response.text().await.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let text = text.expect("the metrics listener answers");
    assert!(text.contains("mxqr_rendezvous_sessions_live"), "{text}");
    let other = server
        .client
        .get(format!("http://{metrics_addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

//! Hostile input on every route: oversize and non-JSON bodies, wrong content types, invalid
//! UTF-8 in body, query and path, huge headers, path tricks and wrong methods. Each answer
//! must be the error format of its API (Matrix JSON, OAuth JSON, HTML page), never a 5xx, and
//! the server must still be healthy afterwards. Requests go over a raw TCP socket so that
//! bytes no HTTP client library would send reach the server.

use mxqr_testkit::Backend;
use std::net::SocketAddr;
use std::time::Duration;

use mxqr_testkit::cs::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which error format a route speaks.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Api {
    /// `{"errcode","error"}` (client-server API, rendezvous, and the router's fallbacks).
    Matrix,
    /// `{"error"}` with an RFC 6749 code.
    OAuth,
    /// An HTML page.
    Page,
}

struct Route {
    method: &'static str,
    path: String,
    api: Api,
    /// Whether the handler reads a body (body attacks must then be refused).
    takes_body: bool,
    /// Whether the route needs the bearer token.
    authed: bool,
}

struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// Sends raw `request` bytes and reads the answer until the server closes the connection.
async fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer (431, 413) and close before reading everything: a failed write
    // is fine as long as an answer came back.
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "no answer within 20 s to {}",
        preview(request)
    );
    parse_reply(&buf).unwrap_or_else(|| {
        panic!(
            "unparseable answer {:?} to {}",
            String::from_utf8_lossy(&buf),
            preview(request)
        )
    })
}

fn preview(request: &[u8]) -> String {
    let line_end = request
        .iter()
        .position(|&b| b == b'\r')
        .unwrap_or(request.len());
    String::from_utf8_lossy(&request[..line_end.min(200)]).into_owned()
}

fn parse_reply(buf: &[u8]) -> Option<Reply> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut content_type = String::new();
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            content_type = value.to_owned();
        }
        if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = buf[head_end + 4..].to_vec();
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?, 16).ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some(Reply {
        status,
        content_type,
        body,
    })
}

/// One request as bytes: `target` is the raw request target, `headers` extra header lines.
fn request(method: &str, target: &[u8], headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// Whether `reply` is the error format of `api`; `Err` says what is wrong.
fn check_error(api: Api, reply: &Reply) -> Result<(), String> {
    let text = String::from_utf8_lossy(&reply.body);
    match api {
        Api::Matrix => {
            let value: Value = serde_json::from_slice(&reply.body)
                .map_err(|e| format!("not JSON ({e}): {text:?}"))?;
            let errcode = value["errcode"].as_str().unwrap_or("");
            let ok = (errcode.starts_with("M_") || errcode.starts_with("IO_ELEMENT_"))
                && value["error"].is_string()
                && reply.content_type.starts_with("application/json");
            ok.then_some(())
                .ok_or(format!("not Matrix error JSON: {text}"))
        }
        Api::OAuth => {
            let value: Value = serde_json::from_slice(&reply.body)
                .map_err(|e| format!("not JSON ({e}): {text:?}"))?;
            let error = value["error"].as_str().unwrap_or("");
            // RFC 6749 codes are lower snake case; the router's own 404/405 answer for
            // every path is Matrix JSON (which also carries `error`).
            let oauth_code =
                !error.is_empty() && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            let ok = (oauth_code || value["errcode"].is_string())
                && reply.content_type.starts_with("application/json");
            ok.then_some(())
                .ok_or(format!("not OAuth error JSON: {text}"))
        }
        Api::Page => {
            let ok = reply.content_type.starts_with("text/html")
                && text.trim_start().starts_with("<!DOCTYPE html>");
            ok.then_some(()).ok_or(format!(
                "not an HTML page ({}): {text:?}",
                reply.content_type
            ))
        }
    }
}

/// Every route of the router with live IDs substituted.
fn routes(ids: &Ids) -> Vec<Route> {
    let r = |method, path: &str, api, takes_body, authed| Route {
        method,
        path: path.to_owned(),
        api,
        takes_body,
        authed,
    };
    use Api::*;
    let v3 = "/_matrix/client/v3";
    let mut all = vec![
        r("GET", "/health", Matrix, false, false),
        r("GET", "/metrics", Matrix, false, false),
        r("GET", "/_matrix/client/versions", Matrix, false, false),
        r("GET", "/.well-known/matrix/client", Matrix, false, false),
        r(
            "GET",
            "/_matrix/client/v1/auth_metadata",
            Matrix,
            false,
            false,
        ),
        r(
            "GET",
            "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata",
            Matrix,
            false,
            false,
        ),
        r(
            "GET",
            "/.well-known/oauth-authorization-server",
            OAuth,
            false,
            false,
        ),
        r("POST", "/oauth2/registration", OAuth, true, false),
        r("POST", "/oauth2/device", OAuth, true, false),
        r("POST", "/oauth2/token", OAuth, true, false),
        r("POST", "/oauth2/revoke", OAuth, true, false),
        r("GET", "/login", Page, false, false),
        r("POST", "/login", Page, true, false),
        r("GET", "/register", Page, false, false),
        r("POST", "/register", Page, true, false),
        r("POST", "/logout", Page, true, false),
        r("GET", "/oauth2/authorize", Page, false, false),
        r("POST", "/oauth2/authorize", Page, true, false),
        r("GET", "/link", Page, false, false),
        r("POST", "/link", Page, true, false),
        r("GET", "/account", Page, false, false),
        r("POST", "/account/device/delete", Page, true, false),
        r("POST", "/account/cross-signing-reset", Page, true, false),
        r("GET", &format!("{v3}/account/whoami"), Matrix, false, true),
        r("POST", &format!("{v3}/logout"), Matrix, false, true),
        r("POST", &format!("{v3}/logout/all"), Matrix, false, true),
        r(
            "GET",
            &format!("{v3}/user/{}/account_data/m.example", ids.user),
            Matrix,
            false,
            true,
        ),
        r(
            "PUT",
            &format!("{v3}/user/{}/account_data/m.example", ids.user),
            Matrix,
            true,
            true,
        ),
        r("GET", &format!("{v3}/devices"), Matrix, false, true),
        r(
            "GET",
            &format!("{v3}/devices/{DEVICE}"),
            Matrix,
            false,
            true,
        ),
        r("PUT", &format!("{v3}/devices/{DEVICE}"), Matrix, true, true),
        r(
            "DELETE",
            &format!("{v3}/devices/OTHERDEV"),
            Matrix,
            true,
            true,
        ),
        r("POST", &format!("{v3}/keys/upload"), Matrix, true, true),
        r("POST", &format!("{v3}/keys/query"), Matrix, true, true),
        r("POST", &format!("{v3}/keys/claim"), Matrix, true, true),
        r(
            "POST",
            &format!("{v3}/keys/device_signing/upload"),
            Matrix,
            true,
            true,
        ),
        r(
            "POST",
            &format!("{v3}/keys/signatures/upload"),
            Matrix,
            true,
            true,
        ),
        r(
            "GET",
            &format!("{v3}/room_keys/version"),
            Matrix,
            false,
            true,
        ),
        r(
            "POST",
            &format!("{v3}/room_keys/version"),
            Matrix,
            true,
            true,
        ),
        r(
            "GET",
            &format!("{v3}/room_keys/version/{}", ids.backup),
            Matrix,
            false,
            true,
        ),
        r(
            "PUT",
            &format!("{v3}/room_keys/version/{}", ids.backup),
            Matrix,
            true,
            true,
        ),
        r(
            "DELETE",
            &format!("{v3}/room_keys/version/999"),
            Matrix,
            false,
            true,
        ),
        r("POST", MSC4108, Matrix, true, false),
        r(
            "GET",
            &format!("{MSC4108}/{}", ids.msc4108),
            Matrix,
            false,
            false,
        ),
        r(
            "PUT",
            &format!("{MSC4108}/{}", ids.msc4108),
            Matrix,
            true,
            false,
        ),
    ];
    for (prefix, id) in [(STABLE, &ids.stable), (UNSTABLE, &ids.unstable)] {
        all.extend([
            r("GET", prefix, Matrix, false, false),
            r("POST", prefix, Matrix, true, false),
            r("GET", &format!("{prefix}/{id}"), Matrix, false, false),
            r("PUT", &format!("{prefix}/{id}"), Matrix, true, false),
            r("PUT", &format!("{prefix}/{id}/txn1"), Matrix, true, false),
        ]);
    }
    // Deleting ends a session: last, so that every other route still meets a live one.
    for (prefix, id) in [
        (STABLE, &ids.stable),
        (UNSTABLE, &ids.unstable),
        (MSC4108, &ids.msc4108),
    ] {
        all.push(r("DELETE", &format!("{prefix}/{id}"), Matrix, false, false));
    }
    all
}

const STABLE: &str = "/_matrix/client/v1/rendezvous";
const UNSTABLE: &str = "/_matrix/client/unstable/io.element.msc4388/rendezvous";
const MSC4108: &str = "/_matrix/client/unstable/org.matrix.msc4108/rendezvous";
const DEVICE: &str = "BADDEV";

struct Ids {
    user: String,
    backup: String,
    stable: String,
    unstable: String,
    msc4108: String,
}

/// One hostile request against one route.
struct Attack {
    name: &'static str,
    method: Option<&'static str>,
    target: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    /// Refused by the HTTP layer before routing: a bare 4xx, no API body.
    transport: bool,
    /// Must be refused (4xx) rather than possibly served.
    must_fail: bool,
}

fn attacks(route: &Route, served: &[&str]) -> Vec<Attack> {
    let path = route.path.as_bytes().to_vec();
    let json_type = ("Content-Type", b"application/json".to_vec());
    let form_type = (
        "Content-Type",
        b"application/x-www-form-urlencoded".to_vec(),
    );
    let body_type = match route.api {
        Api::Matrix => json_type.clone(),
        Api::OAuth | Api::Page => form_type.clone(),
    };
    let with = |suffix: &[u8]| [path.as_slice(), suffix].concat();
    let a = |name, target: Vec<u8>, headers: Vec<(&'static str, Vec<u8>)>, body: Vec<u8>| Attack {
        name,
        method: None,
        target,
        headers,
        body,
        transport: false,
        must_fail: false,
    };
    let body_fails = route.takes_body;
    // MSC4108 payloads are opaque text: only what is not text (or too long) is refused.
    let opaque = route.path.starts_with(MSC4108) && route.method != "GET";
    let json_fails = body_fails && !opaque;
    // Pages check the CSRF double submit first: a matching cookie lets forms reach their
    // field parsing.
    let cookie = ("Cookie", b"mxqr_csrf=csrfcsrfcsrf".to_vec());
    let mut list = vec![
        Attack {
            must_fail: body_fails,
            ..a(
                "oversize body",
                path.clone(),
                vec![body_type.clone()],
                vec![b'a'; 200 * 1024],
            )
        },
        Attack {
            must_fail: json_fails,
            ..a(
                "invalid JSON / form",
                path.clone(),
                vec![body_type.clone()],
                b"{\"a\": [1, 2,, }&&==%zz".to_vec(),
            )
        },
        Attack {
            must_fail: body_fails,
            ..a(
                "invalid UTF-8 body",
                path.clone(),
                vec![body_type.clone()],
                b"{\"data\": \"\xff\xfe\xc0\xaf\", \"x\xff\": 1}".to_vec(),
            )
        },
        Attack {
            must_fail: json_fails,
            ..a(
                "JSON with NUL",
                path.clone(),
                vec![json_type.clone()],
                b"{\"display_name\": \"a\\u0000b\", \"data\": \"\\u0000\", \"client_name\": \"\\u0000\"}"
                    .to_vec(),
            )
        },
        Attack {
            must_fail: json_fails,
            ..a(
                "form with NUL and invalid UTF-8",
                path.clone(),
                vec![form_type.clone(), cookie.clone()],
                b"csrf=csrfcsrfcsrf&grant_type=%00&client_id=%FF%FE&username=a%00b&password=%C0%AF\
                  &user_code=%00&device_code=%FF&code=a%00&redirect_uri=http://a/%00&token=%00\
                  &next=/%00&device_id=%00&action=%FF"
                    .to_vec(),
            )
        },
        Attack {
            must_fail: body_fails,
            ..a(
                "raw NUL byte in body",
                path.clone(),
                vec![body_type.clone(), cookie.clone()],
                b"csrf=csrfcsrfcsrf&username=a\x00b&\x00".to_vec(),
            )
        },
        Attack {
            must_fail: json_fails,
            ..a(
                "wrong content type",
                path.clone(),
                vec![("Content-Type", b"text/xml".to_vec())],
                b"<a>1</a>".to_vec(),
            )
        },
        Attack {
            must_fail: json_fails,
            ..a(
                "JSON array body",
                path.clone(),
                vec![json_type.clone()],
                b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]".to_vec(),
            )
        },
        Attack {
            must_fail: json_fails,
            ..a(
                "deeply nested JSON",
                path.clone(),
                vec![json_type.clone()],
                [vec![b'['; 5000], vec![b']'; 5000]].concat(),
            )
        },
        a(
            "invalid UTF-8 query (escaped)",
            with(b"?since=%FF%FE&timeout_ms=%C0%AF&code=%FF&x=%00"),
            vec![],
            vec![],
        ),
        a(
            "repeated and huge query values",
            with(format!("?timeout_ms=1&timeout_ms=99999999999999999999&since={}", "9".repeat(4000)).as_bytes()),
            vec![],
            vec![],
        ),
        a("invalid UTF-8 path (escaped)", with(b"/%FF%FE"), vec![], vec![]),
        a("encoded NUL in path", with(b"%00"), vec![], vec![]),
        a("dot-dot segments", with(b"/../../../etc/passwd"), vec![], vec![]),
        a("encoded dot-dot", with(b"/%2e%2e/%2E%2E/health"), vec![], vec![]),
        a(
            "double slashes",
            [b"/".as_slice(), &path, b"//x"].concat(),
            vec![],
            vec![],
        ),
        a(
            "overlong ID segment",
            with(format!("/{}", "A".repeat(8000)).as_bytes()),
            vec![],
            vec![],
        ),
        a(
            "bearer token not ASCII",
            path.clone(),
            vec![("Authorization", b"Bearer \xff\xfe\xc3\x28".to_vec())],
            vec![],
        ),
        Attack {
            transport: true,
            must_fail: true,
            ..a(
                "NUL in a header",
                path.clone(),
                vec![("Authorization", b"Bearer a\x00b".to_vec())],
                vec![],
            )
        },
        a(
            "16 KiB header",
            path.clone(),
            vec![("Authorization", format!("Bearer {}", "x".repeat(16 * 1024)).into_bytes())],
            vec![],
        ),
        a(
            "odd If-Match and Prefer",
            path.clone(),
            vec![
                ("If-Match", b"\"\xff\"".to_vec()),
                ("If-None-Match", b"*".to_vec()),
                ("Prefer", b"wait=99999999999999999999".to_vec()),
                ("Accept", b"text/html".to_vec()),
            ],
            vec![],
        ),
        Attack {
            transport: true,
            must_fail: true,
            ..a(
                "1 MiB header",
                path.clone(),
                vec![("X-Big", vec![b'x'; 1024 * 1024])],
                vec![],
            )
        },
        Attack {
            transport: true,
            must_fail: true,
            ..a("raw invalid UTF-8 in target", with(b"/\xff\xfe?\xff=\x00"), vec![], vec![])
        },
    ];
    if route.path == "/oauth2/registration" {
        // Well-formed metadata but for the NUL, so that it reaches validation and storage.
        for (field, value) in [
            ("client_name", "\"App\\u0000\""),
            ("client_uri", "\"https://app.example.com/\\u0000\""),
            ("redirect_uris", "[\"http://127.0.0.1/cb\\u0000\"]"),
        ] {
            let mut metadata = serde_json::json!({
                "client_name": "App",
                "client_uri": "https://app.example.com/",
                "application_type": "native",
                "redirect_uris": ["http://127.0.0.1/cb"],
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            });
            metadata[field] = serde_json::from_str(value).unwrap();
            list.push(Attack {
                must_fail: true,
                ..a(
                    "registration with NUL",
                    path.clone(),
                    vec![json_type.clone()],
                    metadata.to_string().into_bytes(),
                )
            });
        }
    }
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        if !served.contains(&method) {
            list.push(Attack {
                method: Some(method),
                must_fail: false,
                ..a(
                    "other method",
                    path.clone(),
                    vec![body_type.clone()],
                    b"{}".to_vec(),
                )
            });
        }
    }
    list.push(Attack {
        method: Some("BREW"),
        must_fail: true,
        ..a("unknown method", path.clone(), vec![], vec![])
    });
    list
}

/// Creates the live objects the table's paths refer to.
async fn live_ids(server: &OAuthServer, token: &str) -> Ids {
    let create = |prefix: &'static str| {
        let http = server.http.clone();
        let url = server.url(prefix);
        async move {
            let body: Value = http
                .post(url)
                .json(&serde_json::json!({ "data": "aGVsbG8" }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["id"].as_str().unwrap().to_owned()
        }
    };
    let stable = create(STABLE).await;
    let unstable = create(UNSTABLE).await;
    let created: Value = server
        .http
        .post(server.url(MSC4108))
        .body("hello")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let msc4108 = created["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let (status, backup) = call(
        server,
        reqwest::Method::POST,
        "/_matrix/client/v3/room_keys/version",
        Some(token),
        Some(&serde_json::json!({
            "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "auth_data": { "public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo" }
        })),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{backup}");
    Ids {
        user: USER.replace('@', "%40").replace(':', "%3A"),
        backup: backup["version"].as_str().unwrap().to_owned(),
        stable,
        unstable,
        msc4108,
    }
}

async fn every_route_refuses_hostile_input_with_its_error_format(backend: Backend) {
    let server = OAuthServer::with(
        backend,
        mxqr_testkit::oauth::Options {
            registration: true,
            ..Default::default()
        },
    )
    .await;
    server.add_user("alice").await;
    token(&server, "OTHERDEV").await;
    let token = token(&server, DEVICE).await;
    server.add_user("bob").await;
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let ids = live_ids(&server, &token).await;
    let routes = routes(&ids);
    let mut failures = Vec::new();
    let mut sent = 0;
    for route in &routes {
        let served: Vec<&str> = routes
            .iter()
            .filter(|r| r.path == route.path)
            .map(|r| r.method)
            .collect();
        for attack in attacks(route, &served) {
            let method = attack.method.unwrap_or(route.method);
            let mut headers: Vec<(&str, &[u8])> = attack
                .headers
                .iter()
                .map(|(n, v)| (*n, v.as_slice()))
                .collect();
            // Signing out would end the token the other routes use: those get their own.
            let own = if route.path.contains("/logout") {
                token_with_scope(
                    &server,
                    "bob",
                    &format!("BOB{sent}"),
                    &scope(&format!("BOB{sent}")),
                )
                .await
            } else {
                token.clone()
            };
            let bearer = format!("Bearer {own}");
            if route.authed && !headers.iter().any(|(n, _)| *n == "Authorization") {
                headers.push(("Authorization", bearer.as_bytes()));
            }
            let bytes = request(method, &attack.target, &headers, &attack.body);
            let reply = raw(addr, &bytes).await;
            sent += 1;
            let what = format!(
                "{} {} [{}] → {}",
                method, route.path, attack.name, reply.status
            );
            if reply.status >= 500 {
                failures.push(format!(
                    "{what}: server error {:?}",
                    String::from_utf8_lossy(&reply.body)
                ));
                continue;
            }
            if attack.transport {
                if !(400..500).contains(&reply.status) {
                    failures.push(format!("{what}: the HTTP layer let it through"));
                }
                continue;
            }
            if reply.status < 400 {
                if attack.must_fail {
                    failures.push(format!("{what}: accepted"));
                }
                continue;
            }
            // A path the router does not know, or a method it does not serve, gets the
            // router's answer; the rest get their API's.
            let routed = attack.target == route.path.as_bytes()
                || attack
                    .target
                    .starts_with(format!("{}?", route.path).as_bytes());
            let api = if routed && attack.method.is_none() {
                route.api
            } else if route.api == Api::Page && attack.method.is_some() {
                Api::Page
            } else {
                Api::Matrix
            };
            if let Err(why) = check_error(api, &reply) {
                failures.push(format!("{what}: {why}"));
            }
        }
    }
    let health = server.http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(
        health.status(),
        reqwest::StatusCode::OK,
        "unhealthy after the barrage"
    );
    eprintln!("{sent} hostile requests over {} routes", routes.len());
    assert!(
        failures.is_empty(),
        "{} of {sent} answers are wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

mxqr_testkit::backend_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    every_route_refuses_hostile_input_with_its_error_format,
}

//! The loopback redirect of a native app's authorization-code grant (RFC 8252 §7.3): a
//! one-shot HTTP listener on `127.0.0.1` that waits for the browser to come back with
//! `?code=…&state=…` (or `?error=…`), answers it with a short page, and hands the result on.
//!
//! Only `GET /callback` with the expected `state` ends the wait; anything else (a favicon
//! request, a stray visitor, a forged callback with another state) gets a 4xx and the wait
//! goes on, so a local attacker cannot end the sign-in by racing the browser. Each connection
//! is served on its own task, so one that sends nothing cannot hold up the browser's; at
//! most `MAX_CONNECTIONS` (16) are served at once, each within `READ_TIMEOUT` (10 s).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use url::Url;

use crate::ClientError;

/// Path of the redirect URI; the port is whatever the system gives.
pub const CALLBACK_PATH: &str = "/callback";
/// Largest request head read from the browser.
const MAX_HEAD: usize = 16 * 1024;
/// How long one connection may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. A browser opens one or two; the cap bounds what a local
/// process can make us hold, and beyond it new connections wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// Pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the browser brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callback {
    /// The authorization code, to redeem with the PKCE verifier.
    Code(String),
    /// The server (or the person) refused: the RFC 6749 `error` and its description.
    Error {
        error: String,
        description: Option<String>,
    },
}

/// A bound listener and the redirect URI that points at it.
pub struct LoopbackRedirect {
    listener: TcpListener,
    redirect_uri: Url,
}

impl LoopbackRedirect {
    /// Binds `127.0.0.1` on a free port.
    pub async fn bind() -> Result<Self, ClientError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| ClientError::Protocol(format!("cannot listen on loopback: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .port();
        let redirect_uri = Url::parse(&format!("http://127.0.0.1:{port}{CALLBACK_PATH}"))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Self {
            listener,
            redirect_uri,
        })
    }

    /// The redirect URI to register and send in the authorization request.
    pub fn redirect_uri(&self) -> &Url {
        &self.redirect_uri
    }

    /// Waits (at most `timeout`) for the callback carrying `state`.
    pub async fn wait(self, state: &str, timeout: Duration) -> Result<Callback, ClientError> {
        let state: Arc<str> = state.into();
        // Dropped on return: connections still being served are abandoned.
        let mut serving = JoinSet::new();
        tokio::time::timeout(timeout, async {
            loop {
                tokio::select! {
                    Some(served) = serving.join_next() => {
                        if let Ok(Some(callback)) = served {
                            return callback;
                        }
                    }
                    accepted = self.listener.accept(), if serving.len() < MAX_CONNECTIONS => {
                        match accepted {
                            Ok((stream, _)) => {
                                let state = state.clone();
                                serving.spawn(async move { serve_one(stream, &state).await });
                            }
                            // Out of file descriptors, say: do not spin on the error.
                            Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
                        }
                    }
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout)
    }
}

/// Reads one request and answers it; `Some` when it was the expected callback.
async fn serve_one(mut stream: TcpStream, state: &str) -> Option<Callback> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        _ => return None,
    };
    let (status, page, result) = match parse_request(&head, state) {
        Ok(Callback::Code(code)) => (
            "200 OK",
            "Signed in. You can close this window and go back to the terminal.",
            Some(Callback::Code(code)),
        ),
        Ok(error @ Callback::Error { .. }) => (
            "200 OK",
            "The sign-in did not complete. You can close this window; the terminal says why.",
            Some(error),
        ),
        Err(RequestError::NotFound) => ("404 Not Found", "Not found.", None),
        Err(RequestError::Bad) => ("400 Bad Request", "Bad request.", None),
    };
    let body = format!("<!doctype html><meta charset=\"utf-8\"><title>mxqr</title><p>{page}</p>\n");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    result
}

async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return Some(head);
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

/// Why a request to the loopback listener is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Not `GET` on the callback path (a browser's favicon request, say): 404, keep waiting.
    NotFound,
    /// Malformed, or the state does not match: 400.
    Bad,
}

/// Parses the request line of `head`: `GET /callback?… HTTP/1.1` with the expected state.
/// Public for the fuzz target: it reads whatever any local process sends.
pub fn parse_request(head: &[u8], state: &str) -> Result<Callback, RequestError> {
    let head = std::str::from_utf8(head).map_err(|_| RequestError::Bad)?;
    let line = head.lines().next().ok_or(RequestError::Bad)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Bad);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(RequestError::Bad);
    }
    let url = Url::parse("http://127.0.0.1")
        .and_then(|base| base.join(target))
        .map_err(|_| RequestError::Bad)?;
    if method != "GET" || url.path() != CALLBACK_PATH || !target.starts_with('/') {
        return Err(RequestError::NotFound);
    }
    let mut code = None;
    let mut got_state = None;
    let mut error = None;
    let mut description = None;
    for (key, value) in url.query_pairs() {
        let slot = match key.as_ref() {
            "code" => &mut code,
            "state" => &mut got_state,
            "error" => &mut error,
            "error_description" => &mut description,
            _ => continue,
        };
        // A repeated parameter is ambiguous: refuse it (RFC 6749 §3.1).
        if slot.replace(value.into_owned()).is_some() {
            return Err(RequestError::Bad);
        }
    }
    let state_matches = got_state.as_deref().is_some_and(|got| {
        use subtle::ConstantTimeEq as _;
        got.len() == state.len() && bool::from(got.as_bytes().ct_eq(state.as_bytes()))
    });
    if !state_matches {
        return Err(RequestError::Bad);
    }
    match (code, error) {
        (Some(code), None) if !code.is_empty() => Ok(Callback::Code(code)),
        (None, Some(error)) => Ok(Callback::Error { error, description }),
        _ => Err(RequestError::Bad),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Callback, RequestError> {
        parse_request(format!("{line}\r\nHost: x").as_bytes(), "s1")
    }

    #[test]
    fn the_expected_callback_gives_the_code() {
        assert_eq!(
            parse("GET /callback?code=abc%2Bd&state=s1 HTTP/1.1"),
            Ok(Callback::Code("abc+d".into()))
        );
        assert_eq!(
            parse("GET /callback?state=s1&error=access_denied&error_description=no HTTP/1.1"),
            Ok(Callback::Error {
                error: "access_denied".into(),
                description: Some("no".into())
            })
        );
    }

    #[test]
    fn anything_else_keeps_waiting() {
        for (line, want) in [
            ("GET /favicon.ico HTTP/1.1", RequestError::NotFound),
            (
                "POST /callback?code=a&state=s1 HTTP/1.1",
                RequestError::NotFound,
            ),
            ("GET /callback?code=a&state=s2 HTTP/1.1", RequestError::Bad),
            ("GET /callback?code=a HTTP/1.1", RequestError::Bad),
            (
                "GET /callback?code=a&code=b&state=s1 HTTP/1.1",
                RequestError::Bad,
            ),
            ("GET /callback?code=&state=s1 HTTP/1.1", RequestError::Bad),
            (
                "GET /callback?code=a&error=x&state=s1 HTTP/1.1",
                RequestError::Bad,
            ),
            ("GET /callback?code=a&state=s1", RequestError::Bad),
            (
                "GET http://evil/callback?code=a&state=s1 HTTP/1.1",
                RequestError::NotFound,
            ),
            ("", RequestError::Bad),
        ] {
            assert_eq!(parse(line), Err(want), "{line}");
        }
        assert_eq!(parse_request(&[0xff, 0xfe], "s1"), Err(RequestError::Bad));
    }

    #[tokio::test]
    async fn a_stray_request_does_not_end_the_wait() {
        let redirect = LoopbackRedirect::bind().await.unwrap();
        let uri = redirect.redirect_uri().clone();
        let waiting = tokio::spawn(redirect.wait("s1", Duration::from_secs(10)));
        let http = reqwest::Client::new();
        let mut forged = uri.clone();
        forged.set_query(Some("code=forged&state=other"));
        assert_eq!(http.get(forged).send().await.unwrap().status(), 400);
        let mut real = uri.clone();
        real.set_query(Some("code=real&state=s1"));
        let page = http.get(real).send().await.unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(
            waiting.await.unwrap().unwrap(),
            Callback::Code("real".into())
        );
    }

    #[tokio::test]
    async fn a_silent_connection_does_not_hold_up_the_callback() {
        let redirect = LoopbackRedirect::bind().await.unwrap();
        let uri = redirect.redirect_uri().clone();
        let waiting = tokio::spawn(redirect.wait("s1", Duration::from_secs(30)));
        // A local process connects first and sends nothing, for longer than a read may take.
        let addr = format!("127.0.0.1:{}", uri.port().unwrap());
        let _silent: Vec<TcpStream> = {
            let mut held = Vec::new();
            for _ in 0..3 {
                held.push(TcpStream::connect(&addr).await.unwrap());
            }
            held
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = tokio::time::Instant::now();
        let mut real = uri.clone();
        real.set_query(Some("code=real&state=s1"));
        let page = reqwest::Client::new().get(real).send();
        let page = tokio::time::timeout(Duration::from_secs(3), page)
            .await
            .expect("the callback is answered while the silent connections stay open")
            .unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(
            waiting.await.unwrap().unwrap(),
            Callback::Code("real".into())
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

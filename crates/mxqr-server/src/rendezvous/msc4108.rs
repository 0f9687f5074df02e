//! MSC4108 (2024 revision) rendezvous: text bodies versioned by ETag (docs/protocol.md §3a), shaped
//! for what matrix-sdk checks: `Content-Type` exactly `text/plain`, and `ETag`, `Expires` and
//! `Last-Modified` on both 200 and 304.
//!
//! Long-poll extension: a GET whose `If-None-Match` is current waits for a change for up to
//! `timeout_ms` (query) or `Prefer: wait=<seconds>` (RFC 7240), capped by the configuration,
//! then answers 200 with the new payload, or 304 when nothing changed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, FromRef, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::state::RendezvousState;
use super::{MAX_PAYLOAD, PollQuery, parse_id, refuse_navigation};
use crate::client_ip::ClientIp;
use crate::error::{ApiError, ConflictStyle};
use crate::rendezvous::store::{SequenceToken, SessionMeta};
use crate::response::{PathParams, RawBody, json};

/// Where sessions are created.
pub const CREATE_PATH: &str = "/_matrix/client/unstable/org.matrix.msc4108/rendezvous";

const STYLE: ConflictStyle = ConflictStyle::Msc4108;

/// Create route plus session routes under `sessions_path` (validated by the config).
pub fn routes<S>(sessions_path: &str) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    RendezvousState: FromRef<S>,
{
    let sessions = format!("/{}/{{id}}", sessions_path.trim_matches('/'));
    Router::new()
        .route(CREATE_PATH, post(create))
        .route(&sessions, get(read).put(write).delete(remove))
}

/// Adds the version headers matrix-sdk requires on every payload-bearing answer.
fn version_headers(response: &mut Response, meta: &SessionMeta) {
    let headers = response.headers_mut();
    let date = |t: SystemTime| HeaderValue::from_str(&httpdate::fmt_http_date(t));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", meta.token)) {
        headers.insert(header::ETAG, etag);
    }
    if let Ok(expires) = date(SystemTime::now() + meta.expires_in) {
        headers.insert(header::EXPIRES, expires);
    }
    if let Ok(modified) = date(meta.last_modified) {
        headers.insert(header::LAST_MODIFIED, modified);
    }
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    // The payload is whatever a client wrote: never let a browser sniff it into a page, and
    // should one render it anyway, give it no origin and no scripts.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
}

/// The token inside an entity tag as sent back by a client or a proxy (`"T"`, `W/"T"`, `T`).
/// `None` for tags this server could not have issued, which match nothing.
fn parse_etag(value: &HeaderValue) -> Option<SequenceToken> {
    let text = value.to_str().ok()?.split(',').next()?.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    text.trim_matches('"').parse().ok()
}

/// A body as payload: at most 4 KiB of UTF-8 text.
pub(crate) fn payload(body: &[u8]) -> Result<Arc<str>, ApiError> {
    if body.len() > MAX_PAYLOAD {
        return Err(ApiError::TooLarge("payload is larger than 4 KiB"));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::InvalidParam("payload must be UTF-8 text"))?;
    // PostgreSQL text cannot hold NUL: refuse it on every back end alike.
    if text.contains('\0') {
        return Err(ApiError::InvalidParam(
            "payload must not contain NUL characters",
        ));
    }
    Ok(Arc::from(text))
}

/// How long a GET may wait: `timeout_ms` in the query, else `Prefer: wait=<seconds>`.
fn requested_wait(query: &PollQuery, headers: &HeaderMap) -> Option<Duration> {
    query.timeout.or_else(|| {
        headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .find_map(|pref| {
                let (name, value) = pref.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("wait")
                    .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
                    .flatten()
                    .map(Duration::from_secs)
            })
    })
}

/// `POST` with the initial payload → `201 {"url"}`.
async fn create(
    State(state): State<RendezvousState>,
    Extension(client): Extension<ClientIp>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    state.check_create_rate(client)?;
    let data = payload(&body)?;
    let (id, meta) = state.create(STYLE, data).await?;
    let url = format!(
        "{}{}/{id}",
        state.public_url,
        state.config.msc4108_sessions_path.trim_matches('/')
    );
    let mut response = json(StatusCode::CREATED, &json!({ "url": url }));
    version_headers(&mut response, &meta);
    Ok(response)
}

/// `GET <url>`: 200 with the payload, or 304 when `If-None-Match` is current (after waiting
/// for a change when asked to).
async fn read(
    State(state): State<RendezvousState>,
    Extension(client): Extension<ClientIp>,
    PathParams(id): PathParams<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    refuse_navigation(&headers)?;
    let query = PollQuery::parse(query.as_deref())?;
    let id = parse_id(&id)?;
    let if_none_match = headers.get(header::IF_NONE_MATCH);
    // `*` matches whatever the session holds (RFC 9110 §13.1.2): never worth waiting on.
    let any = if_none_match.is_some_and(|v| v.as_bytes().trim_ascii() == b"*");
    let known = if_none_match.and_then(parse_etag);
    let poll = known.zip(requested_wait(&query, &headers));
    let snapshot = state.read(client, STYLE, id, poll).await?;
    let mut response = if any || known == Some(snapshot.meta.token) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut ok = Response::new(Body::from(snapshot.data.to_string()));
        // Exactly `text/plain`: matrix-sdk rejects a charset parameter.
        ok.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        ok
    };
    version_headers(&mut response, &snapshot.meta);
    Ok(response)
}

/// `PUT <url>` with `If-Match` → 202 and the new ETag; 412 when the ETag is stale.
async fn write(
    State(state): State<RendezvousState>,
    Extension(client): Extension<ClientIp>,
    PathParams(id): PathParams<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let if_match = headers
        .get(header::IF_MATCH)
        .ok_or(ApiError::MissingParam("If-Match header required"))?;
    state.check_write_rate(client)?;
    let data = payload(&body)?;
    let id = parse_id(&id)?;
    let expected = parse_etag(if_match).ok_or(ApiError::ConcurrentWrite(STYLE))?;
    let meta = state.update(STYLE, id, expected, data, None).await?;
    let mut response = StatusCode::ACCEPTED.into_response();
    version_headers(&mut response, &meta);
    Ok(response)
}

/// `DELETE <url>` → 204.
async fn remove(
    State(state): State<RendezvousState>,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    state.delete(STYLE, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_survive_proxy_spellings() {
        let token = SequenceToken(12345);
        for spelling in [
            format!("\"{token}\""),
            format!("W/\"{token}\""),
            token.to_string(),
            format!("\"{token}\", \"other\""),
        ] {
            let value = HeaderValue::from_str(&spelling).unwrap();
            assert_eq!(parse_etag(&value), Some(token), "{spelling}");
        }
        assert_eq!(parse_etag(&HeaderValue::from_static("\"nope\"")), None);
    }

    #[test]
    fn wait_from_query_or_prefer_header() {
        let mut headers = HeaderMap::new();
        let none = PollQuery::default();
        assert_eq!(requested_wait(&none, &headers), None);
        headers.insert("prefer", HeaderValue::from_static("respond-async, wait=7"));
        assert_eq!(
            requested_wait(&none, &headers),
            Some(Duration::from_secs(7))
        );
        let query = PollQuery {
            since: None,
            timeout: Some(Duration::from_millis(250)),
        };
        assert_eq!(
            requested_wait(&query, &headers),
            Some(Duration::from_millis(250))
        );
    }
}

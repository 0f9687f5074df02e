//! MSC4108 (2024): the ETag rendezvous (docs/protocol.md §3a).
//!
//! The session's lifetime is taken as `Expires - Date` from the server's own headers, so a
//! skewed local clock cannot shorten it.
//!
//! The `parse_*` functions turn an answer (status, headers, body) into what it means; the
//! requests below and the fuzz targets both call them.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, DATE, ETAG, EXPIRES, HeaderMap, IF_MATCH, IF_NONE_MATCH};
use serde::Deserialize;
use url::Url;

use super::{Snapshot, WriteOutcome, join};
use crate::ClientError;
use crate::body::{self, Cap, parse_json};
use crate::error::require_secure;

const ENDPOINT: &str = "_matrix/client/unstable/org.matrix.msc4108/rendezvous";

pub(super) struct Session {
    pub(super) url: Url,
}

#[derive(Deserialize)]
struct Created {
    url: String,
}

fn etag(headers: &HeaderMap) -> Result<String, ClientError> {
    headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Protocol("rendezvous answer has no ETag".into()))
}

fn http_date(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s).ok())
}

fn lifetime(headers: &HeaderMap) -> Option<Duration> {
    let expires = http_date(headers, EXPIRES)?;
    let now = http_date(headers, DATE).unwrap_or_else(SystemTime::now);
    expires.duration_since(now).ok()
}

impl Session {
    pub(super) async fn create(
        http: &reqwest::Client,
        base_url: &Url,
    ) -> Result<(Self, Snapshot), ClientError> {
        let response = http
            .post(join(base_url, ENDPOINT)?)
            .header(CONTENT_TYPE, "text/plain")
            // hyper sends no length for an empty body; Synapse refuses a create without one.
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .body("")
            .send()
            .await?;
        let (status, headers) = (response.status(), response.headers().clone());
        let (url, snap) = parse_created(
            status,
            &headers,
            &body::read(response, Cap::Rendezvous).await?,
        )?;
        Ok((Self { url }, snap))
    }

    pub(super) async fn join(
        http: &reqwest::Client,
        url: Url,
    ) -> Result<(Self, Snapshot), ClientError> {
        let session = Self { url };
        let snap = session
            .get(http, "", None)
            .await?
            .ok_or(ClientError::Gone)?;
        Ok((session, snap))
    }

    pub(super) async fn get(
        &self,
        http: &reqwest::Client,
        etag_seen: &str,
        wait: Option<Duration>,
    ) -> Result<Option<Snapshot>, ClientError> {
        let mut url = self.url.clone();
        if let Some(wait) = wait {
            url.query_pairs_mut()
                .append_pair("timeout_ms", &wait.as_millis().to_string());
        }
        let mut request = http.get(url);
        if !etag_seen.is_empty() {
            request = request.header(IF_NONE_MATCH, etag_seen);
        }
        let response = request.send().await?;
        let (status, headers) = (response.status(), response.headers().clone());
        let body = body::read(response, Cap::Rendezvous).await?;
        parse_read(status, &headers, &body, etag_seen)
    }

    pub(super) async fn put(
        &self,
        http: &reqwest::Client,
        etag_seen: &str,
        data: &str,
    ) -> Result<WriteOutcome, ClientError> {
        let response = http
            .put(self.url.clone())
            .header(IF_MATCH, etag_seen)
            .header(CONTENT_TYPE, "text/plain")
            .body(data.to_owned())
            .send()
            .await?;
        let (status, headers) = (response.status(), response.headers().clone());
        let body = body::read(response, Cap::Rendezvous).await?;
        parse_write(status, &headers, &body)
    }

    pub(super) async fn delete(&self, http: &reqwest::Client) -> Result<(), ClientError> {
        let response = http.delete(self.url.clone()).send().await?;
        if response.status().is_success() || response.status() == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(ClientError::from_response_within(response, Cap::Rendezvous).await)
        }
    }
}

/// What an answer to the create request means: the session URL (held to the QR decoder's
/// rule, as the other device will be) and the first version.
pub fn parse_created(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Url, Snapshot), ClientError> {
    match status {
        StatusCode::CREATED => {}
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
            return Err(ClientError::Unsupported);
        }
        _ => return Err(ClientError::from_error_body(status, body)),
    }
    let token = etag(headers)?;
    let expires_in = lifetime(headers);
    let created: Created = parse_json(body, "rendezvous creation answer")?;
    let url =
        Url::parse(&created.url).map_err(|e| ClientError::Protocol(format!("session URL: {e}")))?;
    require_secure("rendezvous session URL", &url)?;
    Ok((
        url,
        Snapshot {
            data: String::new(),
            token,
            expires_in,
        },
    ))
}

/// What an answer to a read sent with `If-None-Match: etag_seen` means: the payload and its
/// version, the same version again (304), or `None` when the session is gone.
pub fn parse_read(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    etag_seen: &str,
) -> Result<Option<Snapshot>, ClientError> {
    match status {
        StatusCode::OK => {
            let token = etag(headers)?;
            let data = String::from_utf8(body.to_vec())
                .map_err(|_| ClientError::Protocol("rendezvous payload is not UTF-8".into()))?;
            Ok(Some(Snapshot {
                data,
                token,
                expires_in: lifetime(headers),
            }))
        }
        StatusCode::NOT_MODIFIED => Ok(Some(Snapshot {
            data: String::new(),
            token: etag_seen.to_owned(),
            expires_in: lifetime(headers),
        })),
        StatusCode::NOT_FOUND => Ok(None),
        _ => Err(ClientError::from_error_body(status, body)),
    }
}

/// What an answer to a write sent with `If-Match` means.
pub fn parse_write(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<WriteOutcome, ClientError> {
    match status {
        StatusCode::ACCEPTED | StatusCode::OK => Ok(WriteOutcome::Written {
            token: etag(headers)?,
            expires_in: lifetime(headers),
        }),
        StatusCode::PRECONDITION_FAILED => Ok(WriteOutcome::Conflict),
        StatusCode::NOT_FOUND => Ok(WriteOutcome::Gone),
        _ => Err(ClientError::from_error_body(status, body)),
    }
}

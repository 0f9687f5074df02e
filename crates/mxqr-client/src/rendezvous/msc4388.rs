//! MSC4388: JSON bodies versioned by `sequence_token` (docs/protocol.md §3b).
//!
//! The `parse_*` functions turn an answer (status, body) into what it means; the requests
//! below and the fuzz targets both call them.

use std::time::Duration;

use mxqr_proto::qr::Msc4388Prefix;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::{Snapshot, WriteOutcome, join};
use crate::ClientError;
use crate::body::{self, Cap, parse_json};
use crate::endpoint::endpoint;

pub(super) struct Session {
    pub(super) prefix: Msc4388Prefix,
    /// The homeserver base URL as parsed (with a trailing `/` when its path is `/`): the
    /// form the payload binding uses.
    pub(super) base_url: Url,
    pub(super) id: String,
    endpoint: Url,
}

#[derive(Deserialize)]
struct Created {
    id: String,
    sequence_token: String,
    expires_in_ms: Option<u64>,
}

#[derive(Deserialize)]
struct State {
    data: String,
    sequence_token: String,
    expires_in_ms: Option<u64>,
}

#[derive(Deserialize)]
struct Written {
    sequence_token: String,
    expires_in_ms: Option<u64>,
}

fn prefix_path(prefix: Msc4388Prefix) -> &'static str {
    match prefix {
        Msc4388Prefix::Stable => "_matrix/client/v1/rendezvous",
        Msc4388Prefix::Unstable => "_matrix/client/unstable/io.element.msc4388/rendezvous",
    }
}

impl Session {
    fn new(base_url: &Url, prefix: Msc4388Prefix, id: String) -> Result<Self, ClientError> {
        if id.contains('/') {
            return Err(ClientError::Protocol("invalid rendezvous ID".into()));
        }
        let endpoint = endpoint(base_url, prefix_path(prefix), &[&id])?;
        Ok(Self {
            prefix,
            base_url: base_url.clone(),
            id,
            endpoint,
        })
    }

    /// The base URL as the QR code carries it: no trailing `/` when the path is `/`.
    pub(super) fn base_url_for_qr(&self) -> String {
        let s = self.base_url.as_str();
        if self.base_url.path() == "/" {
            s.trim_end_matches('/').to_owned()
        } else {
            s.to_owned()
        }
    }

    pub(super) async fn create(
        http: &reqwest::Client,
        base_url: &Url,
        prefix: Msc4388Prefix,
        access_token: Option<&str>,
    ) -> Result<(Self, Snapshot), ClientError> {
        let mut request = http
            .post(join(base_url, prefix_path(prefix))?)
            .json(&json!({ "data": "" }));
        if let Some(token) = access_token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        let (id, snap) = parse_created(status, &body::read(response, Cap::Rendezvous).await?)?;
        Ok((Self::new(base_url, prefix, id)?, snap))
    }

    pub(super) async fn join(
        http: &reqwest::Client,
        base_url: &Url,
        prefix: Msc4388Prefix,
        id: &str,
    ) -> Result<(Self, Snapshot), ClientError> {
        let session = Self::new(base_url, prefix, id.to_owned())?;
        let snap = session
            .get(http, "", None)
            .await?
            .ok_or(ClientError::Gone)?;
        Ok((session, snap))
    }

    pub(super) async fn get(
        &self,
        http: &reqwest::Client,
        since: &str,
        wait: Option<Duration>,
    ) -> Result<Option<Snapshot>, ClientError> {
        let mut url = self.endpoint.clone();
        if let Some(wait) = wait {
            url.query_pairs_mut()
                .append_pair("since", since)
                .append_pair("timeout_ms", &wait.as_millis().to_string());
        }
        let response = http.get(url).send().await?;
        let status = response.status();
        parse_read(status, &body::read(response, Cap::Rendezvous).await?)
    }

    pub(super) async fn put(
        &self,
        http: &reqwest::Client,
        token: &str,
        data: &str,
    ) -> Result<WriteOutcome, ClientError> {
        let body = json!({ "sequence_token": token, "data": data });
        let response = http.put(self.endpoint.clone()).json(&body).send().await?;
        let status = response.status();
        parse_write(status, &body::read(response, Cap::Rendezvous).await?)
    }

    pub(super) async fn delete(&self, http: &reqwest::Client) -> Result<(), ClientError> {
        let response = http.delete(self.endpoint.clone()).send().await?;
        if response.status().is_success() || response.status() == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(ClientError::from_response_within(response, Cap::Rendezvous).await)
        }
    }
}

/// What an answer to the create request means: the session's ID and its first version.
pub fn parse_created(status: StatusCode, body: &[u8]) -> Result<(String, Snapshot), ClientError> {
    match status {
        StatusCode::OK | StatusCode::CREATED => {}
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
            return Err(ClientError::Unsupported);
        }
        _ => return Err(ClientError::from_error_body(status, body)),
    }
    let created: Created = parse_json(body, "rendezvous creation answer")?;
    let snap = Snapshot {
        data: String::new(),
        token: created.sequence_token,
        expires_in: created.expires_in_ms.map(Duration::from_millis),
    };
    Ok((created.id, snap))
}

/// What an answer to a read means: the payload and its version, or `None` when the session
/// is gone.
pub fn parse_read(status: StatusCode, body: &[u8]) -> Result<Option<Snapshot>, ClientError> {
    match status {
        StatusCode::OK => {
            let state: State = parse_json(body, "rendezvous read answer")?;
            Ok(Some(Snapshot {
                data: state.data,
                token: state.sequence_token,
                expires_in: state.expires_in_ms.map(Duration::from_millis),
            }))
        }
        StatusCode::NOT_FOUND => Ok(None),
        _ => Err(ClientError::from_error_body(status, body)),
    }
}

/// What an answer to a write means.
pub fn parse_write(status: StatusCode, body: &[u8]) -> Result<WriteOutcome, ClientError> {
    match status {
        StatusCode::OK => {
            let written: Written = parse_json(body, "rendezvous write answer")?;
            Ok(WriteOutcome::Written {
                token: written.sequence_token,
                expires_in: written.expires_in_ms.map(Duration::from_millis),
            })
        }
        StatusCode::CONFLICT => Ok(WriteOutcome::Conflict),
        StatusCode::NOT_FOUND => Ok(WriteOutcome::Gone),
        _ => Err(ClientError::from_error_body(status, body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendezvous_id_cannot_climb_out_of_its_path() {
        let base = Url::parse("https://hs.example/matrix/").unwrap();
        for id in [".", ".."] {
            assert!(
                Session::new(&base, Msc4388Prefix::Stable, id.into()).is_err(),
                "{id}"
            );
        }
        for id in ["%2e%2e", "a?b#c"] {
            let session = Session::new(&base, Msc4388Prefix::Stable, id.into()).unwrap();
            assert!(
                session
                    .endpoint
                    .path()
                    .starts_with("/matrix/_matrix/client/v1/rendezvous/"),
                "{id}: {}",
                session.endpoint
            );
            assert_eq!(session.endpoint.query(), None, "{id}");
            assert_eq!(session.endpoint.path_segments().unwrap().count(), 6, "{id}");
        }
    }
}

//! Reading answer bodies within a cap. A QR code can name any server, so whatever a server
//! sends must not exhaust the device: every body the client reads comes through [`read`],
//! which refuses a `Content-Length` above the cap before reading and otherwise stops as soon
//! as the streamed bytes pass it, so at most one transport chunk beyond the cap is ever held.

use reqwest::Response;
use serde::de::DeserializeOwned;

use crate::ClientError;

/// Which cap applies to an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// Rendezvous answers: one sealed sign-in payload (a few KiB) and its envelope.
    Rendezvous,
    /// Every other answer: server metadata, tokens, key queries, errors.
    Other,
}

impl Cap {
    /// The largest body accepted, in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            Cap::Rendezvous => 64 * 1024,
            Cap::Other => 1024 * 1024,
        }
    }
}

/// Reads the whole body of `response`, or fails with [`ClientError::BodyTooLarge`] as soon as
/// it is known to exceed `cap`.
pub async fn read(mut response: Response, cap: Cap) -> Result<Vec<u8>, ClientError> {
    let limit = cap.bytes();
    let too_large = || ClientError::BodyTooLarge { limit };
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if chunk.len() > limit - body.len() {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses a JSON answer; `what` names it in the error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|source| ClientError::Malformed {
        what: what.to_owned(),
        source,
    })
}

/// Reads a JSON answer within the default cap ([`Cap::Other`]).
pub async fn json<T: DeserializeOwned>(response: Response, what: &str) -> Result<T, ClientError> {
    parse_json(&read(response, Cap::Other).await?, what)
}

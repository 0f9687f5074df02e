//! Errors of the client, one enum so callers can match on what went wrong.

use mxqr_proto::qr::is_secure_url;
use reqwest::StatusCode;
use url::Url;

use crate::body::{self, Cap};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not reach the server: {0}")]
    Network(#[from] reqwest::Error),
    /// The server answered with an error status (and, when it sent one, a Matrix errcode).
    #[error("server answered {status}{}", errcode.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Status {
        status: StatusCode,
        errcode: Option<String>,
        error: Option<String>,
    },
    /// An OAuth error answer (`{"error","error_description"}`).
    #[error("authorization server answered {status} {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    OAuth {
        status: StatusCode,
        error: String,
        description: Option<String>,
    },
    #[error("the server does not offer this rendezvous API")]
    Unsupported,
    #[error("the rendezvous session has expired")]
    Expired,
    #[error("the rendezvous session is gone (deleted by the other device, or expired)")]
    Gone,
    #[error("the other device wrote at the same time as this one")]
    ConcurrentWrite,
    #[error("the server's answer does not follow the protocol: {0}")]
    Protocol(String),
    #[error("timed out waiting for the other device")]
    Timeout,
    /// The access token was refused and could not be renewed.
    #[error("{0}")]
    Unauthorized(String),
    /// A value from a peer or a server cannot go into a request path.
    #[error("cannot build the request URL: {0}")]
    Path(#[from] crate::endpoint::PathError),
    /// The homeserver's own device authorization endpoint cannot anchor the check of the
    /// consent pages a new device names.
    #[error(transparent)]
    ConsentOrigin(#[from] mxqr_proto::machine::ConsentOriginError),
    /// An answer's body is larger than the cap for its kind (see [`crate::body::Cap`]),
    /// announced in `Content-Length` or found while reading; reading stopped there.
    #[error("the server's answer is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// An answer that is not the JSON its endpoint prescribes.
    #[error("the server's {what} is not valid: {source}")]
    Malformed {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A server or the other device named an address that is neither https nor plain http to
    /// a loopback host: the rule the QR decoder applies to codes
    /// ([`mxqr_proto::qr::is_secure_url`]).
    #[error("the {what} {url} is not https (plain http is allowed only for loopback hosts)")]
    InsecureUrl { what: &'static str, url: Url },
}

impl ClientError {
    /// Reads a Matrix error body (`{"errcode","error"}`) if there is one, within the default
    /// cap.
    pub(crate) async fn from_response(response: reqwest::Response) -> Self {
        Self::from_response_within(response, Cap::Other).await
    }

    /// [`from_response`](Self::from_response) for an answer whose kind has cap `cap`.
    pub(crate) async fn from_response_within(response: reqwest::Response, cap: Cap) -> Self {
        let status = response.status();
        match body::read(response, cap).await {
            Ok(bytes) => Self::from_error_body(status, &bytes),
            Err(e) => e,
        }
    }

    /// The error an answer with an error `status` and `body` stands for: a body that is not a
    /// Matrix error leaves the fields empty.
    pub fn from_error_body(status: StatusCode, body: &[u8]) -> Self {
        let body: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |k: &str| {
            body.as_ref()
                .and_then(|b| b.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        ClientError::Status {
            status,
            errcode: field("errcode"),
            error: field("error"),
        }
    }
}

/// Refuses `url` unless it follows the QR decoder's transport rule (https, or plain http to
/// a loopback host).
pub(crate) fn require_secure(what: &'static str, url: &Url) -> Result<(), ClientError> {
    if is_secure_url(url) {
        Ok(())
    } else {
        Err(ClientError::InsecureUrl {
            what,
            url: url.clone(),
        })
    }
}

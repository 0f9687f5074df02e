//! Errors of the client, one enum so callers can match on what went wrong.

use reqwest::StatusCode;

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
}

impl ClientError {
    /// Reads a Matrix error body (`{"errcode","error"}`) if there is one.
    pub(crate) async fn from_response(response: reqwest::Response) -> Self {
        let status = response.status();
        let body: Option<serde_json::Value> = response.json().await.ok();
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

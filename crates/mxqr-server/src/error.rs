//! The one place where failures become HTTP responses (Matrix `{"errcode","error"}` JSON).

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::rendezvous::store::StoreError;
use crate::response::json;

/// `Retry-After` (seconds) on a 503: long enough for a pool to reconnect, short for a sign-in.
pub(crate) const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

/// `response` with `Retry-After: secs` when there is a time to give.
pub(crate) fn with_retry_after(mut response: Response, secs: Option<u64>) -> Response {
    if let Some(secs) = secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// How a stale write is reported: MSC4388 uses 409 (with an unstable errcode under the
/// unstable prefix), MSC4108 uses 412 like any failed `If-Match`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictStyle {
    /// `/_matrix/client/v1/rendezvous`.
    Msc4388Stable,
    /// `/_matrix/client/unstable/io.element.msc4388/rendezvous`.
    Msc4388Unstable,
    /// `/_matrix/client/unstable/org.matrix.msc4108/rendezvous`.
    Msc4108,
}

/// Every refusal the server can give.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Unknown or expired session.
    #[error("no such rendezvous session")]
    NotFound,
    /// No such endpoint (or the API is disabled).
    #[error("unrecognized request")]
    UnknownEndpoint,
    /// The endpoint exists but not with this method.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// The sequence token or ETag is stale.
    #[error("the session was written by someone else; read it again")]
    ConcurrentWrite(ConflictStyle),
    /// A transaction ID came back with a different body.
    #[error("transaction ID reused with a different request body")]
    TxnReused,
    /// Payload or body too large.
    #[error("{0}")]
    TooLarge(&'static str),
    /// Body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
    /// Body is JSON of the wrong shape.
    #[error("request body has the wrong shape: {0}")]
    BadJson(String),
    /// A required header or parameter is missing.
    #[error("{0}")]
    MissingParam(&'static str),
    /// A parameter has an unusable value.
    #[error("{0}")]
    InvalidParam(&'static str),
    /// Refused by policy.
    #[error("{0}")]
    Forbidden(&'static str),
    /// Rate limited.
    #[error("too many requests")]
    LimitExceeded {
        /// When a retry may succeed.
        retry_after: Duration,
    },
    /// The store is unreachable.
    #[error("rendezvous store unavailable")]
    Unavailable,
    /// The rendezvous is at its session or byte cap with only sessions in use: 503 with
    /// `Retry-After`, so a flood of creations cannot end sign-ins in progress.
    #[error("the rendezvous is at capacity; retry later")]
    AtCapacity {
        /// When room is expected.
        retry_after: Duration,
    },

    // Client-server API (src/matrix).
    /// No access token in the request.
    #[error("missing access token")]
    MissingToken,
    /// The access token is unknown, revoked or (with `soft_logout`) expired.
    #[error("unknown or expired access token")]
    UnknownToken {
        /// Expired rather than revoked: the client may refresh instead of signing out.
        soft_logout: bool,
    },
    /// The account is locked (MSC3939, spec v1.8).
    #[error("this account has been locked")]
    UserLocked,
    /// A named resource (device, backup version, account data) does not exist.
    #[error("{0}")]
    Missing(&'static str),
    /// A parameter or uploaded object is unusable, with details for the client.
    #[error("{0}")]
    Invalid(String),
    /// User-interactive authentication is required: the body is the UIA flow description.
    #[error("user-interactive authentication required")]
    AuthRequired(Box<serde_json::Value>),
    /// The database failed.
    #[error("database unavailable")]
    Database,
    /// Account data the server manages (`m.fully_read`, `m.push_rules`): the spec answers 405.
    #[error("{0} is managed by the server and cannot be set as account data")]
    ServerManaged(String),
}

impl ApiError {
    /// Maps a store failure, knowing how this API reports conflicts.
    pub fn from_store(err: StoreError, style: ConflictStyle) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound,
            StoreError::ConcurrentWrite => Self::ConcurrentWrite(style),
            StoreError::TxnReused => Self::TxnReused,
            StoreError::Full { retry_after } => {
                tracing::warn!(?retry_after, "rendezvous at capacity: creation refused");
                Self::AtCapacity { retry_after }
            }
            StoreError::Unavailable(detail) => {
                tracing::error!(%detail, "rendezvous store unavailable");
                Self::Unavailable
            }
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NotFound => (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
            Self::UnknownEndpoint => (StatusCode::NOT_FOUND, "M_UNRECOGNIZED"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED"),
            Self::ConcurrentWrite(ConflictStyle::Msc4388Stable) => {
                (StatusCode::CONFLICT, "M_CONCURRENT_WRITE")
            }
            Self::ConcurrentWrite(ConflictStyle::Msc4388Unstable) => {
                (StatusCode::CONFLICT, "IO_ELEMENT_MSC4388_CONCURRENT_WRITE")
            }
            Self::ConcurrentWrite(ConflictStyle::Msc4108) => {
                (StatusCode::PRECONDITION_FAILED, "M_CONCURRENT_WRITE")
            }
            Self::TxnReused => (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
            Self::NotJson(_) => (StatusCode::BAD_REQUEST, "M_NOT_JSON"),
            Self::BadJson(_) => (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
            Self::MissingParam(_) => (StatusCode::BAD_REQUEST, "M_MISSING_PARAM"),
            Self::InvalidParam(_) => (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
            Self::LimitExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
            Self::AtCapacity { .. } => (StatusCode::SERVICE_UNAVAILABLE, "M_LIMIT_EXCEEDED"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN"),
            Self::MissingToken => (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN"),
            Self::UnknownToken { .. } => (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
            Self::UserLocked => (StatusCode::UNAUTHORIZED, "M_USER_LOCKED"),
            Self::Missing(_) => (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            Self::AuthRequired(_) => (StatusCode::UNAUTHORIZED, "M_FORBIDDEN"),
            Self::Database => (StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN"),
            Self::ServerManaged(_) => (StatusCode::METHOD_NOT_ALLOWED, "M_BAD_JSON"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, errcode) = self.status_and_code();
        // A UIA 401 carries the flows; the errcode only once the client tried to authenticate.
        if let Self::AuthRequired(body) = self {
            return json(status, &*body);
        }
        let mut body = serde_json::json!({ "errcode": errcode, "error": self.to_string() });
        let retry_after_secs = match self {
            Self::LimitExceeded { retry_after } | Self::AtCapacity { retry_after } => {
                let ms = u64::try_from(retry_after.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                body["retry_after_ms"] = ms.into();
                Some(ms.div_ceil(1000))
            }
            // The spec requires `soft_logout` on these; a locked account is always soft.
            Self::UnknownToken { soft_logout } => {
                body["soft_logout"] = soft_logout.into();
                None
            }
            Self::UserLocked => {
                body["soft_logout"] = true.into();
                None
            }
            // An outage is usually brief (a database restart or failover): say when to retry.
            Self::Unavailable | Self::Database => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        };
        with_retry_after(json(status, &body), retry_after_secs)
    }
}

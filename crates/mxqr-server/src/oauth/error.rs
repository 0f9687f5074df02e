//! The one place where OAuth endpoint failures become `{"error","error_description"}` JSON.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::model::auth_code::CodeError;
use super::model::device_grant::PollError;
use super::model::refresh::RefreshError;
use crate::accounts::DbError;
use crate::error::{UNAVAILABLE_RETRY_AFTER_SECS, with_retry_after};
use crate::response::json;

/// Every refusal of the JSON OAuth endpoints (RFC 6749 §5.2, RFC 7591 §3.2.2, RFC 8628 §3.5).
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// `invalid_request`.
    #[error("{0}")]
    InvalidRequest(String),
    /// `invalid_client` (unknown `client_id`).
    #[error("{0}")]
    InvalidClient(String),
    /// `invalid_grant`.
    #[error("{0}")]
    InvalidGrant(String),
    /// `unauthorized_client`: the client did not register this grant type.
    #[error("{0}")]
    UnauthorizedClient(String),
    /// `unsupported_grant_type`.
    #[error("{0}")]
    UnsupportedGrantType(String),
    /// `unsupported_token_type` (revocation).
    #[error("{0}")]
    UnsupportedTokenType(String),
    /// `invalid_scope`.
    #[error("{0}")]
    InvalidScope(String),
    /// `invalid_redirect_uri` (registration).
    #[error("{0}")]
    InvalidRedirectUri(String),
    /// `invalid_client_metadata` (registration).
    #[error("{0}")]
    InvalidClientMetadata(String),
    /// `authorization_pending`.
    #[error("the user has not yet approved the request")]
    AuthorizationPending,
    /// `slow_down`.
    #[error("polling too fast: wait the interval, which grew by 5 seconds")]
    SlowDown,
    /// `access_denied`.
    #[error("the user denied the request")]
    AccessDenied,
    /// `expired_token`.
    #[error("the device code expired; start over")]
    ExpiredToken,
    /// Per-address limit reached (HTTP 429, reported as `slow_down`).
    #[error("too many attempts from this address")]
    RateLimited(Duration),
    /// An allowance of the address or the client is used up (creation bucket, pending device
    /// grants): HTTP 429 (RFC 6585) with `Retry-After`. The code is RFC 6749's
    /// `temporarily_unavailable`, the only registered "try again later"; `slow_down` would
    /// tell an RFC 8628 client to change its polling interval, which is not the matter here.
    #[error("{reason}")]
    Throttled {
        /// When to try again.
        retry_after: Duration,
        /// What is used up.
        reason: &'static str,
    },
    /// The store failed (HTTP 503 `temporarily_unavailable`, never a 500).
    #[error("temporarily unavailable")]
    Unavailable(#[from] DbError),
}

impl OAuthError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::InvalidClient(_) => (StatusCode::UNAUTHORIZED, "invalid_client"),
            Self::InvalidGrant(_) => (StatusCode::BAD_REQUEST, "invalid_grant"),
            Self::UnauthorizedClient(_) => (StatusCode::BAD_REQUEST, "unauthorized_client"),
            Self::UnsupportedGrantType(_) => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            Self::UnsupportedTokenType(_) => (StatusCode::BAD_REQUEST, "unsupported_token_type"),
            Self::InvalidScope(_) => (StatusCode::BAD_REQUEST, "invalid_scope"),
            Self::InvalidRedirectUri(_) => (StatusCode::BAD_REQUEST, "invalid_redirect_uri"),
            Self::InvalidClientMetadata(_) => (StatusCode::BAD_REQUEST, "invalid_client_metadata"),
            Self::AuthorizationPending => (StatusCode::BAD_REQUEST, "authorization_pending"),
            Self::SlowDown => (StatusCode::BAD_REQUEST, "slow_down"),
            Self::AccessDenied => (StatusCode::BAD_REQUEST, "access_denied"),
            Self::ExpiredToken => (StatusCode::BAD_REQUEST, "expired_token"),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "slow_down"),
            Self::Throttled { .. } => (StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        }
    }
}

/// A refused code is `invalid_grant` (RFC 6749 §5.2), with the model's reason.
impl From<CodeError> for OAuthError {
    fn from(err: CodeError) -> Self {
        Self::InvalidGrant(err.to_string())
    }
}

/// A refused refresh token is `invalid_grant`, with the model's reason.
impl From<RefreshError> for OAuthError {
    fn from(err: RefreshError) -> Self {
        Self::InvalidGrant(err.to_string())
    }
}

/// A poll without tokens gets RFC 8628 §3.5's code for its reason.
impl From<PollError> for OAuthError {
    fn from(err: PollError) -> Self {
        match err {
            PollError::Pending => Self::AuthorizationPending,
            PollError::SlowDown => Self::SlowDown,
            PollError::Denied => Self::AccessDenied,
            PollError::Expired => Self::ExpiredToken,
            PollError::Unknown | PollError::AlreadyRedeemed => Self::InvalidGrant(err.to_string()),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        if let Self::Unavailable(err) = &self {
            tracing::error!(%err, "OAuth store failure");
        }
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": code, "error_description": self.to_string() });
        let retry_after = match self {
            Self::RateLimited(wait)
            | Self::Throttled {
                retry_after: wait, ..
            } => Some(wait.as_secs().max(1)),
            // An outage is usually brief (a database restart or failover): say when to retry.
            Self::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        };
        with_retry_after(json(status, &body), retry_after)
    }
}

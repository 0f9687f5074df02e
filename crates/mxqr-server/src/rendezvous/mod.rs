//! The two rendezvous APIs and what they share.

pub mod create_policy;
pub mod longpoll;
pub mod msc4108;
pub mod msc4388;
mod state;
pub mod store;

use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::error::ApiError;
pub use state::{Parts, RendezvousState, charge};
pub use store::MAX_PAYLOAD;
use store::SessionId;

/// Refuses a top-level browser navigation: the rendezvous must not host pages.
pub fn refuse_navigation(headers: &HeaderMap) -> Result<(), ApiError> {
    let is = |name: &str, value: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    if is("sec-fetch-mode", "navigate") || is("sec-fetch-dest", "document") {
        return Err(ApiError::Forbidden(
            "rendezvous sessions cannot be opened as a page",
        ));
    }
    Ok(())
}

/// A session ID from the path; text we could not have issued is simply unknown.
pub fn parse_id(text: &str) -> Result<SessionId, ApiError> {
    text.parse().map_err(|_| ApiError::NotFound)
}

/// Long-poll parameters from the query string (`since`, `timeout_ms`).
#[derive(Debug, Default)]
pub struct PollQuery {
    /// Token the client already has.
    pub since: Option<String>,
    /// How long it is willing to wait.
    pub timeout: Option<Duration>,
}

impl PollQuery {
    /// Parses the raw query; unknown parameters are ignored as Matrix servers do.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut query = Self::default();
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match &*key {
                "since" => query.since = Some(value.into_owned()),
                "timeout_ms" => {
                    let ms: u64 = value.parse().map_err(|_| {
                        ApiError::InvalidParam("timeout_ms must be a non-negative integer")
                    })?;
                    query.timeout = Some(Duration::from_millis(ms));
                }
                _ => {}
            }
        }
        Ok(query)
    }
}

/// The instant a wait of `requested` ends, capped at `cap_ms`.
pub fn deadline(requested: Duration, cap_ms: u64) -> Instant {
    Instant::now() + requested.min(Duration::from_millis(cap_ms))
}

//! Which address a request is attributed to, decided once by the outermost middleware so that
//! rate limits, long-poll caps and the OAuth budgets all count the same client.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::HeaderName;
use axum::http::request::Parts;

/// The client address of a request: the TCP peer, or the last entry of the trusted proxy's
/// header (`rate_limit.client_ip_header`). An extractor as well, for handlers.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// Attributes `request` to an address; `0.0.0.0` when neither source is there (tests that
    /// call the router without a socket).
    pub fn of(request: &Request, proxy_header: Option<&HeaderName>) -> Self {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let forwarded = proxy_header.and_then(|name| {
            let value = request
                .headers()
                .get_all(name)
                .iter()
                .next_back()?
                .to_str()
                .ok()?;
            value.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
        });
        ClientIp(forwarded.or(peer).unwrap_or(IpAddr::from([0u8, 0, 0, 0])))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or(ClientIp(IpAddr::from([0u8, 0, 0, 0]))))
    }
}

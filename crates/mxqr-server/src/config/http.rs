//! `[http]`: connection handling.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Bounds of `http.header_read_timeout_secs`: below a second slow mobile links fail, above
/// five minutes an idle socket costs a descriptor for too long.
const HEADER_TIMEOUT_RANGE_SECS: std::ops::RangeInclusive<u64> = 1..=300;

/// `[http]` table: how connections are accepted and kept, so that one client holding many
/// sockets cannot exhaust the server's file descriptors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Seconds a connection may take to send a complete request head, counted from when it
    /// is accepted or finished its previous response: also the idle keep-alive timeout.
    pub header_read_timeout_secs: u64,
    /// Open connections at most; default: the open-file limit minus a reserve for the
    /// database pools, files and listeners. Past it, new connections wait in the backlog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Open connections per client address (IPv6 grouped by /64); further ones are closed at
    /// once. Default 256, or no per-address cap when `rate_limit.client_ip_header` is set (all
    /// connections then come from the proxy). 0: no per-address cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_address: Option<usize>,
    /// Serve `/metrics` (only) on this extra address too, e.g. `127.0.0.1:9090`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `/metrics` on the main listener; turn off when `metrics_listen` is used.
    pub public_metrics: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            max_connections: None,
            max_connections_per_address: None,
            metrics_listen: None,
            public_metrics: true,
        }
    }
}

impl HttpConfig {
    /// Range checks; `listen` is the main listener, which the metrics one must not repeat.
    pub fn validate(&self, listen: SocketAddr) -> Result<(), String> {
        super::checks::check_range(
            "http.header_read_timeout_secs",
            self.header_read_timeout_secs,
            HEADER_TIMEOUT_RANGE_SECS,
        )?;
        if self.max_connections == Some(0) {
            return Err("http.max_connections must be at least 1".into());
        }
        if let Some(metrics) = self.metrics_listen
            && metrics == listen
            && metrics.port() != 0
        {
            return Err("http.metrics_listen must differ from listen".into());
        }
        Ok(())
    }
}

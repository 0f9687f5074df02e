//! `[rate_limit]`: token buckets per client address.

use serde::{Deserialize, Serialize};

/// `[rate_limit]` table: token buckets per client address (IPv6 grouped by /64).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Apply the limits below.
    pub enabled: bool,
    /// Sustained session creations per second per address.
    pub create_per_second: f64,
    /// Creations allowed in a burst.
    pub create_burst: u32,
    /// Sustained writes (PUT) per second per address.
    pub write_per_second: f64,
    /// Writes allowed in a burst.
    pub write_burst: u32,
    /// Sustained OAuth creations (client registrations and device authorizations, which
    /// need no account) per second per address. Real clients register once per sign-in.
    pub oauth_create_per_second: f64,
    /// OAuth creations allowed in a burst.
    pub oauth_create_burst: u32,
    /// Header carrying the client address set by a trusted reverse proxy (its last entry is
    /// used, e.g. `x-forwarded-for`); unset: the TCP peer address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip_header: Option<String>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            create_per_second: 1.0,
            create_burst: 20,
            write_per_second: 10.0,
            write_burst: 100,
            oauth_create_per_second: 0.1,
            oauth_create_burst: 20,
            client_ip_header: None,
        }
    }
}

impl RateLimitConfig {
    /// Rates and bursts must be positive, the header a header name.
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled {
            let rate_ok = |v: f64| v.is_finite() && v > 0.0;
            if !rate_ok(self.create_per_second)
                || !rate_ok(self.write_per_second)
                || !rate_ok(self.oauth_create_per_second)
            {
                return Err("rate_limit.*_per_second must be positive".into());
            }
            if self.create_burst == 0 || self.write_burst == 0 || self.oauth_create_burst == 0 {
                return Err("rate_limit.*_burst must be at least 1".into());
            }
        }
        if let Some(header) = &self.client_ip_header
            && axum::http::HeaderName::try_from(header.as_str()).is_err()
        {
            return Err(format!(
                "rate_limit.client_ip_header {header:?} is not a header name"
            ));
        }
        Ok(())
    }
}

//! `[oauth]` and `[database]` configuration tables.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[database]` table.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// SQLite file; default `<data_dir>/mxqr.sqlite3`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlite_path: Option<PathBuf>,
}

/// `[oauth]` table: accounts, the authorization server and its pages.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    /// Serve the OAuth 2.0 API, login and account pages (needs the database).
    pub enabled: bool,
    /// Let people create accounts (`prompt=create`, `/register`).
    pub registration_enabled: bool,
    /// Access-token life in seconds (60–86400).
    pub access_token_ttl_secs: u64,
    /// How long after a refresh a retry with the superseded token still gets a fresh pair,
    /// for responses lost on the way (0–300 s).
    pub refresh_grace_secs: u64,
    /// Authorization-code life in seconds (30–600).
    pub auth_code_ttl_secs: u64,
    /// Device-code life in seconds (300–3600).
    pub device_code_ttl_secs: u64,
    /// Minimum polling interval handed to devices, seconds (1–60).
    pub device_poll_interval_secs: u64,
    /// Times a user code may be looked up before its grant is refused (1–100).
    pub user_code_max_lookups: u32,
    /// Browser sign-in life in seconds (300–2592000).
    pub browser_session_ttl_secs: u64,
    /// Sustained code entries / logins per second per address (when `rate_limit.enabled`).
    pub attempts_per_second: f64,
    /// Code entries / logins allowed in a burst per address.
    pub attempts_burst: u32,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            registration_enabled: false,
            access_token_ttl_secs: 300,
            refresh_grace_secs: 60,
            auth_code_ttl_secs: 300,
            device_code_ttl_secs: 1200,
            device_poll_interval_secs: 5,
            user_code_max_lookups: 5,
            browser_session_ttl_secs: 86_400,
            attempts_per_second: 0.1,
            attempts_burst: 10,
        }
    }
}

impl OAuthConfig {
    /// Range checks; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let ranges: [(&str, u64, std::ops::RangeInclusive<u64>); 7] = [
            (
                "access_token_ttl_secs",
                self.access_token_ttl_secs,
                60..=86_400,
            ),
            ("refresh_grace_secs", self.refresh_grace_secs, 0..=300),
            ("auth_code_ttl_secs", self.auth_code_ttl_secs, 30..=600),
            (
                "device_code_ttl_secs",
                self.device_code_ttl_secs,
                300..=3600,
            ),
            (
                "device_poll_interval_secs",
                self.device_poll_interval_secs,
                1..=60,
            ),
            (
                "user_code_max_lookups",
                u64::from(self.user_code_max_lookups),
                1..=100,
            ),
            (
                "browser_session_ttl_secs",
                self.browser_session_ttl_secs,
                300..=2_592_000,
            ),
        ];
        for (key, value, range) in ranges {
            if !range.contains(&value) {
                return Err(format!(
                    "oauth.{key} must be within {}..={}, got {value}",
                    range.start(),
                    range.end()
                ));
            }
        }
        if !(self.attempts_per_second.is_finite() && self.attempts_per_second > 0.0)
            || self.attempts_burst == 0
        {
            return Err("oauth.attempts_per_second and attempts_burst must be positive".into());
        }
        Ok(())
    }
}

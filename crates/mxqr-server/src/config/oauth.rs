//! `[oauth]`: accounts, the authorization server and its pages.

use serde::{Deserialize, Serialize};

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
    /// for responses lost on the way (0–300 s), and only while that pair was never used.
    /// Short (10 s by default), since a stolen token replayed in the window is not caught.
    pub refresh_grace_secs: u64,
    /// Authorization-code life in seconds (30–600).
    pub auth_code_ttl_secs: u64,
    /// Device-code life in seconds (10–3600; below 300 only makes sense for tests, which
    /// need expiry to happen quickly).
    pub device_code_ttl_secs: u64,
    /// Minimum polling interval handed to devices, seconds (1–60).
    pub device_poll_interval_secs: u64,
    /// How long a token-endpoint poll of a pending device grant is held open waiting for the
    /// decision, in milliseconds (0 turns it off; at most the interval less half a second).
    /// The device then gets its tokens the moment the person approves instead of up to one
    /// interval later; RFC 8628 clients see only a slower `authorization_pending`.
    pub device_poll_hold_ms: u64,
    /// Times a user code may be looked up before its grant is refused (1–100).
    pub user_code_max_lookups: u32,
    /// Browser sign-in life in seconds (300–2592000).
    pub browser_session_ttl_secs: u64,
    /// Failed sign-ins allowed per address within `failed_attempts_window_secs` (when
    /// `rate_limit.enabled`); wrong user codes on `/link` and unknown device codes at the
    /// token endpoint each have a budget of this size of their own, so that guessing one
    /// cannot lock people behind the same address out of the others.
    pub failed_attempts_max: u32,
    /// Window of `failed_attempts_max`, seconds.
    pub failed_attempts_window_secs: u64,
    /// Pending (undecided, unexpired) device grants per client address (when
    /// `rate_limit.enabled`, since it needs real client addresses). A person starts one
    /// sign-in at a time; the cap bounds what one address can pile up unauthenticated.
    pub device_grants_pending_per_address: u32,
    /// Pending device grants per client, from all addresses together: bounds the rows a
    /// flood from many addresses can add, while leaving room for many real sign-ins.
    pub device_grants_pending_per_client: u32,
    /// Failed sign-ins allowed per account, from all addresses together, within
    /// `failed_attempts_window_secs` (when `rate_limit.enabled`). Above `failed_attempts_max`,
    /// so that locking someone out takes several addresses.
    pub account_failed_attempts_max: u32,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            registration_enabled: false,
            access_token_ttl_secs: 300,
            refresh_grace_secs: 10,
            auth_code_ttl_secs: 300,
            device_code_ttl_secs: 1200,
            device_poll_interval_secs: 5,
            device_poll_hold_ms: 4_000,
            user_code_max_lookups: 5,
            browser_session_ttl_secs: 86_400,
            failed_attempts_max: 10,
            failed_attempts_window_secs: 300,
            device_grants_pending_per_address: 10,
            device_grants_pending_per_client: 1000,
            account_failed_attempts_max: 20,
        }
    }
}

impl OAuthConfig {
    /// Range checks; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let ranges: [(&str, u64, std::ops::RangeInclusive<u64>); 8] = [
            (
                "access_token_ttl_secs",
                self.access_token_ttl_secs,
                10..=86_400,
            ),
            ("refresh_grace_secs", self.refresh_grace_secs, 0..=300),
            ("auth_code_ttl_secs", self.auth_code_ttl_secs, 30..=600),
            ("device_code_ttl_secs", self.device_code_ttl_secs, 10..=3600),
            (
                "device_poll_interval_secs",
                self.device_poll_interval_secs,
                1..=60,
            ),
            ("device_poll_hold_ms", self.device_poll_hold_ms, 0..=10_000),
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
            super::checks::check_range(&format!("oauth.{key}"), value, range)?;
        }
        if self.device_grants_pending_per_address == 0 || self.device_grants_pending_per_client == 0
        {
            return Err("oauth.device_grants_pending_per_* must be at least 1".into());
        }
        if self.failed_attempts_max == 0
            || self.failed_attempts_window_secs == 0
            || self.account_failed_attempts_max == 0
        {
            return Err(
                "oauth.failed_attempts_max, account_failed_attempts_max and \
                 failed_attempts_window_secs must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Overrides};

    fn load(pairs: &[(&str, &str)]) -> Result<Config, crate::ConfigError> {
        let env = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Config::load(None, env, &Overrides::default())
    }

    #[test]
    fn env_mapping_defaults_and_ranges() {
        let config = load(&[
            ("MXQR_OAUTH__REGISTRATION_ENABLED", "true"),
            ("MXQR_OAUTH__ACCESS_TOKEN_TTL_SECS", "600"),
            ("MXQR_SERVER_NAME", "example.org"),
            ("MXQR_DATABASE__SQLITE_PATH", "/var/lib/mxqr/db.sqlite3"),
            ("MXQR_PUBLIC_URL", "https://matrix.example.org/"),
        ])
        .unwrap();
        assert!(config.oauth.registration_enabled);
        assert_eq!(config.oauth.access_token_ttl_secs, 600);
        assert_eq!(config.effective_server_name(), "example.org");
        assert_eq!(
            config.sqlite_path(),
            std::path::PathBuf::from("/var/lib/mxqr/db.sqlite3")
        );

        let defaults = load(&[("MXQR_PUBLIC_URL", "https://matrix.example.org:8448/")]).unwrap();
        assert_eq!(defaults.effective_server_name(), "matrix.example.org:8448");
        assert_eq!(
            defaults.sqlite_path(),
            defaults.data_dir.join("mxqr.sqlite3")
        );
        assert_eq!(defaults.oauth.device_code_ttl_secs, 1200);

        for bad in [
            ("MXQR_OAUTH__ACCESS_TOKEN_TTL_SECS", "5"),
            ("MXQR_OAUTH__DEVICE_POLL_INTERVAL_SECS", "0"),
            ("MXQR_OAUTH__FAILED_ATTEMPTS_MAX", "0"),
            ("MXQR_OAUTH__NO_SUCH_KEY", "1"),
            ("MXQR_SERVER_NAME", ""),
        ] {
            assert!(load(&[bad]).is_err(), "{bad:?} must be refused");
        }
    }
}

//! Server configuration: TOML file, then `MXQR_*` environment variables, then command-line flags.
//!
//! Environment mapping: `MXQR_` + the key path in upper case, with `__` between table levels.
//! `listen` is `MXQR_LISTEN`, `[rendezvous] ttl_secs` is `MXQR_RENDEZVOUS__TTL_SECS`,
//! `[rate_limit] create_burst` is `MXQR_RATE_LIMIT__CREATE_BURST`. A value is read as a TOML value
//! when it parses as one (`true`, `180`, `2.5`, `"text"`), otherwise as a plain string.
//! `MXQR_CONFIG` names the config file (the `--config` flag wins). Variables whose first segment
//! is not a top-level key are ignored (other mxqr commands use `MXQR_*` too); an unknown key
//! inside a known table is an error, so typos do not pass silently. `MXQR_DATABASE_URL` is
//! accepted for `[database] url` (`MXQR_DATABASE__URL`), after the common `DATABASE_URL`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::SessionLimits;

/// Top-level keys; an `MXQR_*` variable must start with one of them to be read.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "public_url",
    "log",
    "rendezvous",
    "rate_limit",
    "server_name",
    "database",
    "oauth",
    "homeserver",
    "http",
];

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "MXQR_CONFIG";

/// Short form of `MXQR_DATABASE__URL`.
pub const DATABASE_URL_ENV: &str = "MXQR_DATABASE_URL";

/// Session life bounds. MSC4388 asks for 120–300 s (the default is 180); shorter lives are
/// allowed for tests of expiry, longer ones for slow consent flows (MFA, a second device).
const TTL_RANGE_SECS: std::ops::RangeInclusive<u64> = 10..=3600;

/// Longest a long-poll may hold a request: beyond this, proxies start cutting connections.
pub const LONG_POLL_CAP_MS: u64 = 30_000;

/// Smallest body limit that still admits any 4096-byte payload in an MSC4388 JSON body, even
/// one whose every byte JSON escapes as `\u00XX` (6 bytes), plus the envelope.
const MIN_BODY_BYTES: usize = crate::rendezvous::MAX_PAYLOAD * 6 + 1024;

/// Bounds of `http.header_read_timeout_secs`: below a second slow mobile links fail, above
/// five minutes an idle socket costs a descriptor for too long.
const HEADER_TIMEOUT_RANGE_SECS: std::ops::RangeInclusive<u64> = 1..=300;

/// Everything `mxqr serve` can be told.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for persistent state (created at start; the rendezvous itself is in memory).
    pub data_dir: PathBuf,
    /// Base URL clients reach this server at; default `http://<listen>/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// `tracing` filter, e.g. `info` or `mxqr_server=debug` (`RUST_LOG` wins when set).
    pub log: String,
    /// Rendezvous APIs and session limits.
    pub rendezvous: RendezvousConfig,
    /// Per-client-address rate limits.
    pub rate_limit: RateLimitConfig,
    /// Matrix server name (the part after `:` in user IDs); default: the `public_url` host.
    /// Pinned in the accounts database at first start, since user IDs and signed keys contain
    /// it: a configuration naming another is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Persistent store for accounts and OAuth.
    pub database: crate::oauth::DatabaseConfig,
    /// Accounts and the OAuth 2.0 authorization server.
    pub oauth: crate::oauth::OAuthConfig,
    /// Which homeserver the accounts belong to: mxqr itself, or a Synapse that delegates
    /// authentication to mxqr.
    pub homeserver: HomeserverConfig,
    /// Connection handling: timeouts, connection caps and the metrics listener.
    pub http: HttpConfig,
}

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

/// Who serves the client-server API for mxqr's accounts.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HomeserverMode {
    /// mxqr serves the client-server subset itself.
    #[default]
    Standalone,
    /// Synapse serves the client-server API and asks mxqr about tokens
    /// (`matrix_authentication_service`); mxqr provisions users and devices in it.
    Synapse,
}

/// `[homeserver]` table.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HomeserverConfig {
    /// `standalone` or `synapse`.
    pub mode: HomeserverMode,
    /// Base URL mxqr reaches Synapse's `/_synapse/mas/*` API at (synapse mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synapse_url: Option<String>,
    /// The secret shared with Synapse (its `matrix_authentication_service.secret`), inline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// File holding the shared secret (surrounding whitespace ignored, as Synapse does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_path: Option<PathBuf>,
}

/// Shortest shared secret accepted: 256 bits when random, and anyone who reaches
/// introspection may try to guess it.
pub const MIN_SECRET_BYTES: usize = 32;

fn check_secret_length(secret: &str) -> Result<(), ConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::Invalid(format!(
            "homeserver: the shared secret has {} bytes, at least {MIN_SECRET_BYTES} are needed \
             (e.g. `openssl rand -hex 32`)",
            secret.len()
        )));
    }
    Ok(())
}

impl HomeserverConfig {
    /// The shared secret, read from `secret_path` if that is where it is.
    pub fn load_secret(&self) -> Result<String, ConfigError> {
        let secret = match (&self.secret, &self.secret_path) {
            (Some(inline), None) => inline.trim().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_owned(),
            _ => {
                return Err(ConfigError::Invalid(
                    "homeserver: exactly one of secret and secret_path must be set".into(),
                ));
            }
        };
        check_secret_length(&secret)?;
        Ok(secret)
    }
}

/// Who may create an MSC4388 session.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CreatePolicy {
    /// Anyone.
    Open,
    /// Only requests with an access token.
    Authenticated,
}

/// `[rendezvous]` table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RendezvousConfig {
    /// Serve MSC4388 (stable and unstable prefixes).
    pub msc4388_enabled: bool,
    /// Serve the MSC4108 (2024) ETag rendezvous.
    pub msc4108_enabled: bool,
    /// MSC4388 creation policy: `open` or `authenticated`.
    pub create_policy: CreatePolicy,
    /// Session life in seconds, 10–3600 (MSC4388 recommends 120–300).
    pub ttl_secs: u64,
    /// Restart the life (`ttl_secs`) on every successful write.
    pub renew_on_write: bool,
    /// Upper bound on a session's life from creation, renewals included.
    pub max_lifetime_secs: u64,
    /// Live sessions at most. A create beyond it (or beyond `max_total_bytes`) evicts the
    /// session closest to expiry among those not written in the last minute; when there is
    /// none, it is refused with 503 and `Retry-After`.
    pub max_sessions: usize,
    /// Payload bytes of all live sessions together, at most (each payload is ≤ 4096 bytes).
    pub max_total_bytes: usize,
    /// Concurrent long-polls per client address; past it a GET answers at once.
    pub long_polls_per_address: usize,
    /// Concurrent long-polls per session; past it a GET answers at once.
    pub long_polls_per_session: usize,
    /// Concurrent long-polls in total (further lowered to half the connection budget).
    pub max_long_polls: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest a long-poll GET may wait, in milliseconds (at most 30000); 0 turns long-poll
    /// off: it is no longer advertised and every GET answers at once.
    pub long_poll_max_ms: u64,
    /// Path (under `public_url`) of MSC4108 session URLs.
    pub msc4108_sessions_path: String,
    /// Keep sessions in this PostgreSQL database (`postgres://…`) instead of memory, so that
    /// several instances behind one load balancer serve the same sessions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    /// Pooled connections to `postgres_url` (one more is kept for `LISTEN`).
    pub postgres_max_connections: u32,
}

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

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8008)),
            data_dir: PathBuf::from("./mxqr-data"),
            public_url: None,
            log: "info".to_owned(),
            rendezvous: RendezvousConfig::default(),
            rate_limit: RateLimitConfig::default(),
            server_name: None,
            database: crate::oauth::DatabaseConfig::default(),
            oauth: crate::oauth::OAuthConfig::default(),
            homeserver: HomeserverConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        Self {
            msc4388_enabled: true,
            msc4108_enabled: true,
            create_policy: CreatePolicy::Open,
            ttl_secs: 180,
            renew_on_write: true,
            max_lifetime_secs: 600,
            // A host with 1 GiB survives both caps reached at once (README: figures).
            max_sessions: 100_000,
            max_total_bytes: 128 << 20,
            long_polls_per_address: 8,
            long_polls_per_session: 4,
            max_long_polls: 4096,
            max_body_bytes: 64 * 1024,
            long_poll_max_ms: LONG_POLL_CAP_MS,
            msc4108_sessions_path: "_matrix/client/unstable/org.matrix.msc4108/rendezvous"
                .to_owned(),
            postgres_url: None,
            postgres_max_connections: 16,
        }
    }
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

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File named.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The config file is not TOML.
    #[error("config file {path} is not valid TOML: {source}")]
    Syntax {
        /// File named.
        path: PathBuf,
        /// Cause.
        source: toml::de::Error,
    },
    /// A key has the wrong type or is unknown.
    #[error("invalid configuration: {0}")]
    Shape(toml::de::Error),
    /// An `MXQR_*` variable clashes with the structure (a table set to a value or vice versa).
    #[error("environment variable {0} does not fit the configuration structure")]
    Env(String),
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Values given on the command line; they override file and environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--public-url`.
    pub public_url: Option<String>,
}

impl Config {
    /// Reads `file` (if any), applies `MXQR_*` pairs from `env`, then `overrides`, and checks
    /// the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|source| ConfigError::Syntax {
                        path: path.to_owned(),
                        source,
                    })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("MXQR_") else {
                continue;
            };
            let segments: Vec<String> = if name == DATABASE_URL_ENV {
                vec!["database".into(), "url".into()]
            } else {
                rest.split("__").map(str::to_ascii_lowercase).collect()
            };
            if !TOP_LEVEL_KEYS.contains(&segments[0].as_str()) {
                continue;
            }
            // `MXQR_HOMESERVER` alone is the CLI's homeserver URL, not this table.
            if segments.len() == 1 && segments[0] == "homeserver" {
                continue;
            }
            set_path(&mut table, &segments, env_value(&value))
                .map_err(|()| ConfigError::Env(name))?;
        }
        let strings = [
            ("listen", overrides.listen.clone()),
            (
                "data_dir",
                overrides.data_dir.as_ref().map(|p| p.display().to_string()),
            ),
            ("public_url", overrides.public_url.clone()),
        ];
        for (key, value) in strings {
            if let Some(value) = value {
                table.insert(key.to_owned(), toml::Value::String(value));
            }
        }
        let config = Self::deserialize(toml::Value::Table(table)).map_err(ConfigError::Shape)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and formats that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.rendezvous;
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if !TTL_RANGE_SECS.contains(&r.ttl_secs) {
            return invalid(format!(
                "rendezvous.ttl_secs must be within 10..=3600, got {}",
                r.ttl_secs
            ));
        }
        if r.max_lifetime_secs < r.ttl_secs {
            return invalid("rendezvous.max_lifetime_secs must be at least ttl_secs".into());
        }
        if r.max_sessions == 0 {
            return invalid("rendezvous.max_sessions must be at least 1".into());
        }
        if r.max_total_bytes < crate::rendezvous::MAX_PAYLOAD {
            return invalid(format!(
                "rendezvous.max_total_bytes must be at least {} (one payload)",
                crate::rendezvous::MAX_PAYLOAD
            ));
        }
        if r.long_polls_per_address == 0 || r.long_polls_per_session == 0 || r.max_long_polls == 0 {
            return invalid(
                "rendezvous.long_polls_per_*, max_long_polls must be at least 1 (set long_poll_max_ms = 0 to turn long-poll off)"
                    .into(),
            );
        }
        if r.max_body_bytes < MIN_BODY_BYTES {
            return invalid(format!(
                "rendezvous.max_body_bytes must be at least {MIN_BODY_BYTES} (a 4096-byte payload)"
            ));
        }
        let http = &self.http;
        if !HEADER_TIMEOUT_RANGE_SECS.contains(&http.header_read_timeout_secs) {
            return invalid(format!(
                "http.header_read_timeout_secs must be within 1..=300, got {}",
                http.header_read_timeout_secs
            ));
        }
        if http.max_connections == Some(0) {
            return invalid("http.max_connections must be at least 1".into());
        }
        if let Some(metrics) = http.metrics_listen
            && metrics == self.listen
            && metrics.port() != 0
        {
            return invalid("http.metrics_listen must differ from listen".into());
        }
        if r.long_poll_max_ms > LONG_POLL_CAP_MS {
            return invalid(format!(
                "rendezvous.long_poll_max_ms must be at most {LONG_POLL_CAP_MS}"
            ));
        }
        let path = r.msc4108_sessions_path.trim_matches('/');
        let path_ok = !path.is_empty()
            && path.split('/').all(|seg| {
                !seg.is_empty()
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
            });
        if !path_ok {
            return invalid(format!(
                "rendezvous.msc4108_sessions_path {:?} must be /-separated segments of [A-Za-z0-9._~-]",
                r.msc4108_sessions_path
            ));
        }
        // Those paths carry MSC4388 sessions already: the routes would collide.
        let msc4388_prefixes = [
            "_matrix/client/v1/rendezvous",
            "_matrix/client/unstable/io.element.msc4388/rendezvous",
        ];
        if msc4388_prefixes.contains(&path) {
            return invalid(format!(
                "rendezvous.msc4108_sessions_path {path:?} is an MSC4388 prefix"
            ));
        }
        if let Some(url) = &r.postgres_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return invalid("rendezvous.postgres_url must start with postgres://".into());
        }
        if r.postgres_max_connections == 0 {
            return invalid("rendezvous.postgres_max_connections must be at least 1".into());
        }
        if let Some(url) = &self.database.url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return invalid("database.url must start with postgres://".into());
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections must be at least 1".into());
        }
        if let Some(url) = &self.public_url {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return invalid(format!(
                        "public_url {url:?} must be an absolute http(s) URL"
                    ));
                }
            }
        }
        let rl = &self.rate_limit;
        if rl.enabled {
            let rate_ok = |v: f64| v.is_finite() && v > 0.0;
            if !rate_ok(rl.create_per_second)
                || !rate_ok(rl.write_per_second)
                || !rate_ok(rl.oauth_create_per_second)
            {
                return invalid("rate_limit.*_per_second must be positive".into());
            }
            if rl.create_burst == 0 || rl.write_burst == 0 || rl.oauth_create_burst == 0 {
                return invalid("rate_limit.*_burst must be at least 1".into());
            }
        }
        if let Some(header) = &rl.client_ip_header
            && axum::http::HeaderName::try_from(header.as_str()).is_err()
        {
            return invalid(format!(
                "rate_limit.client_ip_header {header:?} is not a header name"
            ));
        }
        self.oauth.validate().map_err(ConfigError::Invalid)?;
        if self.effective_server_name().is_empty() {
            return invalid("server_name must not be empty".into());
        }
        let hs = &self.homeserver;
        if hs.mode == HomeserverMode::Synapse {
            match hs.synapse_url.as_deref().map(url::Url::parse) {
                Some(Ok(u)) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return invalid(
                        "homeserver.synapse_url must be an absolute http(s) URL in synapse mode"
                            .into(),
                    );
                }
            }
            if hs.secret.is_some() == hs.secret_path.is_some() {
                return invalid(
                    "homeserver: exactly one of secret and secret_path must be set in synapse mode"
                        .into(),
                );
            }
            if let Some(secret) = &hs.secret {
                check_secret_length(secret.trim())?;
            }
            if !self.oauth.enabled {
                return invalid("homeserver.mode = \"synapse\" needs oauth.enabled".into());
            }
        }
        Ok(())
    }

    /// The base URL clients see, always ending in `/`.
    pub fn effective_public_url(&self) -> String {
        let mut url = self
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}/", self.listen));
        if !url.ends_with('/') {
            url.push('/');
        }
        url
    }

    /// The Matrix server name: `server_name`, else the host (and port) of the public URL.
    pub fn effective_server_name(&self) -> String {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        url::Url::parse(&self.effective_public_url())
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_default()
    }

    /// The server name the operator chose (`server_name`, else from `public_url`); `None`
    /// when neither is set and the name would only be derived from the listening address.
    pub fn configured_server_name(&self) -> Option<String> {
        (self.server_name.is_some() || self.public_url.is_some())
            .then(|| self.effective_server_name())
    }

    /// The SQLite database file: `database.sqlite_path`, else `<data_dir>/mxqr.sqlite3`.
    pub fn sqlite_path(&self) -> PathBuf {
        self.database
            .sqlite_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("mxqr.sqlite3"))
    }

    /// The PostgreSQL database of the rendezvous: `rendezvous.postgres_url`, else
    /// `database.url` (instances sharing accounts must share sessions too); `None`: memory.
    pub fn rendezvous_postgres_url(&self) -> Option<&str> {
        self.rendezvous
            .postgres_url
            .as_deref()
            .or(self.database.url.as_deref())
    }

    /// The configuration as TOML, with `public_url` resolved (for `--print-config`).
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.public_url = Some(self.effective_public_url());
        if shown.homeserver.secret.is_some() {
            shown.homeserver.secret = Some("<redacted>".into());
        }
        for url in [&mut shown.database.url, &mut shown.rendezvous.postgres_url] {
            if let Some(value) = url.as_mut() {
                *value = redact_url_password(value);
            }
        }
        // Every field is a plain string, number, bool or table: serialising cannot fail.
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Session limits for the store.
    pub fn session_limits(&self) -> SessionLimits {
        let r = &self.rendezvous;
        SessionLimits {
            ttl: Duration::from_secs(r.ttl_secs),
            renew_on_write: r.renew_on_write,
            max_lifetime: Duration::from_secs(r.max_lifetime_secs),
            max_sessions: r.max_sessions,
            max_total_bytes: r.max_total_bytes,
            protect_written_within: crate::store::PROTECT_WRITTEN_WITHIN,
        }
    }
}

/// Reads an environment value as TOML when it is one, else as a string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), ()> {
    match path {
        [] => Err(()),
        [last] => {
            if matches!(table.get(last.as_str()), Some(toml::Value::Table(_))) {
                return Err(());
            }
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(()),
            }
        }
    }
}

/// A database URL with its password replaced, so printed configuration can be shared.
fn redact_url_password(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Only fails for URLs that cannot carry credentials, which this one just did.
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        Ok(_) => raw.to_owned(),
        Err(_) => "<unparsable URL, not shown>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let config = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.effective_public_url(), "http://127.0.0.1:8008/");
        let printed = config.to_toml();
        let dir = std::env::temp_dir().join(format!("mxqr-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("printed.toml");
        std::fs::write(&file, &printed).unwrap();
        let reread = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(reread.rendezvous, config.rendezvous);
        assert_eq!(reread.public_url.as_deref(), Some("http://127.0.0.1:8008/"));
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("mxqr-config-layers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[rendezvous]\nttl_secs = 150\ncreate_policy = \"authenticated\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env(&[
                ("MXQR_RENDEZVOUS__TTL_SECS", "200"),
                ("MXQR_RATE_LIMIT__ENABLED", "false"),
                ("MXQR_PUBLIC_URL", "https://mx.example.org"),
                ("MXQR_HOMESERVER", "ignored: not a server key"),
                ("PATH", "/bin"),
            ]),
            &Overrides {
                listen: Some("127.0.0.1:9100".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(config.rendezvous.ttl_secs, 200);
        assert_eq!(config.rendezvous.create_policy, CreatePolicy::Authenticated);
        assert!(!config.rate_limit.enabled);
        assert_eq!(config.effective_public_url(), "https://mx.example.org/");
    }

    #[test]
    fn database_url_selects_postgres_for_accounts_and_rendezvous() {
        let load =
            |pairs: &[(&str, &str)]| Config::load(None, env(pairs), &Overrides::default()).unwrap();
        let sqlite = load(&[]);
        assert_eq!(sqlite.database.url, None);
        assert_eq!(sqlite.rendezvous_postgres_url(), None);
        for name in ["MXQR_DATABASE_URL", "MXQR_DATABASE__URL"] {
            let pg = load(&[(name, "postgres://db/mxqr")]);
            assert_eq!(pg.database.url.as_deref(), Some("postgres://db/mxqr"));
            assert_eq!(pg.rendezvous_postgres_url(), Some("postgres://db/mxqr"));
        }
        let split = load(&[
            ("MXQR_DATABASE_URL", "postgres://db/accounts"),
            ("MXQR_RENDEZVOUS__POSTGRES_URL", "postgres://db/rendezvous"),
        ]);
        assert_eq!(
            split.rendezvous_postgres_url(),
            Some("postgres://db/rendezvous")
        );
    }

    #[test]
    fn bad_values_are_refused_with_a_message() {
        let load = |pairs: &[(&str, &str)]| Config::load(None, env(pairs), &Overrides::default());
        for pairs in [
            &[("MXQR_RENDEZVOUS__TTL_SECS", "5")][..],
            &[("MXQR_RENDEZVOUS__TTL_SECS", "3601")],
            &[("MXQR_RENDEZVOUS__TTL_SEC", "200")],
            &[("MXQR_RENDEZVOUS", "1")],
            &[("MXQR_LISTEN", "not an address")],
            &[("MXQR_PUBLIC_URL", "ftp://x")],
            &[("MXQR_RENDEZVOUS__MSC4108_SESSIONS_PATH", "a//b")],
            &[(
                "MXQR_RENDEZVOUS__MSC4108_SESSIONS_PATH",
                "/_matrix/client/v1/rendezvous/",
            )],
            &[("MXQR_RENDEZVOUS__LONG_POLL_MAX_MS", "60000")],
            &[("MXQR_RATE_LIMIT__WRITE_PER_SECOND", "0")],
            &[("MXQR_RENDEZVOUS__MAX_BODY_BYTES", "100")],
            &[("MXQR_RENDEZVOUS__MAX_BODY_BYTES", "20000")],
            &[("MXQR_RENDEZVOUS__MAX_TOTAL_BYTES", "4095")],
            &[("MXQR_RENDEZVOUS__LONG_POLLS_PER_SESSION", "0")],
            &[("MXQR_HTTP__HEADER_READ_TIMEOUT_SECS", "0")],
            &[("MXQR_HTTP__HEADER_READ_TIMEOUT_SECS", "301")],
            &[("MXQR_HTTP__MAX_CONNECTIONS", "0")],
            &[("MXQR_HTTP__METRICS_LISTEN", "nowhere")],
            &[("MXQR_RENDEZVOUS__POSTGRES_URL", "mysql://db/mxqr")],
            &[("MXQR_RENDEZVOUS__POSTGRES_MAX_CONNECTIONS", "0")],
            &[("MXQR_DATABASE_URL", "sqlite:///tmp/x")],
            &[("MXQR_DATABASE__MAX_CONNECTIONS", "0")],
            &[("MXQR_HOMESERVER__MODE", "synapse")],
            &[("MXQR_HOMESERVER__MODE", "dendrite")],
            &[
                ("MXQR_HOMESERVER__MODE", "synapse"),
                ("MXQR_HOMESERVER__SYNAPSE_URL", "http://127.0.0.1:8448"),
            ],
            &[
                ("MXQR_HOMESERVER__MODE", "synapse"),
                ("MXQR_HOMESERVER__SYNAPSE_URL", "ftp://x"),
                ("MXQR_HOMESERVER__SECRET", "s"),
            ],
            &[
                ("MXQR_HOMESERVER__MODE", "synapse"),
                ("MXQR_HOMESERVER__SYNAPSE_URL", "http://127.0.0.1:8448"),
                ("MXQR_HOMESERVER__SECRET", "s"),
                ("MXQR_HOMESERVER__SECRET_PATH", "/tmp/s"),
            ],
        ] {
            let err = load(pairs).expect_err(&format!("{pairs:?} must be refused"));
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn synapse_mode_from_env_with_the_secret_redacted_in_print() {
        let config = Config::load(
            None,
            env(&[
                ("MXQR_HOMESERVER", "http://ignored.example"),
                ("MXQR_HOMESERVER__MODE", "synapse"),
                ("MXQR_HOMESERVER__SYNAPSE_URL", "http://127.0.0.1:8448"),
                (
                    "MXQR_HOMESERVER__SECRET",
                    "  shared-secret-of-thirty-two-bytes\n",
                ),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.homeserver.mode, HomeserverMode::Synapse);
        assert_eq!(
            config.homeserver.load_secret().unwrap(),
            "shared-secret-of-thirty-two-bytes"
        );
        let printed = config.to_toml();
        assert!(printed.contains("mode = \"synapse\""), "{printed}");
        assert!(!printed.contains("shared-secret"), "{printed}");
        // Shorter than 32 bytes: refused, inline or in a file.
        let short = Config::load(
            None,
            env(&[
                ("MXQR_HOMESERVER__MODE", "synapse"),
                ("MXQR_HOMESERVER__SYNAPSE_URL", "http://127.0.0.1:8448"),
                ("MXQR_HOMESERVER__SECRET", "shared-secret-of-31-bytes-only!"),
            ]),
            &Overrides::default(),
        )
        .expect_err("a 31-byte secret must be refused");
        assert!(short.to_string().contains("at least 32"), "{short}");
        let with_db = Config::load(
            None,
            env(&[
                (
                    "MXQR_DATABASE__URL",
                    "postgres://mxqr:hunter2@db.internal/mxqr",
                ),
                (
                    "MXQR_RENDEZVOUS__POSTGRES_URL",
                    "postgres://rv:s3cret@db.internal/rv",
                ),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        let printed = with_db.to_toml();
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );
        assert!(
            printed.contains("postgres://mxqr:redacted@db.internal/mxqr"),
            "{printed}"
        );
        let dir = std::env::temp_dir().join(format!("mxqr-config-hs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "from-file\n").unwrap();
        let from_file = HomeserverConfig {
            secret: None,
            secret_path: Some(file.clone()),
            ..config.homeserver.clone()
        };
        let err = from_file.load_secret().expect_err("9 bytes");
        assert!(err.to_string().contains("at least 32"), "{err}");
        std::fs::write(&file, "from-file-0123456789abcdef0123456789\n").unwrap();
        assert_eq!(
            from_file.load_secret().unwrap(),
            "from-file-0123456789abcdef0123456789"
        );
        assert_eq!(
            Config::default().homeserver.mode,
            HomeserverMode::Standalone
        );
    }
}

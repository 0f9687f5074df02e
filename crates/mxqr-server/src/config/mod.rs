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

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod checks;
mod database;
mod homeserver;
mod http;
mod oauth;
mod rate_limit;
mod rendezvous;

pub use database::DatabaseConfig;
pub use homeserver::{HomeserverConfig, HomeserverMode, MIN_SECRET_BYTES};
pub use http::HttpConfig;
pub use oauth::OAuthConfig;
pub use rate_limit::RateLimitConfig;
pub use rendezvous::{CreatePolicy, LONG_POLL_CAP_MS, RendezvousConfig};

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
    pub database: DatabaseConfig,
    /// Accounts and the OAuth 2.0 authorization server.
    pub oauth: OAuthConfig,
    /// Which homeserver the accounts belong to: mxqr itself, or a Synapse that delegates
    /// authentication to mxqr.
    pub homeserver: HomeserverConfig,
    /// Connection handling: timeouts, connection caps and the metrics listener.
    pub http: HttpConfig,
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
            database: DatabaseConfig::default(),
            oauth: OAuthConfig::default(),
            homeserver: HomeserverConfig::default(),
            http: HttpConfig::default(),
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
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--public-url`.
    #[serde(skip_serializing_if = "Option::is_none")]
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
                let text = read_file(path)?;
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
        // The flags as the keys they set (a data directory must be UTF-8, as in a file).
        let flags =
            toml::Table::try_from(overrides).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        table.extend(flags);
        let config = Self::deserialize(toml::Value::Table(table)).map_err(ConfigError::Shape)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and formats that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        self.rendezvous.validate().map_err(ConfigError::Invalid)?;
        self.http
            .validate(self.listen)
            .map_err(ConfigError::Invalid)?;
        self.database.validate().map_err(ConfigError::Invalid)?;
        self.rate_limit.validate().map_err(ConfigError::Invalid)?;
        if let Some(url) = &self.public_url
            && !checks::is_http_url(url)
        {
            return invalid(format!(
                "public_url {url:?} must be an absolute http(s) URL"
            ));
        }
        self.oauth.validate().map_err(ConfigError::Invalid)?;
        if self.effective_server_name().is_empty() {
            return invalid("server_name must not be empty".into());
        }
        self.homeserver.validate().map_err(ConfigError::Invalid)?;
        if self.homeserver.mode == HomeserverMode::Synapse && !self.oauth.enabled {
            return invalid("homeserver.mode = \"synapse\" needs oauth.enabled".into());
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

    /// Session limits for the store.
    pub fn session_limits(&self) -> crate::rendezvous::store::limits::SessionLimits {
        self.rendezvous.session_limits()
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
}

/// The text of `path`, which the configuration names.
fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
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

/// A database URL with its password replaced, so printed configuration and error messages
/// can be shared.
pub(crate) fn redact_url_password(raw: &str) -> String {
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

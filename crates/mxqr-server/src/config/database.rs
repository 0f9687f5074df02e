//! `[database]`: where accounts, OAuth state and keys are kept.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[database]` table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// SQLite file; default `<data_dir>/mxqr.sqlite3`. Unused when `url` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlite_path: Option<PathBuf>,
    /// PostgreSQL (`postgres://…`) instead of SQLite, so several instances share accounts and
    /// tokens; also the rendezvous store unless `rendezvous.postgres_url` names another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Pooled connections to `url`.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            sqlite_path: None,
            url: None,
            max_connections: 16,
        }
    }
}

impl DatabaseConfig {
    /// The URL, when set, must name PostgreSQL; the pool must hold a connection.
    pub fn validate(&self) -> Result<(), String> {
        super::checks::check_postgres_url("database.url", self.url.as_deref())?;
        if self.max_connections == 0 {
            return Err("database.max_connections must be at least 1".into());
        }
        Ok(())
    }
}

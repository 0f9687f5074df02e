//! Persistent store for accounts, OAuth 2.0 clients, grants and tokens, behind one async trait.
//!
//! The HTTP layer and `mxqr admin` speak only to [`SqlDb`], opened by [`open`]: SQLite
//! (`migrations/accounts-sqlite/`) by default, PostgreSQL (`migrations/accounts-postgres/`) when `database.url` is set, so
//! that several instances can share accounts and tokens. Both are one type, [`SqlDb`], whose
//! code and query text are shared (`repo.rs` on top of `sql.rs`). The OAuth grants (redeeming
//! a code once, rotating a refresh token, redeeming a device grant once) are judged by
//! [`crate::oauth::model`]: the store loads and saves their states in a transaction
//! ([`SqlDb::begin`], `grants.rs`).
//! Secrets never reach this layer: callers pass SHA-256 digests (hex) of codes and tokens.

mod client;
mod connect;
mod error;
mod grants;
mod outbox;
mod repo;
mod sql;

use std::sync::Arc;

pub use client::{
    AccountDataQuota, AccountDataWrite, BackupVersion, StoredDeviceKeys, UploadedKey,
};
pub use error::{DbError, DbResult, OpenFailure, Unreachable};
pub use outbox::{OutboxEntry, OutboxJob, OutboxKind};
pub use sql::{SqlDb, Tx};

pub use crate::oauth::model::Grant;
pub use crate::oauth::model::session::{AccessToken, TokenInfo, TokenStatus};

/// Creates the data directory (and missing parents) readable by the server's user only
/// (0700 on Unix): it holds the accounts database. An existing directory is left as it is.
pub fn create_data_dir(path: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Opens the store `config` names: PostgreSQL when `database.url` is set, else the SQLite
/// file. `mxqr serve` and `mxqr admin` both come here, so they always agree.
pub async fn open(config: &crate::Config) -> DbResult<SharedDb> {
    Ok(match &config.database.url {
        Some(url) => Arc::new(SqlDb::connect(url, config.database.max_connections).await?),
        None => Arc::new(SqlDb::open(&config.sqlite_path()).await?),
    })
}

/// The server name to run with, settled against the one pinned in the database at first start
/// (every Matrix user ID contains it, so it must never change under existing accounts).
///
/// `configured` is the name the operator set (through `server_name` or `public_url`): it must
/// be the pinned one, and is pinned when none is. Without one, the pinned name is used, else
/// `derived` (from the listening address), which is pinned only when `pin_derived` (`mxqr
/// serve`; `mxqr admin` run before the first start must not pin a guess).
pub async fn settle_server_name(
    db: &SqlDb,
    configured: Option<&str>,
    derived: &str,
    pin_derived: bool,
) -> DbResult<String> {
    let pinned = if configured.is_some() || pin_derived {
        Some(db.pin_server_name(configured.unwrap_or(derived)).await?)
    } else {
        db.pinned_server_name().await?
    };
    match (configured, pinned) {
        (Some(name), Some(pinned)) if name != pinned => Err(DbError::ServerNameMismatch {
            configured: name.to_owned(),
            pinned,
        }),
        (_, Some(pinned)) => Ok(pinned),
        (Some(name), None) => Ok(name.to_owned()),
        (None, None) => Ok(derived.to_owned()),
    }
}

/// A user account.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    /// Localpart of the Matrix user ID.
    pub localpart: String,
    /// Argon2id PHC string; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    /// Locked accounts cannot log in and their sessions are ended.
    pub locked: bool,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
}

/// A device of a user, with its live OAuth session if any.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Device {
    /// Device ID.
    pub device_id: String,
    /// Optional human name.
    pub display_name: Option<String>,
    /// Creation time, ms.
    pub created_at: i64,
    /// Client that signed the device in (its live session), if any.
    pub client_id: Option<String>,
    /// Start of the live session, ms.
    pub session_created_at: Option<i64>,
}

/// Hashes and expiry of a freshly minted access/refresh pair.
#[derive(Clone, Debug)]
pub struct NewTokens {
    /// SHA-256 (hex) of the access token.
    pub access_hash: String,
    /// SHA-256 (hex) of the refresh token.
    pub refresh_hash: String,
    /// Access-token expiry, ms.
    pub access_expires_at: i64,
}

/// A new device authorization request.
#[derive(Clone, Debug)]
pub struct NewDeviceGrant {
    /// SHA-256 (hex) of the device code.
    pub device_code_hash: String,
    /// Normalized user code (8 letters, no dash).
    pub user_code: String,
    /// Requesting client.
    pub client_id: String,
    /// Requested scope.
    pub scope: String,
    /// Device ID from the scope.
    pub device_id: String,
    /// Address the request came from (shown on the consent page).
    pub requester_ip: String,
    /// The address as rate limits group it (IPv6 by /64), for the per-address cap.
    pub requester_key: String,
    /// User agent of the request (shown on the consent page).
    pub requester_ua: String,
    /// Expiry, ms.
    pub expires_at: i64,
    /// Initial polling interval, seconds.
    pub interval_secs: i64,
}

/// Caps on pending (undecided, unexpired) device grants, checked in the insert's transaction.
#[derive(Clone, Copy, Debug)]
pub struct PendingGrantCaps {
    /// Per `requester_key`; `None` when client addresses are not trusted.
    pub per_address: Option<u32>,
    /// Per client.
    pub per_client: u32,
}

/// Outcome of storing a device grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantAdmission {
    /// Stored.
    Stored,
    /// The address has its cap of pending grants; the oldest expires at `retry_at` (ms).
    AddressFull {
        /// Expiry of the oldest counted grant.
        retry_at: i64,
    },
    /// The client has its cap of pending grants.
    ClientFull {
        /// Expiry of the oldest counted grant.
        retry_at: i64,
    },
}

/// A pending device grant as the consent page shows it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceGrantView {
    /// Normalized user code.
    pub user_code: String,
    /// Requesting client.
    pub client_id: String,
    /// Requested scope.
    pub scope: String,
    /// Device ID from the scope.
    pub device_id: String,
    /// Requesting address.
    pub requester_ip: String,
    /// Requesting user agent.
    pub requester_ua: String,
    /// Request time, ms.
    pub created_at: i64,
    /// Expiry, ms.
    pub expires_at: i64,
}

/// Outcome of looking a user code up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserCodeLookup {
    /// A pending, unexpired grant.
    Pending(DeviceGrantView),
    /// No pending grant has this code.
    NotFound,
    /// The grant has been looked up too often and is now denied (phishing/brute-force guard).
    TooManyAttempts,
}

/// Shared handle to a store.
pub type SharedDb = Arc<SqlDb>;

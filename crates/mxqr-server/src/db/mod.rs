//! Persistent store for accounts, OAuth 2.0 clients, grants and tokens, behind one async trait.
//!
//! The HTTP layer and `mxqr admin` speak only to [`Db`], opened by [`open`]: SQLite
//! (`migrations/`) by default, PostgreSQL (`pg_db_migrations/`) when `database.url` is set, so
//! that several instances can share accounts and tokens. Both are one type, [`SqlDb`], whose
//! code and query text are shared (`repo.rs` on top of `sql.rs`). Every operation that must be
//! atomic (redeeming a code once, rotating a refresh token, redeeming a device grant once) is
//! one trait method, implemented as one transaction.
//! Secrets never reach this layer: callers pass SHA-256 digests (hex) of codes and tokens.

mod client;
mod connect;
mod outbox;
mod repo;
mod sql;

use std::sync::Arc;

pub use client::{
    AccountDataQuota, AccountDataWrite, BackupVersion, ClientDb, StoredDeviceKeys, TokenStatus,
    UploadedKey,
};
pub use outbox::{OutboxDb, OutboxEntry, OutboxJob, OutboxKind};

/// The store, on SQLite or PostgreSQL: [`SqlDb::open`] or [`SqlDb::connect`]. One body of
/// code and query text serves both (crate README, "Storage").
#[derive(Clone, Debug)]
pub struct SqlDb {
    pool: sql::Pool,
}

/// The store opened on SQLite ([`SqlDb::open`]).
pub type SqliteDb = SqlDb;
/// The store connected to PostgreSQL ([`SqlDb::connect`]).
pub type PgDb = SqlDb;

use crate::store::BoxFuture;

/// Result of a store call.
pub type DbResult<T> = Result<T, DbError>;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A row with this key exists already (user, device code, …).
    #[error("already exists")]
    Conflict,
    /// The named row does not exist.
    #[error("not found")]
    NotFound,
    /// The database could not be opened or migrated.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// Location.
        path: String,
        /// Cause.
        #[source]
        source: OpenFailure,
    },
    /// The database cannot be reached or gave up on the call (connection lost, pool
    /// exhausted, timeout, shutdown): a retry may succeed, so clients get 503 with
    /// `Retry-After`.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Unreachable),
    /// Any other database failure.
    #[error("database error: {0}")]
    Backend(#[source] sqlx::Error),
    /// A stored row holds a value this version cannot read (e.g. an unknown outbox job kind).
    #[error("unreadable stored value: {0}")]
    Unreadable(String),
    /// The configured server name is not the one the database was created with.
    #[error(
        "server name {configured:?} differs from {pinned:?}, the name this database was first \
         started with (Matrix user IDs and signed keys contain it): set server_name = {pinned:?}"
    )]
    ServerNameMismatch {
        /// Name from `server_name` or `public_url`.
        configured: String,
        /// Name pinned at first start.
        pinned: String,
    },
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenFailure {
    /// The SQLite file could not be created.
    #[error("{0}")]
    File(#[source] std::io::Error),
    /// The URL is unusable or the database refused the connection.
    #[error("{0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// Something the server opens with the store failed (the rendezvous store, the
    /// homeserver secret).
    #[error("{0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why the database could not be reached: both kinds are worth a retry.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// The driver gave up (connection lost, pool timeout, shutdown, overload, serialization
    /// failure).
    #[error(transparent)]
    Driver(sqlx::Error),
    /// The admission queue or the call's time bound ran out.
    #[error("{0}")]
    Gate(String),
}

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
    db: &dyn Db,
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// Who a session (and so its tokens) belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Localpart of the user.
    pub localpart: String,
    /// Device the tokens are bound to.
    pub device_id: String,
    /// Client, `None` for tokens minted by `mxqr admin issue-token`.
    pub client_id: Option<String>,
    /// Granted scope (space-separated, as requested).
    pub scope: String,
}

/// What an access token stands for (bearer authentication).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Localpart of the user.
    pub localpart: String,
    /// Device ID the token is bound to.
    pub device_id: String,
    /// Granted scope.
    pub scope: String,
    /// Expiry, ms since the epoch.
    pub expires_at: i64,
    /// OAuth session the token belongs to.
    pub session_id: String,
    /// Whether a request was already authenticated with it ([`Db::record_token_use`]), so
    /// that the first use is written once and later uses cost no write.
    pub used: bool,
}

/// Outcome of presenting a refresh token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A new pair was stored (normal rotation, or a retry after a lost response).
    Rotated(Grant),
    /// Unknown, revoked or belonging to an ended session.
    Invalid,
    /// An already-exchanged token came back outside the retry window, or after its successor
    /// pair was used: the session is revoked. The grant names the device, which the caller
    /// deletes as well (RFC 9700 §4.14: the whole grant is compromised).
    Reused(Grant),
}

/// A code redemption, checked against the stored code inside the transaction.
#[derive(Clone, Debug)]
pub struct RedeemCode {
    /// SHA-256 (hex) of the code.
    pub code_hash: String,
    /// `client_id` of the token request.
    pub client_id: String,
    /// `redirect_uri` of the token request.
    pub redirect_uri: String,
    /// S256 of the presented `code_verifier` (compared in constant time).
    pub computed_challenge: String,
    /// Tokens to store on success.
    pub tokens: NewTokens,
}

/// Outcome of redeeming an authorization code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeOutcome {
    /// Tokens were stored for this grant.
    Issued(Grant),
    /// The code is unknown, expired, or does not match the request (reason for the client).
    Invalid(&'static str),
    /// The code was redeemed before: whatever it issued is now revoked.
    Reused,
}

/// A stored authorization code.
#[derive(Clone, Debug)]
pub struct NewAuthCode {
    /// SHA-256 (hex) of the code.
    pub code_hash: String,
    /// Client it was issued to.
    pub client_id: String,
    /// User who consented.
    pub localpart: String,
    /// Device ID from the scope.
    pub device_id: String,
    /// Scope granted.
    pub scope: String,
    /// Redirect URI of the authorization request.
    pub redirect_uri: String,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// Expiry, ms.
    pub expires_at: i64,
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
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// Outcome of a token-endpoint poll with a device code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// No grant has this device code.
    Unknown,
    /// The user has not decided yet.
    Pending,
    /// Polled before the interval elapsed; the interval grew by 5 s.
    SlowDown,
    /// The user refused.
    Denied,
    /// The grant expired.
    Expired,
    /// Tokens were issued by an earlier poll.
    AlreadyRedeemed,
    /// Tokens were stored for this grant now.
    Issued(Grant),
}

/// The persistent store. Times are ms since the Unix epoch, passed in by the caller so that
/// tests can drive a clock. The client-server key and device operations live in the
/// [`ClientDb`] supertrait.
pub trait Db: ClientDb + OutboxDb + Send + Sync + 'static {
    /// Creates a user; [`DbError::Conflict`] if the localpart is taken.
    fn create_user<'a>(
        &'a self,
        localpart: &'a str,
        password_hash: Option<&'a str>,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>>;
    /// The user with this localpart.
    fn user<'a>(&'a self, localpart: &'a str) -> BoxFuture<'a, DbResult<Option<User>>>;
    /// All users, by localpart.
    fn users(&self) -> BoxFuture<'_, DbResult<Vec<User>>>;
    /// Locks or unlocks a user; locking ends its browser and OAuth sessions.
    /// [`DbError::NotFound`] if there is no such user.
    fn set_locked<'a>(
        &'a self,
        localpart: &'a str,
        locked: bool,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>>;

    /// Devices of a user, oldest first.
    fn devices<'a>(&'a self, localpart: &'a str) -> BoxFuture<'a, DbResult<Vec<Device>>>;
    /// One device of a user.
    fn device<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<Device>>>;
    /// Deletes a device and revokes its tokens; `false` if it did not exist.
    fn delete_device<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>>;

    /// Stores client metadata unless identical metadata (same hash) exists; returns the
    /// client ID in force (the existing one, or `new_client_id`). Either way the client counts
    /// as registered at `now`, which restarts the day an unused client is kept.
    fn register_client<'a>(
        &'a self,
        metadata_hash: &'a str,
        metadata: &'a str,
        new_client_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<String>>;
    /// The registered metadata (JSON) of a client.
    fn client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, DbResult<Option<String>>>;

    /// Starts an OAuth session with a first token pair, creating the device if needed.
    /// Returns the session ID.
    fn issue_session<'a>(
        &'a self,
        grant: &'a Grant,
        tokens: &'a NewTokens,
        now: i64,
    ) -> BoxFuture<'a, DbResult<String>>;
    /// What a live (unexpired, unrevoked) access token stands for.
    fn token_info<'a>(
        &'a self,
        access_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<Option<TokenInfo>>>;
    /// Records that an access token authenticated a request (its first use), unless already
    /// recorded. A refresh retry is allowed only while the successor pair is unused.
    fn record_token_use<'a>(
        &'a self,
        access_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>>;
    /// Exchanges a refresh token for `tokens`, with the retry window `grace_ms`. A token of
    /// another client than `client_id` (when given) is [`RefreshOutcome::Invalid`]. A retry
    /// of an exchanged token gets a new pair only within `grace_ms` and while the pair it
    /// was exchanged for has never been used (neither its access token nor its refresh
    /// token); otherwise it is [`RefreshOutcome::Reused`].
    fn refresh<'a>(
        &'a self,
        refresh_hash: &'a str,
        client_id: Option<&'a str>,
        tokens: &'a NewTokens,
        now: i64,
        grace_ms: i64,
    ) -> BoxFuture<'a, DbResult<RefreshOutcome>>;
    /// Revokes the session of an access or refresh token; `false` if the token is unknown.
    fn revoke_token<'a>(&'a self, token_hash: &'a str, now: i64) -> BoxFuture<'a, DbResult<bool>>;

    /// Stores an authorization code.
    fn create_auth_code<'a>(
        &'a self,
        code: &'a NewAuthCode,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>>;
    /// Redeems a code once; a second redemption revokes what the first issued.
    fn redeem_auth_code<'a>(
        &'a self,
        request: &'a RedeemCode,
        now: i64,
    ) -> BoxFuture<'a, DbResult<CodeOutcome>>;

    /// Stores a device grant unless the address or the client has its cap of pending grants;
    /// [`DbError::Conflict`] when the user code is taken.
    fn create_device_grant<'a>(
        &'a self,
        grant: &'a NewDeviceGrant,
        caps: PendingGrantCaps,
        now: i64,
    ) -> BoxFuture<'a, DbResult<GrantAdmission>>;
    /// Looks a user code up, counting the lookup against the grant's cap `max_lookups`.
    fn lookup_user_code<'a>(
        &'a self,
        user_code: &'a str,
        now: i64,
        max_lookups: i64,
    ) -> BoxFuture<'a, DbResult<UserCodeLookup>>;
    /// Whether the grant of this device code is still waiting for a decision (and not
    /// expired). Read-only: unlike a poll, it is not rate-limited by the interval.
    fn device_grant_pending<'a>(
        &'a self,
        device_code_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>>;
    /// Approves (for `localpart`) or denies a pending grant; `false` if it is no longer
    /// pending.
    fn decide_device_grant<'a>(
        &'a self,
        user_code: &'a str,
        localpart: &'a str,
        approve: bool,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>>;
    /// One poll of the token endpoint; issues `tokens` at most once per grant. A device code
    /// of another client is [`PollOutcome::Unknown`].
    fn poll_device_grant<'a>(
        &'a self,
        device_code_hash: &'a str,
        client_id: &'a str,
        tokens: &'a NewTokens,
        now: i64,
    ) -> BoxFuture<'a, DbResult<PollOutcome>>;

    /// Stores a browser (cookie) session.
    fn create_browser_session<'a>(
        &'a self,
        session_hash: &'a str,
        localpart: &'a str,
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'a, DbResult<()>>;
    /// The unlocked user of a live browser session.
    fn browser_session_user<'a>(
        &'a self,
        session_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<Option<String>>>;
    /// Ends a browser session.
    fn delete_browser_session<'a>(&'a self, session_hash: &'a str) -> BoxFuture<'a, DbResult<()>>;

    /// Records the user's approval of a cross-signing key reset until `expires_at`.
    fn approve_cross_signing_reset<'a>(
        &'a self,
        localpart: &'a str,
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'a, DbResult<()>>;
    /// Whether a cross-signing reset is approved at `now` (read by
    /// `/keys/device_signing/upload`).
    fn cross_signing_reset_allowed<'a>(
        &'a self,
        localpart: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>>;

    /// The server name pinned at first start, if any.
    fn pinned_server_name(&self) -> BoxFuture<'_, DbResult<Option<String>>>;
    /// Pins `name` as the server name unless one is pinned already; returns the pinned one
    /// (the earlier one if it differs: the caller decides what a mismatch means).
    fn pin_server_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, DbResult<String>>;

    /// Deletes expired codes, grants and browser sessions, and clients never used (no
    /// authorization code or session issued to them) a day after their last registration;
    /// returns the rows removed.
    fn purge_expired(&self, now: i64) -> BoxFuture<'_, DbResult<u64>>;
}

/// Shared handle to a store.
pub type SharedDb = Arc<dyn Db>;

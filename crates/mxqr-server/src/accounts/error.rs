//! Why a store call failed: errors keep the driver's error as their source.

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

//! Opening the store: the SQLite file (`migrations/accounts-sqlite/`) or a PostgreSQL database
//! (`migrations/accounts-postgres/`). The schema is kept once per back end; everything after opening is
//! shared ([`super::repo`], [`super::sql`]).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::error::{DbError, DbResult, OpenFailure};
use super::sql::{Pool, SqlDb};
use crate::pg_gate::PgGate;

/// How long a SQLite writer waits for another (the admin CLI, another request) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries of a SQLite open that lost a start-up race with another process.
const OPEN_RETRIES: u32 = 8;

/// Longest wait for a pooled PostgreSQL connection: past it the request gets a 503, not a
/// hang.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/accounts-sqlite");

impl SqlDb {
    /// Opens (creating if needed) the SQLite file at `path` and applies pending migrations.
    /// One file in WAL mode with a busy timeout, so `mxqr admin` can write while `mxqr serve`
    /// runs.
    ///
    /// When `mxqr serve` and `mxqr admin` start together, switching a new file to WAL and
    /// applying the first migration race (SQLite has no migration lock): the loser fails with
    /// "database is locked" or "table exists", and its retry finds the work done.
    pub async fn open(path: &Path) -> DbResult<Self> {
        let mut attempt = 0;
        loop {
            match try_open_sqlite(path).await {
                Ok(pool) => {
                    return Ok(Self {
                        pool: Pool::Sqlite(pool),
                    });
                }
                Err(_) if attempt < OPEN_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(source) => {
                    return Err(DbError::Open {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        }
    }

    /// Connects to the PostgreSQL database at `url` with a pool of at most `max_connections`
    /// and applies pending migrations, so that several `mxqr serve` instances share accounts
    /// and tokens.
    ///
    /// Instances starting at once queue on sqlx's advisory migration lock, so exactly one
    /// applies each migration. The rendezvous set (`migrations/rendezvous-postgres/`) may share the database
    /// and its `_sqlx_migrations` table: each migrator ignores the other's entries.
    pub async fn connect(url: &str, max_connections: u32) -> DbResult<Self> {
        let open_error = |source: OpenFailure| DbError::Open {
            path: crate::config::redact_url_password(url),
            source,
        };
        let options =
            PgConnectOptions::from_str(url).map_err(|e| open_error(OpenFailure::Connect(e)))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| open_error(OpenFailure::Connect(e)))?;
        let mut migrator = sqlx::migrate!("./migrations/accounts-postgres");
        migrator.set_ignore_missing(true);
        if let Err(e) = migrator.run(&pool).await {
            pool.close().await;
            return Err(open_error(OpenFailure::Migrate(e)));
        }
        let gate = Arc::new(PgGate::new(max_connections));
        Ok(Self {
            pool: Pool::Postgres { pool, gate },
        })
    }
}

async fn try_open_sqlite(path: &Path) -> Result<sqlx::SqlitePool, OpenFailure> {
    create_private_file(path).map_err(OpenFailure::File)?;
    let options = SqliteConnectOptions::from_str("sqlite:")
        .map_err(OpenFailure::Connect)?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(OpenFailure::Connect)?;
    if let Err(e) = SQLITE_MIGRATOR.run(&pool).await {
        pool.close().await;
        return Err(OpenFailure::Migrate(e));
    }
    Ok(pool)
}

/// Creates an empty database file readable by the server's user only (0600 on Unix), unless
/// it exists: SQLite gives its `-wal` and `-shm` files the mode of the database file.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[tokio::test]
    async fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!(
            "mxqr-sqlite-mode-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mxqr.sqlite3");
        let db = SqlDb::open(&path).await.unwrap();
        db.create_user("alice", None, 1).await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.join(format!("mxqr.sqlite3{suffix}"));
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn concurrent_first_opens_both_succeed() {
        let dir = std::env::temp_dir().join(format!(
            "mxqr-sqlite-open-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mxqr.sqlite3");
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move { SqlDb::open(&path).await.map(|_| ()) })
            })
            .collect();
        for open in opens {
            open.await.unwrap().unwrap();
        }
        let db = SqlDb::open(&path).await.unwrap();
        db.create_user("alice", None, 1).await.unwrap();
        assert!(matches!(
            db.create_user("alice", None, 2).await,
            Err(DbError::Conflict)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An open that fails keeps its cause (here the file that cannot be created) as source.
    #[tokio::test]
    async fn open_failure_keeps_its_cause() {
        let path = std::env::temp_dir()
            .join(format!(
                "mxqr-no-such-dir-{}",
                hex::encode(rand::random::<[u8; 4]>())
            ))
            .join("mxqr.sqlite3");
        let err = SqlDb::open(&path).await.unwrap_err();
        let DbError::Open { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(matches!(source, OpenFailure::File(_)), "{source:?}");
        let io = std::error::Error::source(source).expect("the io error");
        assert!(io.downcast_ref::<std::io::Error>().is_some(), "{io:?}");
    }
}

//! SQLite back end: one file in WAL mode with a busy timeout, so `mxqr admin` can write while
//! `mxqr serve` runs. Multi-statement operations run in `BEGIN IMMEDIATE` transactions: the
//! write lock is taken up front, so concurrent redemptions serialize instead of failing with
//! `SQLITE_BUSY` on lock upgrade.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use subtle::ConstantTimeEq;

use super::{
    CodeOutcome, Db, DbError, DbResult, Device, DeviceGrantView, Grant, GrantAdmission,
    NewAuthCode, NewDeviceGrant, NewTokens, PendingGrantCaps, PollOutcome, RedeemCode,
    RefreshOutcome, TokenInfo, User, UserCodeLookup,
};
use crate::store::BoxFuture;

/// How long a writer waits for another (the admin CLI, another request) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Added to a device grant's interval on each early poll (RFC 8628 §3.5).
const SLOW_DOWN_STEP_SECS: i64 = 5;

/// Retries of an open that lost a start-up race with another process.
const OPEN_RETRIES: u32 = 8;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteDb {
    pool: SqlitePool,
}

pub(super) fn backend(err: sqlx::Error) -> DbError {
    if err
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
    {
        DbError::Conflict
    } else {
        DbError::Backend(err.to_string())
    }
}

impl SqliteDb {
    /// The pool, for the [`super::ClientDb`] implementation in `client.rs`.
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Opens (creating if needed) the database file at `path` and applies pending migrations.
    ///
    /// When `mxqr serve` and `mxqr admin` start together, switching a new file to WAL and
    /// applying the first migration race (SQLite has no migration lock): the loser fails with
    /// "database is locked" or "table exists", and its retry finds the work done.
    pub async fn open(path: &Path) -> DbResult<Self> {
        let mut attempt = 0;
        loop {
            match Self::try_open(path).await {
                Ok(db) => return Ok(db),
                Err(_) if attempt < OPEN_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(detail) => {
                    return Err(DbError::Open {
                        path: path.display().to_string(),
                        detail,
                    });
                }
            }
        }
    }

    async fn try_open(path: &Path) -> Result<Self, String> {
        create_private_file(path).map_err(|e| e.to_string())?;
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| e.to_string())?
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
            .map_err(|e| e.to_string())?;
        if let Err(e) = MIGRATOR.run(&pool).await {
            pool.close().await;
            return Err(format!("migration failed: {e}"));
        }
        Ok(Self { pool })
    }

    async fn begin(&self) -> DbResult<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)
    }
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

fn user_from(row: &SqliteRow) -> Result<User, sqlx::Error> {
    Ok(User {
        localpart: row.try_get("localpart")?,
        password_hash: row.try_get("password_hash")?,
        locked: row.try_get::<i64, _>("locked")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

fn device_from(row: &SqliteRow) -> Result<Device, sqlx::Error> {
    Ok(Device {
        device_id: row.try_get("device_id")?,
        display_name: row.try_get("display_name")?,
        created_at: row.try_get("created_at")?,
        client_id: row.try_get("client_id")?,
        session_created_at: row.try_get("session_created_at")?,
    })
}

const DEVICE_SELECT: &str = "SELECT d.device_id, d.display_name, d.created_at, \
     s.client_id AS client_id, s.created_at AS session_created_at \
     FROM devices d LEFT JOIN oauth_sessions s ON s.session_id = ( \
        SELECT s2.session_id FROM oauth_sessions s2 \
        WHERE s2.localpart = d.localpart AND s2.device_id = d.device_id \
          AND s2.revoked_at IS NULL ORDER BY s2.created_at DESC LIMIT 1) \
     WHERE d.localpart = ?";

/// Records the first use of a client (an authorization code or a session issued to it), which
/// exempts it from the purge of unused registrations.
async fn mark_client_used<'e>(
    executor: impl sqlx::Executor<'e, Database = Sqlite>,
    client_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE clients SET used_at = ? WHERE client_id = ? AND used_at IS NULL")
        .bind(now)
        .bind(client_id)
        .execute(executor)
        .await?;
    Ok(())
}

/// Pending grants counted against a cap: how many, and when the oldest expires.
async fn pending_grants(
    tx: &mut Transaction<'static, Sqlite>,
    column: &str,
    value: &str,
    now: i64,
) -> Result<(i64, Option<i64>), sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT COUNT(*), MIN(expires_at) FROM device_grants \
         WHERE {column} = ? AND status = 'pending' AND expires_at > ?"
    ))
    .bind(value)
    .bind(now)
    .fetch_one(&mut **tx)
    .await
}

/// Inserts the device if missing, a session and its first token pair.
async fn insert_session(
    tx: &mut Transaction<'static, Sqlite>,
    grant: &Grant,
    tokens: &NewTokens,
    now: i64,
) -> Result<String, sqlx::Error> {
    sqlx::query(
        "INSERT INTO devices (localpart, device_id, display_name, created_at) VALUES (?, ?, NULL, ?) \
         ON CONFLICT (localpart, device_id) DO NOTHING",
    )
    .bind(&grant.localpart)
    .bind(&grant.device_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let session_id = hex::encode(rand::random::<[u8; 16]>());
    sqlx::query(
        "INSERT INTO oauth_sessions (session_id, localpart, device_id, client_id, scope, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&session_id)
    .bind(&grant.localpart)
    .bind(&grant.device_id)
    .bind(&grant.client_id)
    .bind(&grant.scope)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    insert_pair(tx, &session_id, tokens, now).await?;
    if let Some(client_id) = &grant.client_id {
        mark_client_used(&mut **tx, client_id, now).await?;
    }
    Ok(session_id)
}

async fn insert_pair(
    tx: &mut Transaction<'static, Sqlite>,
    session_id: &str,
    tokens: &NewTokens,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO access_tokens (token_hash, session_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
    )
    .bind(&tokens.access_hash)
    .bind(session_id)
    .bind(now)
    .bind(tokens.access_expires_at)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, access_token_hash, created_at) \
         VALUES (?, ?, ?, ?)",
    )
    .bind(&tokens.refresh_hash)
    .bind(session_id)
    .bind(&tokens.access_hash)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes a session and every token of it.
async fn revoke_session(
    tx: &mut Transaction<'static, Sqlite>,
    session_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE oauth_sessions SET revoked_at = ? WHERE session_id = ? AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(session_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE access_tokens SET revoked_at = ? WHERE session_id = ? AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(session_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = ? WHERE session_id = ? AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(session_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn session_grant(
    tx: &mut Transaction<'static, Sqlite>,
    session_id: &str,
) -> Result<Option<(Grant, bool)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT localpart, device_id, client_id, scope, revoked_at FROM oauth_sessions WHERE session_id = ?",
    )
    .bind(session_id)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|row| {
        Ok((
            Grant {
                localpart: row.try_get("localpart")?,
                device_id: row.try_get("device_id")?,
                client_id: row.try_get("client_id")?,
                scope: row.try_get("scope")?,
            },
            row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
        ))
    })
    .transpose()
}

impl Db for SqliteDb {
    fn create_user<'a>(
        &'a self,
        localpart: &'a str,
        password_hash: Option<&'a str>,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO users (localpart, password_hash, locked, created_at) VALUES (?, ?, 0, ?)")
                .bind(localpart)
                .bind(password_hash)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn user<'a>(&'a self, localpart: &'a str) -> BoxFuture<'a, DbResult<Option<User>>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT * FROM users WHERE localpart = ?")
                .bind(localpart)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
            row.as_ref().map(user_from).transpose().map_err(backend)
        })
    }

    fn users(&self) -> BoxFuture<'_, DbResult<Vec<User>>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT * FROM users ORDER BY localpart")
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
            rows.iter()
                .map(user_from)
                .collect::<Result<_, _>>()
                .map_err(backend)
        })
    }

    fn set_locked<'a>(
        &'a self,
        localpart: &'a str,
        locked: bool,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let done = sqlx::query("UPDATE users SET locked = ? WHERE localpart = ?")
                .bind(i64::from(locked))
                .bind(localpart)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            if done.rows_affected() == 0 {
                return Err(DbError::NotFound);
            }
            if locked {
                let sessions: Vec<String> = sqlx::query_scalar(
                    "SELECT session_id FROM oauth_sessions WHERE localpart = ? AND revoked_at IS NULL",
                )
                .bind(localpart)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
                for session in sessions {
                    revoke_session(&mut tx, &session, now)
                        .await
                        .map_err(backend)?;
                }
                sqlx::query("DELETE FROM browser_sessions WHERE localpart = ?")
                    .bind(localpart)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
            tx.commit().await.map_err(backend)
        })
    }

    fn devices<'a>(&'a self, localpart: &'a str) -> BoxFuture<'a, DbResult<Vec<Device>>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!(
                "{DEVICE_SELECT} ORDER BY d.created_at, d.device_id"
            ))
            .bind(localpart)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
            rows.iter()
                .map(device_from)
                .collect::<Result<_, _>>()
                .map_err(backend)
        })
    }

    fn device<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<Device>>> {
        Box::pin(async move {
            let row = sqlx::query(&format!("{DEVICE_SELECT} AND d.device_id = ?"))
                .bind(localpart)
                .bind(device_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
            row.as_ref().map(device_from).transpose().map_err(backend)
        })
    }

    fn delete_device<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let sessions: Vec<String> = sqlx::query_scalar(
                "SELECT session_id FROM oauth_sessions WHERE localpart = ? AND device_id = ? AND revoked_at IS NULL",
            )
            .bind(localpart)
            .bind(device_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
            for session in sessions {
                revoke_session(&mut tx, &session, now)
                    .await
                    .map_err(backend)?;
            }
            let done = sqlx::query("DELETE FROM devices WHERE localpart = ? AND device_id = ?")
                .bind(localpart)
                .bind(device_id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn register_client<'a>(
        &'a self,
        metadata_hash: &'a str,
        metadata: &'a str,
        new_client_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<String>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "INSERT INTO clients (client_id, metadata_hash, metadata, created_at, registered_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (metadata_hash) \
                 DO UPDATE SET registered_at = excluded.registered_at RETURNING client_id",
            )
            .bind(new_client_id)
            .bind(metadata_hash)
            .bind(metadata)
            .bind(now)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
        })
    }

    fn client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, DbResult<Option<String>>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT metadata FROM clients WHERE client_id = ?")
                .bind(client_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)
        })
    }

    fn issue_session<'a>(
        &'a self,
        grant: &'a Grant,
        tokens: &'a NewTokens,
        now: i64,
    ) -> BoxFuture<'a, DbResult<String>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let session = insert_session(&mut tx, grant, tokens, now)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(session)
        })
    }

    fn token_info<'a>(
        &'a self,
        access_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<Option<TokenInfo>>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT s.localpart, s.device_id, s.scope, s.session_id, t.expires_at, t.used_at \
                 FROM access_tokens t JOIN oauth_sessions s ON s.session_id = t.session_id \
                 JOIN users u ON u.localpart = s.localpart \
                 WHERE t.token_hash = ? AND t.revoked_at IS NULL AND s.revoked_at IS NULL \
                   AND t.expires_at > ? AND u.locked = 0",
            )
            .bind(access_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
            row.map(|row| {
                Ok(TokenInfo {
                    localpart: row.try_get("localpart")?,
                    device_id: row.try_get("device_id")?,
                    scope: row.try_get("scope")?,
                    expires_at: row.try_get("expires_at")?,
                    session_id: row.try_get("session_id")?,
                    used: row.try_get::<Option<i64>, _>("used_at")?.is_some(),
                })
            })
            .transpose()
            .map_err(backend)
        })
    }

    fn record_token_use<'a>(
        &'a self,
        access_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE access_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
            )
            .bind(now)
            .bind(access_hash)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
            Ok(())
        })
    }

    fn refresh<'a>(
        &'a self,
        refresh_hash: &'a str,
        client_id: Option<&'a str>,
        tokens: &'a NewTokens,
        now: i64,
        grace_ms: i64,
    ) -> BoxFuture<'a, DbResult<RefreshOutcome>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let row = sqlx::query(
                "SELECT session_id, used_at, replaced_by, revoked_at FROM refresh_tokens WHERE token_hash = ?",
            )
            .bind(refresh_hash)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
            let Some(row) = row else {
                return Ok(RefreshOutcome::Invalid);
            };
            let session_id: String = row.try_get("session_id").map_err(backend)?;
            let used_at: Option<i64> = row.try_get("used_at").map_err(backend)?;
            let replaced_by: Option<String> = row.try_get("replaced_by").map_err(backend)?;
            let revoked_at: Option<i64> = row.try_get("revoked_at").map_err(backend)?;
            let Some((grant, session_revoked)) =
                session_grant(&mut tx, &session_id).await.map_err(backend)?
            else {
                return Ok(RefreshOutcome::Invalid);
            };
            let locked: bool =
                sqlx::query_scalar::<_, i64>("SELECT locked FROM users WHERE localpart = ?")
                    .bind(&grant.localpart)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?
                    != 0;
            let other_client = client_id.is_some_and(|c| grant.client_id.as_deref() != Some(c));
            if session_revoked || revoked_at.is_some() || locked || other_client {
                return Ok(RefreshOutcome::Invalid);
            }
            if let Some(used_at) = used_at {
                // Retry after a lost response: allowed while the successor pair is fresh and
                // was never used, neither its refresh token nor its access token (RFC 9700
                // §4.14). A used successor means the pair did arrive: this is a replay.
                let successor_unused = match &replaced_by {
                    Some(next) => {
                        sqlx::query_scalar::<_, i64>(
                            "SELECT COUNT(*) FROM refresh_tokens r \
                         JOIN access_tokens a ON a.token_hash = r.access_token_hash \
                         WHERE r.token_hash = ? AND r.used_at IS NULL AND r.revoked_at IS NULL \
                           AND a.used_at IS NULL",
                        )
                        .bind(next)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(backend)?
                            > 0
                    }
                    None => false,
                };
                if now - used_at > grace_ms || !successor_unused {
                    revoke_session(&mut tx, &session_id, now)
                        .await
                        .map_err(backend)?;
                    tx.commit().await.map_err(backend)?;
                    return Ok(RefreshOutcome::Reused(grant));
                }
                // The lost pair was never received: revoke it before handing out a new one.
                if let Some(next) = &replaced_by {
                    sqlx::query(
                        "UPDATE access_tokens SET revoked_at = ? WHERE token_hash = \
                         (SELECT access_token_hash FROM refresh_tokens WHERE token_hash = ?)",
                    )
                    .bind(now)
                    .bind(next)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                    sqlx::query("UPDATE refresh_tokens SET revoked_at = ? WHERE token_hash = ?")
                        .bind(now)
                        .bind(next)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
            } else {
                sqlx::query("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?")
                    .bind(now)
                    .bind(refresh_hash)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
            insert_pair(&mut tx, &session_id, tokens, now)
                .await
                .map_err(backend)?;
            sqlx::query("UPDATE refresh_tokens SET replaced_by = ? WHERE token_hash = ?")
                .bind(&tokens.refresh_hash)
                .bind(refresh_hash)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(RefreshOutcome::Rotated(grant))
        })
    }

    fn revoke_token<'a>(&'a self, token_hash: &'a str, now: i64) -> BoxFuture<'a, DbResult<bool>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let mut session: Option<String> =
                sqlx::query_scalar("SELECT session_id FROM access_tokens WHERE token_hash = ?")
                    .bind(token_hash)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
            if session.is_none() {
                session = sqlx::query_scalar(
                    "SELECT session_id FROM refresh_tokens WHERE token_hash = ?",
                )
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            }
            let Some(session) = session else {
                return Ok(false);
            };
            revoke_session(&mut tx, &session, now)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(true)
        })
    }

    fn create_auth_code<'a>(
        &'a self,
        code: &'a NewAuthCode,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO authorization_codes (code_hash, client_id, localpart, device_id, scope, \
                 redirect_uri, code_challenge, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&code.code_hash)
            .bind(&code.client_id)
            .bind(&code.localpart)
            .bind(&code.device_id)
            .bind(&code.scope)
            .bind(&code.redirect_uri)
            .bind(&code.code_challenge)
            .bind(now)
            .bind(code.expires_at)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
            mark_client_used(&self.pool, &code.client_id, now)
                .await
                .map_err(backend)
        })
    }

    fn redeem_auth_code<'a>(
        &'a self,
        request: &'a RedeemCode,
        now: i64,
    ) -> BoxFuture<'a, DbResult<CodeOutcome>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let row = sqlx::query("SELECT * FROM authorization_codes WHERE code_hash = ?")
                .bind(&request.code_hash)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            let Some(row) = row else {
                return Ok(CodeOutcome::Invalid("unknown authorization code"));
            };
            let get = |col: &str| row.try_get::<String, _>(col).map_err(backend);
            let used_at: Option<i64> = row.try_get("used_at").map_err(backend)?;
            if used_at.is_some() {
                let session: Option<String> = row.try_get("session_id").map_err(backend)?;
                if let Some(session) = session {
                    revoke_session(&mut tx, &session, now)
                        .await
                        .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)?;
                return Ok(CodeOutcome::Reused);
            }
            // Any presentation consumes the code: a wrong verifier gets no second try.
            sqlx::query("UPDATE authorization_codes SET used_at = ? WHERE code_hash = ?")
                .bind(now)
                .bind(&request.code_hash)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            let expires_at: i64 = row.try_get("expires_at").map_err(backend)?;
            let challenge = get("code_challenge")?;
            let verdict = if expires_at <= now {
                Some("authorization code expired")
            } else if get("client_id")? != request.client_id {
                Some("authorization code was issued to another client")
            } else if get("redirect_uri")? != request.redirect_uri {
                Some("redirect_uri does not match the authorization request")
            } else if !bool::from(
                challenge
                    .as_bytes()
                    .ct_eq(request.computed_challenge.as_bytes()),
            ) {
                Some("code_verifier does not match the code_challenge")
            } else {
                None
            };
            if let Some(reason) = verdict {
                tx.commit().await.map_err(backend)?;
                return Ok(CodeOutcome::Invalid(reason));
            }
            let grant = Grant {
                localpart: get("localpart")?,
                device_id: get("device_id")?,
                client_id: Some(request.client_id.clone()),
                scope: get("scope")?,
            };
            let session = insert_session(&mut tx, &grant, &request.tokens, now)
                .await
                .map_err(backend)?;
            sqlx::query("UPDATE authorization_codes SET session_id = ? WHERE code_hash = ?")
                .bind(&session)
                .bind(&request.code_hash)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(CodeOutcome::Issued(grant))
        })
    }

    fn create_device_grant<'a>(
        &'a self,
        grant: &'a NewDeviceGrant,
        caps: PendingGrantCaps,
        now: i64,
    ) -> BoxFuture<'a, DbResult<GrantAdmission>> {
        Box::pin(async move {
            // BEGIN IMMEDIATE: the counts and the insert are one step for every writer.
            let mut tx = self.begin().await?;
            if let Some(cap) = caps.per_address {
                let (n, oldest) =
                    pending_grants(&mut tx, "requester_key", &grant.requester_key, now)
                        .await
                        .map_err(backend)?;
                if n >= i64::from(cap) {
                    return Ok(GrantAdmission::AddressFull {
                        retry_at: oldest.unwrap_or(now),
                    });
                }
            }
            let (n, oldest) = pending_grants(&mut tx, "client_id", &grant.client_id, now)
                .await
                .map_err(backend)?;
            if n >= i64::from(caps.per_client) {
                return Ok(GrantAdmission::ClientFull {
                    retry_at: oldest.unwrap_or(now),
                });
            }
            // An expired grant must not block its user code forever.
            sqlx::query("DELETE FROM device_grants WHERE user_code = ? AND expires_at <= ?")
                .bind(&grant.user_code)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query(
                "INSERT INTO device_grants (device_code_hash, user_code, client_id, scope, device_id, \
                 requester_ip, requester_key, requester_ua, created_at, expires_at, interval_secs, \
                 status, lookups) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0)",
            )
            .bind(&grant.device_code_hash)
            .bind(&grant.user_code)
            .bind(&grant.client_id)
            .bind(&grant.scope)
            .bind(&grant.device_id)
            .bind(&grant.requester_ip)
            .bind(&grant.requester_key)
            .bind(&grant.requester_ua)
            .bind(now)
            .bind(grant.expires_at)
            .bind(grant.interval_secs)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(GrantAdmission::Stored)
        })
    }

    fn lookup_user_code<'a>(
        &'a self,
        user_code: &'a str,
        now: i64,
        max_lookups: i64,
    ) -> BoxFuture<'a, DbResult<UserCodeLookup>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let row = sqlx::query(
                "SELECT * FROM device_grants WHERE user_code = ? AND status = 'pending' AND expires_at > ?",
            )
            .bind(user_code)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
            let Some(row) = row else {
                return Ok(UserCodeLookup::NotFound);
            };
            let lookups: i64 = row.try_get("lookups").map_err(backend)?;
            if lookups >= max_lookups {
                sqlx::query("UPDATE device_grants SET status = 'denied' WHERE user_code = ?")
                    .bind(user_code)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                return Ok(UserCodeLookup::TooManyAttempts);
            }
            sqlx::query("UPDATE device_grants SET lookups = lookups + 1 WHERE user_code = ?")
                .bind(user_code)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            let view = (|| -> Result<DeviceGrantView, sqlx::Error> {
                Ok(DeviceGrantView {
                    user_code: row.try_get("user_code")?,
                    client_id: row.try_get("client_id")?,
                    scope: row.try_get("scope")?,
                    device_id: row.try_get("device_id")?,
                    requester_ip: row.try_get("requester_ip")?,
                    requester_ua: row.try_get("requester_ua")?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                })
            })()
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(UserCodeLookup::Pending(view))
        })
    }

    fn device_grant_pending<'a>(
        &'a self,
        device_code_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT 1 FROM device_grants WHERE device_code_hash = ? \
                 AND status = 'pending' AND expires_at > ?",
            )
            .bind(device_code_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
            Ok(row.is_some())
        })
    }

    fn decide_device_grant<'a>(
        &'a self,
        user_code: &'a str,
        localpart: &'a str,
        approve: bool,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        Box::pin(async move {
            let status = if approve { "approved" } else { "denied" };
            let done = sqlx::query(
                "UPDATE device_grants SET status = ?, localpart = ? \
                 WHERE user_code = ? AND status = 'pending' AND expires_at > ?",
            )
            .bind(status)
            .bind(localpart)
            .bind(user_code)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn poll_device_grant<'a>(
        &'a self,
        device_code_hash: &'a str,
        client_id: &'a str,
        tokens: &'a NewTokens,
        now: i64,
    ) -> BoxFuture<'a, DbResult<PollOutcome>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let row = sqlx::query("SELECT * FROM device_grants WHERE device_code_hash = ?")
                .bind(device_code_hash)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            let Some(row) = row else {
                return Ok(PollOutcome::Unknown);
            };
            if row.try_get::<String, _>("client_id").map_err(backend)? != client_id {
                return Ok(PollOutcome::Unknown);
            }
            let status: String = row.try_get("status").map_err(backend)?;
            let expires_at: i64 = row.try_get("expires_at").map_err(backend)?;
            if status == "redeemed" {
                return Ok(PollOutcome::AlreadyRedeemed);
            }
            if expires_at <= now {
                return Ok(PollOutcome::Expired);
            }
            match status.as_str() {
                "denied" => return Ok(PollOutcome::Denied),
                "approved" => {
                    let grant = Grant {
                        localpart: row.try_get("localpart").map_err(backend)?,
                        device_id: row.try_get("device_id").map_err(backend)?,
                        client_id: Some(row.try_get("client_id").map_err(backend)?),
                        scope: row.try_get("scope").map_err(backend)?,
                    };
                    let session = insert_session(&mut tx, &grant, tokens, now)
                        .await
                        .map_err(backend)?;
                    sqlx::query(
                        "UPDATE device_grants SET status = 'redeemed', session_id = ? WHERE device_code_hash = ?",
                    )
                    .bind(&session)
                    .bind(device_code_hash)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                    tx.commit().await.map_err(backend)?;
                    return Ok(PollOutcome::Issued(grant));
                }
                _ => {}
            }
            let interval: i64 = row.try_get("interval_secs").map_err(backend)?;
            let last_poll: Option<i64> = row.try_get("last_poll_at").map_err(backend)?;
            let too_early = last_poll.is_some_and(|last| now - last < interval * 1000);
            let new_interval = if too_early {
                interval + SLOW_DOWN_STEP_SECS
            } else {
                interval
            };
            sqlx::query(
                "UPDATE device_grants SET last_poll_at = ?, interval_secs = ? WHERE device_code_hash = ?",
            )
            .bind(now)
            .bind(new_interval)
            .bind(device_code_hash)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(if too_early {
                PollOutcome::SlowDown
            } else {
                PollOutcome::Pending
            })
        })
    }

    fn create_browser_session<'a>(
        &'a self,
        session_hash: &'a str,
        localpart: &'a str,
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO browser_sessions (session_hash, localpart, created_at, expires_at) VALUES (?, ?, ?, ?)",
            )
            .bind(session_hash)
            .bind(localpart)
            .bind(now)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
            Ok(())
        })
    }

    fn browser_session_user<'a>(
        &'a self,
        session_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<Option<String>>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT b.localpart FROM browser_sessions b JOIN users u ON u.localpart = b.localpart \
                 WHERE b.session_hash = ? AND b.expires_at > ? AND u.locked = 0",
            )
            .bind(session_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
        })
    }

    fn delete_browser_session<'a>(&'a self, session_hash: &'a str) -> BoxFuture<'a, DbResult<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM browser_sessions WHERE session_hash = ?")
                .bind(session_hash)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn approve_cross_signing_reset<'a>(
        &'a self,
        localpart: &'a str,
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO cross_signing_resets (localpart, approved_at, expires_at) VALUES (?, ?, ?) \
                 ON CONFLICT (localpart) DO UPDATE SET approved_at = excluded.approved_at, \
                 expires_at = excluded.expires_at",
            )
            .bind(localpart)
            .bind(now)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
            Ok(())
        })
    }

    fn cross_signing_reset_allowed<'a>(
        &'a self,
        localpart: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM cross_signing_resets WHERE localpart = ? AND expires_at > ?",
            )
            .bind(localpart)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
            Ok(n > 0)
        })
    }

    fn pinned_server_name(&self) -> BoxFuture<'_, DbResult<Option<String>>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT value FROM server_meta WHERE name = 'server_name'")
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)
        })
    }

    fn pin_server_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, DbResult<String>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO server_meta (name, value) VALUES ('server_name', ?) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
            sqlx::query_scalar("SELECT value FROM server_meta WHERE name = 'server_name'")
                .fetch_one(&self.pool)
                .await
                .map_err(backend)
        })
    }

    fn purge_expired(&self, now: i64) -> BoxFuture<'_, DbResult<u64>> {
        Box::pin(async move {
            // Used codes are kept a day past expiry so reuse is still detected (and revokes).
            let day = 86_400_000;
            let mut removed = 0;
            for (sql, cutoff) in [
                (
                    "DELETE FROM authorization_codes WHERE expires_at <= ?",
                    now - day,
                ),
                ("DELETE FROM device_grants WHERE expires_at <= ?", now - day),
                (
                    "DELETE FROM clients WHERE used_at IS NULL AND registered_at <= ?",
                    now - day,
                ),
                ("DELETE FROM browser_sessions WHERE expires_at <= ?", now),
                (
                    "DELETE FROM cross_signing_resets WHERE expires_at <= ?",
                    now,
                ),
            ] {
                removed += sqlx::query(sql)
                    .bind(cutoff)
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?
                    .rows_affected();
            }
            Ok(removed)
        })
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
        let db = SqliteDb::open(&path).await.unwrap();
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
                tokio::spawn(async move { SqliteDb::open(&path).await.map(|_| ()) })
            })
            .collect();
        for open in opens {
            open.await.unwrap().unwrap();
        }
        let db = SqliteDb::open(&path).await.unwrap();
        db.create_user("alice", None, 1).await.unwrap();
        assert!(matches!(
            db.create_user("alice", None, 2).await,
            Err(DbError::Conflict)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! PostgreSQL back end, so that several `mxqr serve` instances share accounts and tokens.
//!
//! Same tables and semantics as [`super::SqliteDb`]; what SQLite gets from its single writer,
//! this back end gets from row locks taken at the start of each transaction (READ COMMITTED):
//! the code, device grant or OAuth session being redeemed is locked `FOR UPDATE` and re-read,
//! so a second instance racing on it waits and then sees the first one's result. Locks are
//! taken in one order everywhere (code or grant, then user, then session, then tokens) so
//! that racing transactions queue instead of deadlocking. Every call is bounded in time: a
//! database that is down or stalls yields [`DbError::Unavailable`] (a 503), never a hang.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use subtle::ConstantTimeEq;

use super::client::entry_bytes;
use super::{
    AccountDataQuota, AccountDataWrite, BackupVersion, ClientDb, CodeOutcome, Db, DbError,
    DbResult, Device, DeviceGrantView, Grant, GrantAdmission, NewAuthCode, NewDeviceGrant,
    NewTokens, PendingGrantCaps, PollOutcome, RedeemCode, RefreshOutcome, StoredDeviceKeys,
    TokenInfo, TokenStatus, UploadedKey, User, UserCodeLookup,
};
use crate::pg_gate::PgGate;
use crate::store::BoxFuture;

/// Longest wait for a pooled connection: past it the request gets a 503, not a hang.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Added to a device grant's interval on each early poll (RFC 8628 §3.5).
const SLOW_DOWN_STEP_SECS: i64 = 5;

type Tx = Transaction<'static, Postgres>;

/// The PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PgDb {
    pool: PgPool,
    /// Admission: one permit per pooled connection.
    gate: Arc<PgGate>,
}

/// Maps a driver error: lost connections, timeouts, shutdowns, overload and serialization
/// failures are worth a retry ([`DbError::Unavailable`]); anything else is a bug or bad data.
pub(super) fn pg_error(err: sqlx::Error) -> DbError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => DbError::Conflict,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection exception, 53: insufficient resources, 57: operator intervention
            // (shutdown, statement timeout), 40001/40P01: serialization failure, deadlock.
            if ["08", "53", "57"].iter().any(|c| code.starts_with(c))
                || code == "40001"
                || code == "40P01"
            {
                DbError::Unavailable(err.to_string())
            } else {
                DbError::Backend(err.to_string())
            }
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => DbError::Unavailable(err.to_string()),
        _ => DbError::Backend(err.to_string()),
    }
}

/// The URL without its password, for messages.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparsable PostgreSQL URL>".to_owned(),
    }
}

impl PgDb {
    /// Connects to `url` with a pool of at most `max_connections` and applies pending
    /// migrations (`pg_db_migrations/`).
    ///
    /// Instances starting at once queue on sqlx's advisory migration lock, so exactly one
    /// applies each migration. The rendezvous set (`pg_migrations/`) may share the database
    /// and its `_sqlx_migrations` table: each migrator ignores the other's entries.
    pub async fn connect(url: &str, max_connections: u32) -> DbResult<Self> {
        let open_error = |detail: String| DbError::Open {
            path: redacted(url),
            detail,
        };
        let options = PgConnectOptions::from_str(url).map_err(|e| open_error(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let mut migrator = sqlx::migrate!("./pg_db_migrations");
        migrator.set_ignore_missing(true);
        if let Err(e) = migrator.run(&pool).await {
            pool.close().await;
            return Err(open_error(format!("migration failed: {e}")));
        }
        let gate = Arc::new(PgGate::new(max_connections));
        Ok(Self { pool, gate })
    }

    /// The pool, for the [`super::OutboxDb`] implementation in `outbox.rs`.
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs one store call once admitted, under the overall time bound.
    pub(super) fn bounded<'a, T: Send + 'a>(
        &'a self,
        call: impl Future<Output = DbResult<T>> + Send + 'a,
    ) -> BoxFuture<'a, DbResult<T>> {
        Box::pin(self.gate.run(call, DbError::Unavailable))
    }

    async fn begin(&self) -> DbResult<Tx> {
        self.pool.begin().await.map_err(pg_error)
    }
}

fn user_from(row: &PgRow) -> Result<User, sqlx::Error> {
    Ok(User {
        localpart: row.try_get("localpart")?,
        password_hash: row.try_get("password_hash")?,
        locked: row.try_get("locked")?,
        created_at: row.try_get("created_at")?,
    })
}

fn device_from(row: &PgRow) -> Result<Device, sqlx::Error> {
    Ok(Device {
        device_id: row.try_get("device_id")?,
        display_name: row.try_get("display_name")?,
        created_at: row.try_get("created_at")?,
        client_id: row.try_get("client_id")?,
        session_created_at: row.try_get("session_created_at")?,
    })
}

fn uploaded_key(row: &PgRow) -> Result<UploadedKey, sqlx::Error> {
    Ok(UploadedKey {
        algorithm: row.try_get("algorithm")?,
        key_id: row.try_get("key_id")?,
        key_json: row.try_get("key_json")?,
    })
}

const DEVICE_SELECT: &str = "SELECT d.device_id, d.display_name, d.created_at, \
     s.client_id AS client_id, s.created_at AS session_created_at \
     FROM devices d LEFT JOIN oauth_sessions s ON s.session_id = ( \
        SELECT s2.session_id FROM oauth_sessions s2 \
        WHERE s2.localpart = d.localpart AND s2.device_id = d.device_id \
          AND s2.revoked_at IS NULL ORDER BY s2.created_at DESC LIMIT 1) \
     WHERE d.localpart = $1";

/// Serializes the session and device changes of one user (sign-in, device deletion, lock,
/// backup-version numbering). `NO KEY UPDATE` leaves foreign-key checks of other writes for
/// the user unblocked.
async fn lock_user(tx: &mut Tx, localpart: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM users WHERE localpart = $1 FOR NO KEY UPDATE")
        .bind(localpart)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(())
}

/// Serializes the key writes of one device (uploads, claims); `false` if there is no device.
async fn lock_device(tx: &mut Tx, localpart: &str, device_id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "SELECT 1 FROM devices WHERE localpart = $1 AND device_id = $2 FOR NO KEY UPDATE",
    )
    .bind(localpart)
    .bind(device_id)
    .fetch_optional(&mut **tx)
    .await?
    .is_some())
}

/// Records the first use of a client (an authorization code or a session issued to it), which
/// exempts it from the purge of unused registrations.
async fn mark_client_used<'e>(
    executor: impl sqlx::Executor<'e, Database = Postgres>,
    client_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE clients SET used_at = $1 WHERE client_id = $2 AND used_at IS NULL")
        .bind(now)
        .bind(client_id)
        .execute(executor)
        .await?;
    Ok(())
}

/// Advisory-lock classes (two-key form) serializing the pending-grant caps: one lock per
/// requesting address, then one per client, always in that order.
const ADDRESS_GRANTS_LOCK: i32 = 0x6d78_0001;
const CLIENT_GRANTS_LOCK: i32 = 0x6d78_0002;

/// Takes the cap's lock for `value`, then counts its pending grants: how many, and when the
/// oldest expires.
async fn pending_grants(
    tx: &mut Tx,
    lock_class: i32,
    column: &str,
    value: &str,
    now: i64,
) -> Result<(i64, Option<i64>), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(lock_class)
        .bind(value)
        .execute(&mut **tx)
        .await?;
    sqlx::query_as(&format!(
        "SELECT COUNT(*), MIN(expires_at) FROM device_grants \
         WHERE {column} = $1 AND status = 'pending' AND expires_at > $2"
    ))
    .bind(value)
    .bind(now)
    .fetch_one(&mut **tx)
    .await
}

/// Inserts the device if missing, a session and its first token pair.
async fn insert_session(
    tx: &mut Tx,
    grant: &Grant,
    tokens: &NewTokens,
    now: i64,
) -> Result<String, sqlx::Error> {
    lock_user(tx, &grant.localpart).await?;
    sqlx::query(
        "INSERT INTO devices (localpart, device_id, display_name, created_at) \
         VALUES ($1, $2, NULL, $3) ON CONFLICT (localpart, device_id) DO NOTHING",
    )
    .bind(&grant.localpart)
    .bind(&grant.device_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let session_id = hex::encode(rand::random::<[u8; 16]>());
    sqlx::query(
        "INSERT INTO oauth_sessions (session_id, localpart, device_id, client_id, scope, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
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
    tx: &mut Tx,
    session_id: &str,
    tokens: &NewTokens,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO access_tokens (token_hash, session_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&tokens.access_hash)
    .bind(session_id)
    .bind(now)
    .bind(tokens.access_expires_at)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, access_token_hash, created_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&tokens.refresh_hash)
    .bind(session_id)
    .bind(&tokens.access_hash)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes a session and every token of it (the session row first: the lock order).
async fn revoke_session(tx: &mut Tx, session_id: &str, now: i64) -> Result<(), sqlx::Error> {
    for table in ["oauth_sessions", "access_tokens", "refresh_tokens"] {
        sqlx::query(&format!(
            "UPDATE {table} SET revoked_at = $1 WHERE session_id = $2 AND revoked_at IS NULL"
        ))
        .bind(now)
        .bind(session_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Revokes the live sessions of a user selected by `filter` (on `oauth_sessions`, `$2` is the
/// localpart, `$3` optional); returns how many. The caller holds the user lock.
async fn revoke_sessions_where(
    tx: &mut Tx,
    filter: &str,
    localpart: &str,
    extra: Option<&str>,
    now: i64,
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "UPDATE oauth_sessions SET revoked_at = $1 WHERE revoked_at IS NULL AND {filter} \
         RETURNING session_id"
    );
    let mut query = sqlx::query_scalar::<_, String>(&sql)
        .bind(now)
        .bind(localpart);
    if let Some(extra) = extra {
        query = query.bind(extra);
    }
    let sessions = query.fetch_all(&mut **tx).await?;
    if sessions.is_empty() {
        return Ok(0);
    }
    for table in ["access_tokens", "refresh_tokens"] {
        sqlx::query(&format!(
            "UPDATE {table} SET revoked_at = $1 WHERE revoked_at IS NULL AND session_id = ANY($2)"
        ))
        .bind(now)
        .bind(&sessions)
        .execute(&mut **tx)
        .await?;
    }
    Ok(sessions.len() as u64)
}

/// Removes key rows left by an earlier device with this ID (older than the device row).
async fn purge_stale(tx: &mut Tx, localpart: &str, device_id: &str) -> Result<(), sqlx::Error> {
    for (table, column) in [
        ("e2e_device_keys", "updated_at"),
        ("e2e_one_time_keys", "created_at"),
        ("e2e_fallback_keys", "created_at"),
    ] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE localpart = $1 AND device_id = $2 AND {column} < \
             (SELECT created_at FROM devices WHERE localpart = $1 AND device_id = $2)"
        ))
        .bind(localpart)
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Db for PgDb {
    fn create_user<'a>(
        &'a self,
        localpart: &'a str,
        password_hash: Option<&'a str>,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.bounded(async move {
            sqlx::query(
                "INSERT INTO users (localpart, password_hash, locked, created_at) \
                 VALUES ($1, $2, FALSE, $3)",
            )
            .bind(localpart)
            .bind(password_hash)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
            Ok(())
        })
    }

    fn user<'a>(&'a self, localpart: &'a str) -> BoxFuture<'a, DbResult<Option<User>>> {
        self.bounded(async move {
            let row = sqlx::query("SELECT * FROM users WHERE localpart = $1")
                .bind(localpart)
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_error)?;
            row.as_ref().map(user_from).transpose().map_err(pg_error)
        })
    }

    fn users(&self) -> BoxFuture<'_, DbResult<Vec<User>>> {
        self.bounded(async move {
            // Byte order, as SQLite sorts, whatever the database's collation.
            let rows = sqlx::query("SELECT * FROM users ORDER BY localpart COLLATE \"C\"")
                .fetch_all(&self.pool)
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(user_from)
                .collect::<Result<_, _>>()
                .map_err(pg_error)
        })
    }

    fn set_locked<'a>(
        &'a self,
        localpart: &'a str,
        locked: bool,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            let done = sqlx::query("UPDATE users SET locked = $1 WHERE localpart = $2")
                .bind(locked)
                .bind(localpart)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            if done.rows_affected() == 0 {
                return Err(DbError::NotFound);
            }
            if locked {
                revoke_sessions_where(&mut tx, "localpart = $2", localpart, None, now)
                    .await
                    .map_err(pg_error)?;
                sqlx::query("DELETE FROM browser_sessions WHERE localpart = $1")
                    .bind(localpart)
                    .execute(&mut *tx)
                    .await
                    .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)
        })
    }

    fn devices<'a>(&'a self, localpart: &'a str) -> BoxFuture<'a, DbResult<Vec<Device>>> {
        self.bounded(async move {
            let rows = sqlx::query(&format!(
                "{DEVICE_SELECT} ORDER BY d.created_at, d.device_id COLLATE \"C\""
            ))
            .bind(localpart)
            .fetch_all(&self.pool)
            .await
            .map_err(pg_error)?;
            rows.iter()
                .map(device_from)
                .collect::<Result<_, _>>()
                .map_err(pg_error)
        })
    }

    fn device<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<Device>>> {
        self.bounded(async move {
            let row = sqlx::query(&format!("{DEVICE_SELECT} AND d.device_id = $2"))
                .bind(localpart)
                .bind(device_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_error)?;
            row.as_ref().map(device_from).transpose().map_err(pg_error)
        })
    }

    fn delete_device<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            // With the user locked, no sign-in can recreate a session on the device meanwhile.
            lock_user(&mut tx, localpart).await.map_err(pg_error)?;
            revoke_sessions_where(
                &mut tx,
                "localpart = $2 AND device_id = $3",
                localpart,
                Some(device_id),
                now,
            )
            .await
            .map_err(pg_error)?;
            let done = sqlx::query("DELETE FROM devices WHERE localpart = $1 AND device_id = $2")
                .bind(localpart)
                .bind(device_id)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
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
        self.bounded(async move {
            // One statement: two instances registering identical metadata at once both get
            // the one row, and a purge cannot slip in between finding and renewing it.
            sqlx::query_scalar(
                "INSERT INTO clients (client_id, metadata_hash, metadata, created_at, registered_at) \
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (metadata_hash) \
                 DO UPDATE SET registered_at = EXCLUDED.registered_at RETURNING client_id",
            )
            .bind(new_client_id)
            .bind(metadata_hash)
            .bind(metadata)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(pg_error)
        })
    }

    fn client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, DbResult<Option<String>>> {
        self.bounded(async move {
            sqlx::query_scalar("SELECT metadata FROM clients WHERE client_id = $1")
                .bind(client_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_error)
        })
    }

    fn issue_session<'a>(
        &'a self,
        grant: &'a Grant,
        tokens: &'a NewTokens,
        now: i64,
    ) -> BoxFuture<'a, DbResult<String>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            let session = insert_session(&mut tx, grant, tokens, now)
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(session)
        })
    }

    fn token_info<'a>(
        &'a self,
        access_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<Option<TokenInfo>>> {
        self.bounded(async move {
            let row = sqlx::query(
                "SELECT s.localpart, s.device_id, s.scope, s.session_id, t.expires_at, t.used_at \
                 FROM access_tokens t JOIN oauth_sessions s ON s.session_id = t.session_id \
                 JOIN users u ON u.localpart = s.localpart \
                 WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND s.revoked_at IS NULL \
                   AND t.expires_at > $2 AND NOT u.locked",
            )
            .bind(access_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)?;
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
            .map_err(pg_error)
        })
    }

    fn record_token_use<'a>(
        &'a self,
        access_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.bounded(async move {
            sqlx::query(
                "UPDATE access_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
            )
            .bind(now)
            .bind(access_hash)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
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
        self.bounded(async move {
            let mut tx = self.begin().await?;
            let session_id: Option<String> =
                sqlx::query_scalar("SELECT session_id FROM refresh_tokens WHERE token_hash = $1")
                    .bind(refresh_hash)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(pg_error)?;
            let Some(session_id) = session_id else {
                return Ok(RefreshOutcome::Invalid);
            };
            // The session lock serializes every exchange within the session; the token's
            // state is read only after it, so a racing exchange's result is seen.
            let session = sqlx::query(
                "SELECT s.localpart, s.device_id, s.client_id, s.scope, s.revoked_at, u.locked \
                 FROM oauth_sessions s JOIN users u ON u.localpart = s.localpart \
                 WHERE s.session_id = $1 FOR NO KEY UPDATE OF s",
            )
            .bind(&session_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(pg_error)?;
            let Some(session) = session else {
                return Ok(RefreshOutcome::Invalid);
            };
            let read = || -> Result<(Grant, bool, bool), sqlx::Error> {
                Ok((
                    Grant {
                        localpart: session.try_get("localpart")?,
                        device_id: session.try_get("device_id")?,
                        client_id: session.try_get("client_id")?,
                        scope: session.try_get("scope")?,
                    },
                    session.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
                    session.try_get("locked")?,
                ))
            };
            let (grant, session_revoked, locked) = read().map_err(pg_error)?;
            let row = sqlx::query(
                "SELECT used_at, replaced_by, revoked_at FROM refresh_tokens \
                 WHERE token_hash = $1 FOR UPDATE",
            )
            .bind(refresh_hash)
            .fetch_one(&mut *tx)
            .await
            .map_err(pg_error)?;
            let used_at: Option<i64> = row.try_get("used_at").map_err(pg_error)?;
            let replaced_by: Option<String> = row.try_get("replaced_by").map_err(pg_error)?;
            let revoked_at: Option<i64> = row.try_get("revoked_at").map_err(pg_error)?;
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
                             WHERE r.token_hash = $1 AND r.used_at IS NULL \
                               AND r.revoked_at IS NULL AND a.used_at IS NULL",
                        )
                        .bind(next)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(pg_error)?
                            > 0
                    }
                    None => false,
                };
                if now - used_at > grace_ms || !successor_unused {
                    revoke_session(&mut tx, &session_id, now)
                        .await
                        .map_err(pg_error)?;
                    tx.commit().await.map_err(pg_error)?;
                    return Ok(RefreshOutcome::Reused(grant));
                }
                // The lost pair was never received: revoke it before handing out a new one.
                if let Some(next) = &replaced_by {
                    sqlx::query(
                        "UPDATE access_tokens SET revoked_at = $1 WHERE token_hash = \
                         (SELECT access_token_hash FROM refresh_tokens WHERE token_hash = $2)",
                    )
                    .bind(now)
                    .bind(next)
                    .execute(&mut *tx)
                    .await
                    .map_err(pg_error)?;
                    sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE token_hash = $2")
                        .bind(now)
                        .bind(next)
                        .execute(&mut *tx)
                        .await
                        .map_err(pg_error)?;
                }
            } else {
                sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2")
                    .bind(now)
                    .bind(refresh_hash)
                    .execute(&mut *tx)
                    .await
                    .map_err(pg_error)?;
            }
            insert_pair(&mut tx, &session_id, tokens, now)
                .await
                .map_err(pg_error)?;
            sqlx::query("UPDATE refresh_tokens SET replaced_by = $1 WHERE token_hash = $2")
                .bind(&tokens.refresh_hash)
                .bind(refresh_hash)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(RefreshOutcome::Rotated(grant))
        })
    }

    fn revoke_token<'a>(&'a self, token_hash: &'a str, now: i64) -> BoxFuture<'a, DbResult<bool>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            let session: Option<String> = sqlx::query_scalar(
                "SELECT session_id FROM access_tokens WHERE token_hash = $1 \
                 UNION ALL SELECT session_id FROM refresh_tokens WHERE token_hash = $1 LIMIT 1",
            )
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await
            .map_err(pg_error)?;
            let Some(session) = session else {
                return Ok(false);
            };
            revoke_session(&mut tx, &session, now)
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(true)
        })
    }

    fn create_auth_code<'a>(
        &'a self,
        code: &'a NewAuthCode,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.bounded(async move {
            sqlx::query(
                "INSERT INTO authorization_codes (code_hash, client_id, localpart, device_id, \
                 scope, redirect_uri, code_challenge, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
            .map_err(pg_error)?;
            mark_client_used(&self.pool, &code.client_id, now)
                .await
                .map_err(pg_error)
        })
    }

    fn redeem_auth_code<'a>(
        &'a self,
        request: &'a RedeemCode,
        now: i64,
    ) -> BoxFuture<'a, DbResult<CodeOutcome>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            // A racing redemption waits here and then finds the code used.
            let row =
                sqlx::query("SELECT * FROM authorization_codes WHERE code_hash = $1 FOR UPDATE")
                    .bind(&request.code_hash)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(pg_error)?;
            let Some(row) = row else {
                return Ok(CodeOutcome::Invalid("unknown authorization code"));
            };
            let get = |col: &str| row.try_get::<String, _>(col).map_err(pg_error);
            let used_at: Option<i64> = row.try_get("used_at").map_err(pg_error)?;
            if used_at.is_some() {
                let session: Option<String> = row.try_get("session_id").map_err(pg_error)?;
                if let Some(session) = session {
                    revoke_session(&mut tx, &session, now)
                        .await
                        .map_err(pg_error)?;
                }
                tx.commit().await.map_err(pg_error)?;
                return Ok(CodeOutcome::Reused);
            }
            // Any presentation consumes the code: a wrong verifier gets no second try.
            sqlx::query("UPDATE authorization_codes SET used_at = $1 WHERE code_hash = $2")
                .bind(now)
                .bind(&request.code_hash)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            let expires_at: i64 = row.try_get("expires_at").map_err(pg_error)?;
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
                tx.commit().await.map_err(pg_error)?;
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
                .map_err(pg_error)?;
            sqlx::query("UPDATE authorization_codes SET session_id = $1 WHERE code_hash = $2")
                .bind(&session)
                .bind(&request.code_hash)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(CodeOutcome::Issued(grant))
        })
    }

    fn create_device_grant<'a>(
        &'a self,
        grant: &'a NewDeviceGrant,
        caps: PendingGrantCaps,
        now: i64,
    ) -> BoxFuture<'a, DbResult<GrantAdmission>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            if let Some(cap) = caps.per_address {
                let (n, oldest) = pending_grants(
                    &mut tx,
                    ADDRESS_GRANTS_LOCK,
                    "requester_key",
                    &grant.requester_key,
                    now,
                )
                .await
                .map_err(pg_error)?;
                if n >= i64::from(cap) {
                    return Ok(GrantAdmission::AddressFull {
                        retry_at: oldest.unwrap_or(now),
                    });
                }
            }
            let (n, oldest) = pending_grants(
                &mut tx,
                CLIENT_GRANTS_LOCK,
                "client_id",
                &grant.client_id,
                now,
            )
            .await
            .map_err(pg_error)?;
            if n >= i64::from(caps.per_client) {
                return Ok(GrantAdmission::ClientFull {
                    retry_at: oldest.unwrap_or(now),
                });
            }
            // An expired grant must not block its user code forever.
            sqlx::query("DELETE FROM device_grants WHERE user_code = $1 AND expires_at <= $2")
                .bind(&grant.user_code)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            sqlx::query(
                "INSERT INTO device_grants (device_code_hash, user_code, client_id, scope, \
                 device_id, requester_ip, requester_key, requester_ua, created_at, expires_at, \
                 interval_secs, status, lookups) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', 0)",
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
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(GrantAdmission::Stored)
        })
    }

    fn lookup_user_code<'a>(
        &'a self,
        user_code: &'a str,
        now: i64,
        max_lookups: i64,
    ) -> BoxFuture<'a, DbResult<UserCodeLookup>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            // Locked so that lookups racing on other instances all count against the cap.
            let row = sqlx::query(
                "SELECT * FROM device_grants \
                 WHERE user_code = $1 AND status = 'pending' AND expires_at > $2 FOR UPDATE",
            )
            .bind(user_code)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(pg_error)?;
            let Some(row) = row else {
                return Ok(UserCodeLookup::NotFound);
            };
            let lookups: i64 = row.try_get("lookups").map_err(pg_error)?;
            if lookups >= max_lookups {
                sqlx::query("UPDATE device_grants SET status = 'denied' WHERE user_code = $1")
                    .bind(user_code)
                    .execute(&mut *tx)
                    .await
                    .map_err(pg_error)?;
                tx.commit().await.map_err(pg_error)?;
                return Ok(UserCodeLookup::TooManyAttempts);
            }
            sqlx::query("UPDATE device_grants SET lookups = lookups + 1 WHERE user_code = $1")
                .bind(user_code)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
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
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(UserCodeLookup::Pending(view))
        })
    }

    fn device_grant_pending<'a>(
        &'a self,
        device_code_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        self.bounded(async move {
            let row = sqlx::query(
                "SELECT 1 FROM device_grants WHERE device_code_hash = $1 \
                 AND status = 'pending' AND expires_at > $2",
            )
            .bind(device_code_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)?;
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
        self.bounded(async move {
            let status = if approve { "approved" } else { "denied" };
            let done = sqlx::query(
                "UPDATE device_grants SET status = $1, localpart = $2 \
                 WHERE user_code = $3 AND status = 'pending' AND expires_at > $4",
            )
            .bind(status)
            .bind(localpart)
            .bind(user_code)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
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
        self.bounded(async move {
            let mut tx = self.begin().await?;
            // A racing poll waits here and then finds the grant redeemed.
            let row =
                sqlx::query("SELECT * FROM device_grants WHERE device_code_hash = $1 FOR UPDATE")
                    .bind(device_code_hash)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(pg_error)?;
            let Some(row) = row else {
                return Ok(PollOutcome::Unknown);
            };
            if row.try_get::<String, _>("client_id").map_err(pg_error)? != client_id {
                return Ok(PollOutcome::Unknown);
            }
            let status: String = row.try_get("status").map_err(pg_error)?;
            let expires_at: i64 = row.try_get("expires_at").map_err(pg_error)?;
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
                        localpart: row.try_get("localpart").map_err(pg_error)?,
                        device_id: row.try_get("device_id").map_err(pg_error)?,
                        client_id: Some(row.try_get("client_id").map_err(pg_error)?),
                        scope: row.try_get("scope").map_err(pg_error)?,
                    };
                    let session = insert_session(&mut tx, &grant, tokens, now)
                        .await
                        .map_err(pg_error)?;
                    sqlx::query(
                        "UPDATE device_grants SET status = 'redeemed', session_id = $1 \
                         WHERE device_code_hash = $2",
                    )
                    .bind(&session)
                    .bind(device_code_hash)
                    .execute(&mut *tx)
                    .await
                    .map_err(pg_error)?;
                    tx.commit().await.map_err(pg_error)?;
                    return Ok(PollOutcome::Issued(grant));
                }
                _ => {}
            }
            let interval: i64 = row.try_get("interval_secs").map_err(pg_error)?;
            let last_poll: Option<i64> = row.try_get("last_poll_at").map_err(pg_error)?;
            let too_early = last_poll.is_some_and(|last| now - last < interval * 1000);
            let new_interval = if too_early {
                interval + SLOW_DOWN_STEP_SECS
            } else {
                interval
            };
            sqlx::query(
                "UPDATE device_grants SET last_poll_at = $1, interval_secs = $2 \
                 WHERE device_code_hash = $3",
            )
            .bind(now)
            .bind(new_interval)
            .bind(device_code_hash)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
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
        self.bounded(async move {
            sqlx::query(
                "INSERT INTO browser_sessions (session_hash, localpart, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(session_hash)
            .bind(localpart)
            .bind(now)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
            Ok(())
        })
    }

    fn browser_session_user<'a>(
        &'a self,
        session_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<Option<String>>> {
        self.bounded(async move {
            sqlx::query_scalar(
                "SELECT b.localpart FROM browser_sessions b \
                 JOIN users u ON u.localpart = b.localpart \
                 WHERE b.session_hash = $1 AND b.expires_at > $2 AND NOT u.locked",
            )
            .bind(session_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)
        })
    }

    fn delete_browser_session<'a>(&'a self, session_hash: &'a str) -> BoxFuture<'a, DbResult<()>> {
        self.bounded(async move {
            sqlx::query("DELETE FROM browser_sessions WHERE session_hash = $1")
                .bind(session_hash)
                .execute(&self.pool)
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn approve_cross_signing_reset<'a>(
        &'a self,
        localpart: &'a str,
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.bounded(async move {
            sqlx::query(
                "INSERT INTO cross_signing_resets (localpart, approved_at, expires_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (localpart) DO UPDATE \
                 SET approved_at = excluded.approved_at, expires_at = excluded.expires_at",
            )
            .bind(localpart)
            .bind(now)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
            Ok(())
        })
    }

    fn cross_signing_reset_allowed<'a>(
        &'a self,
        localpart: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        self.bounded(async move {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM cross_signing_resets \
                 WHERE localpart = $1 AND expires_at > $2)",
            )
            .bind(localpart)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(pg_error)
        })
    }

    fn pinned_server_name(&self) -> BoxFuture<'_, DbResult<Option<String>>> {
        self.bounded(async move {
            sqlx::query_scalar("SELECT value FROM server_meta WHERE name = 'server_name'")
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_error)
        })
    }

    fn pin_server_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, DbResult<String>> {
        self.bounded(async move {
            // Instances starting together: the first insert wins, every one reads it back.
            sqlx::query(
                "INSERT INTO server_meta (name, value) VALUES ('server_name', $1) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
            sqlx::query_scalar("SELECT value FROM server_meta WHERE name = 'server_name'")
                .fetch_one(&self.pool)
                .await
                .map_err(pg_error)
        })
    }

    fn purge_expired(&self, now: i64) -> BoxFuture<'_, DbResult<u64>> {
        self.bounded(async move {
            // Used codes are kept a day past expiry so reuse is still detected (and revokes).
            let day = 86_400_000;
            let mut removed = 0;
            for (sql, cutoff) in [
                (
                    "DELETE FROM authorization_codes WHERE expires_at <= $1",
                    now - day,
                ),
                (
                    "DELETE FROM device_grants WHERE expires_at <= $1",
                    now - day,
                ),
                (
                    "DELETE FROM clients WHERE used_at IS NULL AND registered_at <= $1",
                    now - day,
                ),
                ("DELETE FROM browser_sessions WHERE expires_at <= $1", now),
                (
                    "DELETE FROM cross_signing_resets WHERE expires_at <= $1",
                    now,
                ),
            ] {
                removed += sqlx::query(sql)
                    .bind(cutoff)
                    .execute(&self.pool)
                    .await
                    .map_err(pg_error)?
                    .rows_affected();
            }
            Ok(removed)
        })
    }
}

impl ClientDb for PgDb {
    fn token_status<'a>(
        &'a self,
        access_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<TokenStatus>> {
        self.bounded(async move {
            let row = sqlx::query(
                "SELECT s.localpart, s.device_id, s.scope, s.session_id, t.expires_at, \
                 t.used_at, t.revoked_at AS token_revoked, s.revoked_at AS session_revoked, u.locked \
                 FROM access_tokens t JOIN oauth_sessions s ON s.session_id = t.session_id \
                 JOIN users u ON u.localpart = s.localpart WHERE t.token_hash = $1",
            )
            .bind(access_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)?;
            let Some(row) = row else {
                return Ok(TokenStatus::Unknown);
            };
            let read = || -> Result<TokenStatus, sqlx::Error> {
                // Locking revokes sessions too: report the lock, which is what the user can act on.
                if row.try_get::<bool, _>("locked")? {
                    return Ok(TokenStatus::Locked);
                }
                if row.try_get::<Option<i64>, _>("token_revoked")?.is_some()
                    || row.try_get::<Option<i64>, _>("session_revoked")?.is_some()
                {
                    return Ok(TokenStatus::Revoked);
                }
                let expires_at: i64 = row.try_get("expires_at")?;
                if expires_at <= now {
                    return Ok(TokenStatus::Expired);
                }
                Ok(TokenStatus::Live(TokenInfo {
                    localpart: row.try_get("localpart")?,
                    device_id: row.try_get("device_id")?,
                    scope: row.try_get("scope")?,
                    expires_at,
                    session_id: row.try_get("session_id")?,
                    used: row.try_get::<Option<i64>, _>("used_at")?.is_some(),
                }))
            };
            read().map_err(pg_error)
        })
    }

    fn set_device_display_name<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        display_name: Option<&'a str>,
    ) -> BoxFuture<'a, DbResult<bool>> {
        self.bounded(async move {
            let done = sqlx::query(
                "UPDATE devices SET display_name = $1 WHERE localpart = $2 AND device_id = $3",
            )
            .bind(display_name)
            .bind(localpart)
            .bind(device_id)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn revoke_user_sessions<'a>(
        &'a self,
        localpart: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<u64>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            lock_user(&mut tx, localpart).await.map_err(pg_error)?;
            let n = revoke_sessions_where(&mut tx, "localpart = $2", localpart, None, now)
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(n)
        })
    }

    fn device_keys<'a>(
        &'a self,
        localpart: &'a str,
        device_ids: &'a [String],
    ) -> BoxFuture<'a, DbResult<Vec<StoredDeviceKeys>>> {
        self.bounded(async move {
            let base = "SELECT k.device_id, k.key_json, d.display_name FROM e2e_device_keys k \
                        JOIN devices d ON d.localpart = k.localpart AND d.device_id = k.device_id \
                        WHERE k.localpart = $1 AND k.updated_at >= d.created_at";
            let rows = if device_ids.is_empty() {
                sqlx::query(&format!("{base} ORDER BY k.device_id COLLATE \"C\""))
                    .bind(localpart)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(pg_error)?
            } else {
                // In the order asked for, as the SQLite back end answers.
                let mut rows = Vec::new();
                for device_id in device_ids {
                    if let Some(row) = sqlx::query(&format!("{base} AND k.device_id = $2"))
                        .bind(localpart)
                        .bind(device_id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(pg_error)?
                    {
                        rows.push(row);
                    }
                }
                rows
            };
            rows.iter()
                .map(|row| {
                    Ok(StoredDeviceKeys {
                        device_id: row.try_get("device_id")?,
                        display_name: row.try_get("display_name")?,
                        key_json: row.try_get("key_json")?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(pg_error)
        })
    }

    fn swap_device_keys<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        old: Option<&'a str>,
        new: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        self.bounded(async move {
            let Some(old) = old else {
                let mut tx = self.begin().await?;
                lock_device(&mut tx, localpart, device_id)
                    .await
                    .map_err(pg_error)?;
                purge_stale(&mut tx, localpart, device_id)
                    .await
                    .map_err(pg_error)?;
                let done = sqlx::query(
                    "INSERT INTO e2e_device_keys (localpart, device_id, key_json, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (localpart, device_id) DO NOTHING",
                )
                .bind(localpart)
                .bind(device_id)
                .bind(new)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
                tx.commit().await.map_err(pg_error)?;
                return Ok(done.rows_affected() > 0);
            };
            let done = sqlx::query(
                "UPDATE e2e_device_keys SET key_json = $1, updated_at = $2 \
                 WHERE localpart = $3 AND device_id = $4 AND key_json = $5",
            )
            .bind(new)
            .bind(now)
            .bind(localpart)
            .bind(device_id)
            .bind(old)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn add_one_time_keys<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        keys: &'a [UploadedKey],
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            // Two identical uploads racing must both succeed, not collide on the key.
            lock_device(&mut tx, localpart, device_id)
                .await
                .map_err(pg_error)?;
            purge_stale(&mut tx, localpart, device_id)
                .await
                .map_err(pg_error)?;
            for key in keys {
                let existing: Option<String> = sqlx::query_scalar(
                    "SELECT key_json FROM e2e_one_time_keys \
                     WHERE localpart = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
                )
                .bind(localpart)
                .bind(device_id)
                .bind(&key.algorithm)
                .bind(&key.key_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(pg_error)?;
                match existing {
                    Some(json) if json == key.key_json => {}
                    Some(_) => return Err(DbError::Conflict),
                    None => {
                        sqlx::query(
                            "INSERT INTO e2e_one_time_keys \
                             (localpart, device_id, algorithm, key_id, key_json, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(localpart)
                        .bind(device_id)
                        .bind(&key.algorithm)
                        .bind(&key.key_id)
                        .bind(&key.key_json)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(pg_error)?;
                    }
                }
            }
            tx.commit().await.map_err(pg_error)
        })
    }

    fn one_time_key_counts<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, DbResult<Vec<(String, i64)>>> {
        self.bounded(async move {
            let rows = sqlx::query(
                "SELECT k.algorithm, COUNT(*) AS n FROM e2e_one_time_keys k \
                 JOIN devices d ON d.localpart = k.localpart AND d.device_id = k.device_id \
                 WHERE k.localpart = $1 AND k.device_id = $2 AND k.created_at >= d.created_at \
                 GROUP BY k.algorithm ORDER BY k.algorithm COLLATE \"C\"",
            )
            .bind(localpart)
            .bind(device_id)
            .fetch_all(&self.pool)
            .await
            .map_err(pg_error)?;
            rows.iter()
                .map(|row| Ok((row.try_get("algorithm")?, row.try_get("n")?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(pg_error)
        })
    }

    fn set_fallback_key<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        key: &'a UploadedKey,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            lock_device(&mut tx, localpart, device_id)
                .await
                .map_err(pg_error)?;
            purge_stale(&mut tx, localpart, device_id)
                .await
                .map_err(pg_error)?;
            sqlx::query(
                "INSERT INTO e2e_fallback_keys \
                 (localpart, device_id, algorithm, key_id, key_json, used, created_at) \
                 VALUES ($1, $2, $3, $4, $5, FALSE, $6) \
                 ON CONFLICT (localpart, device_id, algorithm) DO UPDATE \
                 SET key_id = excluded.key_id, key_json = excluded.key_json, used = FALSE, \
                 created_at = excluded.created_at \
                 WHERE e2e_fallback_keys.key_id <> excluded.key_id \
                    OR e2e_fallback_keys.key_json <> excluded.key_json",
            )
            .bind(localpart)
            .bind(device_id)
            .bind(&key.algorithm)
            .bind(&key.key_id)
            .bind(&key.key_json)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        })
    }

    fn claim_key<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        algorithm: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<UploadedKey>>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            // Claims of one device queue here, so a one-time key is handed out only once.
            if !lock_device(&mut tx, localpart, device_id)
                .await
                .map_err(pg_error)?
            {
                return Ok(None);
            }
            purge_stale(&mut tx, localpart, device_id)
                .await
                .map_err(pg_error)?;
            let one_time = sqlx::query(
                "DELETE FROM e2e_one_time_keys WHERE (localpart, device_id, algorithm, key_id) = ( \
                   SELECT localpart, device_id, algorithm, key_id FROM e2e_one_time_keys \
                   WHERE localpart = $1 AND device_id = $2 AND algorithm = $3 \
                   ORDER BY created_at, key_id COLLATE \"C\" LIMIT 1) \
                 RETURNING algorithm, key_id, key_json",
            )
            .bind(localpart)
            .bind(device_id)
            .bind(algorithm)
            .fetch_optional(&mut *tx)
            .await
            .map_err(pg_error)?;
            let claimed = match one_time {
                Some(row) => Some(row),
                None => sqlx::query(
                    "UPDATE e2e_fallback_keys SET used = TRUE \
                     WHERE localpart = $1 AND device_id = $2 AND algorithm = $3 \
                     RETURNING algorithm, key_id, key_json",
                )
                .bind(localpart)
                .bind(device_id)
                .bind(algorithm)
                .fetch_optional(&mut *tx)
                .await
                .map_err(pg_error)?,
            };
            let claimed = claimed
                .as_ref()
                .map(uploaded_key)
                .transpose()
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(claimed)
        })
    }

    fn cross_signing_keys<'a>(
        &'a self,
        localpart: &'a str,
    ) -> BoxFuture<'a, DbResult<Vec<(String, String)>>> {
        self.bounded(async move {
            let rows = sqlx::query(
                "SELECT key_usage, key_json FROM e2e_cross_signing_keys WHERE localpart = $1 \
                 ORDER BY key_usage COLLATE \"C\"",
            )
            .bind(localpart)
            .fetch_all(&self.pool)
            .await
            .map_err(pg_error)?;
            rows.iter()
                .map(|row| Ok((row.try_get("key_usage")?, row.try_get("key_json")?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(pg_error)
        })
    }

    fn put_cross_signing_keys<'a>(
        &'a self,
        localpart: &'a str,
        keys: &'a [(String, String)],
        consume_reset: bool,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            for (usage, json) in keys {
                sqlx::query(
                    "INSERT INTO e2e_cross_signing_keys (localpart, key_usage, key_json, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (localpart, key_usage) DO UPDATE \
                     SET key_json = excluded.key_json, updated_at = excluded.updated_at",
                )
                .bind(localpart)
                .bind(usage)
                .bind(json)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            }
            if consume_reset {
                sqlx::query("DELETE FROM cross_signing_resets WHERE localpart = $1")
                    .bind(localpart)
                    .execute(&mut *tx)
                    .await
                    .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)
        })
    }

    fn swap_cross_signing_key<'a>(
        &'a self,
        localpart: &'a str,
        usage: &'a str,
        old: &'a str,
        new: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        self.bounded(async move {
            let done = sqlx::query(
                "UPDATE e2e_cross_signing_keys SET key_json = $1, updated_at = $2 \
                 WHERE localpart = $3 AND key_usage = $4 AND key_json = $5",
            )
            .bind(new)
            .bind(now)
            .bind(localpart)
            .bind(usage)
            .bind(old)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn add_user_signature<'a>(
        &'a self,
        signer: &'a str,
        target_user_id: &'a str,
        target_key_id: &'a str,
        signer_key_id: &'a str,
        signature: &'a str,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.bounded(async move {
            sqlx::query(
                "INSERT INTO e2e_user_signatures \
                 (signer, target_user_id, target_key_id, signer_key_id, signature) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (signer, target_user_id, target_key_id, signer_key_id) \
                 DO UPDATE SET signature = excluded.signature",
            )
            .bind(signer)
            .bind(target_user_id)
            .bind(target_key_id)
            .bind(signer_key_id)
            .bind(signature)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
            Ok(())
        })
    }

    fn user_signatures<'a>(
        &'a self,
        signer: &'a str,
        target_user_id: &'a str,
    ) -> BoxFuture<'a, DbResult<Vec<(String, String, String)>>> {
        self.bounded(async move {
            let rows = sqlx::query(
                "SELECT target_key_id, signer_key_id, signature FROM e2e_user_signatures \
                 WHERE signer = $1 AND target_user_id = $2 \
                 ORDER BY target_key_id COLLATE \"C\", signer_key_id COLLATE \"C\"",
            )
            .bind(signer)
            .bind(target_user_id)
            .fetch_all(&self.pool)
            .await
            .map_err(pg_error)?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("target_key_id")?,
                        row.try_get("signer_key_id")?,
                        row.try_get("signature")?,
                    ))
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(pg_error)
        })
    }

    fn create_backup_version<'a>(
        &'a self,
        localpart: &'a str,
        algorithm: &'a str,
        auth_data: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<i64>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            // Creations of one user queue here, so each gets the next number.
            lock_user(&mut tx, localpart).await.map_err(pg_error)?;
            let last: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(version) FROM e2e_backup_versions WHERE localpart = $1",
            )
            .bind(localpart)
            .fetch_one(&mut *tx)
            .await
            .map_err(pg_error)?;
            let version = last.unwrap_or(0) + 1;
            sqlx::query(
                "INSERT INTO e2e_backup_versions \
                 (localpart, version, algorithm, auth_data, etag, created_at) \
                 VALUES ($1, $2, $3, $4, 0, $5)",
            )
            .bind(localpart)
            .bind(version)
            .bind(algorithm)
            .bind(auth_data)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(version)
        })
    }

    fn backup_version<'a>(
        &'a self,
        localpart: &'a str,
        version: Option<i64>,
    ) -> BoxFuture<'a, DbResult<Option<BackupVersion>>> {
        self.bounded(async move {
            let base = "SELECT version, algorithm, auth_data, etag FROM e2e_backup_versions \
                        WHERE localpart = $1 AND deleted_at IS NULL";
            let row = match version {
                Some(version) => {
                    sqlx::query(&format!("{base} AND version = $2"))
                        .bind(localpart)
                        .bind(version)
                        .fetch_optional(&self.pool)
                        .await
                }
                None => {
                    sqlx::query(&format!("{base} ORDER BY version DESC LIMIT 1"))
                        .bind(localpart)
                        .fetch_optional(&self.pool)
                        .await
                }
            }
            .map_err(pg_error)?;
            row.map(|row| {
                Ok(BackupVersion {
                    version: row.try_get("version")?,
                    algorithm: row.try_get("algorithm")?,
                    auth_data: row.try_get("auth_data")?,
                    etag: row.try_get("etag")?,
                })
            })
            .transpose()
            .map_err(pg_error)
        })
    }

    fn update_backup_version<'a>(
        &'a self,
        localpart: &'a str,
        version: i64,
        auth_data: &'a str,
    ) -> BoxFuture<'a, DbResult<bool>> {
        self.bounded(async move {
            let done = sqlx::query(
                "UPDATE e2e_backup_versions SET auth_data = $1 \
                 WHERE localpart = $2 AND version = $3 AND deleted_at IS NULL",
            )
            .bind(auth_data)
            .bind(localpart)
            .bind(version)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn delete_backup_version<'a>(
        &'a self,
        localpart: &'a str,
        version: i64,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        self.bounded(async move {
            let done = sqlx::query(
                "UPDATE e2e_backup_versions SET deleted_at = $1 \
                 WHERE localpart = $2 AND version = $3 AND deleted_at IS NULL",
            )
            .bind(now)
            .bind(localpart)
            .bind(version)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn account_data<'a>(
        &'a self,
        localpart: &'a str,
        data_type: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<String>>> {
        self.bounded(async move {
            sqlx::query_scalar(
                "SELECT content FROM account_data WHERE localpart = $1 AND data_type = $2",
            )
            .bind(localpart)
            .bind(data_type)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)
        })
    }

    fn put_account_data<'a>(
        &'a self,
        localpart: &'a str,
        data_type: &'a str,
        content: &'a str,
        now: i64,
        quota: AccountDataQuota,
    ) -> BoxFuture<'a, DbResult<AccountDataWrite>> {
        self.bounded(async move {
            let mut tx = self.begin().await?;
            // The user lock serializes this user's writes, so two cannot both pass the quota.
            lock_user(&mut tx, localpart).await.map_err(pg_error)?;
            let (entries, bytes): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), COALESCE(SUM(octet_length(data_type) + octet_length(content)), 0)::BIGINT \
                 FROM account_data WHERE localpart = $1 AND data_type <> $2",
            )
            .bind(localpart)
            .bind(data_type)
            .fetch_one(&mut *tx)
            .await
            .map_err(pg_error)?;
            let verdict = quota.judge(entries, bytes, entry_bytes(data_type, content));
            if verdict != AccountDataWrite::Stored {
                return Ok(verdict);
            }
            sqlx::query(
                "INSERT INTO account_data (localpart, data_type, content, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (localpart, data_type) DO UPDATE \
                 SET content = excluded.content, updated_at = excluded.updated_at",
            )
            .bind(localpart)
            .bind(data_type)
            .bind(content)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(AccountDataWrite::Stored)
        })
    }
}

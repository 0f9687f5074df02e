//! PostgreSQL half of the client-server store ([`ClientDb`]) not yet on the shared code.
//!
//! Same tables and semantics as `client.rs`; what SQLite gets from its single writer,
//! this back end gets from row locks taken at the start of each transaction (READ COMMITTED):
//! the code, device grant or OAuth session being redeemed is locked `FOR UPDATE` and re-read,
//! so a second instance racing on it waits and then sees the first one's result. Locks are
//! taken in one order everywhere (code or grant, then user, then session, then tokens) so
//! that racing transactions queue instead of deadlocking. Every call is bounded in time: a
//! database that is down or stalls yields [`DbError::Unavailable`] (a 503), never a hang.

use std::future::Future;
use std::sync::Arc;

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::client::entry_bytes;
use super::{
    AccountDataQuota, AccountDataWrite, BackupVersion, ClientDb, DbError, DbResult,
    StoredDeviceKeys, TokenInfo, TokenStatus, Unreachable, UploadedKey,
};
use crate::pg_gate::PgGate;
use crate::store::BoxFuture;

type Tx = Transaction<'static, Postgres>;

pub(super) use super::sql::pg_error;

/// The PostgreSQL pool and its admission gate (shared with [`super::SqlDb`]'s), for the
/// client-server half.
#[derive(Clone, Debug)]
pub(super) struct LegacyPg {
    pool: PgPool,
    /// Admission: one permit per pooled connection.
    gate: Arc<PgGate>,
}

impl LegacyPg {
    pub(super) fn new(pool: PgPool, gate: Arc<PgGate>) -> Self {
        Self { pool, gate }
    }

    /// The pool, for the [`super::OutboxDb`] implementation in `outbox.rs`.
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs one store call once admitted, under the overall time bound.
    pub(super) fn bounded<'a, T: Send + 'a>(
        &'a self,
        call: impl Future<Output = DbResult<T>> + Send + 'a,
    ) -> BoxFuture<'a, DbResult<T>> {
        Box::pin(self.gate.run(call, |reason| {
            DbError::Unavailable(Unreachable::Gate(reason))
        }))
    }

    async fn begin(&self) -> DbResult<Tx> {
        self.pool.begin().await.map_err(pg_error)
    }
}

fn uploaded_key(row: &PgRow) -> Result<UploadedKey, sqlx::Error> {
    Ok(UploadedKey {
        algorithm: row.try_get("algorithm")?,
        key_id: row.try_get("key_id")?,
        key_json: row.try_get("key_json")?,
    })
}

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

impl ClientDb for LegacyPg {
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

//! The store side of the client-server endpoints a QR sign-in touches: bearer-token status,
//! device edits, end-to-end-encryption keys, key-backup versions and account data.
//!
//! A supertrait of [`super::Db`], so every back end implements it and `Arc<dyn Db>` reaches
//! it, while the OAuth half of the trait stays untouched. The store knows nothing about
//! signatures: handlers verify, then store JSON text. Updates that merge signatures into a
//! stored object are compare-and-swap ([`ClientDb::swap_device_keys`]), so two concurrent
//! merges cannot lose each other's signature and the back end needs no JSON support.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::sqlite::{LegacySqlite, backend};
use super::{DbError, DbResult, TokenInfo};
use crate::store::BoxFuture;

/// What a presented access token (by hash) stands for, with the reason when it is unusable:
/// the client-server API answers an expired token differently from a revoked one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenStatus {
    /// Usable.
    Live(TokenInfo),
    /// Known but past its expiry (the client should refresh: `soft_logout`).
    Expired,
    /// Revoked, or its session ended.
    Revoked,
    /// Its user is locked.
    Locked,
    /// Never issued here.
    Unknown,
}

/// A device's uploaded identity keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDeviceKeys {
    /// Device ID.
    pub device_id: String,
    /// The device's display name (from the devices table), for `unsigned`.
    pub display_name: Option<String>,
    /// The `device_keys` object as JSON text, with every signature that verified.
    pub key_json: String,
}

/// A one-time or fallback key as uploaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadedKey {
    /// Algorithm, e.g. `signed_curve25519`.
    pub algorithm: String,
    /// Key ID after the `algorithm:` prefix.
    pub key_id: String,
    /// The key (object or string) as JSON text.
    pub key_json: String,
}

/// A key-backup version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupVersion {
    /// Version number (the spec's opaque string is a decimal integer here).
    pub version: i64,
    /// Backup algorithm.
    pub algorithm: String,
    /// `auth_data` as JSON text.
    pub auth_data: String,
    /// Changes whenever the stored room keys change.
    pub etag: i64,
}

/// Store operations of the client-server key and device endpoints.
pub trait ClientDb: Send + Sync + 'static {
    /// Looks up an access token by hash, telling why it is unusable if it is.
    fn token_status<'a>(
        &'a self,
        access_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<TokenStatus>>;
    /// Sets (or clears) a device's display name; `false` if there is no such device.
    fn set_device_display_name<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        display_name: Option<&'a str>,
    ) -> BoxFuture<'a, DbResult<bool>>;
    /// Revokes every live OAuth session of a user (`/logout/all`); returns how many.
    fn revoke_user_sessions<'a>(
        &'a self,
        localpart: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<u64>>;

    /// Uploaded keys of the user's existing devices: all of them when `device_ids` is empty.
    /// Keys of deleted devices are never returned.
    fn device_keys<'a>(
        &'a self,
        localpart: &'a str,
        device_ids: &'a [String],
    ) -> BoxFuture<'a, DbResult<Vec<StoredDeviceKeys>>>;
    /// Compare-and-swap of a device's keys: stores `new` if the stored JSON is `old` (`None`:
    /// nothing stored yet). `false` if another write came first.
    fn swap_device_keys<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        old: Option<&'a str>,
        new: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>>;
    /// Adds one-time keys; re-uploading an identical key is a no-op, a different key under a
    /// used ID is [`DbError::Conflict`] (and nothing is stored).
    fn add_one_time_keys<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        keys: &'a [UploadedKey],
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>>;
    /// Unclaimed one-time keys per algorithm.
    fn one_time_key_counts<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, DbResult<Vec<(String, i64)>>>;
    /// Replaces the fallback key of the key's algorithm (an identical re-upload keeps its
    /// used flag).
    fn set_fallback_key<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        key: &'a UploadedKey,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>>;
    /// Claims a key of `algorithm` of an existing device: a one-time key (removed), else the
    /// fallback key (marked used, kept).
    fn claim_key<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        algorithm: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<UploadedKey>>>;

    /// The user's cross-signing keys as `(usage, JSON text)`.
    fn cross_signing_keys<'a>(
        &'a self,
        localpart: &'a str,
    ) -> BoxFuture<'a, DbResult<Vec<(String, String)>>>;
    /// Stores cross-signing keys `(usage, JSON text)`, replacing those of the same usage; with
    /// `consume_reset` the user's reset approval is used up in the same transaction.
    fn put_cross_signing_keys<'a>(
        &'a self,
        localpart: &'a str,
        keys: &'a [(String, String)],
        consume_reset: bool,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>>;
    /// Compare-and-swap of one cross-signing key's JSON (merging signatures).
    fn swap_cross_signing_key<'a>(
        &'a self,
        localpart: &'a str,
        usage: &'a str,
        old: &'a str,
        new: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>>;
    /// Records `signer`'s user-signing signature of another user's master key.
    fn add_user_signature<'a>(
        &'a self,
        signer: &'a str,
        target_user_id: &'a str,
        target_key_id: &'a str,
        signer_key_id: &'a str,
        signature: &'a str,
    ) -> BoxFuture<'a, DbResult<()>>;
    /// `signer`'s signatures of `target_user_id`'s keys: `(target key ID, signer key ID,
    /// signature)`.
    fn user_signatures<'a>(
        &'a self,
        signer: &'a str,
        target_user_id: &'a str,
    ) -> BoxFuture<'a, DbResult<Vec<(String, String, String)>>>;

    /// Creates the next backup version; returns its number.
    fn create_backup_version<'a>(
        &'a self,
        localpart: &'a str,
        algorithm: &'a str,
        auth_data: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<i64>>;
    /// A live backup version, or the latest when `version` is `None`.
    fn backup_version<'a>(
        &'a self,
        localpart: &'a str,
        version: Option<i64>,
    ) -> BoxFuture<'a, DbResult<Option<BackupVersion>>>;
    /// Replaces a live version's `auth_data`; `false` if there is no such version.
    fn update_backup_version<'a>(
        &'a self,
        localpart: &'a str,
        version: i64,
        auth_data: &'a str,
    ) -> BoxFuture<'a, DbResult<bool>>;
    /// Deletes a live version (its number is never reused); `false` if there is none.
    fn delete_backup_version<'a>(
        &'a self,
        localpart: &'a str,
        version: i64,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>>;

    /// Global account data of one type, as JSON text.
    fn account_data<'a>(
        &'a self,
        localpart: &'a str,
        data_type: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<String>>>;
    /// Stores global account data of one type, unless the user's account data would then
    /// exceed `quota` (checked and written in one transaction).
    fn put_account_data<'a>(
        &'a self,
        localpart: &'a str,
        data_type: &'a str,
        content: &'a str,
        now: i64,
        quota: AccountDataQuota,
    ) -> BoxFuture<'a, DbResult<AccountDataWrite>>;
}

/// Per-user bounds on stored account data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountDataQuota {
    /// Types stored, at most.
    pub max_entries: i64,
    /// Bytes of type names plus contents, at most.
    pub max_bytes: i64,
}

/// Outcome of [`ClientDb::put_account_data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountDataWrite {
    /// Stored.
    Stored,
    /// Refused: one more type than `max_entries`.
    TooManyEntries,
    /// Refused: more bytes than `max_bytes`.
    TooManyBytes,
}

impl AccountDataQuota {
    /// The verdict on a write, given what the user stores besides the written type.
    pub(super) fn judge(
        self,
        other_entries: i64,
        other_bytes: i64,
        new_bytes: i64,
    ) -> AccountDataWrite {
        if other_entries + 1 > self.max_entries {
            AccountDataWrite::TooManyEntries
        } else if other_bytes + new_bytes > self.max_bytes {
            AccountDataWrite::TooManyBytes
        } else {
            AccountDataWrite::Stored
        }
    }
}

/// Byte size of one account data entry, as counted against the quota.
pub(super) fn entry_bytes(data_type: &str, content: &str) -> i64 {
    i64::try_from(data_type.len() + content.len()).unwrap_or(i64::MAX)
}

/// Removes key rows left by an earlier device with this ID (older than the device row).
async fn purge_stale(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    localpart: &str,
    device_id: &str,
) -> Result<(), sqlx::Error> {
    for (table, column) in [
        ("e2e_device_keys", "updated_at"),
        ("e2e_one_time_keys", "created_at"),
        ("e2e_fallback_keys", "created_at"),
    ] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE localpart = ? AND device_id = ? AND {column} < \
             (SELECT created_at FROM devices WHERE localpart = ? AND device_id = ?)"
        ))
        .bind(localpart)
        .bind(device_id)
        .bind(localpart)
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn uploaded_key(row: &SqliteRow) -> Result<UploadedKey, sqlx::Error> {
    Ok(UploadedKey {
        algorithm: row.try_get("algorithm")?,
        key_id: row.try_get("key_id")?,
        key_json: row.try_get("key_json")?,
    })
}

impl ClientDb for LegacySqlite {
    fn token_status<'a>(
        &'a self,
        access_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<TokenStatus>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT s.localpart, s.device_id, s.scope, s.session_id, t.expires_at, \
                 t.used_at, t.revoked_at AS token_revoked, s.revoked_at AS session_revoked, u.locked \
                 FROM access_tokens t JOIN oauth_sessions s ON s.session_id = t.session_id \
                 JOIN users u ON u.localpart = s.localpart WHERE t.token_hash = ?",
            )
            .bind(access_hash)
            .fetch_optional(self.pool())
            .await
            .map_err(backend)?;
            let Some(row) = row else {
                return Ok(TokenStatus::Unknown);
            };
            let read = || -> Result<TokenStatus, sqlx::Error> {
                // Locking revokes sessions too: report the lock, which is what the user can act on.
                if row.try_get::<i64, _>("locked")? != 0 {
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
            read().map_err(backend)
        })
    }

    fn set_device_display_name<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        display_name: Option<&'a str>,
    ) -> BoxFuture<'a, DbResult<bool>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE devices SET display_name = ? WHERE localpart = ? AND device_id = ?",
            )
            .bind(display_name)
            .bind(localpart)
            .bind(device_id)
            .execute(self.pool())
            .await
            .map_err(backend)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn revoke_user_sessions<'a>(
        &'a self,
        localpart: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<u64>> {
        Box::pin(async move {
            let mut tx = self
                .pool()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(backend)?;
            let live =
                "SELECT session_id FROM oauth_sessions WHERE localpart = ? AND revoked_at IS NULL";
            for table in ["access_tokens", "refresh_tokens"] {
                sqlx::query(&format!(
                    "UPDATE {table} SET revoked_at = ? WHERE revoked_at IS NULL AND session_id IN ({live})"
                ))
                .bind(now)
                .bind(localpart)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            }
            let done = sqlx::query(
                "UPDATE oauth_sessions SET revoked_at = ? WHERE localpart = ? AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(localpart)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(done.rows_affected())
        })
    }

    fn device_keys<'a>(
        &'a self,
        localpart: &'a str,
        device_ids: &'a [String],
    ) -> BoxFuture<'a, DbResult<Vec<StoredDeviceKeys>>> {
        Box::pin(async move {
            let base = "SELECT k.device_id, k.key_json, d.display_name FROM e2e_device_keys k \
                        JOIN devices d ON d.localpart = k.localpart AND d.device_id = k.device_id \
                        WHERE k.localpart = ? AND k.updated_at >= d.created_at";
            let rows = if device_ids.is_empty() {
                sqlx::query(&format!("{base} ORDER BY k.device_id"))
                    .bind(localpart)
                    .fetch_all(self.pool())
                    .await
                    .map_err(backend)?
            } else {
                let mut rows = Vec::new();
                for device_id in device_ids {
                    if let Some(row) = sqlx::query(&format!("{base} AND k.device_id = ?"))
                        .bind(localpart)
                        .bind(device_id)
                        .fetch_optional(self.pool())
                        .await
                        .map_err(backend)?
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
                .map_err(backend)
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
        Box::pin(async move {
            let Some(old) = old else {
                let mut tx = self
                    .pool()
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(backend)?;
                purge_stale(&mut tx, localpart, device_id)
                    .await
                    .map_err(backend)?;
                let done = sqlx::query(
                    "INSERT INTO e2e_device_keys (localpart, device_id, key_json, updated_at) \
                     VALUES (?, ?, ?, ?) ON CONFLICT (localpart, device_id) DO NOTHING",
                )
                .bind(localpart)
                .bind(device_id)
                .bind(new)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                return Ok(done.rows_affected() > 0);
            };
            let done = sqlx::query(
                "UPDATE e2e_device_keys SET key_json = ?, updated_at = ? \
                     WHERE localpart = ? AND device_id = ? AND key_json = ?",
            )
            .bind(new)
            .bind(now)
            .bind(localpart)
            .bind(device_id)
            .bind(old)
            .execute(self.pool())
            .await
            .map_err(backend)?;
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
        Box::pin(async move {
            let mut tx = self
                .pool()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(backend)?;
            purge_stale(&mut tx, localpart, device_id)
                .await
                .map_err(backend)?;
            for key in keys {
                let existing: Option<String> = sqlx::query_scalar(
                    "SELECT key_json FROM e2e_one_time_keys \
                     WHERE localpart = ? AND device_id = ? AND algorithm = ? AND key_id = ?",
                )
                .bind(localpart)
                .bind(device_id)
                .bind(&key.algorithm)
                .bind(&key.key_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
                match existing {
                    Some(json) if json == key.key_json => {}
                    Some(_) => return Err(DbError::Conflict),
                    None => {
                        sqlx::query(
                            "INSERT INTO e2e_one_time_keys \
                             (localpart, device_id, algorithm, key_id, key_json, created_at) \
                             VALUES (?, ?, ?, ?, ?, ?)",
                        )
                        .bind(localpart)
                        .bind(device_id)
                        .bind(&key.algorithm)
                        .bind(&key.key_id)
                        .bind(&key.key_json)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                    }
                }
            }
            tx.commit().await.map_err(backend)
        })
    }

    fn one_time_key_counts<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, DbResult<Vec<(String, i64)>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT k.algorithm, COUNT(*) AS n FROM e2e_one_time_keys k \
                 JOIN devices d ON d.localpart = k.localpart AND d.device_id = k.device_id \
                 WHERE k.localpart = ? AND k.device_id = ? AND k.created_at >= d.created_at \
                 GROUP BY k.algorithm ORDER BY k.algorithm",
            )
            .bind(localpart)
            .bind(device_id)
            .fetch_all(self.pool())
            .await
            .map_err(backend)?;
            rows.iter()
                .map(|row| Ok((row.try_get("algorithm")?, row.try_get("n")?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(backend)
        })
    }

    fn set_fallback_key<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        key: &'a UploadedKey,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        Box::pin(async move {
            let mut tx = self
                .pool()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(backend)?;
            purge_stale(&mut tx, localpart, device_id)
                .await
                .map_err(backend)?;
            sqlx::query(
                "INSERT INTO e2e_fallback_keys \
                 (localpart, device_id, algorithm, key_id, key_json, used, created_at) \
                 VALUES (?, ?, ?, ?, ?, 0, ?) ON CONFLICT (localpart, device_id, algorithm) DO UPDATE \
                 SET key_id = excluded.key_id, key_json = excluded.key_json, used = 0, \
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
            .map_err(backend)?;
            tx.commit().await.map_err(backend)
        })
    }

    fn claim_key<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        algorithm: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<UploadedKey>>> {
        Box::pin(async move {
            let mut tx = self
                .pool()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(backend)?;
            let exists: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM devices WHERE localpart = ? AND device_id = ?",
            )
            .bind(localpart)
            .bind(device_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
            if exists == 0 {
                return Ok(None);
            }
            purge_stale(&mut tx, localpart, device_id)
                .await
                .map_err(backend)?;
            let one_time = sqlx::query(
                "SELECT algorithm, key_id, key_json FROM e2e_one_time_keys \
                 WHERE localpart = ? AND device_id = ? AND algorithm = ? \
                 ORDER BY created_at, key_id LIMIT 1",
            )
            .bind(localpart)
            .bind(device_id)
            .bind(algorithm)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
            let claimed = if let Some(row) = one_time {
                let key = uploaded_key(&row).map_err(backend)?;
                sqlx::query(
                    "DELETE FROM e2e_one_time_keys \
                     WHERE localpart = ? AND device_id = ? AND algorithm = ? AND key_id = ?",
                )
                .bind(localpart)
                .bind(device_id)
                .bind(algorithm)
                .bind(&key.key_id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                Some(key)
            } else {
                let fallback = sqlx::query(
                    "SELECT algorithm, key_id, key_json FROM e2e_fallback_keys \
                     WHERE localpart = ? AND device_id = ? AND algorithm = ?",
                )
                .bind(localpart)
                .bind(device_id)
                .bind(algorithm)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
                if fallback.is_some() {
                    sqlx::query(
                        "UPDATE e2e_fallback_keys SET used = 1 \
                         WHERE localpart = ? AND device_id = ? AND algorithm = ?",
                    )
                    .bind(localpart)
                    .bind(device_id)
                    .bind(algorithm)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                }
                fallback
                    .as_ref()
                    .map(uploaded_key)
                    .transpose()
                    .map_err(backend)?
            };
            tx.commit().await.map_err(backend)?;
            Ok(claimed)
        })
    }

    fn cross_signing_keys<'a>(
        &'a self,
        localpart: &'a str,
    ) -> BoxFuture<'a, DbResult<Vec<(String, String)>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT key_usage, key_json FROM e2e_cross_signing_keys WHERE localpart = ? \
                 ORDER BY key_usage",
            )
            .bind(localpart)
            .fetch_all(self.pool())
            .await
            .map_err(backend)?;
            rows.iter()
                .map(|row| Ok((row.try_get("key_usage")?, row.try_get("key_json")?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(backend)
        })
    }

    fn put_cross_signing_keys<'a>(
        &'a self,
        localpart: &'a str,
        keys: &'a [(String, String)],
        consume_reset: bool,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        Box::pin(async move {
            let mut tx = self
                .pool()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(backend)?;
            for (usage, json) in keys {
                sqlx::query(
                    "INSERT INTO e2e_cross_signing_keys (localpart, key_usage, key_json, updated_at) \
                     VALUES (?, ?, ?, ?) ON CONFLICT (localpart, key_usage) DO UPDATE \
                     SET key_json = excluded.key_json, updated_at = excluded.updated_at",
                )
                .bind(localpart)
                .bind(usage)
                .bind(json)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            }
            if consume_reset {
                sqlx::query("DELETE FROM cross_signing_resets WHERE localpart = ?")
                    .bind(localpart)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
            tx.commit().await.map_err(backend)
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
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE e2e_cross_signing_keys SET key_json = ?, updated_at = ? \
                 WHERE localpart = ? AND key_usage = ? AND key_json = ?",
            )
            .bind(new)
            .bind(now)
            .bind(localpart)
            .bind(usage)
            .bind(old)
            .execute(self.pool())
            .await
            .map_err(backend)?;
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
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO e2e_user_signatures \
                 (signer, target_user_id, target_key_id, signer_key_id, signature) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (signer, target_user_id, target_key_id, signer_key_id) \
                 DO UPDATE SET signature = excluded.signature",
            )
            .bind(signer)
            .bind(target_user_id)
            .bind(target_key_id)
            .bind(signer_key_id)
            .bind(signature)
            .execute(self.pool())
            .await
            .map_err(backend)?;
            Ok(())
        })
    }

    fn user_signatures<'a>(
        &'a self,
        signer: &'a str,
        target_user_id: &'a str,
    ) -> BoxFuture<'a, DbResult<Vec<(String, String, String)>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT target_key_id, signer_key_id, signature FROM e2e_user_signatures \
                 WHERE signer = ? AND target_user_id = ? ORDER BY target_key_id, signer_key_id",
            )
            .bind(signer)
            .bind(target_user_id)
            .fetch_all(self.pool())
            .await
            .map_err(backend)?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("target_key_id")?,
                        row.try_get("signer_key_id")?,
                        row.try_get("signature")?,
                    ))
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(backend)
        })
    }

    fn create_backup_version<'a>(
        &'a self,
        localpart: &'a str,
        algorithm: &'a str,
        auth_data: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<i64>> {
        Box::pin(async move {
            let mut tx = self
                .pool()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(backend)?;
            let last: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(version) FROM e2e_backup_versions WHERE localpart = ?",
            )
            .bind(localpart)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
            let version = last.unwrap_or(0) + 1;
            sqlx::query(
                "INSERT INTO e2e_backup_versions \
                 (localpart, version, algorithm, auth_data, etag, created_at) VALUES (?, ?, ?, ?, 0, ?)",
            )
            .bind(localpart)
            .bind(version)
            .bind(algorithm)
            .bind(auth_data)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(version)
        })
    }

    fn backup_version<'a>(
        &'a self,
        localpart: &'a str,
        version: Option<i64>,
    ) -> BoxFuture<'a, DbResult<Option<BackupVersion>>> {
        Box::pin(async move {
            let base = "SELECT version, algorithm, auth_data, etag FROM e2e_backup_versions \
                        WHERE localpart = ? AND deleted_at IS NULL";
            let row = match version {
                Some(version) => {
                    sqlx::query(&format!("{base} AND version = ?"))
                        .bind(localpart)
                        .bind(version)
                        .fetch_optional(self.pool())
                        .await
                }
                None => {
                    sqlx::query(&format!("{base} ORDER BY version DESC LIMIT 1"))
                        .bind(localpart)
                        .fetch_optional(self.pool())
                        .await
                }
            }
            .map_err(backend)?;
            row.map(|row| {
                Ok(BackupVersion {
                    version: row.try_get("version")?,
                    algorithm: row.try_get("algorithm")?,
                    auth_data: row.try_get("auth_data")?,
                    etag: row.try_get("etag")?,
                })
            })
            .transpose()
            .map_err(backend)
        })
    }

    fn update_backup_version<'a>(
        &'a self,
        localpart: &'a str,
        version: i64,
        auth_data: &'a str,
    ) -> BoxFuture<'a, DbResult<bool>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE e2e_backup_versions SET auth_data = ? \
                 WHERE localpart = ? AND version = ? AND deleted_at IS NULL",
            )
            .bind(auth_data)
            .bind(localpart)
            .bind(version)
            .execute(self.pool())
            .await
            .map_err(backend)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn delete_backup_version<'a>(
        &'a self,
        localpart: &'a str,
        version: i64,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE e2e_backup_versions SET deleted_at = ? \
                 WHERE localpart = ? AND version = ? AND deleted_at IS NULL",
            )
            .bind(now)
            .bind(localpart)
            .bind(version)
            .execute(self.pool())
            .await
            .map_err(backend)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn account_data<'a>(
        &'a self,
        localpart: &'a str,
        data_type: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<String>>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT content FROM account_data WHERE localpart = ? AND data_type = ?",
            )
            .bind(localpart)
            .bind(data_type)
            .fetch_optional(self.pool())
            .await
            .map_err(backend)
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
        Box::pin(async move {
            // The write lock is taken up front: no other write can slip past the quota.
            let mut tx = self
                .pool()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(backend)?;
            let (entries, bytes): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(data_type AS BLOB)) \
                 + LENGTH(CAST(content AS BLOB))), 0) \
                 FROM account_data WHERE localpart = ? AND data_type <> ?",
            )
            .bind(localpart)
            .bind(data_type)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
            let verdict = quota.judge(entries, bytes, entry_bytes(data_type, content));
            if verdict != AccountDataWrite::Stored {
                return Ok(verdict);
            }
            sqlx::query(
                "INSERT INTO account_data (localpart, data_type, content, updated_at) \
                 VALUES (?, ?, ?, ?) ON CONFLICT (localpart, data_type) DO UPDATE \
                 SET content = excluded.content, updated_at = excluded.updated_at",
            )
            .bind(localpart)
            .bind(data_type)
            .bind(content)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(AccountDataWrite::Stored)
        })
    }
}

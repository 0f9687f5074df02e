//! The store side of the client-server endpoints a QR sign-in touches: bearer-token status,
//! device edits, end-to-end-encryption keys, key-backup versions and account data.
//!
//! Methods of [`SqlDb`], written once for both back ends, like `repo.rs`. The store
//! knows nothing about signatures: handlers verify, then store JSON text. Updates that merge
//! signatures into a stored object are compare-and-swap ([`SqlDb::swap_device_keys`]), so
//! two concurrent merges cannot lose each other's signature and the back end needs no JSON
//! support.

use super::error::{DbError, DbResult};
use super::sql::{SqlDb, Tx, exec, fetch, scalar, with_conn, with_tx};
use crate::oauth::model::session::{AccessToken, TokenStatus};

/// A device's uploaded identity keys.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredDeviceKeys {
    /// Device ID.
    pub device_id: String,
    /// The device's display name (from the devices table), for `unsigned`.
    pub display_name: Option<String>,
    /// The `device_keys` object as JSON text, with every signature that verified.
    pub key_json: String,
}

/// A one-time or fallback key as uploaded.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct UploadedKey {
    /// Algorithm, e.g. `signed_curve25519`.
    pub algorithm: String,
    /// Key ID after the `algorithm:` prefix.
    pub key_id: String,
    /// The key (object or string) as JSON text.
    pub key_json: String,
}

/// A key-backup version.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
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

/// Per-user bounds on stored account data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountDataQuota {
    /// Types stored, at most.
    pub max_entries: i64,
    /// Bytes of type names plus contents, at most.
    pub max_bytes: i64,
}

/// Outcome of [`SqlDb::put_account_data`].
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

impl Tx {
    /// Serializes the key writes of one device (uploads, claims) on PostgreSQL and removes the
    /// key rows left by an earlier device with this ID (older than the device row); `false` if
    /// there is no device.
    async fn lock_device(&mut self, localpart: &str, device_id: &str) -> DbResult<bool> {
        let lock = self.dialect().for_no_key_update();
        let row: Option<(i32,)> = fetch!(
            self.conn(),
            fetch_optional,
            &format!("SELECT 1 FROM devices WHERE localpart = $1 AND device_id = $2{lock}"),
            localpart,
            device_id
        )?;
        if row.is_none() {
            return Ok(false);
        }
        for (table, column) in [
            ("e2e_device_keys", "updated_at"),
            ("e2e_one_time_keys", "created_at"),
            ("e2e_fallback_keys", "created_at"),
        ] {
            exec!(
                self.conn(),
                &format!(
                    "DELETE FROM {table} WHERE localpart = $1 AND device_id = $2 AND {column} < \
                     (SELECT created_at FROM devices WHERE localpart = $1 AND device_id = $2)"
                ),
                localpart,
                device_id
            )?;
        }
        Ok(true)
    }
}

impl SqlDb {
    /// An access token's standing at `now` ([`AccessToken::status`]), read with its
    /// session's and user's standing.
    pub async fn token_status(&self, access_hash: &str, now: i64) -> DbResult<TokenStatus> {
        let token: Option<AccessToken> = with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_optional,
            "SELECT s.localpart, s.device_id, s.scope, s.session_id, t.expires_at, \
             t.used_at IS NOT NULL AS used, \
             (t.revoked_at IS NOT NULL OR s.revoked_at IS NOT NULL) AS revoked, \
             u.locked AS user_locked \
             FROM access_tokens t JOIN oauth_sessions s ON s.session_id = t.session_id \
             JOIN users u ON u.localpart = s.localpart WHERE t.token_hash = $1",
            access_hash
        ))?;
        Ok(token.map_or(TokenStatus::Unknown, |token| token.status(now)))
    }

    /// Sets (or clears) a device's display name; `false` if there is no such device.
    pub async fn set_device_display_name(
        &self,
        localpart: &str,
        device_id: &str,
        display_name: Option<&str>,
    ) -> DbResult<bool> {
        with_conn!(self, |c| exec!(
            c.conn(),
            "UPDATE devices SET display_name = $1 WHERE localpart = $2 AND device_id = $3",
            display_name,
            localpart,
            device_id
        ))
        .map(|done| done > 0)
    }

    /// Revokes every live OAuth session of a user (`/logout/all`); returns how many.
    pub async fn revoke_user_sessions(&self, localpart: &str, now: i64) -> DbResult<u64> {
        with_tx!(self, |tx| {
            tx.lock_user(localpart).await?;
            let n = tx.revoke_user_sessions(localpart, None, now).await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    /// Uploaded keys of the user's existing devices: all of them when `device_ids` is empty.
    /// Keys of deleted devices are never returned.
    pub async fn device_keys(
        &self,
        localpart: &str,
        device_ids: &[String],
    ) -> DbResult<Vec<StoredDeviceKeys>> {
        with_conn!(self, |c| {
            let base = "SELECT k.device_id, d.display_name, k.key_json FROM e2e_device_keys k \
                        JOIN devices d ON d.localpart = k.localpart AND d.device_id = k.device_id \
                        WHERE k.localpart = $1 AND k.updated_at >= d.created_at";
            if device_ids.is_empty() {
                let order = self.dialect().byte_order();
                return fetch!(
                    c.conn(),
                    fetch_all,
                    &format!("{base} ORDER BY k.device_id{order}"),
                    localpart
                );
            }
            // In the order asked for.
            let mut rows = Vec::new();
            for device_id in device_ids {
                let row: Option<StoredDeviceKeys> = fetch!(
                    c.conn(),
                    fetch_optional,
                    &format!("{base} AND k.device_id = $2"),
                    localpart,
                    device_id
                )?;
                rows.extend(row);
            }
            Ok(rows)
        })
    }

    /// Compare-and-swap of a device's keys: stores `new` if the stored JSON is `old` (`None`:
    /// nothing stored yet). `false` if another write came first.
    pub async fn swap_device_keys(
        &self,
        localpart: &str,
        device_id: &str,
        old: Option<&str>,
        new: &str,
        now: i64,
    ) -> DbResult<bool> {
        with_tx!(self, |tx| {
            let done = match old {
                None => {
                    tx.lock_device(localpart, device_id).await?;
                    exec!(
                        tx.conn(),
                        "INSERT INTO e2e_device_keys \
                         (localpart, device_id, key_json, updated_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (localpart, device_id) DO NOTHING",
                        localpart,
                        device_id,
                        new,
                        now
                    )?
                }
                Some(old) => exec!(
                    tx.conn(),
                    "UPDATE e2e_device_keys SET key_json = $1, updated_at = $2 \
                     WHERE localpart = $3 AND device_id = $4 AND key_json = $5",
                    new,
                    now,
                    localpart,
                    device_id,
                    old
                )?,
            };
            tx.commit().await?;
            Ok(done > 0)
        })
    }

    /// Adds one-time keys; re-uploading an identical key is a no-op, a different key under a
    /// used ID is [`DbError::Conflict`] (and nothing is stored).
    pub async fn add_one_time_keys(
        &self,
        localpart: &str,
        device_id: &str,
        keys: &[UploadedKey],
        now: i64,
    ) -> DbResult<()> {
        with_tx!(self, |tx| {
            // Two identical uploads racing must both succeed, not collide on the key.
            tx.lock_device(localpart, device_id).await?;
            for key in keys {
                let existing: Option<String> = scalar!(
                    tx.conn(),
                    fetch_optional,
                    "SELECT key_json FROM e2e_one_time_keys \
                     WHERE localpart = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
                    localpart,
                    device_id,
                    &key.algorithm,
                    &key.key_id
                )?;
                match existing {
                    Some(json) if json == key.key_json => {}
                    Some(_) => return Err(DbError::Conflict),
                    None => {
                        exec!(
                            tx.conn(),
                            "INSERT INTO e2e_one_time_keys \
                             (localpart, device_id, algorithm, key_id, key_json, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6)",
                            localpart,
                            device_id,
                            &key.algorithm,
                            &key.key_id,
                            &key.key_json,
                            now
                        )?;
                    }
                }
            }
            tx.commit().await
        })
    }

    /// Unclaimed one-time keys per algorithm.
    pub async fn one_time_key_counts(
        &self,
        localpart: &str,
        device_id: &str,
    ) -> DbResult<Vec<(String, i64)>> {
        let order = self.dialect().byte_order();
        with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_all,
            &format!(
                "SELECT k.algorithm, COUNT(*) FROM e2e_one_time_keys k \
                 JOIN devices d ON d.localpart = k.localpart AND d.device_id = k.device_id \
                 WHERE k.localpart = $1 AND k.device_id = $2 \
                 AND k.created_at >= d.created_at \
                 GROUP BY k.algorithm ORDER BY k.algorithm{order}"
            ),
            localpart,
            device_id
        ))
    }

    /// Replaces the fallback key of the key's algorithm (an identical re-upload keeps its
    /// used flag).
    pub async fn set_fallback_key(
        &self,
        localpart: &str,
        device_id: &str,
        key: &UploadedKey,
        now: i64,
    ) -> DbResult<()> {
        with_tx!(self, |tx| {
            tx.lock_device(localpart, device_id).await?;
            exec!(
                tx.conn(),
                "INSERT INTO e2e_fallback_keys \
                 (localpart, device_id, algorithm, key_id, key_json, used, created_at) \
                 VALUES ($1, $2, $3, $4, $5, FALSE, $6) \
                 ON CONFLICT (localpart, device_id, algorithm) DO UPDATE \
                 SET key_id = excluded.key_id, key_json = excluded.key_json, used = FALSE, \
                 created_at = excluded.created_at \
                 WHERE e2e_fallback_keys.key_id <> excluded.key_id \
                 OR e2e_fallback_keys.key_json <> excluded.key_json",
                localpart,
                device_id,
                &key.algorithm,
                &key.key_id,
                &key.key_json,
                now
            )?;
            tx.commit().await
        })
    }

    /// Claims a key of `algorithm` of an existing device: a one-time key (removed), else the
    /// fallback key (marked used, kept).
    pub async fn claim_key(
        &self,
        localpart: &str,
        device_id: &str,
        algorithm: &str,
    ) -> DbResult<Option<UploadedKey>> {
        with_tx!(self, |tx| {
            // Claims of one device queue here, so a one-time key is handed out only once.
            if !tx.lock_device(localpart, device_id).await? {
                return Ok(None);
            }
            let order = tx.dialect().byte_order();
            let one_time: Option<UploadedKey> = fetch!(
                tx.conn(),
                fetch_optional,
                &format!(
                    "DELETE FROM e2e_one_time_keys \
                     WHERE (localpart, device_id, algorithm, key_id) = ( \
                     SELECT localpart, device_id, algorithm, key_id FROM e2e_one_time_keys \
                     WHERE localpart = $1 AND device_id = $2 AND algorithm = $3 \
                     ORDER BY created_at, key_id{order} LIMIT 1) \
                     RETURNING algorithm, key_id, key_json"
                ),
                localpart,
                device_id,
                algorithm
            )?;
            let claimed = match one_time {
                Some(key) => Some(key),
                None => fetch!(
                    tx.conn(),
                    fetch_optional,
                    "UPDATE e2e_fallback_keys SET used = TRUE \
                     WHERE localpart = $1 AND device_id = $2 AND algorithm = $3 \
                     RETURNING algorithm, key_id, key_json",
                    localpart,
                    device_id,
                    algorithm
                )?,
            };
            tx.commit().await?;
            Ok(claimed)
        })
    }

    /// The user's cross-signing keys as `(usage, JSON text)`.
    pub async fn cross_signing_keys(&self, localpart: &str) -> DbResult<Vec<(String, String)>> {
        let order = self.dialect().byte_order();
        with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_all,
            &format!(
                "SELECT key_usage, key_json FROM e2e_cross_signing_keys \
                 WHERE localpart = $1 ORDER BY key_usage{order}"
            ),
            localpart
        ))
    }

    /// Stores cross-signing keys `(usage, JSON text)`, replacing those of the same usage; with
    /// `consume_reset` the user's reset approval is used up in the same transaction.
    pub async fn put_cross_signing_keys(
        &self,
        localpart: &str,
        keys: &[(String, String)],
        consume_reset: bool,
        now: i64,
    ) -> DbResult<()> {
        with_tx!(self, |tx| {
            for (usage, json) in keys {
                exec!(
                    tx.conn(),
                    "INSERT INTO e2e_cross_signing_keys \
                     (localpart, key_usage, key_json, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (localpart, key_usage) DO UPDATE \
                     SET key_json = excluded.key_json, updated_at = excluded.updated_at",
                    localpart,
                    usage,
                    json,
                    now
                )?;
            }
            if consume_reset {
                exec!(
                    tx.conn(),
                    "DELETE FROM cross_signing_resets WHERE localpart = $1",
                    localpart
                )?;
            }
            tx.commit().await
        })
    }

    /// Compare-and-swap of one cross-signing key's JSON (merging signatures).
    pub async fn swap_cross_signing_key(
        &self,
        localpart: &str,
        usage: &str,
        old: &str,
        new: &str,
        now: i64,
    ) -> DbResult<bool> {
        with_conn!(self, |c| exec!(
            c.conn(),
            "UPDATE e2e_cross_signing_keys SET key_json = $1, updated_at = $2 \
             WHERE localpart = $3 AND key_usage = $4 AND key_json = $5",
            new,
            now,
            localpart,
            usage,
            old
        ))
        .map(|done| done > 0)
    }

    /// Records `signer`'s user-signing signature of another user's master key.
    pub async fn add_user_signature(
        &self,
        signer: &str,
        target_user_id: &str,
        target_key_id: &str,
        signer_key_id: &str,
        signature: &str,
    ) -> DbResult<()> {
        with_conn!(self, |c| exec!(
            c.conn(),
            "INSERT INTO e2e_user_signatures \
             (signer, target_user_id, target_key_id, signer_key_id, signature) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (signer, target_user_id, target_key_id, signer_key_id) \
             DO UPDATE SET signature = excluded.signature",
            signer,
            target_user_id,
            target_key_id,
            signer_key_id,
            signature
        ))
        .map(drop)
    }

    /// `signer`'s signatures of `target_user_id`'s key `target_key_id`: `(signer key ID,
    /// signature)`.
    pub async fn user_signatures(
        &self,
        signer: &str,
        target_user_id: &str,
        target_key_id: &str,
    ) -> DbResult<Vec<(String, String)>> {
        let order = self.dialect().byte_order();
        with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_all,
            &format!(
                "SELECT signer_key_id, signature FROM e2e_user_signatures \
                 WHERE signer = $1 AND target_user_id = $2 AND target_key_id = $3 \
                 ORDER BY signer_key_id{order}"
            ),
            signer,
            target_user_id,
            target_key_id
        ))
    }

    /// Creates the next backup version; returns its number.
    pub async fn create_backup_version(
        &self,
        localpart: &str,
        algorithm: &str,
        auth_data: &str,
        now: i64,
    ) -> DbResult<i64> {
        with_tx!(self, |tx| {
            // Creations of one user queue here, so each gets the next number.
            tx.lock_user(localpart).await?;
            let version: i64 = scalar!(
                tx.conn(),
                fetch_one,
                "INSERT INTO e2e_backup_versions \
                 (localpart, version, algorithm, auth_data, etag, created_at) \
                 SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, 0, $4 \
                 FROM e2e_backup_versions WHERE localpart = $1 RETURNING version",
                localpart,
                algorithm,
                auth_data,
                now
            )?;
            tx.commit().await?;
            Ok(version)
        })
    }

    /// A live backup version, or the latest when `version` is `None`.
    pub async fn backup_version(
        &self,
        localpart: &str,
        version: Option<i64>,
    ) -> DbResult<Option<BackupVersion>> {
        with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_optional,
            "SELECT version, algorithm, auth_data, etag FROM e2e_backup_versions \
             WHERE localpart = $1 AND deleted_at IS NULL AND ($2 IS NULL OR version = $2) \
             ORDER BY version DESC LIMIT 1",
            localpart,
            version
        ))
    }

    /// Replaces a live version's `auth_data`; `false` if there is no such version.
    pub async fn update_backup_version(
        &self,
        localpart: &str,
        version: i64,
        auth_data: &str,
    ) -> DbResult<bool> {
        with_conn!(self, |c| exec!(
            c.conn(),
            "UPDATE e2e_backup_versions SET auth_data = $1 \
             WHERE localpart = $2 AND version = $3 AND deleted_at IS NULL",
            auth_data,
            localpart,
            version
        ))
        .map(|done| done > 0)
    }

    /// Deletes a live version (its number is never reused); `false` if there is none.
    pub async fn delete_backup_version(
        &self,
        localpart: &str,
        version: i64,
        now: i64,
    ) -> DbResult<bool> {
        with_conn!(self, |c| exec!(
            c.conn(),
            "UPDATE e2e_backup_versions SET deleted_at = $1 \
             WHERE localpart = $2 AND version = $3 AND deleted_at IS NULL",
            now,
            localpart,
            version
        ))
        .map(|done| done > 0)
    }

    /// Global account data of one type, as JSON text.
    pub async fn account_data(&self, localpart: &str, data_type: &str) -> DbResult<Option<String>> {
        with_conn!(self, |c| scalar!(
            c.conn(),
            fetch_optional,
            "SELECT content FROM account_data WHERE localpart = $1 AND data_type = $2",
            localpart,
            data_type
        ))
    }

    /// Stores global account data of one type, unless the user's account data would then
    /// exceed `quota` (checked and written in one transaction).
    pub async fn put_account_data(
        &self,
        localpart: &str,
        data_type: &str,
        content: &str,
        now: i64,
        quota: AccountDataQuota,
    ) -> DbResult<AccountDataWrite> {
        with_tx!(self, |tx| {
            // This user's writes are serialized (the user lock; on SQLite the write lock taken
            // up front), so two cannot both pass the quota.
            tx.lock_user(localpart).await?;
            let (entries, bytes): (i64, i64) = fetch!(
                tx.conn(),
                fetch_one,
                "SELECT COUNT(*), \
                 CAST(COALESCE(SUM(octet_length(data_type) + octet_length(content)), 0) AS BIGINT) \
                 FROM account_data WHERE localpart = $1 AND data_type <> $2",
                localpart,
                data_type
            )?;
            let verdict = quota.judge(entries, bytes, entry_bytes(data_type, content));
            if verdict != AccountDataWrite::Stored {
                return Ok(verdict);
            }
            exec!(
                tx.conn(),
                "INSERT INTO account_data (localpart, data_type, content, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (localpart, data_type) DO UPDATE \
                 SET content = excluded.content, updated_at = excluded.updated_at",
                localpart,
                data_type,
                content,
                now
            )?;
            tx.commit().await?;
            Ok(AccountDataWrite::Stored)
        })
    }
}

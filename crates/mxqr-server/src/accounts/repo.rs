//! The accounts and OAuth half of the store ([`SqlDb`]), written once for both back ends.
//!
//! Each method is one call of [`SqlDb::run`]: a single statement on a pooled
//! connection, or a transaction ([`SqlDb::begin`]) committed at its end. The
//! locking the back ends differ in is in [`Tx`]'s lock helpers and [`super::sql::Dialect`]:
//! on SQLite they are no-ops (the transaction holds the one write lock from its start); on
//! PostgreSQL the code, device grant or OAuth session being redeemed is locked `FOR UPDATE`
//! and re-read, so a second instance racing on it waits and then sees the first one's
//! result. Locks are taken in one
//! order everywhere (code or grant, then user, then session, then tokens) so that racing
//! transactions queue instead of deadlocking.

use super::sql::{Conn, Dialect, Tx, exec, fetch, scalar, with_conn, with_tx};
use super::{
    DbError, DbResult, Device, DeviceGrantView, Grant, GrantAdmission, NewDeviceGrant, NewTokens,
    PendingGrantCaps, SqlDb, TokenInfo, User, UserCodeLookup,
};
use crate::oauth::model::auth_code::IssuedCode;
use crate::oauth::model::device_grant::may_look_up;

/// The pending-grant caps: the advisory-lock class (two-key form, PostgreSQL) serializing
/// each, and the column it counts by. One lock per requesting address, then one per client,
/// always in that order.
const ADDRESS_CAP: (i32, &str) = (0x6d78_0001, "requester_key");
const CLIENT_CAP: (i32, &str) = (0x6d78_0002, "client_id");

const USER_COLUMNS: &str = "SELECT localpart, password_hash, locked, created_at FROM users";

const DEVICE_SELECT: &str = "SELECT d.device_id, d.display_name, d.created_at, \
                             s.client_id AS client_id, s.created_at AS session_created_at \
                             FROM devices d LEFT JOIN oauth_sessions s ON s.session_id = ( \
                             SELECT s2.session_id FROM oauth_sessions s2 \
                             WHERE s2.localpart = d.localpart AND s2.device_id = d.device_id \
                             AND s2.revoked_at IS NULL ORDER BY s2.created_at DESC LIMIT 1) \
                             WHERE d.localpart = $1";

/// A device grant as the consent page reads it, with the lookups counted against its cap.
#[derive(sqlx::FromRow)]
struct GrantRow {
    #[sqlx(flatten)]
    view: DeviceGrantView,
    lookups: i64,
}

const GRANT_COLUMNS: &str = "SELECT user_code, client_id, scope, device_id, requester_ip, \
                             requester_ua, created_at, expires_at, lookups FROM device_grants";

/// Records the first use of a client (an authorization code or a session issued to it),
/// which exempts it from the purge of unused registrations.
async fn mark_client_used(conn: Conn<'_>, client_id: &str, now: i64) -> DbResult<()> {
    exec!(
        conn,
        "UPDATE clients SET used_at = $1 WHERE client_id = $2 AND used_at IS NULL",
        now,
        client_id
    )?;
    Ok(())
}

impl Tx {
    /// Serializes the session and device changes of one user (sign-in, device deletion,
    /// lock, backup-version numbering). `NO KEY UPDATE` leaves foreign-key checks of other
    /// writes for the user unblocked.
    pub(super) async fn lock_user(&mut self, localpart: &str) -> DbResult<()> {
        if self.dialect() == Dialect::Postgres {
            let lock = self.dialect().for_no_key_update();
            let _: Option<(i32,)> = fetch!(
                self.conn(),
                fetch_optional,
                &format!("SELECT 1 FROM users WHERE localpart = $1{lock}"),
                localpart
            )?;
        }
        Ok(())
    }

    /// Whether the pending grants with `value` in `column` have reached `cap` (counted after
    /// taking the cap's advisory lock for `value` on PostgreSQL): if so, when the oldest
    /// expires, the time to retry at.
    async fn cap_reached(
        &mut self,
        (lock_class, column): (i32, &str),
        value: &str,
        cap: u32,
        now: i64,
    ) -> DbResult<Option<i64>> {
        if self.dialect() == Dialect::Postgres {
            exec!(
                self.conn(),
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                lock_class,
                value
            )?;
        }
        let (n, oldest): (i64, Option<i64>) = fetch!(
            self.conn(),
            fetch_one,
            &format!(
                "SELECT COUNT(*), MIN(expires_at) FROM device_grants \
                 WHERE {column} = $1 AND status = 'pending' AND expires_at > $2"
            ),
            value,
            now
        )?;
        Ok((n >= i64::from(cap)).then_some(oldest.unwrap_or(now)))
    }

    /// Starts a session with its first token pair, inserting the device if missing; returns
    /// the session ID.
    pub async fn save_session(
        &mut self,
        grant: &Grant,
        tokens: &NewTokens,
        now: i64,
    ) -> DbResult<String> {
        self.lock_user(&grant.localpart).await?;
        exec!(
            self.conn(),
            "INSERT INTO devices (localpart, device_id, display_name, created_at) \
             VALUES ($1, $2, NULL, $3) ON CONFLICT (localpart, device_id) DO NOTHING",
            &grant.localpart,
            &grant.device_id,
            now
        )?;
        let session_id = hex::encode(rand::random::<[u8; 16]>());
        exec!(
            self.conn(),
            "INSERT INTO oauth_sessions (session_id, localpart, device_id, client_id, scope, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &session_id,
            &grant.localpart,
            &grant.device_id,
            &grant.client_id,
            &grant.scope,
            now
        )?;
        self.insert_pair(&session_id, tokens, now).await?;
        if let Some(client_id) = &grant.client_id {
            mark_client_used(self.conn(), client_id, now).await?;
        }
        Ok(session_id)
    }

    pub(super) async fn insert_pair(
        &mut self,
        session_id: &str,
        tokens: &NewTokens,
        now: i64,
    ) -> DbResult<()> {
        exec!(
            self.conn(),
            "INSERT INTO access_tokens (token_hash, session_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
            &tokens.access_hash,
            session_id,
            now,
            tokens.access_expires_at
        )?;
        exec!(
            self.conn(),
            "INSERT INTO refresh_tokens (token_hash, session_id, access_token_hash, created_at) \
             VALUES ($1, $2, $3, $4)",
            &tokens.refresh_hash,
            session_id,
            &tokens.access_hash,
            now
        )?;
        Ok(())
    }

    /// Revokes a session and every token of it (the session row first: the lock order).
    pub async fn revoke_session(&mut self, session_id: &str, now: i64) -> DbResult<()> {
        for table in ["oauth_sessions", "access_tokens", "refresh_tokens"] {
            exec!(
                self.conn(),
                &format!(
                    "UPDATE {table} SET revoked_at = $1 WHERE session_id = $2 \
                     AND revoked_at IS NULL"
                ),
                now,
                session_id
            )?;
        }
        Ok(())
    }

    /// Revokes the live sessions of a user, of one device when `device_id` is given; returns
    /// how many. The caller holds the user lock.
    pub(super) async fn revoke_user_sessions(
        &mut self,
        localpart: &str,
        device_id: Option<&str>,
        now: i64,
    ) -> DbResult<u64> {
        let sessions: Vec<String> = scalar!(
            self.conn(),
            fetch_all,
            "UPDATE oauth_sessions SET revoked_at = $1 WHERE revoked_at IS NULL \
             AND localpart = $2 AND ($3 IS NULL OR device_id = $3) RETURNING session_id",
            now,
            localpart,
            device_id
        )?;
        for session in &sessions {
            self.revoke_session(session, now).await?;
        }
        Ok(sessions.len() as u64)
    }
}

impl SqlDb {
    /// Creates a user; [`DbError::Conflict`] if the localpart is taken.
    pub async fn create_user(
        &self,
        localpart: &str,
        password_hash: Option<&str>,
        now: i64,
    ) -> DbResult<()> {
        with_conn!(self, |c| exec!(
            c.conn(),
            "INSERT INTO users (localpart, password_hash, locked, created_at) \
             VALUES ($1, $2, FALSE, $3)",
            localpart,
            password_hash,
            now
        ))
        .map(drop)
    }

    /// The user with this localpart.
    pub async fn user(&self, localpart: &str) -> DbResult<Option<User>> {
        with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_optional,
            &format!("{USER_COLUMNS} WHERE localpart = $1"),
            localpart
        ))
    }

    /// All users, by localpart.
    pub async fn users(&self) -> DbResult<Vec<User>> {
        let order = self.dialect().byte_order();
        with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_all,
            &format!("{USER_COLUMNS} ORDER BY localpart{order}")
        ))
    }

    /// Locks or unlocks a user; locking ends its browser and OAuth sessions.
    /// [`DbError::NotFound`] if there is no such user.
    pub async fn set_locked(&self, localpart: &str, locked: bool, now: i64) -> DbResult<()> {
        with_tx!(self, |tx| {
            let done = exec!(
                tx.conn(),
                "UPDATE users SET locked = $1 WHERE localpart = $2",
                locked,
                localpart
            )?;
            if done == 0 {
                return Err(DbError::NotFound);
            }
            if locked {
                tx.revoke_user_sessions(localpart, None, now).await?;
                exec!(
                    tx.conn(),
                    "DELETE FROM browser_sessions WHERE localpart = $1",
                    localpart
                )?;
            }
            tx.commit().await
        })
    }

    /// Devices of a user, oldest first.
    pub async fn devices(&self, localpart: &str) -> DbResult<Vec<Device>> {
        let order = self.dialect().byte_order();
        with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_all,
            &format!("{DEVICE_SELECT} ORDER BY d.created_at, d.device_id{order}"),
            localpart
        ))
    }

    /// One device of a user.
    pub async fn device(&self, localpart: &str, device_id: &str) -> DbResult<Option<Device>> {
        with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_optional,
            &format!("{DEVICE_SELECT} AND d.device_id = $2"),
            localpart,
            device_id
        ))
    }

    /// Deletes a device and revokes its tokens; `false` if it did not exist.
    pub async fn delete_device(
        &self,
        localpart: &str,
        device_id: &str,
        now: i64,
    ) -> DbResult<bool> {
        with_tx!(self, |tx| {
            // With the user locked, no sign-in can recreate a session on the device meanwhile.
            tx.lock_user(localpart).await?;
            tx.revoke_user_sessions(localpart, Some(device_id), now)
                .await?;
            let done = exec!(
                tx.conn(),
                "DELETE FROM devices WHERE localpart = $1 AND device_id = $2",
                localpart,
                device_id
            )?;
            tx.commit().await?;
            Ok(done > 0)
        })
    }

    /// Stores client metadata unless identical metadata (same hash) exists; returns the
    /// client ID in force (the existing one, or `new_client_id`). Either way the client counts
    /// as registered at `now`, which restarts the day an unused client is kept.
    pub async fn register_client(
        &self,
        metadata_hash: &str,
        metadata: &str,
        new_client_id: &str,
        now: i64,
    ) -> DbResult<String> {
        // One statement: two instances registering identical metadata at once both get
        // the one row, and a purge cannot slip in between finding and renewing it.
        with_conn!(self, |c| scalar!(
            c.conn(),
            fetch_one,
            "INSERT INTO clients (client_id, metadata_hash, metadata, created_at, \
             registered_at) VALUES ($1, $2, $3, $4, $4) ON CONFLICT (metadata_hash) \
             DO UPDATE SET registered_at = excluded.registered_at RETURNING client_id",
            new_client_id,
            metadata_hash,
            metadata,
            now
        ))
    }

    /// The registered metadata (JSON) of a client.
    pub async fn client(&self, client_id: &str) -> DbResult<Option<String>> {
        with_conn!(self, |c| scalar!(
            c.conn(),
            fetch_optional,
            "SELECT metadata FROM clients WHERE client_id = $1",
            client_id
        ))
    }

    /// Starts an OAuth session with a first token pair, creating the device if needed.
    /// Returns the session ID.
    pub async fn issue_session(
        &self,
        grant: &Grant,
        tokens: &NewTokens,
        now: i64,
    ) -> DbResult<String> {
        with_tx!(self, |tx| {
            let session = tx.save_session(grant, tokens, now).await?;
            tx.commit().await?;
            Ok(session)
        })
    }

    /// What a live access token stands for: `None` unless [`Self::token_status`] is live.
    pub async fn token_info(&self, access_hash: &str, now: i64) -> DbResult<Option<TokenInfo>> {
        Ok(match self.token_status(access_hash, now).await? {
            super::TokenStatus::Live(info) => Some(info),
            _ => None,
        })
    }

    /// Records that an access token authenticated a request (its first use), unless already
    /// recorded. A refresh retry is allowed only while the successor pair is unused.
    pub async fn record_token_use(&self, access_hash: &str, now: i64) -> DbResult<()> {
        with_conn!(self, |c| exec!(
            c.conn(),
            "UPDATE access_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
            now,
            access_hash
        ))
        .map(drop)
    }

    /// Revokes the session of an access or refresh token; `false` if the token is unknown.
    pub async fn revoke_token(&self, token_hash: &str, now: i64) -> DbResult<bool> {
        with_tx!(self, |tx| {
            let session: Option<String> = scalar!(
                tx.conn(),
                fetch_optional,
                "SELECT session_id FROM access_tokens WHERE token_hash = $1 \
                 UNION ALL SELECT session_id FROM refresh_tokens WHERE token_hash = $1 LIMIT 1",
                token_hash
            )?;
            let Some(session) = session else {
                return Ok(false);
            };
            tx.revoke_session(&session, now).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Stores an authorization code under its digest `code_hash`.
    pub async fn create_auth_code(
        &self,
        code_hash: &str,
        code: &IssuedCode,
        now: i64,
    ) -> DbResult<()> {
        with_conn!(self, |c| {
            exec!(
                c.conn(),
                "INSERT INTO authorization_codes (code_hash, client_id, localpart, device_id, \
                 scope, redirect_uri, code_challenge, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                code_hash,
                &code.client_id,
                &code.localpart,
                &code.device_id,
                &code.scope,
                &code.redirect_uri,
                &code.code_challenge,
                now,
                code.expires_at
            )?;
            mark_client_used(c.conn(), &code.client_id, now).await
        })
    }

    /// Stores a device grant unless the address or the client has its cap of pending grants;
    /// [`DbError::Conflict`] when the user code is taken.
    pub async fn create_device_grant(
        &self,
        grant: &NewDeviceGrant,
        caps: PendingGrantCaps,
        now: i64,
    ) -> DbResult<GrantAdmission> {
        // The counts and the insert are one step for every writer: the whole transaction
        // on SQLite, the caps' advisory locks on PostgreSQL.
        with_tx!(self, |tx| {
            if let Some(cap) = caps.per_address
                && let Some(retry_at) = tx
                    .cap_reached(ADDRESS_CAP, &grant.requester_key, cap, now)
                    .await?
            {
                return Ok(GrantAdmission::AddressFull { retry_at });
            }
            if let Some(retry_at) = tx
                .cap_reached(CLIENT_CAP, &grant.client_id, caps.per_client, now)
                .await?
            {
                return Ok(GrantAdmission::ClientFull { retry_at });
            }
            // An expired grant must not block its user code forever.
            exec!(
                tx.conn(),
                "DELETE FROM device_grants WHERE user_code = $1 AND expires_at <= $2",
                &grant.user_code,
                now
            )?;
            exec!(
                tx.conn(),
                "INSERT INTO device_grants (device_code_hash, user_code, client_id, scope, \
                 device_id, requester_ip, requester_key, requester_ua, created_at, expires_at, \
                 interval_secs, status, lookups) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', 0)",
                &grant.device_code_hash,
                &grant.user_code,
                &grant.client_id,
                &grant.scope,
                &grant.device_id,
                &grant.requester_ip,
                &grant.requester_key,
                &grant.requester_ua,
                now,
                grant.expires_at,
                grant.interval_secs
            )?;
            tx.commit().await?;
            Ok(GrantAdmission::Stored)
        })
    }

    /// Looks a user code up, counting the lookup against the grant's cap `max_lookups`.
    pub async fn lookup_user_code(
        &self,
        user_code: &str,
        now: i64,
        max_lookups: i64,
    ) -> DbResult<UserCodeLookup> {
        with_tx!(self, |tx| {
            // Locked so that lookups racing on other instances all count against the cap.
            let row: Option<GrantRow> = fetch!(
                tx.conn(),
                fetch_optional,
                &format!(
                    "{GRANT_COLUMNS} WHERE user_code = $1 AND status = 'pending' \
                     AND expires_at > $2{}",
                    self.dialect().for_update()
                ),
                user_code,
                now
            )?;
            let Some(row) = row else {
                return Ok(UserCodeLookup::NotFound);
            };
            if !may_look_up(row.lookups, max_lookups) {
                exec!(
                    tx.conn(),
                    "UPDATE device_grants SET status = 'denied' WHERE user_code = $1",
                    user_code
                )?;
                tx.commit().await?;
                return Ok(UserCodeLookup::TooManyAttempts);
            }
            exec!(
                tx.conn(),
                "UPDATE device_grants SET lookups = lookups + 1 WHERE user_code = $1",
                user_code
            )?;
            tx.commit().await?;
            Ok(UserCodeLookup::Pending(row.view))
        })
    }

    /// Whether the grant of this device code is still waiting for a decision (and not
    /// expired). Read-only: unlike a poll, it is not rate-limited by the interval.
    pub async fn device_grant_pending(&self, device_code_hash: &str, now: i64) -> DbResult<bool> {
        with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_optional,
            "SELECT 1 FROM device_grants WHERE device_code_hash = $1 \
             AND status = 'pending' AND expires_at > $2",
            device_code_hash,
            now
        ))
        .map(|row: Option<(i32,)>| row.is_some())
    }

    /// Approves (for `localpart`) or denies a pending grant; `false` if it is no longer
    /// pending.
    pub async fn decide_device_grant(
        &self,
        user_code: &str,
        localpart: &str,
        approve: bool,
        now: i64,
    ) -> DbResult<bool> {
        with_tx!(self, |tx| {
            let Some((device_code_hash, grant)) =
                tx.load_device_grant_by_user_code(user_code).await?
            else {
                return Ok(false);
            };
            let Some(status) = grant.decide(localpart, approve, now) else {
                return Ok(false);
            };
            tx.save_device_grant_decision(&device_code_hash, &status, localpart)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Stores a browser (cookie) session.
    pub async fn create_browser_session(
        &self,
        session_hash: &str,
        localpart: &str,
        now: i64,
        expires_at: i64,
    ) -> DbResult<()> {
        with_conn!(self, |c| exec!(
            c.conn(),
            "INSERT INTO browser_sessions (session_hash, localpart, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
            session_hash,
            localpart,
            now,
            expires_at
        ))
        .map(drop)
    }

    /// The unlocked user of a live browser session.
    pub async fn browser_session_user(
        &self,
        session_hash: &str,
        now: i64,
    ) -> DbResult<Option<String>> {
        with_conn!(self, |c| scalar!(
            c.conn(),
            fetch_optional,
            "SELECT b.localpart FROM browser_sessions b \
             JOIN users u ON u.localpart = b.localpart \
             WHERE b.session_hash = $1 AND b.expires_at > $2 AND NOT u.locked",
            session_hash,
            now
        ))
    }

    /// Ends a browser session.
    pub async fn delete_browser_session(&self, session_hash: &str) -> DbResult<()> {
        with_conn!(self, |c| exec!(
            c.conn(),
            "DELETE FROM browser_sessions WHERE session_hash = $1",
            session_hash
        ))
        .map(drop)
    }

    /// Records the user's approval of a cross-signing key reset until `expires_at`.
    pub async fn approve_cross_signing_reset(
        &self,
        localpart: &str,
        now: i64,
        expires_at: i64,
    ) -> DbResult<()> {
        with_conn!(self, |c| exec!(
            c.conn(),
            "INSERT INTO cross_signing_resets (localpart, approved_at, expires_at) \
             VALUES ($1, $2, $3) ON CONFLICT (localpart) DO UPDATE SET \
             approved_at = excluded.approved_at, expires_at = excluded.expires_at",
            localpart,
            now,
            expires_at
        ))
        .map(drop)
    }

    /// Whether a cross-signing reset is approved at `now` (read by
    /// `/keys/device_signing/upload`).
    pub async fn cross_signing_reset_allowed(&self, localpart: &str, now: i64) -> DbResult<bool> {
        with_conn!(self, |c| scalar!(
            c.conn(),
            fetch_one,
            "SELECT COUNT(*) FROM cross_signing_resets WHERE localpart = $1 \
             AND expires_at > $2",
            localpart,
            now
        ))
        .map(|n: i64| n > 0)
    }

    /// The server name pinned at first start, if any.
    pub async fn pinned_server_name(&self) -> DbResult<Option<String>> {
        with_conn!(self, |c| scalar!(
            c.conn(),
            fetch_optional,
            "SELECT value FROM server_meta WHERE name = 'server_name'"
        ))
    }

    /// Pins `name` as the server name unless one is pinned already; returns the pinned one
    /// (the earlier one if it differs: the caller decides what a mismatch means).
    pub async fn pin_server_name(&self, name: &str) -> DbResult<String> {
        with_conn!(self, |c| {
            // Instances starting together: the first insert wins, every one reads it back.
            exec!(
                c.conn(),
                "INSERT INTO server_meta (name, value) VALUES ('server_name', $1) \
                 ON CONFLICT (name) DO NOTHING",
                name
            )?;
            scalar!(
                c.conn(),
                fetch_one,
                "SELECT value FROM server_meta WHERE name = 'server_name'"
            )
        })
    }

    /// Deletes expired codes, grants and browser sessions, and clients never used (no
    /// authorization code or session issued to them) a day after their last registration;
    /// returns the rows removed.
    pub async fn purge_expired(&self, now: i64) -> DbResult<u64> {
        with_conn!(self, |c| {
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
                removed += exec!(c.conn(), sql, cutoff)?;
            }
            Ok(removed)
        })
    }
}

//! The accounts and OAuth half of the store ([`Db`]), written once for both back ends.
//!
//! Each method is one call of [`super::sql::Pool::run`]: a single statement on a pooled
//! connection, or a transaction ([`super::sql::Pool::begin`]) committed at its end. The
//! locking the back ends differ in is in [`Tx`]'s lock helpers and [`super::sql::Dialect`]:
//! on SQLite they are no-ops (the transaction holds the one write lock from its start); on
//! PostgreSQL the code, device grant or OAuth session being redeemed is locked `FOR UPDATE`
//! and re-read, so a second instance racing on it waits and then sees the first one's
//! result. Locks are taken in one
//! order everywhere (code or grant, then user, then session, then tokens) so that racing
//! transactions queue instead of deadlocking.

use subtle::ConstantTimeEq;

use super::sql::{Dialect, Tx, exec, fetch, scalar};
use super::{
    CodeOutcome, Db, DbError, DbResult, Device, DeviceGrantView, Grant, GrantAdmission,
    NewAuthCode, NewDeviceGrant, NewTokens, PendingGrantCaps, PollOutcome, RedeemCode,
    RefreshOutcome, SqlDb, TokenInfo, User, UserCodeLookup,
};
use crate::store::BoxFuture;

/// Added to a device grant's interval on each early poll (RFC 8628 §3.5).
const SLOW_DOWN_STEP_SECS: i64 = 5;

/// Advisory-lock classes (two-key form, PostgreSQL) serializing the pending-grant caps: one
/// lock per requesting address, then one per client, always in that order.
const ADDRESS_GRANTS_LOCK: i32 = 0x6d78_0001;
const CLIENT_GRANTS_LOCK: i32 = 0x6d78_0002;

const USER_COLUMNS: &str = "SELECT localpart, password_hash, locked, created_at FROM users";

type UserRow = (String, Option<String>, bool, i64);

fn user_from((localpart, password_hash, locked, created_at): UserRow) -> User {
    User {
        localpart,
        password_hash,
        locked,
        created_at,
    }
}

const DEVICE_SELECT: &str = "SELECT d.device_id, d.display_name, d.created_at, \
     s.client_id AS client_id, s.created_at AS session_created_at \
     FROM devices d LEFT JOIN oauth_sessions s ON s.session_id = ( \
        SELECT s2.session_id FROM oauth_sessions s2 \
        WHERE s2.localpart = d.localpart AND s2.device_id = d.device_id \
          AND s2.revoked_at IS NULL ORDER BY s2.created_at DESC LIMIT 1) \
     WHERE d.localpart = $1";

type DeviceRow = (String, Option<String>, i64, Option<String>, Option<i64>);

fn device_from(
    (device_id, display_name, created_at, client_id, session_created_at): DeviceRow,
) -> Device {
    Device {
        device_id,
        display_name,
        created_at,
        client_id,
        session_created_at,
    }
}

/// A device grant as stored.
#[derive(sqlx::FromRow)]
struct GrantRow {
    user_code: String,
    client_id: String,
    scope: String,
    device_id: String,
    requester_ip: String,
    requester_ua: String,
    created_at: i64,
    expires_at: i64,
    interval_secs: i64,
    last_poll_at: Option<i64>,
    status: String,
    localpart: Option<String>,
    lookups: i64,
}

const GRANT_COLUMNS: &str = "SELECT user_code, client_id, scope, device_id, requester_ip, \
     requester_ua, created_at, expires_at, interval_secs, last_poll_at, status, localpart, \
     lookups FROM device_grants";

/// An OAuth session as a refresh reads it, with its user's lock.
#[derive(sqlx::FromRow)]
struct SessionRow {
    localpart: String,
    device_id: String,
    client_id: Option<String>,
    scope: String,
    revoked_at: Option<i64>,
    locked: bool,
}

/// A refresh token's `used_at`, `replaced_by` and `revoked_at`.
type RefreshState = (Option<i64>, Option<String>, Option<i64>);

/// An authorization code as stored.
#[derive(sqlx::FromRow)]
struct CodeRow {
    client_id: String,
    localpart: String,
    device_id: String,
    scope: String,
    redirect_uri: String,
    code_challenge: String,
    expires_at: i64,
    used_at: Option<i64>,
    session_id: Option<String>,
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

    /// Records the first use of a client (an authorization code or a session issued to it),
    /// which exempts it from the purge of unused registrations.
    async fn mark_client_used(&mut self, client_id: &str, now: i64) -> DbResult<()> {
        exec!(
            self.conn(),
            "UPDATE clients SET used_at = $1 WHERE client_id = $2 AND used_at IS NULL",
            now,
            client_id
        )?;
        Ok(())
    }

    /// Counts the pending grants of a cap (after taking the cap's advisory lock for `value` on
    /// PostgreSQL): how many, and when the oldest expires.
    async fn pending_grants(
        &mut self,
        lock_class: i32,
        column: &str,
        value: &str,
        now: i64,
    ) -> DbResult<(i64, Option<i64>)> {
        if self.dialect() == Dialect::Postgres {
            exec!(
                self.conn(),
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                lock_class,
                value
            )?;
        }
        fetch!(
            self.conn(),
            fetch_one,
            &format!(
                "SELECT COUNT(*), MIN(expires_at) FROM device_grants \
                 WHERE {column} = $1 AND status = 'pending' AND expires_at > $2"
            ),
            value,
            now
        )
    }

    /// Inserts the device if missing, a session and its first token pair.
    async fn insert_session(
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
            self.mark_client_used(client_id, now).await?;
        }
        Ok(session_id)
    }

    async fn insert_pair(
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
    pub(super) async fn revoke_session(&mut self, session_id: &str, now: i64) -> DbResult<()> {
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

impl Db for SqlDb {
    fn create_user<'a>(
        &'a self,
        localpart: &'a str,
        password_hash: Option<&'a str>,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            exec!(
                c.conn(),
                "INSERT INTO users (localpart, password_hash, locked, created_at) \
                 VALUES ($1, $2, FALSE, $3)",
                localpart,
                password_hash,
                now
            )?;
            Ok(())
        })
    }

    fn user<'a>(&'a self, localpart: &'a str) -> BoxFuture<'a, DbResult<Option<User>>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            let row: Option<UserRow> = fetch!(
                c.conn(),
                fetch_optional,
                &format!("{USER_COLUMNS} WHERE localpart = $1"),
                localpart
            )?;
            Ok(row.map(user_from))
        })
    }

    fn users(&self) -> BoxFuture<'_, DbResult<Vec<User>>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            let order = self.pool.dialect().byte_order();
            let rows: Vec<UserRow> = fetch!(
                c.conn(),
                fetch_all,
                &format!("{USER_COLUMNS} ORDER BY localpart{order}")
            )?;
            Ok(rows.into_iter().map(user_from).collect())
        })
    }

    fn set_locked<'a>(
        &'a self,
        localpart: &'a str,
        locked: bool,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.pool.run(async move {
            let mut tx = self.pool.begin().await?;
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

    fn devices<'a>(&'a self, localpart: &'a str) -> BoxFuture<'a, DbResult<Vec<Device>>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            let order = self.pool.dialect().byte_order();
            let rows: Vec<DeviceRow> = fetch!(
                c.conn(),
                fetch_all,
                &format!("{DEVICE_SELECT} ORDER BY d.created_at, d.device_id{order}"),
                localpart
            )?;
            Ok(rows.into_iter().map(device_from).collect())
        })
    }

    fn device<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<Device>>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            let row: Option<DeviceRow> = fetch!(
                c.conn(),
                fetch_optional,
                &format!("{DEVICE_SELECT} AND d.device_id = $2"),
                localpart,
                device_id
            )?;
            Ok(row.map(device_from))
        })
    }

    fn delete_device<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        self.pool.run(async move {
            let mut tx = self.pool.begin().await?;
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

    fn register_client<'a>(
        &'a self,
        metadata_hash: &'a str,
        metadata: &'a str,
        new_client_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<String>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            // One statement: two instances registering identical metadata at once both get
            // the one row, and a purge cannot slip in between finding and renewing it.
            scalar!(
                c.conn(),
                fetch_one,
                "INSERT INTO clients (client_id, metadata_hash, metadata, created_at, \
                 registered_at) VALUES ($1, $2, $3, $4, $4) ON CONFLICT (metadata_hash) \
                 DO UPDATE SET registered_at = excluded.registered_at RETURNING client_id",
                new_client_id,
                metadata_hash,
                metadata,
                now
            )
        })
    }

    fn client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, DbResult<Option<String>>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            scalar!(
                c.conn(),
                fetch_optional,
                "SELECT metadata FROM clients WHERE client_id = $1",
                client_id
            )
        })
    }

    fn issue_session<'a>(
        &'a self,
        grant: &'a Grant,
        tokens: &'a NewTokens,
        now: i64,
    ) -> BoxFuture<'a, DbResult<String>> {
        self.pool.run(async move {
            let mut tx = self.pool.begin().await?;
            let session = tx.insert_session(grant, tokens, now).await?;
            tx.commit().await?;
            Ok(session)
        })
    }

    fn token_info<'a>(
        &'a self,
        access_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<Option<TokenInfo>>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            let row: Option<(String, String, String, String, i64, Option<i64>)> = fetch!(
                c.conn(),
                fetch_optional,
                "SELECT s.localpart, s.device_id, s.scope, s.session_id, t.expires_at, t.used_at \
                 FROM access_tokens t JOIN oauth_sessions s ON s.session_id = t.session_id \
                 JOIN users u ON u.localpart = s.localpart \
                 WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND s.revoked_at IS NULL \
                   AND t.expires_at > $2 AND NOT u.locked",
                access_hash,
                now
            )?;
            Ok(row.map(
                |(localpart, device_id, scope, session_id, expires_at, used_at)| TokenInfo {
                    localpart,
                    device_id,
                    scope,
                    expires_at,
                    session_id,
                    used: used_at.is_some(),
                },
            ))
        })
    }

    fn record_token_use<'a>(
        &'a self,
        access_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            exec!(
                c.conn(),
                "UPDATE access_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
                now,
                access_hash
            )?;
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
        self.pool.run(async move {
            let mut tx = self.pool.begin().await?;
            let d = tx.dialect();
            let session_id: Option<String> = scalar!(
                tx.conn(),
                fetch_optional,
                "SELECT session_id FROM refresh_tokens WHERE token_hash = $1",
                refresh_hash
            )?;
            let Some(session_id) = session_id else {
                return Ok(RefreshOutcome::Invalid);
            };
            // The session lock serializes every exchange within the session; the token's
            // state is read only after it, so a racing exchange's result is seen.
            let lock = match d {
                Dialect::Sqlite => "",
                Dialect::Postgres => " FOR NO KEY UPDATE OF s",
            };
            let session: Option<SessionRow> = fetch!(
                tx.conn(),
                fetch_optional,
                &format!(
                    "SELECT s.localpart, s.device_id, s.client_id, s.scope, s.revoked_at, \
                     u.locked FROM oauth_sessions s JOIN users u ON u.localpart = s.localpart \
                     WHERE s.session_id = $1{lock}"
                ),
                &session_id
            )?;
            let Some(session) = session else {
                return Ok(RefreshOutcome::Invalid);
            };
            let (session_revoked, locked) = (session.revoked_at.is_some(), session.locked);
            let grant = Grant {
                localpart: session.localpart,
                device_id: session.device_id,
                client_id: session.client_id,
                scope: session.scope,
            };
            let (used_at, replaced_by, revoked_at): RefreshState = fetch!(
                tx.conn(),
                fetch_one,
                &format!(
                    "SELECT used_at, replaced_by, revoked_at FROM refresh_tokens \
                     WHERE token_hash = $1{}",
                    d.for_update()
                ),
                refresh_hash
            )?;
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
                        let n: i64 = scalar!(
                            tx.conn(),
                            fetch_one,
                            "SELECT COUNT(*) FROM refresh_tokens r \
                             JOIN access_tokens a ON a.token_hash = r.access_token_hash \
                             WHERE r.token_hash = $1 AND r.used_at IS NULL \
                               AND r.revoked_at IS NULL AND a.used_at IS NULL",
                            next
                        )?;
                        n > 0
                    }
                    None => false,
                };
                if now - used_at > grace_ms || !successor_unused {
                    tx.revoke_session(&session_id, now).await?;
                    tx.commit().await?;
                    return Ok(RefreshOutcome::Reused(grant));
                }
                // The lost pair was never received: revoke it before handing out a new one.
                if let Some(next) = &replaced_by {
                    exec!(
                        tx.conn(),
                        "UPDATE access_tokens SET revoked_at = $1 WHERE token_hash = \
                         (SELECT access_token_hash FROM refresh_tokens WHERE token_hash = $2)",
                        now,
                        next
                    )?;
                    exec!(
                        tx.conn(),
                        "UPDATE refresh_tokens SET revoked_at = $1 WHERE token_hash = $2",
                        now,
                        next
                    )?;
                }
            } else {
                exec!(
                    tx.conn(),
                    "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2",
                    now,
                    refresh_hash
                )?;
            }
            tx.insert_pair(&session_id, tokens, now).await?;
            exec!(
                tx.conn(),
                "UPDATE refresh_tokens SET replaced_by = $1 WHERE token_hash = $2",
                &tokens.refresh_hash,
                refresh_hash
            )?;
            tx.commit().await?;
            Ok(RefreshOutcome::Rotated(grant))
        })
    }

    fn revoke_token<'a>(&'a self, token_hash: &'a str, now: i64) -> BoxFuture<'a, DbResult<bool>> {
        self.pool.run(async move {
            let mut tx = self.pool.begin().await?;
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

    fn create_auth_code<'a>(
        &'a self,
        code: &'a NewAuthCode,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            exec!(
                c.conn(),
                "INSERT INTO authorization_codes (code_hash, client_id, localpart, device_id, \
                 scope, redirect_uri, code_challenge, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &code.code_hash,
                &code.client_id,
                &code.localpart,
                &code.device_id,
                &code.scope,
                &code.redirect_uri,
                &code.code_challenge,
                now,
                code.expires_at
            )?;
            exec!(
                c.conn(),
                "UPDATE clients SET used_at = $1 WHERE client_id = $2 AND used_at IS NULL",
                now,
                &code.client_id
            )?;
            Ok(())
        })
    }

    fn redeem_auth_code<'a>(
        &'a self,
        request: &'a RedeemCode,
        now: i64,
    ) -> BoxFuture<'a, DbResult<CodeOutcome>> {
        self.pool.run(async move {
            let mut tx = self.pool.begin().await?;
            // A racing redemption waits here and then finds the code used.
            let row: Option<CodeRow> = fetch!(
                tx.conn(),
                fetch_optional,
                &format!(
                    "SELECT client_id, localpart, device_id, scope, redirect_uri, \
                     code_challenge, expires_at, used_at, session_id FROM authorization_codes \
                     WHERE code_hash = $1{}",
                    self.pool.dialect().for_update()
                ),
                &request.code_hash
            )?;
            let Some(code) = row else {
                return Ok(CodeOutcome::Invalid("unknown authorization code"));
            };
            if code.used_at.is_some() {
                if let Some(session) = &code.session_id {
                    tx.revoke_session(session, now).await?;
                }
                tx.commit().await?;
                return Ok(CodeOutcome::Reused);
            }
            // Any presentation consumes the code: a wrong verifier gets no second try.
            exec!(
                tx.conn(),
                "UPDATE authorization_codes SET used_at = $1 WHERE code_hash = $2",
                now,
                &request.code_hash
            )?;
            let verdict = if code.expires_at <= now {
                Some("authorization code expired")
            } else if code.client_id != request.client_id {
                Some("authorization code was issued to another client")
            } else if code.redirect_uri != request.redirect_uri {
                Some("redirect_uri does not match the authorization request")
            } else if !bool::from(
                code.code_challenge
                    .as_bytes()
                    .ct_eq(request.computed_challenge.as_bytes()),
            ) {
                Some("code_verifier does not match the code_challenge")
            } else {
                None
            };
            if let Some(reason) = verdict {
                tx.commit().await?;
                return Ok(CodeOutcome::Invalid(reason));
            }
            let grant = Grant {
                localpart: code.localpart,
                device_id: code.device_id,
                client_id: Some(request.client_id.clone()),
                scope: code.scope,
            };
            let session = tx.insert_session(&grant, &request.tokens, now).await?;
            exec!(
                tx.conn(),
                "UPDATE authorization_codes SET session_id = $1 WHERE code_hash = $2",
                &session,
                &request.code_hash
            )?;
            tx.commit().await?;
            Ok(CodeOutcome::Issued(grant))
        })
    }

    fn create_device_grant<'a>(
        &'a self,
        grant: &'a NewDeviceGrant,
        caps: PendingGrantCaps,
        now: i64,
    ) -> BoxFuture<'a, DbResult<GrantAdmission>> {
        self.pool.run(async move {
            // The counts and the insert are one step for every writer: the whole transaction
            // on SQLite, the caps' advisory locks on PostgreSQL.
            let mut tx = self.pool.begin().await?;
            if let Some(cap) = caps.per_address {
                let (n, oldest) = tx
                    .pending_grants(
                        ADDRESS_GRANTS_LOCK,
                        "requester_key",
                        &grant.requester_key,
                        now,
                    )
                    .await?;
                if n >= i64::from(cap) {
                    return Ok(GrantAdmission::AddressFull {
                        retry_at: oldest.unwrap_or(now),
                    });
                }
            }
            let (n, oldest) = tx
                .pending_grants(CLIENT_GRANTS_LOCK, "client_id", &grant.client_id, now)
                .await?;
            if n >= i64::from(caps.per_client) {
                return Ok(GrantAdmission::ClientFull {
                    retry_at: oldest.unwrap_or(now),
                });
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

    fn lookup_user_code<'a>(
        &'a self,
        user_code: &'a str,
        now: i64,
        max_lookups: i64,
    ) -> BoxFuture<'a, DbResult<UserCodeLookup>> {
        self.pool.run(async move {
            let mut tx = self.pool.begin().await?;
            // Locked so that lookups racing on other instances all count against the cap.
            let row: Option<GrantRow> = fetch!(
                tx.conn(),
                fetch_optional,
                &format!(
                    "{GRANT_COLUMNS} WHERE user_code = $1 AND status = 'pending' \
                     AND expires_at > $2{}",
                    self.pool.dialect().for_update()
                ),
                user_code,
                now
            )?;
            let Some(row) = row else {
                return Ok(UserCodeLookup::NotFound);
            };
            if row.lookups >= max_lookups {
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
            Ok(UserCodeLookup::Pending(DeviceGrantView {
                user_code: row.user_code,
                client_id: row.client_id,
                scope: row.scope,
                device_id: row.device_id,
                requester_ip: row.requester_ip,
                requester_ua: row.requester_ua,
                created_at: row.created_at,
                expires_at: row.expires_at,
            }))
        })
    }

    fn device_grant_pending<'a>(
        &'a self,
        device_code_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            let row: Option<(i32,)> = fetch!(
                c.conn(),
                fetch_optional,
                "SELECT 1 FROM device_grants WHERE device_code_hash = $1 \
                 AND status = 'pending' AND expires_at > $2",
                device_code_hash,
                now
            )?;
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
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            let status = if approve { "approved" } else { "denied" };
            let done = exec!(
                c.conn(),
                "UPDATE device_grants SET status = $1, localpart = $2 \
                 WHERE user_code = $3 AND status = 'pending' AND expires_at > $4",
                status,
                localpart,
                user_code,
                now
            )?;
            Ok(done > 0)
        })
    }

    fn poll_device_grant<'a>(
        &'a self,
        device_code_hash: &'a str,
        client_id: &'a str,
        tokens: &'a NewTokens,
        now: i64,
    ) -> BoxFuture<'a, DbResult<PollOutcome>> {
        self.pool.run(async move {
            let mut tx = self.pool.begin().await?;
            // A racing poll waits here and then finds the grant redeemed.
            let row: Option<GrantRow> = fetch!(
                tx.conn(),
                fetch_optional,
                &format!(
                    "{GRANT_COLUMNS} WHERE device_code_hash = $1{}",
                    self.pool.dialect().for_update()
                ),
                device_code_hash
            )?;
            let Some(row) = row else {
                return Ok(PollOutcome::Unknown);
            };
            if row.client_id != client_id {
                return Ok(PollOutcome::Unknown);
            }
            if row.status == "redeemed" {
                return Ok(PollOutcome::AlreadyRedeemed);
            }
            if row.expires_at <= now {
                return Ok(PollOutcome::Expired);
            }
            match row.status.as_str() {
                "denied" => return Ok(PollOutcome::Denied),
                "approved" => {
                    let Some(localpart) = row.localpart else {
                        return Err(DbError::Unreadable(
                            "approved device grant without a user".into(),
                        ));
                    };
                    let grant = Grant {
                        localpart,
                        device_id: row.device_id,
                        client_id: Some(row.client_id),
                        scope: row.scope,
                    };
                    let session = tx.insert_session(&grant, tokens, now).await?;
                    exec!(
                        tx.conn(),
                        "UPDATE device_grants SET status = 'redeemed', session_id = $1 \
                         WHERE device_code_hash = $2",
                        &session,
                        device_code_hash
                    )?;
                    tx.commit().await?;
                    return Ok(PollOutcome::Issued(grant));
                }
                _ => {}
            }
            let interval = row.interval_secs;
            let too_early = row
                .last_poll_at
                .is_some_and(|last| now - last < interval * 1000);
            let new_interval = if too_early {
                interval + SLOW_DOWN_STEP_SECS
            } else {
                interval
            };
            exec!(
                tx.conn(),
                "UPDATE device_grants SET last_poll_at = $1, interval_secs = $2 \
                 WHERE device_code_hash = $3",
                now,
                new_interval,
                device_code_hash
            )?;
            tx.commit().await?;
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
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            exec!(
                c.conn(),
                "INSERT INTO browser_sessions (session_hash, localpart, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4)",
                session_hash,
                localpart,
                now,
                expires_at
            )?;
            Ok(())
        })
    }

    fn browser_session_user<'a>(
        &'a self,
        session_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<Option<String>>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            scalar!(
                c.conn(),
                fetch_optional,
                "SELECT b.localpart FROM browser_sessions b \
                 JOIN users u ON u.localpart = b.localpart \
                 WHERE b.session_hash = $1 AND b.expires_at > $2 AND NOT u.locked",
                session_hash,
                now
            )
        })
    }

    fn delete_browser_session<'a>(&'a self, session_hash: &'a str) -> BoxFuture<'a, DbResult<()>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            exec!(
                c.conn(),
                "DELETE FROM browser_sessions WHERE session_hash = $1",
                session_hash
            )?;
            Ok(())
        })
    }

    fn approve_cross_signing_reset<'a>(
        &'a self,
        localpart: &'a str,
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            exec!(
                c.conn(),
                "INSERT INTO cross_signing_resets (localpart, approved_at, expires_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (localpart) DO UPDATE SET \
                 approved_at = excluded.approved_at, expires_at = excluded.expires_at",
                localpart,
                now,
                expires_at
            )?;
            Ok(())
        })
    }

    fn cross_signing_reset_allowed<'a>(
        &'a self,
        localpart: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            let n: i64 = scalar!(
                c.conn(),
                fetch_one,
                "SELECT COUNT(*) FROM cross_signing_resets WHERE localpart = $1 \
                 AND expires_at > $2",
                localpart,
                now
            )?;
            Ok(n > 0)
        })
    }

    fn pinned_server_name(&self) -> BoxFuture<'_, DbResult<Option<String>>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
            scalar!(
                c.conn(),
                fetch_optional,
                "SELECT value FROM server_meta WHERE name = 'server_name'"
            )
        })
    }

    fn pin_server_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, DbResult<String>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
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

    fn purge_expired(&self, now: i64) -> BoxFuture<'_, DbResult<u64>> {
        self.pool.run(async move {
            let mut c = self.pool.acquire().await?;
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

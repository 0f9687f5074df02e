//! Loading and saving the OAuth grant states of [`crate::oauth::model`] inside a transaction
//! ([`super::SqlDb::begin`]): what an authorization code, a refresh token or a device grant is, and
//! the changes the model decided. No rule is judged here.
//!
//! Each `load_*` locks what it reads (`FOR UPDATE` on PostgreSQL; SQLite's transaction holds
//! the one write lock from its start), so a racing request on another instance waits, then
//! reads this one's result. Locks are taken in the store's one order: code or grant, then
//! user, then session, then tokens.

use super::sql::{Dialect, Tx, exec, fetch, scalar};
use super::{DbError, DbResult, NewTokens};
use crate::oauth::model::Grant;
use crate::oauth::model::auth_code::{AuthCode, CodeState, IssuedCode};
use crate::oauth::model::device_grant::{DeviceGrant, GrantStatus};
use crate::oauth::model::refresh::{RefreshState, RefreshToken, Successor};

/// An authorization code's columns.
#[derive(sqlx::FromRow)]
struct CodeRow {
    #[sqlx(flatten)]
    issued: IssuedCode,
    used_at: Option<i64>,
    session_id: Option<String>,
}

/// An OAuth session as a refresh reads it, with its user's lock.
#[derive(sqlx::FromRow)]
struct SessionRow {
    #[sqlx(flatten)]
    grant: Grant,
    revoked_at: Option<i64>,
    locked: bool,
}

/// A device grant's columns as a poll reads them.
#[derive(sqlx::FromRow)]
struct PollRow {
    device_code_hash: String,
    client_id: String,
    scope: String,
    device_id: String,
    expires_at: i64,
    interval_secs: i64,
    last_poll_at: Option<i64>,
    status: String,
    localpart: Option<String>,
}

impl Tx {
    /// The authorization code with this hash, locked.
    pub async fn load_auth_code(&mut self, code_hash: &str) -> DbResult<Option<AuthCode>> {
        let lock = self.dialect().for_update();
        let row: Option<CodeRow> = fetch!(
            self.conn(),
            fetch_optional,
            &format!(
                "SELECT client_id, localpart, device_id, scope, redirect_uri, code_challenge, \
                 expires_at, used_at, session_id FROM authorization_codes WHERE code_hash = $1{lock}"
            ),
            code_hash
        )?;
        Ok(row.map(|r| AuthCode {
            issued: r.issued,
            state: match r.used_at {
                None => CodeState::Unused,
                Some(_) => CodeState::Consumed {
                    session: r.session_id,
                },
            },
        }))
    }

    /// Marks a code consumed at `now`, by the session it started if any.
    pub async fn save_code_consumed(
        &mut self,
        code_hash: &str,
        session: Option<&str>,
        now: i64,
    ) -> DbResult<()> {
        exec!(
            self.conn(),
            "UPDATE authorization_codes SET used_at = $1, session_id = $2 WHERE code_hash = $3",
            now,
            session,
            code_hash
        )?;
        Ok(())
    }

    /// The refresh token with this hash, its session (locked: every exchange within a
    /// session queues here) and, once exchanged, whether its successor pair is untouched.
    pub async fn load_refresh_token(
        &mut self,
        refresh_hash: &str,
    ) -> DbResult<Option<RefreshToken>> {
        let session_id: Option<String> = scalar!(
            self.conn(),
            fetch_optional,
            "SELECT session_id FROM refresh_tokens WHERE token_hash = $1",
            refresh_hash
        )?;
        let Some(session_id) = session_id else {
            return Ok(None);
        };
        let lock = match self.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR NO KEY UPDATE OF s",
        };
        let session: Option<SessionRow> = fetch!(
            self.conn(),
            fetch_optional,
            &format!(
                "SELECT s.localpart, s.device_id, s.client_id, s.scope, s.revoked_at, u.locked \
                 FROM oauth_sessions s JOIN users u ON u.localpart = s.localpart \
                 WHERE s.session_id = $1{lock}"
            ),
            &session_id
        )?;
        let Some(session) = session else {
            return Ok(None);
        };
        // Read only after the session lock, so that a racing exchange's result is seen.
        let lock = self.dialect().for_update();
        let (used_at, replaced_by, revoked_at): (Option<i64>, Option<String>, Option<i64>) = fetch!(
            self.conn(),
            fetch_one,
            &format!(
                "SELECT used_at, replaced_by, revoked_at FROM refresh_tokens \
                 WHERE token_hash = $1{lock}"
            ),
            refresh_hash
        )?;
        let state = match (revoked_at, used_at) {
            (Some(_), _) => RefreshState::Revoked,
            (None, None) => RefreshState::Valid,
            (None, Some(at)) => {
                let successor = match replaced_by {
                    Some(next) => Some(self.successor(next).await?),
                    None => None,
                };
                RefreshState::Exchanged { at, successor }
            }
        };
        Ok(Some(RefreshToken {
            session_id,
            grant: session.grant,
            session_revoked: session.revoked_at.is_some(),
            user_locked: session.locked,
            state,
        }))
    }

    /// Whether the pair of refresh token `next` was never used nor revoked.
    async fn successor(&mut self, next: String) -> DbResult<Successor> {
        let row: Option<(Option<i64>, Option<i64>, Option<i64>)> = fetch!(
            self.conn(),
            fetch_optional,
            "SELECT r.used_at, r.revoked_at, a.used_at FROM refresh_tokens r \
             JOIN access_tokens a ON a.token_hash = r.access_token_hash \
             WHERE r.token_hash = $1",
            &next
        )?;
        Ok(Successor {
            refresh_hash: next,
            untouched: row == Some((None, None, None)),
        })
    }

    /// Revokes the pair of refresh token `refresh_hash` (a pair lost in transit).
    pub async fn save_pair_revoked(&mut self, refresh_hash: &str, now: i64) -> DbResult<()> {
        exec!(
            self.conn(),
            "UPDATE access_tokens SET revoked_at = $1 WHERE token_hash = \
             (SELECT access_token_hash FROM refresh_tokens WHERE token_hash = $2)",
            now,
            refresh_hash
        )?;
        exec!(
            self.conn(),
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE token_hash = $2",
            now,
            refresh_hash
        )?;
        Ok(())
    }

    /// Stores `tokens` in `token`'s session as the successor of refresh token `presented`,
    /// which is marked exchanged at `now` unless it was before (a retry keeps the first time).
    pub async fn save_rotation(
        &mut self,
        token: &RefreshToken,
        presented: &str,
        tokens: &NewTokens,
        now: i64,
    ) -> DbResult<()> {
        self.insert_pair(&token.session_id, tokens, now).await?;
        exec!(
            self.conn(),
            "UPDATE refresh_tokens SET used_at = COALESCE(used_at, $1), replaced_by = $2 \
             WHERE token_hash = $3",
            now,
            &tokens.refresh_hash,
            presented
        )?;
        Ok(())
    }

    /// The device grant with this device code, locked.
    pub async fn load_device_grant(
        &mut self,
        device_code_hash: &str,
    ) -> DbResult<Option<DeviceGrant>> {
        let found = self
            .load_grant("device_code_hash", device_code_hash)
            .await?;
        Ok(found.map(|(_, grant)| grant))
    }

    /// The device grant with this user code, locked, with its device-code hash.
    pub async fn load_device_grant_by_user_code(
        &mut self,
        user_code: &str,
    ) -> DbResult<Option<(String, DeviceGrant)>> {
        self.load_grant("user_code", user_code).await
    }

    async fn load_grant(
        &mut self,
        column: &str,
        value: &str,
    ) -> DbResult<Option<(String, DeviceGrant)>> {
        let lock = self.dialect().for_update();
        let row: Option<PollRow> = fetch!(
            self.conn(),
            fetch_optional,
            &format!(
                "SELECT device_code_hash, client_id, scope, device_id, expires_at, \
                 interval_secs, last_poll_at, status, localpart FROM device_grants \
                 WHERE {column} = $1{lock}"
            ),
            value
        )?;
        let Some(r) = row else {
            return Ok(None);
        };
        let status = match (r.status.as_str(), r.localpart) {
            ("pending", _) => GrantStatus::Pending,
            ("approved", Some(localpart)) => GrantStatus::Approved { localpart },
            ("denied", _) => GrantStatus::Denied,
            ("redeemed", _) => GrantStatus::Redeemed,
            (other, _) => {
                return Err(DbError::Unreadable(format!(
                    "device grant status {other:?} (approved needs a user)"
                )));
            }
        };
        let grant = DeviceGrant {
            client_id: r.client_id,
            scope: r.scope,
            device_id: r.device_id,
            expires_at: r.expires_at,
            interval_secs: r.interval_secs,
            last_poll_at: r.last_poll_at,
            status,
        };
        Ok(Some((r.device_code_hash, grant)))
    }

    /// Records the decision `status` that the user `localpart` took on a device grant.
    pub async fn save_device_grant_decision(
        &mut self,
        device_code_hash: &str,
        status: &GrantStatus,
        localpart: &str,
    ) -> DbResult<()> {
        let name = match status {
            GrantStatus::Pending => "pending",
            GrantStatus::Approved { .. } => "approved",
            GrantStatus::Denied => "denied",
            GrantStatus::Redeemed => "redeemed",
        };
        exec!(
            self.conn(),
            "UPDATE device_grants SET status = $1, localpart = $2 WHERE device_code_hash = $3",
            name,
            localpart,
            device_code_hash
        )?;
        Ok(())
    }

    /// Records a poll answered pending or `slow_down`, with the interval from now on.
    pub async fn save_device_poll(
        &mut self,
        device_code_hash: &str,
        interval_secs: i64,
        now: i64,
    ) -> DbResult<()> {
        exec!(
            self.conn(),
            "UPDATE device_grants SET last_poll_at = $1, interval_secs = $2 \
             WHERE device_code_hash = $3",
            now,
            interval_secs,
            device_code_hash
        )?;
        Ok(())
    }

    /// Marks a device grant redeemed by `session`.
    pub async fn save_device_grant_redeemed(
        &mut self,
        device_code_hash: &str,
        session: &str,
    ) -> DbResult<()> {
        exec!(
            self.conn(),
            "UPDATE device_grants SET status = 'redeemed', session_id = $1 \
             WHERE device_code_hash = $2",
            session,
            device_code_hash
        )?;
        Ok(())
    }
}

//! An OAuth session's access token, as bearer authentication judges it: usable until its
//! expiry, unless it or its session was revoked or its user is locked.

/// What an access token stands for (bearer authentication). Decodes from the store's row
/// (`SqlDb::access_token`), whose columns carry these names.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenInfo {
    /// Localpart of the user.
    pub localpart: String,
    /// Device ID the token is bound to.
    pub device_id: String,
    /// Granted scope.
    pub scope: String,
    /// Expiry, ms since the epoch: the token is dead from this instant on.
    pub expires_at: i64,
    /// OAuth session the token belongs to.
    pub session_id: String,
    /// Whether a request was already authenticated with it, so that the first use is
    /// written once and later uses cost no write.
    pub used: bool,
}

/// An access token as stored, with its session's and user's standing.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AccessToken {
    /// What it stands for.
    #[sqlx(flatten)]
    pub info: TokenInfo,
    /// Whether the token or its session was revoked.
    pub revoked: bool,
    /// Whether its user is locked.
    pub user_locked: bool,
}

/// What a presented access token stands for, with the reason when it is unusable: the
/// client-server API answers an expired token differently from a revoked one.
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

impl AccessToken {
    /// The token's standing at `now`. Locking revokes sessions too: the lock is reported,
    /// as it is what the user can act on.
    pub fn status(self, now: i64) -> TokenStatus {
        if self.user_locked {
            TokenStatus::Locked
        } else if self.revoked {
            TokenStatus::Revoked
        } else if self.info.expires_at <= now {
            TokenStatus::Expired
        } else {
            TokenStatus::Live(self.info)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 7_000_000;

    fn token(revoked: bool, user_locked: bool) -> AccessToken {
        AccessToken {
            info: TokenInfo {
                localpart: "alice".into(),
                device_id: "DEV".into(),
                scope: "urn:matrix:client:api:*".into(),
                expires_at: NOW + 1,
                session_id: "S".into(),
                used: false,
            },
            revoked,
            user_locked,
        }
    }

    #[test]
    fn a_token_is_live_until_its_expiry_instant() {
        let t = token(false, false);
        assert_eq!(t.clone().status(NOW), TokenStatus::Live(t.info.clone()));
        assert_eq!(t.clone().status(NOW + 1), TokenStatus::Expired);
        assert_eq!(t.status(NOW + 2), TokenStatus::Expired);
    }

    #[test]
    fn a_lock_outranks_a_revocation_which_outranks_expiry() {
        let late = NOW + 10;
        assert_eq!(token(true, true).status(late), TokenStatus::Locked);
        assert_eq!(token(false, true).status(NOW), TokenStatus::Locked);
        assert_eq!(token(true, false).status(late), TokenStatus::Revoked);
        assert_eq!(token(true, false).status(NOW), TokenStatus::Revoked);
    }
}

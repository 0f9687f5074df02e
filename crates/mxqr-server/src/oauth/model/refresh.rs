//! Exchanging a refresh token (RFC 6749 §6) with rotation: each token is exchanged once for a
//! new pair. A client that lost the response may retry within a short window while the pair
//! it lost was never used; any other second exchange is a replay, which ends the whole grant
//! (RFC 9700 §4.14).

use super::Grant;

/// A refresh token as stored, with its session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshToken {
    /// Session the token belongs to.
    pub session_id: String,
    /// Who the session belongs to.
    pub grant: Grant,
    /// Whether the session was ended (revocation, device deletion, a replay).
    pub session_revoked: bool,
    /// Whether the session's user is locked.
    pub user_locked: bool,
    /// The token's own state.
    pub state: RefreshState,
}

/// Where a refresh token is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshState {
    /// Never exchanged.
    Valid,
    /// Exchanged at `at` (ms) for the pair whose refresh token is `successor`.
    Exchanged {
        /// When.
        at: i64,
        /// The pair it was exchanged for.
        successor: Option<Successor>,
    },
    /// Revoked (its pair was lost and replaced by a retry, or revoked directly).
    Revoked,
}

/// The pair a refresh token was exchanged for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Successor {
    /// SHA-256 (hex) of its refresh token.
    pub refresh_hash: String,
    /// Whether the pair was never used, nor revoked: neither its refresh token exchanged nor
    /// its access token presented. Only then can the exchange's response have been lost.
    pub untouched: bool,
}

/// The model's decision on an exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// First exchange: mark the token exchanged and store a new pair as its successor.
    Rotate,
    /// A retry after a lost response: revoke the lost pair (its refresh token `lost`), then
    /// store a new pair as the successor.
    Retry {
        /// Refresh-token hash of the pair never received.
        lost: String,
    },
    /// Refused as if unknown: revoked, ended session, locked user, or another client's.
    Invalid,
    /// A replay: revoke the session; the caller ends its device too.
    Replay,
}

/// Why an exchange is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// Unknown, revoked, of another client, or of an ended session or locked user.
    #[error("unknown or revoked refresh token")]
    Invalid,
    /// Replayed: the session is revoked and the grant's device must go.
    #[error("refresh token reused; the session and its device are revoked")]
    Reused(Grant),
}

impl RefreshToken {
    /// Decides an exchange at `now` by `client_id` (when the request names one), with the
    /// retry window `grace_ms`: a retry exactly `grace_ms` after the exchange is still one.
    pub fn exchange(&self, client_id: Option<&str>, now: i64, grace_ms: i64) -> Exchange {
        let other_client = client_id.is_some_and(|c| self.grant.client_id.as_deref() != Some(c));
        if self.session_revoked || self.user_locked || other_client {
            return Exchange::Invalid;
        }
        match &self.state {
            RefreshState::Revoked => Exchange::Invalid,
            RefreshState::Valid => Exchange::Rotate,
            RefreshState::Exchanged {
                at,
                successor: Some(next),
            } if next.untouched && now.saturating_sub(*at) <= grace_ms => Exchange::Retry {
                lost: next.refresh_hash.clone(),
            },
            RefreshState::Exchanged { .. } => Exchange::Replay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 5_000_000;
    const GRACE: i64 = 10_000;

    fn token(state: RefreshState) -> RefreshToken {
        RefreshToken {
            session_id: "S".into(),
            grant: Grant {
                localpart: "alice".into(),
                device_id: "DEV".into(),
                client_id: Some("client".into()),
                scope: "urn:matrix:client:api:*".into(),
            },
            session_revoked: false,
            user_locked: false,
            state,
        }
    }

    fn exchanged(at: i64, untouched: bool) -> RefreshState {
        RefreshState::Exchanged {
            at,
            successor: Some(Successor {
                refresh_hash: "next".into(),
                untouched,
            }),
        }
    }

    #[test]
    fn a_valid_token_rotates_for_its_client_or_an_unnamed_one() {
        let t = token(RefreshState::Valid);
        assert_eq!(t.exchange(Some("client"), NOW, GRACE), Exchange::Rotate);
        assert_eq!(t.exchange(None, NOW, GRACE), Exchange::Rotate);
    }

    #[test]
    fn revoked_tokens_ended_sessions_locked_users_and_other_clients_are_invalid() {
        assert_eq!(
            token(RefreshState::Revoked).exchange(None, NOW, GRACE),
            Exchange::Invalid
        );
        let ended = RefreshToken {
            session_revoked: true,
            ..token(RefreshState::Valid)
        };
        let locked = RefreshToken {
            user_locked: true,
            ..token(RefreshState::Valid)
        };
        for t in [ended, locked] {
            assert_eq!(t.exchange(Some("client"), NOW, GRACE), Exchange::Invalid);
        }
        assert_eq!(
            token(RefreshState::Valid).exchange(Some("other"), NOW, GRACE),
            Exchange::Invalid
        );
        // An admin-issued session (no client) is nobody's to name.
        let admin = RefreshToken {
            grant: Grant {
                client_id: None,
                ..token(RefreshState::Valid).grant
            },
            ..token(RefreshState::Valid)
        };
        assert_eq!(
            admin.exchange(Some("client"), NOW, GRACE),
            Exchange::Invalid
        );
        assert_eq!(admin.exchange(None, NOW, GRACE), Exchange::Rotate);
    }

    #[test]
    fn a_retry_within_the_window_replaces_the_lost_pair_up_to_its_last_instant() {
        let retry = Exchange::Retry {
            lost: "next".into(),
        };
        for now in [NOW, NOW + 1, NOW + GRACE] {
            assert_eq!(
                token(exchanged(NOW, true)).exchange(Some("client"), now, GRACE),
                retry,
                "{now}"
            );
        }
        assert_eq!(
            token(exchanged(NOW, true)).exchange(Some("client"), NOW + GRACE + 1, GRACE),
            Exchange::Replay
        );
    }

    #[test]
    fn a_second_exchange_after_the_successor_was_used_is_a_replay() {
        assert_eq!(
            token(exchanged(NOW, false)).exchange(Some("client"), NOW, GRACE),
            Exchange::Replay
        );
        let no_successor = RefreshState::Exchanged {
            at: NOW,
            successor: None,
        };
        assert_eq!(
            token(no_successor).exchange(Some("client"), NOW, GRACE),
            Exchange::Replay
        );
    }

    #[test]
    fn a_zero_window_allows_only_a_retry_at_the_same_instant() {
        assert!(matches!(
            token(exchanged(NOW, true)).exchange(None, NOW, 0),
            Exchange::Retry { .. }
        ));
        assert_eq!(
            token(exchanged(NOW, true)).exchange(None, NOW + 1, 0),
            Exchange::Replay
        );
    }

    #[test]
    fn a_replay_by_another_client_is_refused_without_ending_the_session() {
        assert_eq!(
            token(exchanged(NOW - 10 * GRACE, false)).exchange(Some("other"), NOW, GRACE),
            Exchange::Invalid
        );
    }
}

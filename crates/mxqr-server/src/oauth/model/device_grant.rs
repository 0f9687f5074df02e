//! Polling a device grant at the token endpoint (RFC 8628 §3.4–3.5): pending until the user
//! decides, `slow_down` (and a longer interval) for a poll that comes too early, expired at
//! its expiry, and redeemed for tokens exactly once after approval; the user approves or
//! denies it once, before it expires.

use super::Grant;

/// Added to a grant's interval on each early poll (RFC 8628 §3.5).
pub const SLOW_DOWN_STEP_SECS: i64 = 5;

/// A device grant as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceGrant {
    /// Requesting client.
    pub client_id: String,
    /// Requested scope.
    pub scope: String,
    /// Device ID from the scope.
    pub device_id: String,
    /// Expiry, ms: the grant is dead from this instant on.
    pub expires_at: i64,
    /// Current polling interval, seconds.
    pub interval_secs: i64,
    /// Last poll that was answered pending or `slow_down`, ms.
    pub last_poll_at: Option<i64>,
    /// The user's decision, and whether tokens went out.
    pub status: GrantStatus,
}

/// Where a device grant is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantStatus {
    /// Waiting for the user.
    Pending,
    /// Approved by this user; the next poll gets the tokens.
    Approved {
        /// Who approved.
        localpart: String,
    },
    /// Refused by the user (or after too many lookups of its user code).
    Denied,
    /// Tokens were issued.
    Redeemed,
}

/// The model's decision on a poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Start a session for this grant and mark the device grant redeemed.
    Issue(Grant),
    /// Record the poll at `now` with this interval and answer: still pending, or too early
    /// (the interval grew).
    Wait {
        /// Interval from now on, seconds.
        interval_secs: i64,
        /// Whether the poll came before the interval elapsed.
        slow_down: bool,
    },
    /// Refuse without a change.
    Refuse(PollError),
}

/// A poll that gets no tokens (RFC 8628 §3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    /// No grant has this device code, or it is another client's.
    #[error("unknown device code")]
    Unknown,
    /// The user has not decided yet.
    #[error("the user has not yet approved the request")]
    Pending,
    /// Polled before the interval elapsed; the interval grew.
    #[error("polling too fast: wait the interval, which grew by 5 seconds")]
    SlowDown,
    /// The user refused.
    #[error("the user denied the request")]
    Denied,
    /// The grant expired.
    #[error("the device code expired; start over")]
    Expired,
    /// Tokens were issued by an earlier poll.
    #[error("the device code was already exchanged")]
    AlreadyRedeemed,
}

impl DeviceGrant {
    /// Decides a poll by `client_id` at `now`. A decided grant answers before the interval
    /// is checked, so the poll that follows a decision is never a `slow_down`.
    pub fn poll(&self, client_id: &str, now: i64) -> Poll {
        if self.client_id != client_id {
            return Poll::Refuse(PollError::Unknown);
        }
        match &self.status {
            GrantStatus::Redeemed => Poll::Refuse(PollError::AlreadyRedeemed),
            _ if self.expires_at <= now => Poll::Refuse(PollError::Expired),
            GrantStatus::Denied => Poll::Refuse(PollError::Denied),
            GrantStatus::Approved { localpart } => Poll::Issue(Grant {
                localpart: localpart.clone(),
                device_id: self.device_id.clone(),
                client_id: Some(self.client_id.clone()),
                scope: self.scope.clone(),
            }),
            GrantStatus::Pending => {
                let early = self
                    .last_poll_at
                    .is_some_and(|last| now.saturating_sub(last) < self.interval_secs * 1000);
                Poll::Wait {
                    interval_secs: if early {
                        self.interval_secs + SLOW_DOWN_STEP_SECS
                    } else {
                        self.interval_secs
                    },
                    slow_down: early,
                }
            }
        }
    }
}

impl DeviceGrant {
    /// The user's decision at `now` on the consent page: the grant's new status, or `None`
    /// when it can no longer be decided (decided before, redeemed, or expired).
    pub fn decide(&self, localpart: &str, approve: bool, now: i64) -> Option<GrantStatus> {
        (self.status == GrantStatus::Pending && now < self.expires_at).then(|| {
            if approve {
                GrantStatus::Approved {
                    localpart: localpart.to_owned(),
                }
            } else {
                GrantStatus::Denied
            }
        })
    }
}

/// Whether a pending grant's user code, looked up `lookups` times, may be shown again: past
/// `max_lookups` the grant is denied instead (a guard against phishing and guessing).
pub fn may_look_up(lookups: i64, max_lookups: i64) -> bool {
    lookups < max_lookups
}

impl Poll {
    /// The refusal a [`Poll::Wait`] answers with.
    pub fn wait_error(slow_down: bool) -> PollError {
        if slow_down {
            PollError::SlowDown
        } else {
            PollError::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 9_000_000;

    fn grant(status: GrantStatus) -> DeviceGrant {
        DeviceGrant {
            client_id: "client".into(),
            scope: "urn:matrix:client:api:*".into(),
            device_id: "DEV".into(),
            expires_at: NOW + 600_000,
            interval_secs: 5,
            last_poll_at: None,
            status,
        }
    }

    fn wait(interval_secs: i64, slow_down: bool) -> Poll {
        Poll::Wait {
            interval_secs,
            slow_down,
        }
    }

    #[test]
    fn a_first_poll_is_pending_at_the_same_interval() {
        assert_eq!(
            grant(GrantStatus::Pending).poll("client", NOW),
            wait(5, false)
        );
    }

    #[test]
    fn a_poll_before_the_interval_elapsed_slows_down_by_five_seconds() {
        let polled = DeviceGrant {
            last_poll_at: Some(NOW),
            ..grant(GrantStatus::Pending)
        };
        assert_eq!(polled.poll("client", NOW), wait(10, true));
        assert_eq!(polled.poll("client", NOW + 4_999), wait(10, true));
        // Exactly one interval later is in time.
        assert_eq!(polled.poll("client", NOW + 5_000), wait(5, false));
        // The grown interval is the one the next poll is judged by.
        let slowed = DeviceGrant {
            interval_secs: 10,
            ..polled
        };
        assert_eq!(slowed.poll("client", NOW + 9_999), wait(15, true));
        assert_eq!(slowed.poll("client", NOW + 10_000), wait(10, false));
    }

    #[test]
    fn a_grant_is_dead_from_its_expiry_instant_on_whatever_its_decision() {
        for status in [
            GrantStatus::Pending,
            GrantStatus::Denied,
            GrantStatus::Approved {
                localpart: "alice".into(),
            },
        ] {
            let g = grant(status);
            assert!(!matches!(
                g.poll("client", g.expires_at - 1),
                Poll::Refuse(PollError::Expired)
            ));
            assert_eq!(
                g.poll("client", g.expires_at),
                Poll::Refuse(PollError::Expired)
            );
        }
    }

    #[test]
    fn an_approved_grant_issues_for_the_approving_user_once() {
        let approved = grant(GrantStatus::Approved {
            localpart: "alice".into(),
        });
        assert_eq!(
            approved.poll("client", NOW),
            Poll::Issue(Grant {
                localpart: "alice".into(),
                device_id: "DEV".into(),
                client_id: Some("client".into()),
                scope: "urn:matrix:client:api:*".into(),
            })
        );
        let redeemed = grant(GrantStatus::Redeemed);
        assert_eq!(
            redeemed.poll("client", NOW),
            Poll::Refuse(PollError::AlreadyRedeemed)
        );
        // Even past expiry, a redeemed grant says so rather than "expired".
        assert_eq!(
            redeemed.poll("client", redeemed.expires_at + 1),
            Poll::Refuse(PollError::AlreadyRedeemed)
        );
    }

    #[test]
    fn a_decision_answers_even_a_poll_that_comes_too_early() {
        let early = DeviceGrant {
            last_poll_at: Some(NOW),
            ..grant(GrantStatus::Approved {
                localpart: "alice".into(),
            })
        };
        assert!(matches!(early.poll("client", NOW + 1), Poll::Issue(_)));
        let denied = DeviceGrant {
            status: GrantStatus::Denied,
            ..early
        };
        assert_eq!(
            denied.poll("client", NOW + 1),
            Poll::Refuse(PollError::Denied)
        );
    }

    #[test]
    fn another_clients_poll_is_told_the_code_is_unknown() {
        for status in [
            GrantStatus::Pending,
            GrantStatus::Redeemed,
            GrantStatus::Approved {
                localpart: "alice".into(),
            },
        ] {
            assert_eq!(
                grant(status).poll("other", NOW),
                Poll::Refuse(PollError::Unknown)
            );
        }
    }

    #[test]
    fn only_a_pending_unexpired_grant_can_be_decided_and_only_once() {
        let pending = grant(GrantStatus::Pending);
        let approved = GrantStatus::Approved {
            localpart: "alice".into(),
        };
        assert_eq!(pending.decide("alice", true, NOW), Some(approved.clone()));
        assert_eq!(
            pending.decide("alice", false, pending.expires_at - 1),
            Some(GrantStatus::Denied)
        );
        assert_eq!(pending.decide("alice", true, pending.expires_at), None);
        for status in [approved, GrantStatus::Denied, GrantStatus::Redeemed] {
            for approve in [true, false] {
                assert_eq!(grant(status.clone()).decide("bob", approve, NOW), None);
            }
        }
    }

    #[test]
    fn a_user_code_is_shown_up_to_its_lookup_cap() {
        assert!(may_look_up(0, 3));
        assert!(may_look_up(2, 3));
        assert!(!may_look_up(3, 3));
        assert!(!may_look_up(0, 0));
    }

    #[test]
    fn waits_answer_pending_or_slow_down() {
        assert_eq!(Poll::wait_error(false), PollError::Pending);
        assert_eq!(Poll::wait_error(true), PollError::SlowDown);
    }
}

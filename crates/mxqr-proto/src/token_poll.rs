//! Pacing of the device authorization grant's token polls (RFC 8628 §3.4–3.5), free of any
//! clock.
//!
//! [`TokenPoll`] decides when the token endpoint is polled and when polling ends; the caller
//! sends each poll and reports its [`TokenAnswer`], passing the current time in. The first
//! poll is due when the grant was issued (so at once), then one `interval` after each
//! answer, five seconds more after every `slow_down`, and never once the next poll could no
//! longer come before the grant expires. The server's `expires_in` and `interval` are held
//! to [`MAX_GRANT_LIFETIME`] and [`MIN_POLL_INTERVAL`]..=[`MAX_POLL_INTERVAL`]: a server
//! cannot make the poller wait for ever, poll in a busy loop or overflow its clock.
//!
//! A poll that got no answer, or a 503 ([`TokenAnswer::Unavailable`]), is retried for a
//! bounded time ([`UNAVAILABLE_FOR`]) with growing pauses, never faster than the interval:
//! an instance or the server's database may be restarting, and the device code is kept
//! server-side, so a poll whose answer was lost can be repeated.

use std::time::Duration;

use crate::time::Instant;

/// Longest grant lifetime taken from a server: a sign-in never waits longer.
pub const MAX_GRANT_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Bounds of the poll interval taken from a server (`interval`, plus `slow_down`).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// The interval when the server names none (RFC 8628 §3.2).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// What each `slow_down` adds to the interval (RFC 8628 §3.5).
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// How long polls that get no answer keep being retried, from the first of a run of them.
pub const UNAVAILABLE_FOR: Duration = Duration::from_secs(10);
/// First pause after an unanswered poll; doubled after each further one, up to
/// [`UNAVAILABLE_PAUSE_MAX`], and never shorter than the interval.
const UNAVAILABLE_PAUSE_MIN: Duration = Duration::from_millis(250);
const UNAVAILABLE_PAUSE_MAX: Duration = Duration::from_secs(2);

/// A server's `expires_in`, held to [`MAX_GRANT_LIFETIME`].
pub fn grant_lifetime(expires_in: Duration) -> Duration {
    expires_in.min(MAX_GRANT_LIFETIME)
}

/// A server's `interval` ([`DEFAULT_POLL_INTERVAL`] when it sent none), held to
/// [`MIN_POLL_INTERVAL`]..=[`MAX_POLL_INTERVAL`].
pub fn poll_interval(interval: Option<Duration>) -> Duration {
    interval
        .unwrap_or(DEFAULT_POLL_INTERVAL)
        .clamp(MIN_POLL_INTERVAL, MAX_POLL_INTERVAL)
}

/// What one poll of the token endpoint brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAnswer {
    /// Tokens: the person approved.
    Granted,
    /// `authorization_pending`.
    Pending,
    /// `slow_down`.
    SlowDown,
    /// `access_denied`: the person refused on the consent page.
    Denied,
    /// `expired_token`: nobody approved in time.
    Expired,
    /// No answer, or a 503: the server may be restarting.
    Unavailable,
}

/// How token polling ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    Granted,
    /// `access_denied`: the person refused on the consent page.
    Denied,
    /// `expired_token`, or the grant's lifetime ran out before anyone approved.
    Expired,
    /// The token endpoint gave no answer for [`UNAVAILABLE_FOR`], or not before the grant
    /// expired.
    Unreachable,
}

/// What to do now that time passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPollStep {
    /// Send one poll and report its answer.
    PollNow,
    /// Polling is over.
    Ended(TokenOutcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next poll is due at this instant.
    DueAt(Instant),
    /// A poll was sent; its answer is awaited.
    InFlight,
    Ended,
}

/// A run of unanswered polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unavailable {
    since: Instant,
    pause: Duration,
}

/// The pacing of one grant's token polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPoll {
    expires_at: Instant,
    interval: Duration,
    state: State,
    unavailable: Option<Unavailable>,
}

impl TokenPoll {
    /// A grant issued at `issued` with the server's `expires_in` and `interval` (`None` if it
    /// sent none). The first poll is due at once.
    pub fn new(issued: Instant, expires_in: Duration, interval: Option<Duration>) -> Self {
        // Both bounded, so the sum fits; should it still not, the grant counts as expired
        // rather than the poller panicking.
        let expires_at = issued
            .checked_add(grant_lifetime(expires_in))
            .unwrap_or(issued);
        Self {
            expires_at,
            interval: poll_interval(interval),
            state: State::DueAt(issued),
            unavailable: None,
        }
    }

    /// The interval polls are paced at now (it grows with `slow_down`).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called: the next poll, or
    /// while a poll is in flight, the grant's expiry. `None` once polling ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::DueAt(at) => Some(at),
            State::InFlight => Some(self.expires_at),
            State::Ended => None,
        }
    }

    /// Time passed: whether to poll now or polling is over. `None`: nothing to do yet.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<TokenPollStep> {
        match self.state {
            State::Ended => None,
            _ if now >= self.expires_at => Some(self.end(TokenOutcome::Expired)),
            State::DueAt(at) if at <= now => {
                self.state = State::InFlight;
                Some(TokenPollStep::PollNow)
            }
            State::DueAt(_) | State::InFlight => None,
        }
    }

    /// The answer to the poll in flight arrived at `now`. Returns the outcome when polling
    /// is over. An answer with no poll in flight is ignored.
    pub fn handle_answer(&mut self, now: Instant, answer: TokenAnswer) -> Option<TokenOutcome> {
        if self.state != State::InFlight {
            return None;
        }
        if answer != TokenAnswer::Unavailable {
            self.unavailable = None;
        }
        let wait = match answer {
            TokenAnswer::Granted => return Some(self.ended(TokenOutcome::Granted)),
            TokenAnswer::Denied => return Some(self.ended(TokenOutcome::Denied)),
            TokenAnswer::Expired => return Some(self.ended(TokenOutcome::Expired)),
            TokenAnswer::Pending => self.interval,
            TokenAnswer::SlowDown => {
                self.interval = (self.interval + SLOW_DOWN_STEP).min(MAX_POLL_INTERVAL);
                self.interval
            }
            TokenAnswer::Unavailable => {
                let run = self.unavailable.get_or_insert(Unavailable {
                    since: now,
                    pause: Duration::ZERO,
                });
                run.pause = if run.pause.is_zero() {
                    UNAVAILABLE_PAUSE_MIN
                } else {
                    (run.pause * 2).min(UNAVAILABLE_PAUSE_MAX)
                };
                if now.saturating_duration_since(run.since) + run.pause > UNAVAILABLE_FOR {
                    return Some(self.ended(TokenOutcome::Unreachable));
                }
                run.pause.max(self.interval)
            }
        };
        // A poll that could no longer come before the expiry is not made.
        if self.expires_at.saturating_duration_since(now) > wait {
            self.state = State::DueAt(now + wait);
            None
        } else if answer == TokenAnswer::Unavailable {
            Some(self.ended(TokenOutcome::Unreachable))
        } else {
            Some(self.ended(TokenOutcome::Expired))
        }
    }

    fn ended(&mut self, outcome: TokenOutcome) -> TokenOutcome {
        self.state = State::Ended;
        outcome
    }

    fn end(&mut self, outcome: TokenOutcome) -> TokenPollStep {
        TokenPollStep::Ended(self.ended(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Polls with `answers` until polling ends; returns the poll times (seconds after the
    /// grant was issued) and the outcome.
    fn run(
        expires_in: Duration,
        interval: Option<Duration>,
        mut answers: impl FnMut(usize) -> TokenAnswer,
    ) -> (Vec<Duration>, TokenOutcome) {
        let issued = Instant::now();
        let mut poll = TokenPoll::new(issued, expires_in, interval);
        let mut polls = Vec::new();
        for _ in 0..10_000 {
            let now = poll.poll_timeout().expect("a deadline until polling ends");
            match poll.handle_timeout(now) {
                Some(TokenPollStep::PollNow) => {}
                Some(TokenPollStep::Ended(outcome)) => return (polls, outcome),
                None => panic!("nothing due at the deadline it gave"),
            }
            polls.push(now - issued);
            let answer = answers(polls.len());
            if let Some(outcome) = poll.handle_answer(now, answer) {
                assert_eq!(poll.poll_timeout(), None);
                return (polls, outcome);
            }
        }
        panic!("polling never ended");
    }

    fn secs(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn first_poll_at_once_then_every_interval() {
        let (polls, outcome) = run(600 * SECOND, Some(5 * SECOND), |n| {
            if n == 4 {
                TokenAnswer::Granted
            } else {
                TokenAnswer::Pending
            }
        });
        assert_eq!(polls, secs(&[0, 5, 10, 15]));
        assert_eq!(outcome, TokenOutcome::Granted);
    }

    #[test]
    fn nothing_is_due_before_the_interval_passed() {
        let issued = Instant::now();
        let mut poll = TokenPoll::new(issued, 600 * SECOND, Some(5 * SECOND));
        assert_eq!(poll.handle_timeout(issued), Some(TokenPollStep::PollNow));
        // A second timeout while the poll is in flight sends nothing more.
        assert_eq!(poll.handle_timeout(issued + SECOND), None);
        assert_eq!(
            poll.handle_answer(issued + SECOND, TokenAnswer::Pending),
            None
        );
        assert_eq!(poll.poll_timeout(), Some(issued + 6 * SECOND));
        assert_eq!(poll.handle_timeout(issued + 5 * SECOND), None);
        assert_eq!(
            poll.handle_timeout(issued + 6 * SECOND),
            Some(TokenPollStep::PollNow)
        );
        // A stray answer with no poll in flight changes nothing.
        let mut idle = TokenPoll::new(issued, 600 * SECOND, None);
        assert_eq!(idle.handle_answer(issued, TokenAnswer::Granted), None);
        assert_eq!(idle.poll_timeout(), Some(issued));
    }

    #[test]
    fn slow_down_adds_five_seconds_up_to_the_bound() {
        let (polls, outcome) = run(3600 * SECOND, Some(50 * SECOND), |n| match n {
            1..=3 => TokenAnswer::SlowDown,
            4 => TokenAnswer::Pending,
            _ => TokenAnswer::Denied,
        });
        // 50 → 55 → 60 → 60 (held), then pending keeps 60.
        assert_eq!(polls, secs(&[0, 55, 115, 175, 235]));
        assert_eq!(outcome, TokenOutcome::Denied);
    }

    #[test]
    fn polling_stops_before_the_grant_expires() {
        let (polls, outcome) = run(12 * SECOND, Some(5 * SECOND), |_| TokenAnswer::Pending);
        // A poll at 15 s would come after the expiry at 12 s: none is made.
        assert_eq!(polls, secs(&[0, 5, 10]));
        assert_eq!(outcome, TokenOutcome::Expired);
        let (_, outcome) = run(600 * SECOND, None, |_| TokenAnswer::Expired);
        assert_eq!(outcome, TokenOutcome::Expired);
    }

    #[test]
    fn a_poll_in_flight_at_the_expiry_ends_it() {
        let issued = Instant::now();
        let mut poll = TokenPoll::new(issued, 10 * SECOND, None);
        assert_eq!(poll.handle_timeout(issued), Some(TokenPollStep::PollNow));
        assert_eq!(poll.poll_timeout(), Some(issued + 10 * SECOND));
        assert_eq!(
            poll.handle_timeout(issued + 10 * SECOND),
            Some(TokenPollStep::Ended(TokenOutcome::Expired))
        );
        assert_eq!(
            poll.handle_answer(issued + 11 * SECOND, TokenAnswer::Granted),
            None
        );
        assert_eq!(poll.handle_timeout(issued + 12 * SECOND), None);
    }

    #[test]
    fn server_values_are_held_to_their_bounds() {
        assert_eq!(poll_interval(None), 5 * SECOND);
        assert_eq!(poll_interval(Some(Duration::ZERO)), MIN_POLL_INTERVAL);
        assert_eq!(
            poll_interval(Some(Duration::from_secs(u64::MAX))),
            MAX_POLL_INTERVAL
        );
        assert_eq!(
            grant_lifetime(Duration::from_secs(u64::MAX)),
            MAX_GRANT_LIFETIME
        );
        // A huge lifetime and interval: polls a minute apart, ending within the hour.
        let (polls, outcome) = run(
            Duration::from_secs(u64::MAX),
            Some(Duration::from_secs(u64::MAX)),
            |_| TokenAnswer::Pending,
        );
        assert_eq!(polls.len(), 60);
        assert_eq!(polls[1], MAX_POLL_INTERVAL);
        assert!(*polls.last().unwrap() < MAX_GRANT_LIFETIME);
        assert_eq!(outcome, TokenOutcome::Expired);
        // An interval of 0 is not a busy loop.
        let (polls, _) = run(10 * SECOND, Some(Duration::ZERO), |_| TokenAnswer::Pending);
        assert_eq!(polls, secs(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
    }

    #[test]
    fn unanswered_polls_are_retried_for_a_bounded_time() {
        // Pauses grow 0.25, 0.5, 1, 2, 2 … s, but never below the interval (1 s here).
        let (polls, outcome) = run(600 * SECOND, Some(SECOND), |_| TokenAnswer::Unavailable);
        let millis: Vec<u128> = polls.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [0, 1000, 2000, 3000, 5000, 7000, 9000]);
        assert_eq!(outcome, TokenOutcome::Unreachable);

        // An answer in between starts a fresh run.
        let (polls, outcome) = run(600 * SECOND, Some(5 * SECOND), |n| match n {
            1 | 2 => TokenAnswer::Unavailable,
            3 => TokenAnswer::Pending,
            4 | 5 => TokenAnswer::Unavailable,
            _ => TokenAnswer::Granted,
        });
        assert_eq!(polls, secs(&[0, 5, 10, 15, 20, 25]));
        assert_eq!(outcome, TokenOutcome::Granted);

        // A retry that could not come before the expiry is not made.
        let (polls, outcome) = run(6 * SECOND, Some(5 * SECOND), |_| TokenAnswer::Unavailable);
        assert_eq!(polls, secs(&[0, 5]));
        assert_eq!(outcome, TokenOutcome::Unreachable);
    }
}

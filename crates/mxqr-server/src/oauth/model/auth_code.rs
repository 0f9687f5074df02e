//! Redeeming an authorization code (RFC 6749 §4.1.3, RFC 7636 §4.6): once, before it
//! expires, by the client it was issued to, with the redirect URI of the authorization
//! request and the PKCE verifier of its challenge.

use subtle::ConstantTimeEq;

use super::Grant;

/// What an authorization code was issued for, as stored under the digest of the code.
/// Decodes from the store's rows, whose columns carry these names.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct IssuedCode {
    /// Client it was issued to.
    pub client_id: String,
    /// User who consented.
    pub localpart: String,
    /// Device ID from the scope.
    pub device_id: String,
    /// Scope granted.
    pub scope: String,
    /// Redirect URI of the authorization request.
    pub redirect_uri: String,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// Expiry, ms: the code is dead from this instant on.
    pub expires_at: i64,
}

/// An authorization code as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthCode {
    /// What it was issued for.
    pub issued: IssuedCode,
    /// Whether it was presented before.
    pub state: CodeState,
}

/// Where a code is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeState {
    /// Never presented.
    Unused,
    /// Presented once: any presentation consumes the code, so a wrong verifier gets no
    /// second try. `session` is what the code issued, if that presentation succeeded.
    Consumed {
        /// Session started by the code.
        session: Option<String>,
    },
}

/// What a token request presents with a code.
#[derive(Clone, Copy, Debug)]
pub struct Presented<'a> {
    /// `client_id` of the token request.
    pub client_id: &'a str,
    /// `redirect_uri` of the token request.
    pub redirect_uri: &'a str,
    /// S256 of the presented `code_verifier`.
    pub verifier_challenge: &'a str,
}

/// The model's decision on a presented code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redemption {
    /// Consume the code and start a session for this grant.
    Issue(Grant),
    /// Consume the code and refuse.
    Refuse(CodeError),
    /// The code was consumed before: refuse, and revoke the session it issued, if any
    /// (RFC 6749 §4.1.2: a code used twice means it leaked).
    Replay {
        /// Session to revoke.
        revoke: Option<String>,
    },
}

/// Why a code is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// No code has this hash.
    #[error("unknown authorization code")]
    Unknown,
    /// Presented at or after its expiry.
    #[error("authorization code expired")]
    Expired,
    /// Presented by another client.
    #[error("authorization code was issued to another client")]
    OtherClient,
    /// The redirect URI differs from the authorization request's.
    #[error("redirect_uri does not match the authorization request")]
    RedirectUri,
    /// The verifier does not hash to the challenge.
    #[error("code_verifier does not match the code_challenge")]
    Verifier,
    /// Presented a second time; what it issued is revoked.
    #[error("authorization code already used; the tokens it issued are revoked")]
    Reused,
}

impl AuthCode {
    /// Decides a presentation of this code at `now`.
    pub fn redeem(&self, presented: &Presented<'_>, now: i64) -> Redemption {
        if let CodeState::Consumed { session } = &self.state {
            return Redemption::Replay {
                revoke: session.clone(),
            };
        }
        let code = &self.issued;
        let refusal = if code.expires_at <= now {
            Some(CodeError::Expired)
        } else if code.client_id != presented.client_id {
            Some(CodeError::OtherClient)
        } else if code.redirect_uri != presented.redirect_uri {
            Some(CodeError::RedirectUri)
        } else if !bool::from(
            code.code_challenge
                .as_bytes()
                .ct_eq(presented.verifier_challenge.as_bytes()),
        ) {
            Some(CodeError::Verifier)
        } else {
            None
        };
        match refusal {
            Some(err) => Redemption::Refuse(err),
            None => Redemption::Issue(Grant {
                localpart: code.localpart.clone(),
                device_id: code.device_id.clone(),
                client_id: Some(code.client_id.clone()),
                scope: code.scope.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn code() -> AuthCode {
        AuthCode {
            issued: IssuedCode {
                client_id: "client".into(),
                localpart: "alice".into(),
                device_id: "DEV".into(),
                scope: "urn:matrix:client:api:*".into(),
                redirect_uri: "http://127.0.0.1/cb".into(),
                code_challenge: "challenge".into(),
                expires_at: NOW + 1,
            },
            state: CodeState::Unused,
        }
    }

    fn presented() -> Presented<'static> {
        Presented {
            client_id: "client",
            redirect_uri: "http://127.0.0.1/cb",
            verifier_challenge: "challenge",
        }
    }

    #[test]
    fn a_matching_presentation_issues_the_codes_grant() {
        let grant = Grant {
            localpart: "alice".into(),
            device_id: "DEV".into(),
            client_id: Some("client".into()),
            scope: "urn:matrix:client:api:*".into(),
        };
        assert_eq!(code().redeem(&presented(), NOW), Redemption::Issue(grant));
    }

    #[test]
    fn a_code_is_dead_from_its_expiry_instant_on() {
        let code = code();
        assert!(matches!(
            code.redeem(&presented(), code.issued.expires_at - 1),
            Redemption::Issue(_)
        ));
        for at in [code.issued.expires_at, code.issued.expires_at + 1] {
            assert_eq!(
                code.redeem(&presented(), at),
                Redemption::Refuse(CodeError::Expired)
            );
        }
    }

    #[test]
    fn each_mismatch_is_refused_with_its_reason() {
        let cases = [
            (
                Presented {
                    client_id: "other",
                    ..presented()
                },
                CodeError::OtherClient,
            ),
            (
                Presented {
                    redirect_uri: "http://127.0.0.1/cb2",
                    ..presented()
                },
                CodeError::RedirectUri,
            ),
            (
                Presented {
                    verifier_challenge: "challengf",
                    ..presented()
                },
                CodeError::Verifier,
            ),
            (
                Presented {
                    verifier_challenge: "",
                    ..presented()
                },
                CodeError::Verifier,
            ),
        ];
        for (presented, error) in cases {
            assert_eq!(
                code().redeem(&presented, NOW),
                Redemption::Refuse(error),
                "{presented:?}"
            );
        }
    }

    #[test]
    fn expiry_is_judged_before_the_request_details() {
        let late = code().issued.expires_at;
        let wrong = Presented {
            client_id: "other",
            verifier_challenge: "x",
            ..presented()
        };
        assert_eq!(
            code().redeem(&wrong, late),
            Redemption::Refuse(CodeError::Expired)
        );
    }

    #[test]
    fn a_second_presentation_replays_and_revokes_what_the_first_issued() {
        let used = AuthCode {
            state: CodeState::Consumed {
                session: Some("S1".into()),
            },
            ..code()
        };
        assert_eq!(
            used.redeem(&presented(), NOW),
            Redemption::Replay {
                revoke: Some("S1".into())
            }
        );
        // Consumed by a refused presentation: nothing to revoke, still never a second try,
        // even with the right verifier.
        let refused = AuthCode {
            state: CodeState::Consumed { session: None },
            ..code()
        };
        assert_eq!(
            refused.redeem(&presented(), NOW),
            Redemption::Replay { revoke: None }
        );
    }
}

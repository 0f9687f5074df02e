//! Who may create an MSC4388 session, behind a trait so token validation can be plugged in.

use crate::config::CreatePolicy;

/// Decides whether a request may create a rendezvous session.
#[async_trait::async_trait]
pub trait CreateAuthorizer: Send + Sync + 'static {
    /// `access_token` is the bearer token of the request, if any.
    async fn may_create(&self, access_token: Option<&str>) -> bool;
}

/// The configured policy on its own: `open` lets anyone create, and `authenticated`, until
/// this server issues tokens of its own, wants a bearer token. Validating the token is the job
/// of the authorizer that replaces this one.
#[async_trait::async_trait]
impl CreateAuthorizer for CreatePolicy {
    async fn may_create(&self, access_token: Option<&str>) -> bool {
        match self {
            CreatePolicy::Open => true,
            CreatePolicy::Authenticated => access_token.is_some_and(|t| !t.is_empty()),
        }
    }
}

/// The authorizer for a configured policy.
pub fn for_policy(policy: CreatePolicy) -> Box<dyn CreateAuthorizer> {
    Box::new(policy)
}

//! Who may create an MSC4388 session, behind a trait so token validation can be plugged in.

use crate::config::CreatePolicy;
use crate::rendezvous::store::BoxFuture;

/// Decides whether a request may create a rendezvous session.
pub trait CreateAuthorizer: Send + Sync + 'static {
    /// `access_token` is the bearer token of the request, if any.
    fn may_create<'a>(&'a self, access_token: Option<&'a str>) -> BoxFuture<'a, bool>;
}

/// Policy `open`: anyone may create.
pub struct OpenCreation;

impl CreateAuthorizer for OpenCreation {
    fn may_create<'a>(&'a self, _access_token: Option<&'a str>) -> BoxFuture<'a, bool> {
        Box::pin(async { true })
    }
}

/// Policy `authenticated` until this server issues tokens of its own: a request must carry a
/// bearer token. Validating the token is the job of the authorizer that replaces this one.
pub struct RequireAccessToken;

impl CreateAuthorizer for RequireAccessToken {
    fn may_create<'a>(&'a self, access_token: Option<&'a str>) -> BoxFuture<'a, bool> {
        Box::pin(async move { access_token.is_some_and(|t| !t.is_empty()) })
    }
}

/// The authorizer for a configured policy.
pub fn for_policy(policy: CreatePolicy) -> Box<dyn CreateAuthorizer> {
    match policy {
        CreatePolicy::Open => Box::new(OpenCreation),
        CreatePolicy::Authenticated => Box::new(RequireAccessToken),
    }
}

//! OAuth 2.0 client of the Matrix OAuth 2.0 API: server metadata, dynamic client
//! registration, the device authorization grant (RFC 8628), the authorization-code grant with
//! PKCE through a loopback redirect, refresh and revocation.
//!
//! Written directly on reqwest rather than the `oauth2` crate: that crate's HTTP client is
//! reqwest 0.12, and the device grant here must follow the sign-in conversation's timing (the
//! new device polls only after `m.login.protocol_accepted`, first poll at once) and accept the
//! 403 answers matrix-authentication-service gives for pending/denied/expired grants.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mxqr_proto::token_poll::{self, TokenAnswer, TokenOutcome, TokenPoll, TokenPollStep};
use rand::RngExt as _;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use url::Url;

use crate::ClientError;
use crate::body::{self, Cap, parse_json};
use crate::error::require_secure;
use crate::rendezvous::join;

/// The device-code grant type of RFC 8628.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The bounds of a server's device grant timing; the core's poller applies them.
pub use mxqr_proto::token_poll::{MAX_GRANT_LIFETIME, MAX_POLL_INTERVAL, MIN_POLL_INTERVAL};

/// Server metadata (RFC 8414 as profiled by the Matrix spec).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AuthMetadata {
    pub issuer: String,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub registration_endpoint: Option<Url>,
    pub revocation_endpoint: Option<Url>,
    pub device_authorization_endpoint: Option<Url>,
    pub account_management_uri: Option<Url>,
    #[serde(default)]
    pub account_management_actions_supported: Vec<String>,
    #[serde(default)]
    pub grant_types_supported: Vec<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    pub prompt_values_supported: Vec<String>,
}

impl AuthMetadata {
    /// Reads the metadata from the homeserver: the stable endpoint first, then the unstable
    /// MSC2965 one that older servers serve.
    pub async fn discover(http: &reqwest::Client, homeserver: &Url) -> Result<Self, ClientError> {
        let mut last = None;
        for path in [
            "_matrix/client/v1/auth_metadata",
            "_matrix/client/unstable/org.matrix.msc2965/auth_metadata",
        ] {
            let response = http.get(join(homeserver, path)?).send().await?;
            if response.status().is_success() {
                return Self::from_json(&body::read(response, Cap::Other).await?);
            }
            last = Some(ClientError::from_response(response).await);
        }
        Err(last.unwrap_or(ClientError::Unsupported))
    }

    /// Parses a metadata answer and refuses it unless the issuer and every endpoint use https
    /// (plain http only on loopback): the client sends secrets to them and sends people to
    /// them.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ClientError> {
        let metadata: Self = parse_json(bytes, "auth metadata")?;
        let issuer = Url::parse(&metadata.issuer)
            .map_err(|e| ClientError::Protocol(format!("auth metadata issuer: {e}")))?;
        require_secure("issuer", &issuer)?;
        require_secure("authorization endpoint", &metadata.authorization_endpoint)?;
        require_secure("token endpoint", &metadata.token_endpoint)?;
        for (what, endpoint) in [
            ("registration endpoint", &metadata.registration_endpoint),
            ("revocation endpoint", &metadata.revocation_endpoint),
            (
                "device authorization endpoint",
                &metadata.device_authorization_endpoint,
            ),
            ("account management URI", &metadata.account_management_uri),
        ] {
            if let Some(url) = endpoint {
                require_secure(what, url)?;
            }
        }
        Ok(metadata)
    }

    fn device_endpoint(&self) -> Result<&Url, ClientError> {
        self.device_authorization_endpoint.as_ref().ok_or_else(|| {
            ClientError::Protocol("the server offers no device authorization grant".into())
        })
    }
}

/// Which spelling of the Matrix scopes to request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeSpelling {
    /// `urn:matrix:client:api:*` (Matrix spec v1.15).
    Stable,
    /// `urn:matrix:org.matrix.msc2967.client:api:*` (what matrix-sdk sends).
    Unstable,
}

/// The scope of a Matrix session bound to one device.
pub fn device_scope(device_id: &str, spelling: ScopeSpelling) -> String {
    let ns = match spelling {
        ScopeSpelling::Stable => "urn:matrix:client",
        ScopeSpelling::Unstable => "urn:matrix:org.matrix.msc2967.client",
    };
    format!("{ns}:api:* {ns}:device:{device_id}")
}

/// The metadata this client registers (RFC 7591 with the Matrix rules).
#[derive(Debug, Clone, Serialize)]
pub struct ClientMetadata {
    pub client_name: String,
    pub client_uri: Url,
    pub application_type: &'static str,
    pub redirect_uris: Vec<Url>,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    pub token_endpoint_auth_method: &'static str,
}

impl ClientMetadata {
    /// A native client using both grants, redirecting to the loopback interface.
    pub fn native(client_name: &str, client_uri: Url) -> Self {
        Self {
            client_name: client_name.to_owned(),
            client_uri,
            application_type: "native",
            // Loopback redirects match any port at authorization time (RFC 8252 7.3).
            redirect_uris: vec![Url::parse("http://127.0.0.1/callback").expect("static URL")],
            grant_types: vec![
                "authorization_code".into(),
                "refresh_token".into(),
                DEVICE_CODE_GRANT.into(),
            ],
            response_types: vec!["code".into()],
            token_endpoint_auth_method: "none",
        }
    }
}

#[derive(Deserialize)]
struct Registered {
    client_id: String,
}

/// Registers the client and returns its `client_id`.
pub async fn register(
    http: &reqwest::Client,
    metadata: &AuthMetadata,
    client: &ClientMetadata,
) -> Result<String, ClientError> {
    let endpoint = metadata
        .registration_endpoint
        .as_ref()
        .ok_or_else(|| ClientError::Protocol("the server offers no client registration".into()))?;
    let response = http.post(endpoint.clone()).json(client).send().await?;
    if !response.status().is_success() {
        return Err(oauth_error(response).await);
    }
    let registered: Registered = body::json(response, "registration answer").await?;
    Ok(registered.client_id)
}

/// Tokens from the token endpoint.
#[derive(Clone, Deserialize, Serialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
    pub token_type: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// An OAuth error answer (`{"error","error_description"}`).
#[derive(Debug, Clone, Deserialize)]
pub struct OAuthError {
    pub error: String,
    pub error_description: Option<String>,
}

impl Tokens {
    /// Parses a token endpoint answer.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ClientError> {
        parse_json(bytes, "token answer")
    }
}

async fn oauth_error(response: reqwest::Response) -> ClientError {
    let status = response.status();
    match body::read(response, Cap::Other).await {
        Ok(bytes) => error_from_body(status, &bytes),
        Err(e) => e,
    }
}

/// The error an OAuth answer with an error `status` and `body` stands for.
pub fn error_from_body(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<OAuthError>(body) {
        Ok(e) => ClientError::OAuth {
            status,
            error: e.error,
            description: e.error_description,
        },
        Err(_) => ClientError::Status {
            status,
            errcode: None,
            error: None,
        },
    }
}

/// The answer of the device authorization endpoint.
#[derive(Clone, Deserialize, Serialize)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: Url,
    pub verification_uri_complete: Option<Url>,
    pub expires_in: u64,
    #[serde(default = "default_interval")]
    pub interval: u64,
}

fn default_interval() -> u64 {
    token_poll::DEFAULT_POLL_INTERVAL.as_secs()
}

impl DeviceAuthorization {
    /// Parses a device authorization answer, holding `expires_in` and `interval` to
    /// [`MAX_GRANT_LIFETIME`] and [`MIN_POLL_INTERVAL`]..=[`MAX_POLL_INTERVAL`]: a server
    /// cannot make the poller wait for ever, poll in a busy loop or overflow its clock.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ClientError> {
        let mut grant: Self = parse_json(bytes, "device authorization answer")?;
        grant.expires_in = grant.lifetime().as_secs();
        grant.interval = grant.poll_interval().as_secs();
        Ok(grant)
    }

    /// The grant's lifetime, within [`MAX_GRANT_LIFETIME`].
    pub fn lifetime(&self) -> Duration {
        token_poll::grant_lifetime(Duration::from_secs(self.expires_in))
    }

    /// The poll interval asked for, within [`MIN_POLL_INTERVAL`]..=[`MAX_POLL_INTERVAL`].
    pub fn poll_interval(&self) -> Duration {
        token_poll::poll_interval(Some(Duration::from_secs(self.interval)))
    }
}

impl std::fmt::Debug for DeviceAuthorization {
    // The device code is a bearer secret until redeemed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri.as_str())
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Starts a device authorization grant.
pub async fn start_device_authorization(
    http: &reqwest::Client,
    metadata: &AuthMetadata,
    client_id: &str,
    scope: &str,
) -> Result<DeviceAuthorization, ClientError> {
    let response = http
        .post(metadata.device_endpoint()?.clone())
        .form(&[("client_id", client_id), ("scope", scope)])
        .send()
        .await?;
    if response.status() != StatusCode::OK {
        return Err(oauth_error(response).await);
    }
    DeviceAuthorization::from_json(&body::read(response, Cap::Other).await?)
}

/// One poll of the token endpoint for a device grant.
#[derive(Debug)]
pub enum PollOutcome {
    Granted(Tokens),
    Pending,
    SlowDown,
    Denied,
    Expired,
}

impl PollOutcome {
    /// What the poll's pacing ([`TokenPoll`]) makes of it.
    pub fn answer(&self) -> TokenAnswer {
        match self {
            PollOutcome::Granted(_) => TokenAnswer::Granted,
            PollOutcome::Pending => TokenAnswer::Pending,
            PollOutcome::SlowDown => TokenAnswer::SlowDown,
            PollOutcome::Denied => TokenAnswer::Denied,
            PollOutcome::Expired => TokenAnswer::Expired,
        }
    }
}

/// Polls once. Pending/denied/expired are accepted with status 400 (RFC 8628) or 403 (as
/// matrix-authentication-service answers).
pub async fn poll_device_token(
    http: &reqwest::Client,
    metadata: &AuthMetadata,
    client_id: &str,
    device_code: &str,
) -> Result<PollOutcome, ClientError> {
    let response = http
        .post(metadata.token_endpoint.clone())
        .form(&[
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", device_code),
            ("client_id", client_id),
        ])
        .send()
        .await?;
    let status = response.status();
    poll_outcome(status, &body::read(response, Cap::Other).await?)
}

/// What one answer of the token endpoint to a device-grant poll means.
pub fn poll_outcome(status: StatusCode, body: &[u8]) -> Result<PollOutcome, ClientError> {
    if status == StatusCode::OK {
        return Ok(PollOutcome::Granted(Tokens::from_json(body)?));
    }
    if status == StatusCode::BAD_REQUEST
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::UNAUTHORIZED
    {
        if let Ok(e) = serde_json::from_slice::<OAuthError>(body) {
            return match e.error.as_str() {
                "authorization_pending" => Ok(PollOutcome::Pending),
                "slow_down" => Ok(PollOutcome::SlowDown),
                "access_denied" => Ok(PollOutcome::Denied),
                "expired_token" => Ok(PollOutcome::Expired),
                _ => Err(ClientError::OAuth {
                    status,
                    error: e.error,
                    description: e.error_description,
                }),
            };
        }
        return Err(ClientError::Status {
            status,
            errcode: None,
            error: None,
        });
    }
    Err(error_from_body(status, body))
}

/// How a device grant ended.
#[derive(Debug)]
pub enum DeviceGrantOutcome {
    Granted(Tokens),
    Denied,
    Expired,
}

/// Polls until the grant is decided, paced by the core's [`TokenPoll`]: the first poll at
/// once, then every `interval`, five seconds more after each `slow_down` (RFC 8628 3.5), and
/// no later than the grant's expiry. A poll that gets no answer or a 503 is retried for a
/// bounded time (an instance or the server's database may be restarting): the device code is
/// kept server-side, and a grant whose answer was lost can only come back as an error, never
/// as a second sign-in. `started` is when the grant was issued.
pub async fn wait_for_device_token(
    http: &reqwest::Client,
    metadata: &AuthMetadata,
    client_id: &str,
    authorization: &DeviceAuthorization,
    started: Instant,
) -> Result<DeviceGrantOutcome, ClientError> {
    let mut poll = TokenPoll::new(
        started.into_std(),
        Duration::from_secs(authorization.expires_in),
        Some(Duration::from_secs(authorization.interval)),
    );
    let mut last_error = None;
    loop {
        let Some(at) = poll.poll_timeout() else {
            return Err(ClientError::Protocol(
                "token polling stopped undecided".into(),
            ));
        };
        tokio::time::sleep_until(Instant::from_std(at)).await;
        match poll.handle_timeout(Instant::now().into_std()) {
            Some(TokenPollStep::PollNow) => {}
            Some(TokenPollStep::Ended(outcome)) => return ended(outcome, None, last_error),
            None => continue,
        }
        let (answer, polled) =
            match poll_device_token(http, metadata, client_id, &authorization.device_code).await {
                Ok(polled) => {
                    last_error = None;
                    (polled.answer(), Some(polled))
                }
                // May pass: the pacing decides whether and when to try again.
                Err(e) if crate::rendezvous::is_transient(&e) => {
                    tracing::debug!("token poll failed ({e})");
                    last_error = Some(e);
                    (TokenAnswer::Unavailable, None)
                }
                Err(e) => return Err(e),
            };
        if let Some(outcome) = poll.handle_answer(Instant::now().into_std(), answer) {
            return ended(outcome, polled, last_error);
        }
    }
}

/// How polling ended, with the tokens of the last poll and the error of the last failed one.
fn ended(
    outcome: TokenOutcome,
    polled: Option<PollOutcome>,
    last_error: Option<ClientError>,
) -> Result<DeviceGrantOutcome, ClientError> {
    match (outcome, polled) {
        (TokenOutcome::Granted, Some(PollOutcome::Granted(tokens))) => {
            Ok(DeviceGrantOutcome::Granted(tokens))
        }
        (TokenOutcome::Denied, _) => Ok(DeviceGrantOutcome::Denied),
        (TokenOutcome::Expired, _) => Ok(DeviceGrantOutcome::Expired),
        (TokenOutcome::Unreachable, _) => Err(last_error.unwrap_or(ClientError::Timeout)),
        (TokenOutcome::Granted, _) => Err(ClientError::Protocol(
            "token polling granted without tokens".into(),
        )),
    }
}

/// PKCE (RFC 7636) with S256.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Self {
        let bytes: [u8; 32] = rand::rng().random();
        let verifier = URL_SAFE_NO_PAD.encode(bytes);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Self {
            verifier,
            challenge,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds the authorization URL of an authorization-code grant.
pub fn authorization_url(
    metadata: &AuthMetadata,
    client_id: &str,
    redirect_uri: &Url,
    scope: &str,
    state: &str,
    pkce: &Pkce,
) -> Url {
    let mut url = metadata.authorization_endpoint.clone();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("response_mode", "query")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri.as_str())
        .append_pair("scope", scope)
        .append_pair("state", state)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256");
    url
}

/// A random `state` for an authorization request.
pub fn random_state() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    URL_SAFE_NO_PAD.encode(bytes)
}

async fn token_request(
    http: &reqwest::Client,
    metadata: &AuthMetadata,
    form: &[(&str, &str)],
) -> Result<Tokens, ClientError> {
    let response = http
        .post(metadata.token_endpoint.clone())
        .form(form)
        .send()
        .await?;
    if response.status() != StatusCode::OK {
        return Err(oauth_error(response).await);
    }
    Tokens::from_json(&body::read(response, Cap::Other).await?)
}

/// Redeems an authorization code.
pub async fn exchange_code(
    http: &reqwest::Client,
    metadata: &AuthMetadata,
    client_id: &str,
    code: &str,
    redirect_uri: &Url,
    pkce: &Pkce,
) -> Result<Tokens, ClientError> {
    token_request(
        http,
        metadata,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri.as_str()),
            ("client_id", client_id),
            ("code_verifier", &pkce.verifier),
        ],
    )
    .await
}

/// Rotates a refresh token.
pub async fn refresh(
    http: &reqwest::Client,
    metadata: &AuthMetadata,
    client_id: &str,
    refresh_token: &str,
) -> Result<Tokens, ClientError> {
    token_request(
        http,
        metadata,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ],
    )
    .await
}

/// Revokes a token (RFC 7009); the server ends the whole session.
pub async fn revoke(
    http: &reqwest::Client,
    metadata: &AuthMetadata,
    client_id: &str,
    token: &str,
) -> Result<(), ClientError> {
    let endpoint = metadata
        .revocation_endpoint
        .as_ref()
        .ok_or_else(|| ClientError::Protocol("the server offers no revocation endpoint".into()))?;
    let response = http
        .post(endpoint.clone())
        .form(&[("token", token), ("client_id", client_id)])
        .send()
        .await?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(oauth_error(response).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_s256_of_the_verifier() {
        let p = Pkce::new();
        assert_eq!(p.verifier.len(), 43);
        assert_eq!(
            p.challenge,
            URL_SAFE_NO_PAD.encode(Sha256::digest(p.verifier.as_bytes()))
        );
        assert_ne!(Pkce::new().verifier, p.verifier);
    }

    #[test]
    fn scopes() {
        assert_eq!(
            device_scope("AB+/c", ScopeSpelling::Stable),
            "urn:matrix:client:api:* urn:matrix:client:device:AB+/c"
        );
        assert!(
            device_scope("X", ScopeSpelling::Unstable)
                .starts_with("urn:matrix:org.matrix.msc2967.client:api:*")
        );
    }
}

//! The OAuth rules as pure transitions over typed states: redeeming an authorization code,
//! exchanging a refresh token (rotation, the retry window, replay), polling a device grant
//! (interval, `slow_down`, expiry, the user's decision, single use), and an access token's
//! standing for bearer authentication.
//!
//! Each transition takes the state the store loaded, what the request presented and `now`
//! (ms since the Unix epoch), and returns a decision; it reads no clock, touches no database
//! and does no IO. The token endpoint (`oauth/token.rs`) runs them inside a store transaction:
//! it loads the state, asks the model, mints tokens only when the decision issues them, saves
//! what the decision says and commits. Refusals are typed errors, turned into OAuth error
//! responses in one place (`oauth/error.rs`).

pub mod auth_code;
pub mod device_grant;
pub mod refresh;
pub mod session;

/// Who a session (and so its tokens) belongs to. Decodes from the store's rows, whose
/// columns carry these names.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Grant {
    /// Localpart of the user.
    pub localpart: String,
    /// Device the tokens are bound to.
    pub device_id: String,
    /// Client, `None` for tokens minted by `mxqr admin issue-token`.
    pub client_id: Option<String>,
    /// Granted scope (space-separated, as requested).
    pub scope: String,
}

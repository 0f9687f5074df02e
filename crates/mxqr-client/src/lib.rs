//! Async client of Matrix QR sign-in, built on the sans-IO [`mxqr_proto`].
//!
//! - [`rendezvous`]: both rendezvous transports (MSC4388 JSON with `sequence_token`, and the
//!   MSC4108 2024 ETag API), with long-poll when the server offers it, polling with back-off
//!   otherwise, recovery from lost responses and concurrent writes, and clean-up.
//! - [`driver`]: the new-device and existing-device sign-in drivers on top of the state
//!   machines, for both QR directions and generations.
//! - [`discovery`]: homeserver base URL from a URL or a server name.
//! - [`oauth`]: the OAuth 2.0 client: metadata, registration, device and authorization-code
//!   grants, refresh, revocation.
//! - [`body`]: every answer body is read through it, within a size cap.

pub mod body;
pub mod discovery;
pub mod driver;
pub mod e2ee;
pub mod endpoint;
pub mod error;
pub mod loopback;
pub mod oauth;
pub mod rendezvous;

pub use error::ClientError;

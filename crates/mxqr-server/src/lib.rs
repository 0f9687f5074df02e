//! mxqr's HTTP server: the Matrix QR sign-in rendezvous (MSC4388 and MSC4108 2024), accounts
//! and the Matrix OAuth 2.0 server with its pages, the client-server subset a QR sign-in
//! touches, and synapse mode (mxqr as a Synapse's authentication service).
//!
//! The crate is arranged by feature (the README has the tour). [`app`] builds the state once
//! and routes each request to one feature, handing its handler only that feature's state:
//! [`rendezvous`] (the two wire APIs and their [`rendezvous::store`]), [`oauth`] (metadata,
//! registration, tokens, revocation), [`device_grant`], [`auth_code`], [`account_pages`],
//! [`matrix`] (client-server endpoints) and [`synapse`]. [`web`] holds what the pages share,
//! [`config`] the configuration, one file per table, and [`accounts`] the accounts store. A request
//! flows listener → router → feature handler → model/store → hooks: the OAuth server tells the
//! homeserver about sessions through [`oauth::HomeserverHooks`], which synapse mode implements.

pub mod account_pages;
pub mod accounts;
pub mod app;
pub mod auth_code;
pub mod client_ip;
pub mod config;
pub mod device_grant;
pub mod error;
// Fuzz-only entry points: compiled only in cargo-fuzz builds (which set `--cfg fuzzing`), so
// the product never carries them.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
pub mod matrix;
pub mod oauth;
mod pg_gate;
mod ratelimit;
pub mod rendezvous;
mod response;
mod run;
pub mod synapse;
mod sync;
pub mod web;

pub use app::{AppState, app_state, router, serve};
pub use config::{Config, ConfigError, Overrides};
pub use run::{ServeError, log_from_env, run};

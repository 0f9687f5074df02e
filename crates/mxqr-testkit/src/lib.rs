//! The test kit of the mxqr workspace: one way to start a server for a test, with the back end
//! as a parameter, and the helpers the suites of several crates share.
//!
//! - [`Backend`] and [`backend_tests!`]: a scenario written once as `async fn(Backend)` runs
//!   as a `sqlite::` and a `pg::` test.
//! - [`pg`]: the PostgreSQL test server (`MXQR_TEST_PG_URL`, else one started for the test
//!   binary) and a fresh database per test.
//! - [`rendezvous`]: an in-process server for the rendezvous API ([`TestServer`]).
//! - [`oauth`]: an in-process server with accounts and OAuth on a manual clock
//!   ([`OAuthServer`]), and the scripted person: HTTP clients acting as a browser, the login
//!   form, PKCE, and reading the pages' forms.
//! - [`person`]: the scripted person at a browser: sign-in, the consent pages.
//! - [`cli`]: the `mxqr` command line: `mxqr serve` as a process ([`cli::Serve`]), `mxqr`
//!   processes with JSON events, profiles, the QR sign-in between two processes.
//! - [`cs`]: the client-server API as a signed-in device: tokens, JSON calls, real E2EE keys.
//! - [`heavy`]: the lock that keeps the heavy suites of one binary from running side by side.
//! - [`api`]: the server internals the suites use, named in one place so that a move inside
//!   mxqr-server is fixed here rather than in every suite.

pub mod api;
mod backend;
pub mod cli;
pub mod cs;
mod heavy;
pub mod oauth;
pub mod person;
pub mod pg;
pub mod rendezvous;

pub use backend::Backend;
pub use heavy::{heavy, heavy_blocking};
pub use oauth::{ManualClock, OAuthServer, Options};
pub use rendezvous::TestServer;

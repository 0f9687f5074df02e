//! mxqr's HTTP server: the Matrix QR sign-in rendezvous (MSC4388 and MSC4108 2024), the
//! `/versions` advertisement, health and Prometheus metrics.
//!
//! Layout: [`config`] (file, `MXQR_*` environment, flags), [`store`] (the
//! [`store::RendezvousStore`] trait and its in-memory back end), `rendezvous` (the two wire
//! APIs), [`matrix`] (other client-server endpoints), [`error`] (the single mapping from
//! failures to Matrix error responses) and [`app`] (router, middleware, serving loop).

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod listener;
pub mod matrix;
pub mod metrics;
pub mod oauth;
mod pg_gate;
mod ratelimit;
pub mod rendezvous;
mod response;
mod run;
pub mod store;
pub mod synapse;
pub mod web;

pub use app::{AppState, router, serve};
pub use config::{Config, ConfigError, Overrides};
pub use run::{ServeError, log_from_env, run};

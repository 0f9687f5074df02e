//! The integration tests of the mxqr command line, in one binary (one link instead of one
//! per suite). Each former test file is a module: run one with
//! `cargo test --test all synapse_delegated::`.

mod cli_admin;
mod cli_printable;
mod cli_qr;
mod cli_signin;
mod demo;
mod log_secrets;
mod new_device_keys;
mod qr_signin;
mod scale_out;
mod scale_support;
mod serve;
mod signin_failures;
mod synapse_delegated;

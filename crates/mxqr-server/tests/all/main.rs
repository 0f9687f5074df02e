//! The integration tests of mxqr-server, in one binary (one link instead of one per suite).
//! Each former test file is a module: run one with `cargo test --test all msc4388::`.

mod bad_input;
mod browser_pages;
mod browser_support;
mod cs_auth;
mod cs_backup;
mod cs_devices;
mod cs_keys;
mod cs_qr_sign_in;
mod memory;
mod msc4108;
mod msc4388;
mod oauth_account;
mod oauth_authorization_code;
mod oauth_bearer;
mod oauth_device_grant;
mod oauth_metadata_registration;
mod oauth_refresh_revoke;
mod pg_db;
mod pg_rendezvous;
mod server;
mod synapse_mode;

//! The integration tests of mxqr-client, in one binary (one link instead of one per suite).
//! Each former test file is a module: run one with `cargo test --test all NAME::`.

mod grant_consent;
mod hostile_server;
mod rendezvous;

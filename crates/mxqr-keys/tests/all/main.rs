//! The integration tests of mxqr-keys, in one binary (one link instead of one per suite).
//! Each former test file is a module: run one with `cargo test --test all NAME::`.

mod backup;
mod canonical_json;
mod cross_signing;
mod device_keys;
mod received;
mod redaction;
mod signing;

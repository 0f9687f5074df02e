//! The integration tests of mxqr-proto, in one binary (one link instead of one per suite).
//! Each former test file is a module: run one with `cargo test --test all NAME::`.

mod channel_failures;
mod channel_props;
mod channel_vodozemac;
mod machine_flows;
mod machine_start;
mod messages_json;
mod qr_render;
mod qr_vectors;

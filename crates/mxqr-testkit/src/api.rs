//! The mxqr-server items the suites use, under the names the suites use. When a module of
//! mxqr-server moves, the re-export here changes and the suites do not.

pub use mxqr_server::{
    AppState, Config, accounts, app, app_state, config, oauth, rendezvous, serve, synapse,
};

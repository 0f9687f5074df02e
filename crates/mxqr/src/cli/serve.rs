//! `mxqr serve`: the rendezvous server (see `mxqr-server` for the configuration keys).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use mxqr_server::config::{CONFIG_ENV, Config, Overrides};

/// Run the Matrix QR sign-in rendezvous server.
///
/// Configuration comes from the TOML file (`--config` or `MXQR_CONFIG`), then `MXQR_*`
/// environment variables (`MXQR_LISTEN`, `MXQR_RENDEZVOUS__TTL_SECS`: `__` separates tables),
/// then these flags.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8008].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory for persistent state, created if missing [default: ./mxqr-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Base URL clients reach this server at [default: http://<listen>/].
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Loads the configuration and serves until interrupted.
pub fn run(args: ServeArgs) -> ExitCode {
    let file = args
        .config
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        public_url: args.public_url,
    };
    let config = match Config::load(file.as_deref(), std::env::vars(), &overrides) {
        Ok(config) => config,
        Err(err) => return super::fail(super::EXIT_INVALID_INPUT, err),
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    match mxqr_server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => super::fail(super::EXIT_FAILURE, err),
    }
}

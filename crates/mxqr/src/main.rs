//! `mxqr`: Matrix sign in with QR code from the command line.
//!
//! This file only dispatches; each subcommand lives in its own module under `cli/` so that
//! subcommands can be added without touching each other.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mxqr", version, about = "Matrix sign in with QR code")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage accounts and mint tokens (works while the server runs).
    Admin(cli::admin::AdminArgs),
    /// Read, check and draw login QR codes.
    #[command(subcommand)]
    Qr(cli::qr::QrCommand),
    /// Run the rendezvous server.
    Serve(cli::serve::ServeArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Admin(args) => cli::admin::run(args),
        Command::Qr(command) => cli::qr::run(command),
        Command::Serve(args) => cli::serve::run(args),
    }
}

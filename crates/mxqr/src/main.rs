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
    /// Make a profile for a signed-in device: token import, device-code sign-in, bootstrap.
    Account(cli::account::AccountArgs),
    /// Manage accounts and mint tokens (works while the server runs).
    Admin(cli::admin::AdminArgs),
    /// Run a throw-away server and sign devices in with QR in every combination, timed.
    Demo(cli::demo::DemoArgs),
    /// Let a new device sign in, from this profile's signed-in device.
    Grant(cli::signin::GrantArgs),
    /// Sign this machine in as a new device with a QR code.
    Login(cli::signin::LoginArgs),
    /// Sign this profile's device out and remove the profile.
    Logout(cli::account::LogoutArgs),
    /// Read, check and draw login QR codes.
    #[command(subcommand)]
    Qr(cli::qr::QrCommand),
    /// Run the rendezvous server.
    Serve(cli::serve::ServeArgs),
    /// Show who this profile is signed in as.
    Whoami(cli::account::WhoamiArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Account(args) => cli::account::run(args),
        Command::Admin(args) => cli::admin::run(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::Grant(args) => cli::signin::grant(args),
        Command::Login(args) => cli::signin::login(args),
        Command::Logout(args) => cli::account::logout(args),
        Command::Qr(command) => cli::qr::run(command),
        Command::Serve(args) => cli::serve::run(args),
        Command::Whoami(args) => cli::account::whoami(args),
    }
}

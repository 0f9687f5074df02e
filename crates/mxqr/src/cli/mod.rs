//! Subcommands, and the conventions they share: errors are one line on stderr starting with
//! `error: `, so scripts and users can rely on the first line being the whole story.

pub mod admin;
pub mod qr;
pub mod serve;

use std::process::ExitCode;

/// Exit status for input that is not what the command accepts (also what clap uses for
/// usage errors).
pub const EXIT_INVALID_INPUT: u8 = 2;
/// Exit status for failures of the environment, such as a file that cannot be written.
pub const EXIT_FAILURE: u8 = 1;

/// Prints `error: <message>` as exactly one line and returns `status`.
pub fn fail(status: u8, message: impl std::fmt::Display) -> ExitCode {
    let message = message.to_string();
    let one_line: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("error: {}", one_line.join("; "));
    ExitCode::from(status)
}

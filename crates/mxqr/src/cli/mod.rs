//! Subcommands, and the conventions they share: errors are one line on stderr starting with
//! `error: `, so scripts and users can rely on the first line being the whole story.

pub mod account;
pub mod admin;
pub mod demo;
pub mod printable;
pub mod profile;
pub mod qr;
pub mod serve;
pub mod signin;
pub mod ui;

use std::process::ExitCode;

/// Exit status for input that is not what the command accepts (also what clap uses for
/// usage errors).
pub const EXIT_INVALID_INPUT: u8 = 2;
/// Exit status for failures of the environment, such as a file that cannot be written.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status after Ctrl-C (128 + SIGINT), as shells report it.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Prints `error: <message>` as exactly one line and returns `status`.
pub fn fail(status: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("{}", error_line(&message.to_string()));
    ExitCode::from(status)
}

/// `error: <message>` on one line. Messages quote servers and peers, so what is left after
/// joining the lines goes through [`printable::printable`].
fn error_line(message: &str) -> String {
    let one_line: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!("error: {}", printable::printable(&one_line.join("; ")))
}

/// Why a client command failed: bad usage (exit 2) or a failure of the sign-in, the network
/// or the store (exit 1). The message is the whole story, in plain words.
#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Failed(String),
    /// The person pressed Ctrl-C; exits with 130 like an interrupted shell command.
    Cancelled(String),
}

impl CliError {
    pub fn usage(e: impl std::fmt::Display) -> Self {
        CliError::Usage(e.to_string())
    }
    pub fn failed(e: impl std::fmt::Display) -> Self {
        CliError::Failed(e.to_string())
    }
}

/// Runs a client command on a fresh runtime.
pub fn block_on<F: std::future::Future<Output = Result<(), CliError>>>(
    future: F,
) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start: {e}")))?;
    let result = runtime.block_on(future);
    // A blocking read of the terminal (the check-code prompt) may still be waiting after a
    // cancellation: do not wait for it to end.
    runtime.shutdown_background();
    result
}

/// Reports the end of a client command: in JSON mode also as an `error` event on stdout, so a
/// script reading events sees why the stream ended.
pub fn finish(json: bool, result: Result<(), CliError>) -> ExitCode {
    let (status, message) = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(CliError::Usage(m)) => (EXIT_INVALID_INPUT, m),
        Err(CliError::Failed(m)) => (EXIT_FAILURE, m),
        Err(CliError::Cancelled(m)) => (EXIT_INTERRUPTED, m),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "event": "error", "message": message })
        );
    }
    fail(status, message)
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[test]
    fn an_error_is_one_printable_line() {
        assert_eq!(
            error_line("server answered 400: \u{1b}[2Jbad\n  code\r\n"),
            "error: server answered 400: \\u{1b}[2Jbad; code"
        );
    }
}

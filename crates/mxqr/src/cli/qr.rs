//! `mxqr qr`: decode a login QR code to JSON, or draw one in the terminal or as a PNG.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use clap::{Subcommand, ValueEnum};
use mxqr_proto::DeviceKind;
use mxqr_proto::qr::QrCode;
use mxqr_proto::qr::render::{self, QrImageError, TerminalOptions};

use super::{EXIT_FAILURE, EXIT_INVALID_INPUT, fail};

#[derive(Subcommand)]
pub enum QrCommand {
    /// Print the fields of a login QR code as JSON.
    Decode {
        /// The payload as hex or base64 (standard or URL-safe, padded or not), or the path of
        /// a PNG or JPEG image showing the code.
        #[arg(allow_hyphen_values = true)]
        input: String,
        /// Also check the code as this kind of device would before acting on it.
        #[arg(long, value_enum)]
        scanner: Option<Scanner>,
    },
    /// Draw a login QR code in the terminal, or write it as a PNG.
    Render {
        /// The payload as hex or base64, or the path of an image showing the code. It must
        /// decode as a login QR code: drawing garbage helps nobody.
        #[arg(allow_hyphen_values = true)]
        input: String,
        /// Write a PNG to this file instead of drawing in the terminal.
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
        /// PNG pixels per module.
        #[arg(long, default_value_t = 8, requires = "png")]
        scale: u32,
        /// Draw without ANSI colours (scans only on terminals with dark text on light).
        #[arg(long, alias = "no-colour")]
        no_color: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Scanner {
    /// The device that wants to sign in.
    New,
    /// The signed-in device.
    Existing,
}

impl From<Scanner> for DeviceKind {
    fn from(s: Scanner) -> Self {
        match s {
            Scanner::New => DeviceKind::New,
            Scanner::Existing => DeviceKind::Existing,
        }
    }
}

pub fn run(command: QrCommand) -> ExitCode {
    match command {
        QrCommand::Decode { input, scanner } => decode(&input, scanner),
        QrCommand::Render {
            input,
            png,
            scale,
            no_color,
        } => render(&input, png.as_deref(), scale, no_color),
    }
}

fn decode(input: &str, scanner: Option<Scanner>) -> ExitCode {
    let (_, code) = match read_code(input) {
        Ok(read) => read,
        Err(message) => return fail(EXIT_INVALID_INPUT, message),
    };
    if let Some(scanner) = scanner
        && let Err(e) = code.check_scannable_by(scanner.into())
    {
        return fail(EXIT_INVALID_INPUT, e);
    }
    match serde_json::to_string_pretty(&code.to_json()) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_FAILURE, e),
    }
}

fn render(input: &str, png: Option<&Path>, scale: u32, no_color: bool) -> ExitCode {
    // Draw the bytes as given rather than a re-encoding, so a code is shown exactly as read.
    let (payload, _) = match read_code(input) {
        Ok(read) => read,
        Err(message) => return fail(EXIT_INVALID_INPUT, message),
    };
    match png {
        Some(path) => {
            let bytes = match render::render_png(&payload, scale) {
                Ok(bytes) => bytes,
                Err(e) => return fail(EXIT_INVALID_INPUT, e),
            };
            if let Err(e) = std::fs::write(path, bytes) {
                return fail(
                    EXIT_FAILURE,
                    format_args!("cannot write {}: {e}", path.display()),
                );
            }
        }
        None => {
            let options = TerminalOptions {
                colour: !no_color,
                ..TerminalOptions::default()
            };
            match render::render_terminal(&payload, options) {
                Ok(text) => print!("{text}"),
                Err(e) => return fail(EXIT_INVALID_INPUT, e),
            }
        }
    }
    ExitCode::SUCCESS
}

/// The payload bytes named by `input` and the code they decode to, or a one-line reason.
fn read_code(input: &str) -> Result<(Vec<u8>, QrCode), String> {
    let payload = read_payload(input)?;
    let code = QrCode::decode(&payload).map_err(|e| e.to_string())?;
    Ok((payload, code))
}

/// An existing file is an image; otherwise the text is hex if it can be, else base64. Hex
/// goes first because hex text is also base64 text, while the base64 of a real payload
/// (starting `TUFUUklY` or `SU9f`) is never hex.
fn read_payload(input: &str) -> Result<Vec<u8>, String> {
    let path = Path::new(input);
    if path.is_file() {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {input}: {e}"))?;
        return decode_image_quietly(&bytes).map_err(|e| format!("{input}: {e}"));
    }
    let text = input.trim();
    if text.is_empty() {
        return Err("the input is empty".into());
    }
    if text.len().is_multiple_of(2)
        && text.bytes().all(|b| b.is_ascii_hexdigit())
        && let Ok(bytes) = hex::decode(text)
    {
        return Ok(bytes);
    }
    let url_safe = text.contains(['-', '_']);
    let alphabet = if url_safe {
        &alphabet::URL_SAFE
    } else {
        &alphabet::STANDARD
    };
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(alphabet, config)
        .decode(text)
        .map_err(|_| "the input is neither an image file, nor hex, nor base64".to_string())
}

/// rqrr can panic on odd pictures; `decode_image` turns that into an error, and this keeps
/// the default panic message off stderr so the user still sees one line.
fn decode_image_quietly(bytes: &[u8]) -> Result<Vec<u8>, QrImageError> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = render::decode_image(bytes);
    std::panic::set_hook(previous);
    result
}

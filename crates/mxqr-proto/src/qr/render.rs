//! Showing a payload as a QR code (terminal text or PNG) and reading one back from a picture.
//!
//! Payloads are binary, so the symbol always uses byte mode, at error correction level Q
//! (docs/protocol.md §2): an optimising encoder could split a payload into numeric or
//! alphanumeric segments, which some scanners decode to text instead of the raw bytes.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use qrcode::bits::Bits;
use qrcode::{EcLevel, Version};

/// Error correction level of every code we draw (docs/protocol.md §2).
pub const EC_LEVEL: EcLevel = EcLevel::Q;
/// Light border of a PNG, in modules: what the QR standard asks for.
pub const PNG_QUIET_ZONE: u32 = 4;
/// Largest accepted PNG scale (pixels per module): a version 40 code is then 11,776 pixels
/// wide, far more than any screen needs.
pub const MAX_PNG_SCALE: u32 = 64;
/// Smallest quiet zone drawn in a terminal, in modules. The standard asks for 4, but terminal
/// space is scarce and scanners read codes with 2 reliably.
pub const MIN_TERMINAL_QUIET_ZONE: usize = 2;
/// Images larger than this on either side are refused before decoding, so a small file cannot
/// make us allocate gigabytes.
pub const MAX_IMAGE_SIDE: u32 = 8192;
const MAX_IMAGE_ALLOC: u64 = 256 * 1024 * 1024;

/// Why a payload could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("payload of {0} bytes is too long for a QR code at error correction level Q")]
    TooLong(usize),
    #[error("PNG scale must be between 1 and {MAX_PNG_SCALE}, got {0}")]
    InvalidScale(u32),
    #[error("could not encode the PNG: {0}")]
    Png(#[source] image::ImageError),
}

/// Why no payload could be read from an image.
#[derive(Debug, thiserror::Error)]
pub enum QrImageError {
    #[error("not a PNG or JPEG image")]
    UnsupportedFormat,
    #[error("could not decode the image: {0}")]
    Image(#[source] image::ImageError),
    #[error("no QR code found in the image")]
    NoQrCode,
    #[error("found a QR code in the image but could not read it: {0}")]
    Unreadable(#[source] rqrr::DeQRError),
    /// Two different codes in one picture: picking one could sign in with the wrong one.
    #[error("the image holds {0} different QR codes; show only one")]
    SeveralQrCodes(usize),
    /// rqrr asserts on some degenerate pictures (rqrr issue #54); we refuse the image instead
    /// of taking the caller down.
    #[error("the QR code reader failed on this image")]
    ReaderPanicked,
}

/// The modules of a byte-mode, level-Q QR code of the smallest version that fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrMatrix {
    width: usize,
    dark: Vec<bool>,
}

impl QrMatrix {
    /// Encodes `payload` in byte mode at level Q, choosing the smallest version that holds it
    /// (up to 1663 bytes at version 40), so the code stays as large-moduled as possible.
    pub fn new(payload: &[u8]) -> Result<Self, RenderError> {
        for v in 1..=40 {
            let mut bits = Bits::new(Version::Normal(v));
            if bits.push_byte_data(payload).is_err() || bits.push_terminator(EC_LEVEL).is_err() {
                continue;
            }
            let code = qrcode::QrCode::with_bits(bits, EC_LEVEL)
                .map_err(|_| RenderError::TooLong(payload.len()))?;
            return Ok(Self {
                width: code.width(),
                dark: code
                    .to_colors()
                    .iter()
                    .map(|c| *c == qrcode::Color::Dark)
                    .collect(),
            });
        }
        Err(RenderError::TooLong(payload.len()))
    }

    /// Modules per side, without quiet zone.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Whether the module at column `x`, row `y` is dark; outside the symbol is light, which
    /// is what the quiet zone needs.
    pub fn is_dark(&self, x: isize, y: isize) -> bool {
        let w = self.width as isize;
        (0..w).contains(&x) && (0..w).contains(&y) && self.dark[(y * w + x) as usize]
    }

    /// Terminal text: two module rows per line with the half blocks `▀ ▄ █` and spaces.
    pub fn to_terminal(&self, options: TerminalOptions) -> String {
        const INK_ON_PAPER: &str = "\x1b[30;107m";
        const RESET: &str = "\x1b[0m";
        let quiet = options.quiet_zone.max(MIN_TERMINAL_QUIET_ZONE) as isize;
        let side = self.width as isize + 2 * quiet;
        let mut out = String::new();
        for pair in 0..(side + 1) / 2 {
            let top = 2 * pair - quiet;
            let bottom = top + 1;
            if options.colour {
                out.push_str(INK_ON_PAPER);
            }
            for col in 0..side {
                let x = col - quiet;
                // Past the last row of the quiet zone counts as light.
                let lower = bottom < side - quiet && self.is_dark(x, bottom);
                out.push(match (self.is_dark(x, top), lower) {
                    (true, true) => '█',
                    (true, false) => '▀',
                    (false, true) => '▄',
                    (false, false) => ' ',
                });
            }
            if options.colour {
                // Reset before the newline so a wrapped or scrolled line leaves no colour behind.
                out.push_str(RESET);
            }
            out.push('\n');
        }
        out
    }

    /// PNG bytes, black on white, `scale` pixels per module, with a 4-module quiet zone.
    pub fn to_png(&self, scale: u32) -> Result<Vec<u8>, RenderError> {
        if !(1..=MAX_PNG_SCALE).contains(&scale) {
            return Err(RenderError::InvalidScale(scale));
        }
        // Width is at most 177, so these cannot overflow.
        let side = (self.width as u32 + 2 * PNG_QUIET_ZONE) * scale;
        let quiet = PNG_QUIET_ZONE as isize;
        let img = image::GrayImage::from_fn(side, side, |px, py| {
            let x = (px / scale) as isize - quiet;
            let y = (py / scale) as isize - quiet;
            image::Luma([if self.is_dark(x, y) { 0 } else { 255 }])
        });
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(RenderError::Png)?;
        Ok(png)
    }
}

/// How to draw a QR code in a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalOptions {
    /// Emit explicit ANSI colours, black modules on white, so the code scans on dark and on
    /// light terminals alike. Without colours, dark modules are drawn in the terminal's text
    /// colour, which scans only where text is dark on a light background.
    pub colour: bool,
    /// Light border in modules; values under [`MIN_TERMINAL_QUIET_ZONE`] are raised to it.
    pub quiet_zone: usize,
}

impl Default for TerminalOptions {
    fn default() -> Self {
        Self {
            colour: true,
            quiet_zone: MIN_TERMINAL_QUIET_ZONE,
        }
    }
}

/// Draws `payload` as terminal text (see [`QrMatrix::to_terminal`]).
pub fn render_terminal(payload: &[u8], options: TerminalOptions) -> Result<String, RenderError> {
    Ok(QrMatrix::new(payload)?.to_terminal(options))
}

/// Draws `payload` as PNG bytes (see [`QrMatrix::to_png`]).
pub fn render_png(payload: &[u8], scale: u32) -> Result<Vec<u8>, RenderError> {
    QrMatrix::new(payload)?.to_png(scale)
}

/// Reads the raw bytes of the one QR code in a PNG or JPEG image.
///
/// Bytes, not text: rqrr's text API would reject or mangle binary payloads. Never panics on
/// any input, as long as panics unwind (not with `panic = "abort"`).
pub fn decode_image(bytes: &[u8]) -> Result<Vec<u8>, QrImageError> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| QrImageError::Image(image::ImageError::IoError(e)))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        _ => return Err(QrImageError::UnsupportedFormat),
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    let luma = reader.decode().map_err(QrImageError::Image)?.into_luma8();

    let found = catch_unwind(AssertUnwindSafe(move || {
        let mut prepared = rqrr::PreparedImage::prepare(luma);
        let grids = prepared.detect_grids();
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        let mut failure = None;
        for grid in &grids {
            let mut out = Vec::new();
            match grid.decode_to(&mut out) {
                Ok(_) if !payloads.contains(&out) => payloads.push(out),
                Ok(_) => {}
                Err(e) => failure = Some(e),
            }
        }
        (payloads, failure)
    }));
    let (mut payloads, failure) = found.map_err(|_| QrImageError::ReaderPanicked)?;
    match (payloads.len(), failure) {
        (1, _) => Ok(payloads.remove(0)),
        (0, Some(e)) => Err(QrImageError::Unreadable(e)),
        (0, None) => Err(QrImageError::NoQrCode),
        (n, _) => Err(QrImageError::SeveralQrCodes(n)),
    }
}

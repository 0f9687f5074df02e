//! Byte layout of login QR codes (docs/protocol.md §2a and 2b): decoding with a specific error for
//! every way a payload can be wrong, and encoding that reproduces what shipping clients emit.

use std::net::Ipv6Addr;

use super::{Msc4388Prefix, QrCode, QrIntent, QrRendezvous};
use crate::PublicKey;

pub use msc4388::Msc4388IdLength;

/// MSC4108 (2024 revision) constants, as emitted by matrix-sdk 0.18/0.19 and matrix-js-sdk 43.
/// This revision is frozen, so nothing here moves.
pub mod msc4108 {
    /// ASCII prefix of every Matrix QR code.
    pub const PREFIX: &[u8] = b"MATRIX";
    /// The version byte shared with the device-verification QR code of the spec.
    pub const VERSION: u8 = 0x02;
    /// Version 0x02 modes of the device-verification QR code: not a login code.
    pub const VERIFICATION_MODES: std::ops::RangeInclusive<u8> = 0x00..=0x02;
    /// The new device shows the code.
    pub const MODE_LOGIN: u8 = 0x03;
    /// The existing device shows the code; only this mode carries a homeserver.
    pub const MODE_RECIPROCATE: u8 = 0x04;
}

/// MSC4388 choices that are still moving upstream, each named once here.
///
/// Revision followed: the MSC4388 proposal text as parsed by the released matrix-sdk-crypto
/// 0.19.1 (docs/protocol.md §2b). Where the newest upstream branch differs (the one-byte rendezvous
/// ID length), the decoder accepts both and the encoder follows the released parsers by
/// default; see [`Msc4388IdLength`].
pub mod msc4388 {
    /// Stable prefix, shared with MSC4108.
    pub const STABLE_PREFIX: &[u8] = b"MATRIX";
    /// Unstable prefix, what clients emit today.
    pub const UNSTABLE_PREFIX: &[u8] = b"IO_ELEMENT_MSC4388";
    /// The type byte that follows either prefix.
    pub const TYPE: u8 = 0x03;
    /// Intent byte of a code shown by the new device.
    pub const INTENT_LOGIN: u8 = 0x00;
    /// Intent byte of a code shown by the existing device.
    pub const INTENT_RECIPROCATE: u8 = 0x01;

    /// Width of the length prefix in front of the rendezvous ID.
    ///
    /// The proposal text and released parsers (matrix-sdk-crypto 0.19.1) use a u16, the newest
    /// upstream branch a u8. Decoding accepts both; this only chooses what encoding writes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Msc4388IdLength {
        /// Two bytes, big-endian: what released parsers read.
        U16,
        /// One byte: the newest upstream branch. IDs must be 1 to 255 bytes long.
        U8,
    }

    impl Msc4388IdLength {
        /// U16, because released parsers (matrix-sdk-crypto 0.19.1) read a u16 and a code they
        /// cannot read is useless; the test vectors re-encode to u16 as well.
        pub const DEFAULT: Self = Self::U16;
    }

    impl Default for Msc4388IdLength {
        fn default() -> Self {
            Self::DEFAULT
        }
    }
}

/// Choices the byte layout leaves to the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EncodeSettings {
    /// Width of the MSC4388 rendezvous ID length (ignored for MSC4108).
    pub msc4388_id_length: Msc4388IdLength,
}

impl EncodeSettings {
    /// What [`QrCode::encode`] uses: the layout released clients read.
    pub const DEFAULT: Self = Self {
        msc4388_id_length: Msc4388IdLength::DEFAULT,
    };
}

/// A field of the payload, named in errors so the user learns *what* is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QrField {
    Prefix,
    /// MSC4108 version or MSC4388 type: the byte after the prefix.
    Version,
    Mode,
    Intent,
    PublicKey,
    RendezvousUrl,
    Homeserver,
    RendezvousId,
    BaseUrl,
}

impl QrField {
    /// Human-readable name, used in error messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            QrField::Prefix => "prefix",
            QrField::Version => "version/type byte",
            QrField::Mode => "mode byte",
            QrField::Intent => "intent byte",
            QrField::PublicKey => "public key",
            QrField::RendezvousUrl => "rendezvous URL",
            QrField::Homeserver => "homeserver",
            QrField::RendezvousId => "rendezvous ID",
            QrField::BaseUrl => "homeserver base URL",
        }
    }
}

impl std::fmt::Display for QrField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a URL field was refused (other than for being plain http, see
/// [`QrError::InsecureUrl`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    #[error("{0}")]
    Parse(url::ParseError),
    /// The `url` crate silently strips such characters; refusing them keeps the string the
    /// user sees identical to the address that is used.
    #[error("it contains whitespace or control characters")]
    WhitespaceOrControl,
    #[error("its scheme is {0:?}, not https")]
    NotHttps(String),
}

/// Why bytes are not a usable login QR code. Every message is one line, fit to show a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    #[error("the QR code is empty")]
    Empty,
    #[error("not a Matrix login QR code (unknown prefix)")]
    NotMatrix,
    #[error(
        "unsupported Matrix QR code version/type 0x{0:02x} (known: 0x02 for MSC4108, 0x03 for MSC4388)"
    )]
    UnknownVersion(u8),
    /// Version 0x02 with modes 0x00-0x02: the spec's device-verification QR code, which users
    /// easily confuse with a login code because both start with `MATRIX`.
    #[error("this is a device-verification QR code, not a login QR code")]
    DeviceVerificationQr { mode: u8 },
    #[error("unknown MSC4108 QR code mode 0x{0:02x} (expected 0x03 or 0x04)")]
    UnknownMode(u8),
    #[error("unknown MSC4388 QR code intent 0x{0:02x} (expected 0x00 or 0x01)")]
    UnknownIntent(u8),
    #[error("the QR code ends inside the {field}")]
    Truncated { field: QrField },
    #[error("the {field} is said to be {len} bytes long but only {available} bytes are left")]
    LengthPastEnd {
        field: QrField,
        len: usize,
        available: usize,
    },
    #[error("{0} unexpected bytes after the end of the QR code")]
    TrailingBytes(usize),
    #[error("the {field} is not valid UTF-8")]
    NotUtf8 { field: QrField },
    #[error("the rendezvous ID is empty")]
    EmptyRendezvousId,
    #[error("the {field} is not a valid URL: {reason}")]
    InvalidUrl { field: QrField, reason: UrlProblem },
    #[error(
        "the {field} uses plain http, which is allowed only for loopback hosts: https is required"
    )]
    InsecureUrl { field: QrField },
    #[error("the homeserver is neither a server name nor an https URL")]
    InvalidServerName,
    #[error(
        "both devices are new devices: this QR code was shown by a device that is signing in too; scan it with a device that is already signed in"
    )]
    BothNewDevices,
    #[error(
        "both devices are already signed in: this QR code was shown by a signed-in device; scan it with the device that wants to sign in"
    )]
    BothExistingDevices,
}

/// Why a [`QrCode`] cannot be written in the requested layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("the {field} is {len} bytes long, more than its length prefix can hold ({max})")]
    TooLong {
        field: QrField,
        len: usize,
        max: usize,
    },
    /// A one-byte length of 0 would read back as the first byte of a u16 length.
    #[error("an empty rendezvous ID cannot be written with a one-byte length")]
    EmptyRendezvousIdU8,
}

impl QrCode {
    /// Encodes with [`EncodeSettings::DEFAULT`], the layout released clients read.
    ///
    /// # Panics
    ///
    /// If a string field is longer than 65535 bytes. No QR code can hold that much (the
    /// largest holds under 3 KB), so this is a programming error; use [`QrCode::encode_with`]
    /// to handle it as an error.
    pub fn encode(&self) -> Vec<u8> {
        match self.encode_with(EncodeSettings::DEFAULT) {
            Ok(bytes) => bytes,
            Err(err) => panic!("QrCode::encode: {err}"),
        }
    }

    /// Encodes with explicit layout choices. Does not check URLs: see
    /// [`QrCode::validate_urls`]. The intent decides the MSC4108 layout: mode 0x03 has no
    /// homeserver field, so a `homeserver` is not written for [`QrIntent::Login`], and mode
    /// 0x04 always has one, written empty if `homeserver` is `None` (which decoding refuses).
    pub fn encode_with(&self, settings: EncodeSettings) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(128);
        match &self.rendezvous {
            QrRendezvous::Msc4108 {
                rendezvous_url,
                homeserver,
            } => {
                out.extend_from_slice(msc4108::PREFIX);
                out.push(msc4108::VERSION);
                out.push(match self.intent {
                    QrIntent::Login => msc4108::MODE_LOGIN,
                    QrIntent::Reciprocate => msc4108::MODE_RECIPROCATE,
                });
                out.extend_from_slice(self.public_key.as_bytes());
                put_u16_str(&mut out, QrField::RendezvousUrl, rendezvous_url)?;
                // The mode, not the Option, decides: mode 0x03 has no homeserver field.
                if self.intent == QrIntent::Reciprocate {
                    put_u16_str(
                        &mut out,
                        QrField::Homeserver,
                        homeserver.as_deref().unwrap_or(""),
                    )?;
                }
            }
            QrRendezvous::Msc4388 {
                prefix,
                rendezvous_id,
                base_url,
            } => {
                out.extend_from_slice(prefix.as_bytes());
                out.push(msc4388::TYPE);
                out.push(match self.intent {
                    QrIntent::Login => msc4388::INTENT_LOGIN,
                    QrIntent::Reciprocate => msc4388::INTENT_RECIPROCATE,
                });
                out.extend_from_slice(self.public_key.as_bytes());
                match settings.msc4388_id_length {
                    Msc4388IdLength::U16 => {
                        put_u16_str(&mut out, QrField::RendezvousId, rendezvous_id)?
                    }
                    Msc4388IdLength::U8 => {
                        let len = rendezvous_id.len();
                        if len == 0 {
                            return Err(EncodeError::EmptyRendezvousIdU8);
                        }
                        let byte = u8::try_from(len).map_err(|_| EncodeError::TooLong {
                            field: QrField::RendezvousId,
                            len,
                            max: u8::MAX.into(),
                        })?;
                        out.push(byte);
                        out.extend_from_slice(rendezvous_id.as_bytes());
                    }
                }
                put_u16_str(&mut out, QrField::BaseUrl, base_url)?;
            }
        }
        Ok(out)
    }

    /// Parses a payload of either generation and checks its URLs (see
    /// [`QrCode::validate_urls`]): a scanner must not connect anywhere a code points to
    /// without those checks, so no caller should be able to forget them.
    ///
    /// Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<QrCode, QrError> {
        if bytes.is_empty() {
            return Err(QrError::Empty);
        }
        let code = if let Some(rest) = bytes.strip_prefix(msc4388::UNSTABLE_PREFIX) {
            let mut r = Reader::new(rest);
            match r.u8(QrField::Version)? {
                msc4388::TYPE => decode_msc4388(r, Msc4388Prefix::Unstable)?,
                other => return Err(QrError::UnknownVersion(other)),
            }
        } else if let Some(rest) = bytes.strip_prefix(msc4108::PREFIX) {
            let mut r = Reader::new(rest);
            match r.u8(QrField::Version)? {
                msc4108::VERSION => decode_msc4108(r)?,
                msc4388::TYPE => decode_msc4388(r, Msc4388Prefix::Stable)?,
                other => return Err(QrError::UnknownVersion(other)),
            }
        } else if msc4388::UNSTABLE_PREFIX.starts_with(bytes) || msc4108::PREFIX.starts_with(bytes)
        {
            return Err(QrError::Truncated {
                field: QrField::Prefix,
            });
        } else {
            return Err(QrError::NotMatrix);
        };
        code.validate_urls()?;
        Ok(code)
    }

    /// Checks every address in the code: URLs must parse and use https (plain http only for
    /// loopback hosts, for local development), and the MSC4108 homeserver must be a server
    /// name or such a URL. [`QrCode::decode`] runs this; call it yourself on codes you build.
    pub fn validate_urls(&self) -> Result<(), QrError> {
        match &self.rendezvous {
            QrRendezvous::Msc4108 {
                rendezvous_url,
                homeserver,
            } => {
                check_url(QrField::RendezvousUrl, rendezvous_url)?;
                if let Some(homeserver) = homeserver {
                    // matrix-sdk writes a base URL, the proposal a server name: accept both.
                    if homeserver.contains("://") {
                        check_url(QrField::Homeserver, homeserver)?;
                    } else if !is_server_name(homeserver) {
                        return Err(QrError::InvalidServerName);
                    }
                }
            }
            QrRendezvous::Msc4388 { base_url, .. } => check_url(QrField::BaseUrl, base_url)?,
        }
        Ok(())
    }
}

fn put_u16_str(out: &mut Vec<u8>, field: QrField, s: &str) -> Result<(), EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| EncodeError::TooLong {
        field,
        len: s.len(),
        max: u16::MAX.into(),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn decode_msc4108(mut r: Reader<'_>) -> Result<QrCode, QrError> {
    let intent = match r.u8(QrField::Mode)? {
        mode if msc4108::VERIFICATION_MODES.contains(&mode) => {
            return Err(QrError::DeviceVerificationQr { mode });
        }
        msc4108::MODE_LOGIN => QrIntent::Login,
        msc4108::MODE_RECIPROCATE => QrIntent::Reciprocate,
        other => return Err(QrError::UnknownMode(other)),
    };
    let public_key = r.public_key()?;
    let rendezvous_url = r.u16_str(QrField::RendezvousUrl)?.to_owned();
    let homeserver = match intent {
        QrIntent::Login => None,
        QrIntent::Reciprocate => Some(r.u16_str(QrField::Homeserver)?.to_owned()),
    };
    r.finish()?;
    Ok(QrCode {
        intent,
        public_key,
        rendezvous: QrRendezvous::Msc4108 {
            rendezvous_url,
            homeserver,
        },
    })
}

fn decode_msc4388(mut r: Reader<'_>, prefix: Msc4388Prefix) -> Result<QrCode, QrError> {
    let intent = match r.u8(QrField::Intent)? {
        msc4388::INTENT_LOGIN => QrIntent::Login,
        msc4388::INTENT_RECIPROCATE => QrIntent::Reciprocate,
        other => return Err(QrError::UnknownIntent(other)),
    };
    let public_key = r.public_key()?;
    let (rendezvous_id, base_url) = read_msc4388_tail(r)?;
    Ok(QrCode {
        intent,
        public_key,
        rendezvous: QrRendezvous::Msc4388 {
            prefix,
            rendezvous_id,
            base_url,
        },
    })
}

/// Reads the rendezvous ID and base URL with either ID length width.
///
/// A first byte of 0x00 can only be a u16 length (a u8 length 0 would be an empty ID, which is
/// invalid anyway). Any other first byte is read as a u8 length first, and, if that reading
/// fails, as a u16 length, so u16-length IDs of 256 bytes or more still decode. When both fail
/// the error of the reading that got further is reported, the released u16 reading on a tie.
fn read_msc4388_tail(r: Reader<'_>) -> Result<(String, String), QrError> {
    let first = r.peek(QrField::RendezvousId)?;
    if first == 0 {
        return read_msc4388_tail_as(r, Msc4388IdLength::U16);
    }
    let as_u8 = match read_msc4388_tail_as(r.clone(), Msc4388IdLength::U8) {
        Ok(tail) => return Ok(tail),
        Err(err) => err,
    };
    match read_msc4388_tail_as(r, Msc4388IdLength::U16) {
        Ok(tail) => Ok(tail),
        Err(as_u16) if tail_progress(&as_u8) > tail_progress(&as_u16) => Err(as_u8),
        Err(as_u16) => Err(as_u16),
    }
}

fn read_msc4388_tail_as(
    mut r: Reader<'_>,
    width: Msc4388IdLength,
) -> Result<(String, String), QrError> {
    let id = match width {
        Msc4388IdLength::U16 => r.u16_str(QrField::RendezvousId)?,
        Msc4388IdLength::U8 => {
            let len = r.u8(QrField::RendezvousId)?;
            r.str(QrField::RendezvousId, len.into())?
        }
    };
    if id.is_empty() {
        return Err(QrError::EmptyRendezvousId);
    }
    let base_url = r.u16_str(QrField::BaseUrl)?;
    r.finish()?;
    // Checked here, not only in `decode`, so that a reading yielding a bad URL loses to one
    // yielding a good URL.
    check_url(QrField::BaseUrl, base_url)?;
    Ok((id.to_owned(), base_url.to_owned()))
}

/// How far into the MSC4388 tail a reading got before `err`.
fn tail_progress(err: &QrError) -> u8 {
    match err {
        QrError::Truncated {
            field: QrField::BaseUrl,
        }
        | QrError::LengthPastEnd {
            field: QrField::BaseUrl,
            ..
        }
        | QrError::NotUtf8 {
            field: QrField::BaseUrl,
        } => 2,
        QrError::TrailingBytes(_) => 3,
        QrError::InvalidUrl { .. } | QrError::InsecureUrl { .. } => 4,
        _ => 1,
    }
}

fn check_url(field: QrField, s: &str) -> Result<(), QrError> {
    let invalid = |reason| QrError::InvalidUrl { field, reason };
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(UrlProblem::WhitespaceOrControl));
    }
    let url = url::Url::parse(s).map_err(|e| invalid(UrlProblem::Parse(e)))?;
    match url.scheme() {
        _ if is_secure_url(&url) => Ok(()),
        "http" => Err(QrError::InsecureUrl { field }),
        other => Err(invalid(UrlProblem::NotHttps(other.to_owned()))),
    }
}

/// The transport rule for every server address a device talks to, whether a QR code, the
/// other device or a server named it: https, or plain http to a loopback host only. One
/// predicate, so the client applies to server answers exactly what the decoder applies to
/// codes.
pub fn is_secure_url(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => is_loopback(url),
        _ => false,
    }
}

/// Loopback only (127.0.0.0/8, ::1, localhost): plain http is safe there because the traffic
/// never leaves the machine, which is what local development and tests need.
pub(crate) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The spec's server name grammar: `hostname [":" port]`, where hostname is an IPv4 address,
/// a bracketed IPv6 address or a DNS name of 1-255 letters, digits, `-` and `.`.
fn is_server_name(s: &str) -> bool {
    let (host_ok, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) => (v6.parse::<Ipv6Addr>().is_ok(), port),
            None => return false,
        }
    } else {
        let (host, port) = match s.find(':') {
            Some(i) => s.split_at(i),
            None => (s, ""),
        };
        let dns_ok = (1..=255).contains(&host.len())
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        (dns_ok, port)
    };
    let port_ok = match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => {
            (1..=5).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        }
    };
    host_ok && port_ok
}

/// A cursor over the payload whose every read names the field it is reading, so errors say
/// which part of the code is broken.
#[derive(Clone)]
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self { rest }
    }

    fn peek(&self, field: QrField) -> Result<u8, QrError> {
        self.rest
            .first()
            .copied()
            .ok_or(QrError::Truncated { field })
    }

    fn take(&mut self, n: usize, field: QrField) -> Result<&'a [u8], QrError> {
        if self.rest.len() < n {
            return Err(QrError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, field: QrField) -> Result<u8, QrError> {
        let b = self.peek(field)?;
        self.rest = &self.rest[1..];
        Ok(b)
    }

    fn public_key(&mut self) -> Result<PublicKey, QrError> {
        let bytes = self.take(32, QrField::PublicKey)?;
        PublicKey::from_slice(bytes).map_err(|_| QrError::Truncated {
            field: QrField::PublicKey,
        })
    }

    fn u16_str(&mut self, field: QrField) -> Result<&'a str, QrError> {
        let len = self.take(2, field)?;
        let len = u16::from_be_bytes([len[0], len[1]]);
        self.str(field, len.into())
    }

    fn str(&mut self, field: QrField, len: usize) -> Result<&'a str, QrError> {
        if self.rest.len() < len {
            return Err(QrError::LengthPastEnd {
                field,
                len,
                available: self.rest.len(),
            });
        }
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| QrError::NotUtf8 { field })
    }

    fn finish(self) -> Result<(), QrError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(QrError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for ok in [
            "matrix.org",
            "localhost:8448",
            "1.2.3.4",
            "[::1]:80",
            "[1234:5678::abcd]",
        ] {
            assert!(is_server_name(ok), "{ok}");
        }
        for bad in [
            "",
            "matrix.org:",
            "a b",
            "[::1",
            "[zz::]",
            "host:123456",
            "a:b:1",
            "ü.org",
        ] {
            assert!(!is_server_name(bad), "{bad}");
        }
    }

    #[test]
    fn url_checks() {
        let f = QrField::BaseUrl;
        assert_eq!(check_url(f, "https://matrix.org"), Ok(()));
        for ok in [
            "http://localhost:8008",
            "http://127.0.0.2/x",
            "http://[::1]:8008/",
        ] {
            assert_eq!(check_url(f, ok), Ok(()), "{ok}");
        }
        assert_eq!(
            check_url(f, "http://matrix.org"),
            Err(QrError::InsecureUrl { field: f })
        );
        assert_eq!(
            check_url(f, "http://localhost.evil.org"),
            Err(QrError::InsecureUrl { field: f })
        );
        assert!(matches!(
            check_url(f, "ftp://matrix.org"),
            Err(QrError::InvalidUrl {
                reason: UrlProblem::NotHttps(_),
                ..
            })
        ));
        assert!(matches!(
            check_url(f, " https://matrix.org"),
            Err(QrError::InvalidUrl {
                reason: UrlProblem::WhitespaceOrControl,
                ..
            })
        ));
        assert!(matches!(
            check_url(f, "matrix.org"),
            Err(QrError::InvalidUrl {
                reason: UrlProblem::Parse(_),
                ..
            })
        ));
    }

    #[test]
    fn long_u16_id_still_decodes() {
        let code = QrCode {
            intent: QrIntent::Login,
            public_key: PublicKey([7; 32]),
            rendezvous: QrRendezvous::Msc4388 {
                prefix: Msc4388Prefix::Stable,
                rendezvous_id: "x".repeat(300),
                base_url: "https://example.org".into(),
            },
        };
        let bytes = code.encode();
        assert_eq!(bytes[6 + 2 + 32], 0x01, "u16 length 300 starts with 0x01");
        assert_eq!(QrCode::decode(&bytes), Ok(code));
    }

    #[test]
    fn u8_encoding_limits() {
        let mut code = QrCode {
            intent: QrIntent::Login,
            public_key: PublicKey([7; 32]),
            rendezvous: QrRendezvous::Msc4388 {
                prefix: Msc4388Prefix::Stable,
                rendezvous_id: String::new(),
                base_url: "https://example.org".into(),
            },
        };
        let u8_settings = EncodeSettings {
            msc4388_id_length: Msc4388IdLength::U8,
        };
        assert_eq!(
            code.encode_with(u8_settings),
            Err(EncodeError::EmptyRendezvousIdU8)
        );
        if let QrRendezvous::Msc4388 { rendezvous_id, .. } = &mut code.rendezvous {
            *rendezvous_id = "y".repeat(256);
        }
        assert!(matches!(
            code.encode_with(u8_settings),
            Err(EncodeError::TooLong {
                field: QrField::RendezvousId,
                len: 256,
                max: 255
            })
        ));
    }

    #[test]
    fn scanner_roles() {
        let mut code = QrCode {
            intent: QrIntent::Login,
            public_key: PublicKey([1; 32]),
            rendezvous: QrRendezvous::Msc4108 {
                rendezvous_url: "https://example.org/r/1".into(),
                homeserver: None,
            },
        };
        use crate::DeviceKind::{Existing, New};
        assert_eq!(code.check_scannable_by(New), Err(QrError::BothNewDevices));
        assert_eq!(code.check_scannable_by(Existing), Ok(()));
        code.intent = QrIntent::Reciprocate;
        assert_eq!(
            code.check_scannable_by(Existing),
            Err(QrError::BothExistingDevices)
        );
        assert_eq!(code.check_scannable_by(New), Ok(()));
        assert!(
            QrError::BothNewDevices
                .to_string()
                .contains("both devices are new devices")
        );
    }
}

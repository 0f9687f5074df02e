//! Rendering and image decoding: every vector survives PNG and JPEG, and the terminal text
//! is exactly the QR symbol.
#![cfg(feature = "image")]

use std::io::Cursor;

use mxqr_proto::qr::render::{
    self, QrImageError, QrMatrix, RenderError, TerminalOptions, decode_image, render_png,
    render_terminal,
};
use serde_json::Value;

fn valid_payloads() -> Vec<(String, Vec<u8>)> {
    let vectors: Value = serde_json::from_str(include_str!("../vectors/qr.json")).unwrap();
    vectors["valid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let name = v["name"].as_str().unwrap().to_owned();
            (name, hex::decode(v["hex"].as_str().unwrap()).unwrap())
        })
        .collect()
}

#[test]
fn png_round_trip_of_every_valid_vector() {
    for (name, payload) in valid_payloads() {
        for scale in [1, 4] {
            let png = render_png(&payload, scale).unwrap();
            assert!(png.starts_with(b"\x89PNG"), "{name}");
            assert_eq!(
                decode_image(&png).unwrap(),
                payload,
                "{name}, scale {scale}"
            );
        }
    }
}

#[test]
fn jpeg_round_trip() {
    for (name, payload) in valid_payloads().into_iter().take(4) {
        let png = render_png(&payload, 6).unwrap();
        let img = image::load_from_memory(&png).unwrap().into_luma8();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut Cursor::new(&mut jpeg), 75)
            .encode_image(&img)
            .unwrap();
        assert!(jpeg.starts_with(&[0xff, 0xd8]), "{name}");
        assert_eq!(decode_image(&jpeg).unwrap(), payload, "{name}");
    }
}

/// The qrcode crate's own symbol for `payload` in byte mode at level Q, smallest version.
fn reference_matrix(payload: &[u8]) -> (usize, Vec<bool>) {
    use qrcode::bits::Bits;
    use qrcode::{Color, EcLevel, QrCode, Version};
    let version = (1..=40)
        .find(|&v| {
            let mut bits = Bits::new(Version::Normal(v));
            bits.push_byte_data(payload).is_ok() && bits.push_terminator(EcLevel::Q).is_ok()
        })
        .unwrap();
    let mut bits = Bits::new(Version::Normal(version));
    bits.push_byte_data(payload).unwrap();
    bits.push_terminator(EcLevel::Q).unwrap();
    let code = QrCode::with_bits(bits, EcLevel::Q).unwrap();
    let dark = code
        .to_colors()
        .into_iter()
        .map(|c| c == Color::Dark)
        .collect();
    (code.width(), dark)
}

/// Turns terminal text back into module rows (two per line), ANSI codes removed.
fn parse_terminal(text: &str) -> Vec<Vec<bool>> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let plain = line.replace("\x1b[30;107m", "").replace("\x1b[0m", "");
        assert!(!plain.contains('\x1b'), "unexpected escape in {line:?}");
        let (mut top, mut bottom) = (Vec::new(), Vec::new());
        for c in plain.chars() {
            let (t, b) = match c {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                ' ' => (false, false),
                other => panic!("unexpected character {other:?}"),
            };
            top.push(t);
            bottom.push(b);
        }
        rows.push(top);
        rows.push(bottom);
    }
    rows
}

#[test]
fn terminal_text_is_the_qr_symbol_with_a_quiet_zone() {
    for (name, payload) in valid_payloads() {
        let (width, reference) = reference_matrix(&payload);
        for colour in [true, false] {
            let options = TerminalOptions {
                colour,
                quiet_zone: 2,
            };
            let text = render_terminal(&payload, options).unwrap();
            if colour {
                for line in text.lines() {
                    assert!(line.starts_with("\x1b[30;107m") && line.ends_with("\x1b[0m"));
                }
            } else {
                assert!(!text.contains('\x1b'), "{name}");
            }
            let rows = parse_terminal(&text);
            let side = width + 4;
            // An odd number of module rows leaves one light half row at the bottom.
            assert_eq!(rows.len(), side + 1, "{name}");
            assert!(rows[side].iter().all(|&d| !d), "{name}");
            for (y, row) in rows.iter().take(side).enumerate() {
                assert_eq!(row.len(), side, "{name}");
                for (x, &dark) in row.iter().enumerate() {
                    let inside = (2..width + 2).contains(&x) && (2..width + 2).contains(&y);
                    let want = inside && reference[(y - 2) * width + (x - 2)];
                    assert_eq!(dark, want, "{name}: module ({x}, {y})");
                }
            }
        }
    }
}

#[test]
fn symbol_reads_back_at_level_q() {
    for (name, payload) in valid_payloads() {
        let matrix = QrMatrix::new(&payload).unwrap();
        let w = matrix.width();
        let grid = rqrr::SimpleGrid::from_func(w, |x, y| matrix.is_dark(x as isize, y as isize));
        let mut out = Vec::new();
        let meta = rqrr::Grid::new(grid).decode_to(&mut out).unwrap();
        assert_eq!(out, payload, "{name}");
        // rqrr reports the raw format bits: 0b11 is level Q.
        assert_eq!(meta.ecc_level, 3, "{name}");
    }
}

#[test]
fn quiet_zone_is_raised_to_the_minimum() {
    let payload = &valid_payloads()[0].1;
    let narrow = TerminalOptions {
        colour: false,
        quiet_zone: 0,
    };
    let wide = TerminalOptions {
        colour: false,
        quiet_zone: render::MIN_TERMINAL_QUIET_ZONE,
    };
    assert_eq!(
        render_terminal(payload, narrow).unwrap(),
        render_terminal(payload, wide).unwrap()
    );
    let wider = TerminalOptions {
        colour: false,
        quiet_zone: 4,
    };
    let text = render_terminal(payload, wider).unwrap();
    let rows = parse_terminal(&text);
    assert!(rows[..4].iter().all(|r| r.iter().all(|&d| !d)));
    assert!(rows.iter().all(|r| r[..4].iter().all(|&d| !d)));
}

#[test]
fn render_errors() {
    assert!(matches!(
        render_png(b"MATRIX", 0),
        Err(RenderError::InvalidScale(0))
    ));
    assert!(matches!(
        render_png(b"MATRIX", render::MAX_PNG_SCALE + 1),
        Err(RenderError::InvalidScale(_))
    ));
    // Version 40 at level Q holds 1663 bytes in byte mode.
    assert!(QrMatrix::new(&[0xaa; 1663]).is_ok());
    assert!(matches!(
        QrMatrix::new(&[0xaa; 1664]),
        Err(RenderError::TooLong(1664))
    ));
}

#[test]
fn image_errors() {
    assert!(matches!(
        decode_image(b"not an image"),
        Err(QrImageError::UnsupportedFormat)
    ));
    assert!(matches!(
        decode_image(b""),
        Err(QrImageError::UnsupportedFormat)
    ));
    assert!(matches!(
        decode_image(b"\x89PNG\r\n\x1a\n broken"),
        Err(QrImageError::Image(_))
    ));

    let blank = image::GrayImage::from_pixel(64, 64, image::Luma([255]));
    assert!(matches!(
        decode_image(&png_of(&blank)),
        Err(QrImageError::NoQrCode)
    ));

    // Two different codes side by side: refusing beats guessing which one the user meant.
    let payloads = valid_payloads();
    let a = image::load_from_memory(&render_png(&payloads[0].1, 4).unwrap())
        .unwrap()
        .into_luma8();
    let b = image::load_from_memory(&render_png(&payloads[3].1, 4).unwrap())
        .unwrap()
        .into_luma8();
    let height = a.height().max(b.height());
    let mut both = image::GrayImage::from_pixel(a.width() + b.width(), height, image::Luma([255]));
    image::imageops::replace(&mut both, &a, 0, 0);
    image::imageops::replace(&mut both, &b, a.width().into(), 0);
    assert!(matches!(
        decode_image(&png_of(&both)),
        Err(QrImageError::SeveralQrCodes(2))
    ));

    // Too large to decode: refused by the size limit, before any allocation of pixels.
    let huge = image::GrayImage::from_pixel(render::MAX_IMAGE_SIDE + 1, 1, image::Luma([255]));
    assert!(matches!(
        decode_image(&png_of(&huge)),
        Err(QrImageError::Image(_))
    ));
}

fn png_of(img: &image::GrayImage) -> Vec<u8> {
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

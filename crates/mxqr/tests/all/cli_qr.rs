//! Runs the built `mxqr` binary on the shared QR vectors, in every input form it accepts.

use std::path::PathBuf;
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../mxqr-proto/tests/vectors/qr.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("read qr.json")).expect("JSON")
}

fn mxqr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args(args)
        .output()
        .expect("run mxqr")
}

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli_qr");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `decode` on `input`, expecting success, and returns the JSON it printed.
fn decode_ok(input: &str) -> Value {
    let out = mxqr(&["qr", "decode", input]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "decode {input}: {:?} {stderr}",
        out.status
    );
    assert!(out.stderr.is_empty(), "{stderr}");
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// Asserts exit status 2, nothing on stdout and exactly one `error: ` line on stderr.
fn assert_refused(out: &Output) -> String {
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.starts_with("error: ") && stderr.ends_with('\n'),
        "{stderr:?}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    stderr
}

fn valid() -> Vec<(String, Vec<u8>, Value)> {
    let vectors = vectors();
    vectors["valid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
            (v["name"].as_str().unwrap().to_owned(), bytes, v.clone())
        })
        .collect()
}

#[test]
fn decodes_valid_vectors_from_hex_base64_and_png() {
    for (i, (name, bytes, v)) in valid().into_iter().enumerate() {
        let json = decode_ok(&hex::encode(&bytes));
        let fields = &v["fields"];
        assert_eq!(json["generation"], v["generation"], "{name}");
        assert_eq!(json["intent"], fields["intent"], "{name}");
        assert_eq!(json["public_key"], fields["public_key_b64"], "{name}");
        if v["generation"] == "msc4388" {
            assert_eq!(json["prefix"], fields["prefix"], "{name}");
            assert_eq!(json["rendezvous_id"], fields["rendezvous_id"], "{name}");
            assert_eq!(json["homeserver"], fields["base_url"], "{name}");
        } else {
            assert_eq!(json["rendezvous_url"], fields["rendezvous_url"], "{name}");
            assert_eq!(json.get("homeserver"), fields.get("homeserver"), "{name}");
        }

        assert_eq!(
            decode_ok(&hex::encode_upper(&bytes)),
            json,
            "{name}: upper-case hex"
        );
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            let b64 = engine.encode(&bytes);
            assert_eq!(decode_ok(&b64), json, "{name}: base64 {b64}");
        }
        if let Some(b64) = v["base64"].as_str() {
            assert_eq!(decode_ok(b64), json, "{name}: vector's base64");
        }

        let png = tmp(&format!("vector-{i}.png"));
        std::fs::write(&png, mxqr_proto::qr::render::render_png(&bytes, 4).unwrap()).unwrap();
        assert_eq!(decode_ok(png.to_str().unwrap()), json, "{name}: PNG");
    }
}

#[test]
fn refuses_invalid_vectors_with_one_line_and_status_2() {
    let vectors = vectors();
    for v in vectors["invalid"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let stderr = assert_refused(&mxqr(&["qr", "decode", v["hex"].as_str().unwrap()]));
        if name.starts_with("device verification") {
            assert_eq!(
                stderr,
                "error: this is a device-verification QR code, not a login QR code\n"
            );
        }
    }
}

#[test]
fn refuses_other_bad_input() {
    assert!(assert_refused(&mxqr(&["qr", "decode", "zz not base64!"])).contains("neither"));
    assert!(assert_refused(&mxqr(&["qr", "decode", "missing-file.png"])).contains("neither"));
    let not_an_image = tmp("not-an-image.png");
    std::fs::write(&not_an_image, b"hello").unwrap();
    let stderr = assert_refused(&mxqr(&["qr", "decode", not_an_image.to_str().unwrap()]));
    assert!(stderr.contains("not a PNG or JPEG"), "{stderr}");
}

#[test]
fn scanner_check_refuses_two_new_devices() {
    let (_, bytes, _) = &valid()[0]; // MSC4108, shown by the new device
    let hex = hex::encode(bytes);
    let stderr = assert_refused(&mxqr(&["qr", "decode", "--scanner", "new", &hex]));
    assert!(stderr.contains("both devices are new devices"), "{stderr}");
    assert!(
        mxqr(&["qr", "decode", "--scanner", "existing", &hex])
            .status
            .success()
    );
}

#[test]
fn render_png_then_decode_it() {
    for (i, (name, bytes, _)) in valid().into_iter().enumerate() {
        let png = tmp(&format!("rendered-{i}.png"));
        let _ = std::fs::remove_file(&png);
        let out = mxqr(&[
            "qr",
            "render",
            &hex::encode(&bytes),
            "--png",
            png.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let from_png = decode_ok(png.to_str().unwrap());
        assert_eq!(from_png, decode_ok(&hex::encode(&bytes)), "{name}");
        // The exact bytes are drawn, not a re-encoding (this matters for the u8-length vector).
        let png_bytes = std::fs::read(&png).unwrap();
        assert_eq!(
            mxqr_proto::qr::render::decode_image(&png_bytes).unwrap(),
            bytes,
            "{name}"
        );
    }
}

#[test]
fn render_to_terminal_with_and_without_colour() {
    let (_, bytes, _) = &valid()[3];
    let hex = hex::encode(bytes);
    let coloured = mxqr(&["qr", "render", &hex]);
    assert!(coloured.status.success());
    let text = String::from_utf8(coloured.stdout).unwrap();
    assert!(
        text.contains("\x1b[30;107m") && text.contains('█'),
        "{text}"
    );

    let plain = mxqr(&["qr", "render", "--no-color", &hex]);
    assert!(plain.status.success());
    let plain = String::from_utf8(plain.stdout).unwrap();
    assert!(!plain.contains('\x1b'));
    assert_eq!(
        plain,
        text.replace("\x1b[30;107m", "").replace("\x1b[0m", "")
    );
}

#[test]
fn render_refuses_garbage() {
    let vectors = vectors();
    let device_verification = vectors["invalid"][0]["hex"].as_str().unwrap();
    let png = tmp("never-written.png");
    let _ = std::fs::remove_file(&png);
    assert_refused(&mxqr(&["qr", "render", device_verification]));
    assert_refused(&mxqr(&[
        "qr",
        "render",
        device_verification,
        "--png",
        png.to_str().unwrap(),
    ]));
    assert!(!png.exists());
}

//! What a server says reaches the terminal only as visible text: escape sequences in an
//! error answer are printed as `\u{…}`, never sent to the terminal.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

/// A homeserver whose every answer is a 404 with terminal escapes in its `errcode`: clear the
/// screen, retitle the window.
fn hostile_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let body = r#"{"errcode":"M_\u001b[2J\u001b]0;pwned\u0007\u009b31m","error":"x"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    base
}

#[test]
fn a_server_error_with_terminal_escapes_is_printed_harmless() {
    let base = hostile_server();
    let home = std::env::temp_dir().join(format!("mxqr-cli-printable-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args([
            "account",
            "login",
            "--device-code",
            "--homeserver",
            &base,
            "--profile",
            "p",
        ])
        .env("MXQR_HOME", &home)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr:?}"));
    assert!(
        !error.chars().any(char::is_control),
        "control characters reached the terminal: {error:?}"
    );
    assert!(
        error.contains("M_\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\u{9b}31m"),
        "{error:?}"
    );
}

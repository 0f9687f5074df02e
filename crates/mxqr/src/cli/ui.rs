//! What a person (or a script) sees while a sign-in runs.
//!
//! Plain mode draws the QR code and prints one line per step with the elapsed time. JSON mode
//! prints one object per line on stdout, so two `mxqr` processes can be piped together:
//!
//! - `{"event":"qr","base64":…,"generation":…}`: the QR code to scan (`mxqr login --scan`
//!   and `mxqr grant --scan` take the base64 as it is).
//! - `{"event":"qr_png","path":…}`: the QR code was also written to this PNG file (`--png`).
//! - `{"event":"check_code","code":"07"}`: type this on the other device.
//! - `{"event":"enter_check_code"}`: this process now reads the code from stdin.
//! - `{"event":"user_code","user_code":…,"verification_uri":…}`: the code on the consent page.
//! - `{"event":"verification_uri","uri":…}`: open this page to approve the new device.
//! - `{"event":"authorization_url","url":…}`: `mxqr account login`: sign in on this page.
//! - `{"event":"step","step":…,"elapsed_ms":…}`: progress.
//! - `{"event":"done",…}` or `{"event":"error","message":…}`: the end.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use indicatif::{ProgressBar, ProgressStyle};
use mxqr_client::driver::{Step, Ui, UiEvent};
use mxqr_proto::qr::render::{self, TerminalOptions};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::printable::printable;

pub struct CliUi {
    pub json: bool,
    /// The check code given on the command line, used instead of asking.
    pub check_code: Option<u8>,
    pub no_browser: bool,
    /// Where to write the QR code as PNG too.
    pub png: Option<std::path::PathBuf>,
    started: Instant,
    interrupted: watch::Receiver<bool>,
    /// The spinner of the current wait, on a terminal only (plain lines otherwise, so logs
    /// and pipes stay readable). Cleared whenever something else is printed.
    spinner: Option<ProgressBar>,
}

/// How long the sign-in may take to tell the other device and clean up after Ctrl-C before
/// the process leaves anyway.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

impl CliUi {
    /// Must run inside the tokio runtime: the first Ctrl-C cancels the sign-in cleanly (the
    /// other device is told, the rendezvous deleted); a second one, or a clean-up that takes
    /// too long, ends the process at once.
    pub fn new(json: bool, check_code: Option<u8>, no_browser: bool) -> Self {
        let (tx, interrupted) = watch::channel(false);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                return std::future::pending().await;
            }
            let _ = tx.send(true);
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = tokio::time::sleep(CANCEL_GRACE) => {}
            }
            eprintln!("error: interrupted");
            std::process::exit(super::EXIT_INTERRUPTED.into());
        });
        Self {
            json,
            check_code,
            no_browser,
            png: None,
            started: Instant::now(),
            interrupted,
            spinner: None,
        }
    }

    /// Completes once Ctrl-C was pressed.
    fn interrupted(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.interrupted.clone();
        async move {
            if rx.wait_for(|pressed| *pressed).await.is_err() {
                // The watcher is gone (no signal handling here): never cancel.
                std::future::pending::<()>().await;
            }
        }
    }

    /// One JSON event on stdout, flushed at once so a reading process sees it now.
    pub fn emit(&self, value: Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }

    /// A step began. JSON: a `step` event. Terminal: a spinner with the time since the start
    /// on stderr until the next output. Otherwise one line on stderr (stdout stays for the QR
    /// code and the summary).
    pub fn progress(&mut self, step: &str, text: &str) {
        let elapsed = self.started.elapsed();
        if self.json {
            self.emit(json!({
                "event": "step",
                "step": step,
                "elapsed_ms": elapsed.as_millis() as u64,
            }));
        } else if std::io::stderr().is_terminal() {
            self.clear_spinner();
            let spinner = ProgressBar::new_spinner().with_elapsed(elapsed);
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]") {
                spinner.set_style(style);
            }
            spinner.set_message(text.to_owned());
            spinner.enable_steady_tick(Duration::from_millis(120));
            self.spinner = Some(spinner);
        } else {
            eprintln!("[{:6.1}s] {text}", elapsed.as_secs_f64());
        }
    }

    /// Removes the spinner before anything else is printed.
    fn clear_spinner(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            spinner.finish_and_clear();
        }
    }

    /// The page where the person signs in (authorization-code grant): printed, and opened
    /// in a browser unless `no_browser`.
    pub fn show_sign_in_page(&mut self, url: &str) {
        self.clear_spinner();
        if self.json {
            self.emit(json!({ "event": "authorization_url", "url": url }));
        } else {
            println!("Sign in on this page: {}", printable(url));
            let _ = std::io::stdout().flush();
        }
        self.open_browser(url);
    }

    fn open_browser(&self, uri: &str) {
        if self.no_browser {
            return;
        }
        let opened = std::process::Command::new("xdg-open")
            .arg(uri)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if opened.is_err() && !self.json {
            eprintln!("(could not start a browser; open the link by hand)");
        }
    }
}

fn step_name(step: Step) -> (&'static str, &'static str) {
    match step {
        Step::WaitingForOtherDevice => ("waiting_for_other_device", "waiting for the other device"),
        Step::StartingAuthorization => ("starting_authorization", "asking the server to sign in"),
        Step::WaitingForConsent => (
            "waiting_for_consent",
            "waiting for approval on the other device",
        ),
        Step::WaitingForNewDevice => ("waiting_for_new_device", "waiting for the new device"),
        Step::SettingUpEncryption => ("setting_up_encryption", "setting up encryption"),
    }
}

impl Drop for CliUi {
    fn drop(&mut self) {
        self.clear_spinner();
    }
}

impl Ui for CliUi {
    fn show(&mut self, event: UiEvent) {
        if !matches!(event, UiEvent::Step(_)) {
            self.clear_spinner();
        }
        match event {
            UiEvent::ShowQrCode(qr) => {
                let payload = qr.encode();
                let base64 = STANDARD.encode(&payload);
                if let Some(path) = &self.png {
                    let written = render::render_png(&payload, 8)
                        .map_err(|e| e.to_string())
                        .and_then(|png| std::fs::write(path, png).map_err(|e| e.to_string()));
                    match written {
                        Ok(()) if self.json => self.emit(json!({
                            "event": "qr_png",
                            "path": path.display().to_string(),
                        })),
                        Ok(()) => eprintln!("QR code written to {}", path.display()),
                        Err(e) => eprintln!("(cannot write {}: {e})", path.display()),
                    }
                }
                if self.json {
                    self.emit(json!({
                        "event": "qr",
                        "base64": base64,
                        "generation": qr.generation().as_str(),
                    }));
                } else {
                    match render::render_terminal(&payload, TerminalOptions::default()) {
                        Ok(text) => print!("{text}"),
                        Err(e) => eprintln!("(cannot draw the QR code: {e})"),
                    }
                    println!("Scan this code with the other device, or paste this there:");
                    println!("{base64}");
                    let _ = std::io::stdout().flush();
                }
            }
            UiEvent::ShowCheckCode(code) => {
                if self.json {
                    self.emit(json!({ "event": "check_code", "code": code.to_string() }));
                } else {
                    println!("Check code: {code}  (enter it on the other device)");
                    let _ = std::io::stdout().flush();
                }
            }
            UiEvent::ShowUserCode {
                user_code,
                verification_uri,
            } => {
                if self.json {
                    self.emit(json!({
                        "event": "user_code",
                        "user_code": user_code,
                        "verification_uri": verification_uri,
                    }));
                } else {
                    println!(
                        "Approve the code {} at {}",
                        printable(&user_code),
                        printable(&verification_uri)
                    );
                }
            }
            UiEvent::OpenVerificationUri(uri) => {
                if self.json {
                    self.emit(json!({ "event": "verification_uri", "uri": uri }));
                } else {
                    println!(
                        "Approve the new device in your browser: {}",
                        printable(&uri)
                    );
                    let _ = std::io::stdout().flush();
                }
                self.open_browser(&uri);
            }
            UiEvent::Step(step) => {
                let (name, text) = step_name(step);
                self.progress(name, text);
            }
        }
    }

    async fn ask_check_code(&mut self) -> Option<u8> {
        self.clear_spinner();
        if let Some(code) = self.check_code {
            return Some(code);
        }
        if self.json {
            self.emit(json!({ "event": "enter_check_code" }));
        }
        let json = self.json;
        let read = tokio::task::spawn_blocking(move || {
            loop {
                if !json {
                    eprint!("Enter the two-digit check code shown on the other device: ");
                    let _ = std::io::stderr().flush();
                }
                let mut line = String::new();
                match std::io::stdin().read_line(&mut line) {
                    // End of input: the person gave up.
                    Ok(0) | Err(_) => return None,
                    Ok(_) => match parse_check_code(&line) {
                        Ok(code) => return Some(code),
                        Err(e) if json => {
                            eprintln!("error: {e}");
                            return None;
                        }
                        Err(e) => eprintln!("{e}"),
                    },
                }
            }
        });
        tokio::select! {
            code = read => code.ok().flatten(),
            () = self.interrupted() => None,
        }
    }

    fn cancelled(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.interrupted()
    }
}

/// A check code as typed: one or two digits.
pub fn parse_check_code(text: &str) -> Result<u8, String> {
    let text = text.trim();
    match text.parse::<u8>() {
        Ok(n) if (1..=2).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!(
            "`{text}` is not a check code (two digits, 00 to 99)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_check_code;

    #[test]
    fn check_codes_are_one_or_two_digits() {
        assert_eq!(parse_check_code("07\n"), Ok(7));
        assert_eq!(parse_check_code(" 7 "), Ok(7));
        assert_eq!(parse_check_code("99"), Ok(99));
        for bad in ["", "100", "-1", "+5", "ab", "007"] {
            assert!(parse_check_code(bad).is_err(), "{bad:?}");
        }
    }
}

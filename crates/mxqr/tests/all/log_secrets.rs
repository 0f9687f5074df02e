//! No secrets in logs, even at `RUST_LOG=trace`: `mxqr demo --json` (server, devices and
//! browser in one process) and a sign-in with `mxqr serve`, `mxqr grant` and `mxqr login` as
//! separate processes. Every token the server mints has a kind prefix (`mxqr_at_`, `mxqr_rt_`,
//! `mxqr_ac_`, `mxqr_dc_`, `mxqr_bs_`), so any one of them in the output is a leak; the
//! values the sign-in actually produced (tokens and key material in the profiles, the
//! password, the user code) are looked for literally as well.

use std::path::Path;
use std::process::Command;

use mxqr_testkit::cli::*;
use mxqr_testkit::person::consent;
use serde_json::Value;

const TOKEN_PREFIXES: [&str; 5] = ["mxqr_at_", "mxqr_rt_", "mxqr_ac_", "mxqr_dc_", "mxqr_bs_"];

/// Prefixed tokens in `text`: a prefix followed by at least 20 base62 characters (a bare
/// prefix, as in a message naming the format, is no leak).
fn prefixed_tokens(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for prefix in TOKEN_PREFIXES {
        for (at, _) in text.match_indices(prefix) {
            let rest = &text[at + prefix.len()..];
            let body: String = rest
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            if body.len() >= 20 {
                found.push(format!("{prefix}{body}"));
            }
        }
    }
    found
}

/// Whether a JSON key names a secret (`public_key` and the like do not).
fn secret_key_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !name.contains("public")
        && [
            "token", "secret", "private", "pickle", "seed", "password", "verifier", "key",
        ]
        .iter()
        .any(|s| name.contains(s))
}

fn collect_secrets(value: &Value, under_secret: bool, out: &mut Vec<String>) {
    match value {
        Value::String(s) if under_secret && s.len() >= 16 => out.push(s.clone()),
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_secrets(v, under_secret, out)),
        Value::Object(map) => {
            for (k, v) in map {
                collect_secrets(v, under_secret || secret_key_name(k), out);
            }
        }
        _ => {}
    }
}

/// Secret values in every JSON file under `dir` (the client profiles).
fn secrets_in_files(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            secrets_in_files(&path, out);
        } else if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(value) = serde_json::from_str::<Value>(&text)
        {
            collect_secrets(&value, false, out);
        }
    }
}

fn assert_no_leak(what: &str, text: &str, secrets: &[String]) {
    let tokens = prefixed_tokens(text);
    assert!(tokens.is_empty(), "{what} shows tokens: {tokens:?}");
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} shows the secret {secret:?}"
        );
    }
}

#[test]
fn demo_at_trace_level_logs_no_secret() {
    let _heavy = mxqr_testkit::heavy_blocking();
    let out = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args(["demo", "--json", "--polling", "long-poll"])
        .env("RUST_LOG", "trace")
        .env_remove("MXQR_CONFIG")
        .output()
        .expect("run mxqr demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        &stderr[..stderr.len().min(4000)]
    );
    // The log is really there: the server's request lines and the clients' HTTP stack.
    assert!(
        stderr.contains("mxqr_server::app"),
        "no server log at trace"
    );
    assert!(stderr.contains("TRACE"), "no trace-level lines");
    assert_no_leak("demo stderr", &stderr, &[]);
    assert_no_leak("demo stdout", &stdout, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sign_in_at_trace_level_logs_no_secret() {
    let _heavy = mxqr_testkit::heavy().await;
    let log = std::env::temp_dir().join(format!(
        "mxqr-log-secrets-{}-{}.log",
        std::process::id(),
        rand::random::<u32>()
    ));
    let server = Serve::new().env("RUST_LOG", "trace").log_to(&log).start();
    server.existing_profile();
    let issued_before = std::fs::read_to_string(server.home().join("profiles/old/session.json"))
        .expect("the existing device's session");

    let QrSignIn {
        mut grant,
        mut login,
        uri,
        ..
    } = server.qr_sign_in_to_consent(&[]);
    consent(&server.base, &uri).await;
    let grant_done = grant.wait_for("done");
    let new_done = login.wait_for("done");
    let (status, grant_stderr, grant_events) = grant.end();
    assert_eq!(status, Some(0), "{grant_stderr}");
    let (status, login_stderr, login_events) = login.end();
    assert_eq!(status, Some(0), "{login_stderr}");
    check_signed_in(&server, &new_done, &grant_done, "new");

    let mut secrets = vec![PASSWORD.to_owned()];
    let existing: Value = serde_json::from_str(&issued_before).unwrap();
    collect_secrets(&existing, false, &mut secrets);
    secrets_in_files(&server.home().join("profiles"), &mut secrets);
    let tokens = secrets
        .iter()
        .filter(|s| s.starts_with("mxqr_at_") || s.starts_with("mxqr_rt_"))
        .count();
    assert!(
        tokens >= 3,
        "the profiles hold the devices' tokens: {secrets:?}"
    );
    // The user code in the verification URI: shown to the person, never logged.
    let user_code = url::Url::parse(&uri)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a user code in the verification URI");
    let mut log_secrets = secrets.clone();
    log_secrets.push(user_code);

    server.mxqr(&["whoami", "--profile", "new"], None);
    drop(server); // stops `mxqr serve`, flushing its log
    let server_log = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        server_log.contains("TRACE") && server_log.contains("mxqr_server::app"),
        "the server logged at trace level: {}",
        &server_log[..server_log.len().min(2000)]
    );
    assert_no_leak("the server log", &server_log, &log_secrets);
    assert_no_leak("mxqr grant stderr", &grant_stderr, &log_secrets);
    assert_no_leak("mxqr login stderr", &login_stderr, &log_secrets);
    // The JSON events are the commands' output to the person or script: the user code is
    // meant to be shown there, tokens and keys are not.
    for event in grant_events.iter().chain(&login_events) {
        assert_no_leak("a JSON event", &event.to_string(), &secrets);
    }
}

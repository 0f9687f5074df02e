//! QR sign-in with the `mxqr` command line on both sides: a real `mxqr serve`, an existing
//! device made with `mxqr account init` + `mxqr admin issue-token` + `mxqr account
//! import-token` + `mxqr account bootstrap`, then `mxqr grant --json` and `mxqr login --json`
//! as two processes whose JSON events are piped to each other as a script would. The consent
//! page is driven over HTTP as a browser would.

use std::io::Write;
use std::process::{Command, Stdio};

use mxqr_testkit::cli::*;
use mxqr_testkit::person::{authorize_in_browser, consent};
use serde_json::Value;
use url::Url;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_shows_msc4388_and_new_scans() {
    let server = start_server();
    server.existing_profile();

    let QrSignIn {
        mut grant,
        mut login,
        qr,
        uri,
    } = server.qr_sign_in_to_consent(&["--msc4388"]);
    assert_eq!(qr["generation"], "msc4388");
    consent(&server.base, &uri).await;

    let grant_done = grant.wait_for("done");
    let new_done = login.wait_for("done");
    let (status, stderr, _) = grant.end();
    assert_eq!(status, Some(0), "{stderr}");
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(0), "{stderr}");
    check_signed_in(&server, &new_done, &grant_done, "new");
    assert_eq!(
        backup_version(&server, "new").await,
        backup_version(&server, "old").await
    );

    // Signing out ends the session on the server and removes the profile.
    let file = server.home().join("profiles/new/session.json");
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let token = stored["access_token"].as_str().unwrap().to_owned();
    server.mxqr(&["logout", "--profile", "new"], None);
    let answer = reqwest::Client::new()
        .get(
            server
                .base
                .join("_matrix/client/v3/account/whoami")
                .unwrap(),
        )
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert!(!server.home().join("profiles").join("new").exists());
    let out = server
        .command(&["whoami", "--profile", "new"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("profile `new` does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_shows_msc4108_and_existing_scans() {
    let server = start_server();
    server.existing_profile();
    let png = server.dir.join("code.png");

    let mut login = server.spawn_json(&[
        "login",
        "--profile",
        "new",
        "--homeserver",
        server.base.as_str(),
        "--msc4108",
        "--png",
        png.to_str().unwrap(),
        "--json",
    ]);
    let written = login.wait_for("qr_png");
    assert_eq!(written["path"], png.to_str().unwrap());
    let qr = login.wait_for("qr");
    assert_eq!(qr["generation"], "msc4108-2024");
    // The existing device scans the picture, not the text.
    let mut grant = server.spawn_json(&[
        "grant",
        "--profile",
        "old",
        "--scan",
        png.to_str().unwrap(),
        "--json",
        "--no-browser",
    ]);
    let code = grant.wait_for("check_code");
    login.wait_for("enter_check_code");
    login.type_line(code["code"].as_str().unwrap());
    let uri = grant.wait_for("verification_uri");
    consent(&server.base, uri["uri"].as_str().unwrap()).await;

    let new_done = login.wait_for("done");
    let grant_done = grant.wait_for("done");
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(0), "{stderr}");
    let (status, stderr, _) = grant.end();
    assert_eq!(status, Some(0), "{stderr}");
    check_signed_in(&server, &new_done, &grant_done, "new");
    assert_eq!(
        backup_version(&server, "new").await,
        backup_version(&server, "old").await
    );

    // An access token the server no longer knows is refreshed with the stored refresh token,
    // and the rotated pair is saved.
    let file = server.home().join("profiles/new/session.json");
    let mut stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let old_refresh = stored["refresh_token"].clone();
    assert!(old_refresh.is_string(), "{}", stored["refresh_token"]);
    stored["access_token"] = "expired-or-revoked".into();
    std::fs::write(&file, stored.to_string()).unwrap();
    let who = server.mxqr(&["whoami", "--profile", "new", "--json"], None);
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["device_id"], new_done["device_id"], "{who}");
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_ne!(stored["access_token"], "expired-or-revoked");
    assert_ne!(stored["refresh_token"], old_refresh);
    assert_private(&file, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_bootstraps_an_existing_device() {
    let server = start_server();
    server.admin(
        &["user", "add", "alice", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    let login_args = |profile: &'static str| {
        [
            "account",
            "login",
            "--profile",
            profile,
            "--homeserver",
            server.base.as_str(),
            "--no-browser",
            "--json",
        ]
        .map(str::to_owned)
    };
    let args = login_args("web");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut login = server.spawn_json(&args);
    let url = login.wait_for("authorization_url");
    let url = url["url"].as_str().unwrap().to_owned();
    let parsed = Url::parse(&url).unwrap();
    let query: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
    assert_eq!(query["code_challenge_method"], "S256");
    assert!(
        query["redirect_uri"].starts_with("http://127.0.0.1:"),
        "{url}"
    );
    let callback = authorize_in_browser(&server.base, &url, "approve").await;
    assert!(callback.query().unwrap().contains("code="), "{callback}");

    let signed_in = login.wait_for("signed_in");
    let done = login.wait_for("done");
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(done["device_id"], signed_in["device_id"]);
    assert_eq!(done["cross_signed"], true, "{done}");
    let who = server.mxqr(&["whoami", "--profile", "web", "--json"], None);
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["device_id"], signed_in["device_id"], "{who}");
    assert_eq!(who["backup_key"], true, "{who}");

    // Denying on the consent page ends the command with the reason, storing nothing.
    let args = login_args("denied");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut login = server.spawn_json(&args);
    let url = login.wait_for("authorization_url");
    let callback = authorize_in_browser(&server.base, url["url"].as_str().unwrap(), "deny").await;
    assert!(
        callback.query().unwrap().contains("error=access_denied"),
        "{callback}"
    );
    let error = login.wait_for_error();
    let (status, _, _) = login.end();
    assert_eq!(status, Some(1));
    assert!(
        error["message"].as_str().unwrap().contains("declined"),
        "{error}"
    );
    assert!(!server.home().join("profiles/denied").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_login_bootstraps_an_existing_device() {
    let server = start_server();
    server.admin(
        &["user", "add", "alice", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    let mut login = server.spawn_json(&[
        "account",
        "login",
        "--profile",
        "dc",
        "--homeserver",
        server.base.as_str(),
        "--device-code",
        "--json",
    ]);
    let code = login.wait_for("user_code");
    assert!(
        code["user_code"].as_str().is_some_and(|c| !c.is_empty()),
        "{code}"
    );
    consent(&server.base, code["verification_uri"].as_str().unwrap()).await;
    let signed_in = login.wait_for("signed_in");
    let done = login.wait_for("done");
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(done["device_id"], signed_in["device_id"]);
    assert_eq!(done["cross_signed"], true, "{done}");

    let who = server.mxqr(&["whoami", "--profile", "dc", "--json"], None);
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["device_id"], signed_in["device_id"], "{who}");
    assert_eq!(who["cross_signing_keys"], true, "{who}");
    assert_eq!(who["backup_key"], true, "{who}");

    // A token for another device than the profile's keys is refused, naming the fix.
    server.mxqr(&["account", "init", "--profile", "other"], None);
    let issued = server.admin(&["issue-token", "alice", "--device-id", "SOMEOTHER"], None);
    let mut import = server
        .command(&[
            "account",
            "import-token",
            "--profile",
            "other",
            "--homeserver",
            server.base.as_str(),
            "--access-token-stdin",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    import
        .stdin
        .take()
        .unwrap()
        .write_all(issued.as_bytes())
        .unwrap();
    let out = import.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the token is for device SOMEOTHER") && stderr.contains("--device-id"),
        "{stderr}"
    );

    // Signing in as a new device never overwrites a profile.
    let out = server
        .command(&[
            "login",
            "--profile",
            "dc",
            "--homeserver",
            server.base.as_str(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("profile `dc` is already signed in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_check_code_fails_both_sides() {
    let server = start_server();
    server.existing_profile();

    let mut grant = server.spawn_json(&["grant", "--profile", "old", "--json", "--no-browser"]);
    let qr = grant.wait_for("qr");
    let mut login = server.spawn_json(&[
        "login",
        "--profile",
        "new",
        "--scan",
        qr["base64"].as_str().unwrap(),
        "--json",
    ]);
    let code = login.wait_for("check_code");
    let shown: u8 = code["code"].as_str().unwrap().parse().unwrap();
    let wrong = format!("{:02}", (shown + 1) % 100);
    grant.wait_for("enter_check_code");
    grant.type_line(&wrong);

    let grant_error = grant.wait_for("error");
    let (status, stderr, _) = grant.end();
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        grant_error["message"]
            .as_str()
            .unwrap()
            .contains("check code did not match"),
        "{grant_error}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: the check code did not match"),
        "{stderr}"
    );

    let login_error = login.wait_for("error");
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        login_error["message"]
            .as_str()
            .unwrap()
            .contains("the sign-in session is gone"),
        "{login_error}"
    );
    // Nothing was stored for the new device.
    assert!(!server.home().join("profiles").join("new").exists());
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    let home = std::env::temp_dir().join(format!("mxqr-cli-usage-{}", std::process::id()));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mxqr"))
            .args(args)
            .env("MXQR_HOME", &home)
            .output()
            .unwrap()
    };
    let out = run(&["login", "--scan", "not a code!", "--profile", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--scan takes an image file"), "{stderr}");

    let out = run(&["grant", "--profile", "../etc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid profile name"));

    let out = run(&["login", "--homeserver", "x", "--scan", "y"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["login", "--homeserver", "x", "--check-code", "123"]);
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_outlives_its_access_token() {
    let server = start_server_with(&[("MXQR_OAUTH__ACCESS_TOKEN_TTL_SECS", "10")]);
    server.admin(
        &["user", "add", "alice", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    // An existing device signed in through OAuth, so it holds a refresh token.
    let mut account = server.spawn_json(&[
        "account",
        "login",
        "--profile",
        "old",
        "--homeserver",
        server.base.as_str(),
        "--no-browser",
        "--json",
    ]);
    let url = account.wait_for("authorization_url");
    authorize_in_browser(&server.base, url["url"].as_str().unwrap(), "approve").await;
    account.wait_for("done");
    let (status, stderr, _) = account.end();
    assert_eq!(status, Some(0), "{stderr}");
    let file = server.home().join("profiles/old/session.json");
    let read_refresh = || {
        let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        stored["refresh_token"].clone()
    };
    let (mut grant, mut login, _) = {
        let mut grant = server.spawn_json(&["grant", "--profile", "old", "--json", "--no-browser"]);
        let qr = grant.wait_for("qr");
        let login = server.spawn_json(&[
            "login",
            "--profile",
            "new",
            "--scan",
            qr["base64"].as_str().unwrap(),
            "--json",
        ]);
        (grant, login, ())
    };
    let code = login.wait_for("check_code");
    grant.wait_for("enter_check_code");
    let before = read_refresh();
    // The person takes a while to type the code: the existing device's token expires.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    grant.type_line(code["code"].as_str().unwrap());
    let uri = grant.wait_for("verification_uri");
    consent(&server.base, uri["uri"].as_str().unwrap()).await;
    let grant_done = grant.wait_for("done");
    let new_done = login.wait_for("done");
    let (status, stderr, _) = grant.end();
    assert_eq!(status, Some(0), "{stderr}");
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(0), "{stderr}");
    check_signed_in(&server, &new_done, &grant_done, "new");
    // The rotated pair was saved in the profile.
    assert_ne!(read_refresh(), before);
}

/// One whole sign-in with two `mxqr` processes, either side showing the QR code.
async fn sign_in_with_two_processes(generation: &str, new_shows: bool) {
    let server = start_server();
    server.existing_profile();
    let homeserver = server.base.to_string();
    let (mut shower, mut scanner, shower_is_new) = if new_shows {
        let mut login = server.spawn_json(&[
            "login",
            "--profile",
            "new",
            "--homeserver",
            &homeserver,
            generation,
            "--json",
        ]);
        let qr = login.wait_for("qr");
        let grant = server.spawn_json(&[
            "grant",
            "--profile",
            "old",
            "--scan",
            qr["base64"].as_str().unwrap(),
            "--json",
            "--no-browser",
        ]);
        (login, grant, true)
    } else {
        let mut grant = server.spawn_json(&[
            "grant",
            "--profile",
            "old",
            generation,
            "--json",
            "--no-browser",
        ]);
        let qr = grant.wait_for("qr");
        let login = server.spawn_json(&[
            "login",
            "--profile",
            "new",
            "--scan",
            qr["base64"].as_str().unwrap(),
            "--json",
        ]);
        (grant, login, false)
    };
    // The scanning side shows the check code; the showing side is asked for it.
    let code = scanner.wait_for("check_code");
    shower.wait_for("enter_check_code");
    shower.type_line(code["code"].as_str().unwrap());
    let (mut login, mut grant) = if shower_is_new {
        (shower, scanner)
    } else {
        (scanner, shower)
    };
    let uri = grant.wait_for("verification_uri");
    consent(&server.base, uri["uri"].as_str().unwrap()).await;
    let new_done = login.wait_for("done");
    let grant_done = grant.wait_for("done");
    let (status, stderr, _) = login.end();
    assert_eq!(status, Some(0), "{stderr}");
    let (status, stderr, _) = grant.end();
    assert_eq!(status, Some(0), "{stderr}");
    check_signed_in(&server, &new_done, &grant_done, "new");
    assert_eq!(
        backup_version(&server, "new").await,
        backup_version(&server, "old").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_shows_msc4108_and_new_scans() {
    sign_in_with_two_processes("--msc4108", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_shows_msc4388_and_existing_scans() {
    sign_in_with_two_processes("--msc4388", true).await;
}

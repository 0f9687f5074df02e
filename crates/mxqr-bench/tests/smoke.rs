//! Small runs of the load generator against an in-process server (200 concurrent rendezvous
//! flows on both transports; a second of introspection in synapse mode), so that the
//! benchmarks keep working between the heavy runs of `bench/load-10k.sh`: every flow and
//! every introspection must succeed.

use std::process::Command;

use mxqr_testkit::api::{AppState, Config};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_flows_complete_without_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config {
        listen: addr,
        public_url: Some(format!("http://{addr}/")),
        ..Config::default()
    };
    // 200 flows from one address in a burst: the per-client limits would refuse most.
    config.rate_limit.enabled = false;
    // One generator address plays hundreds of clients.
    config.http.max_connections_per_address = Some(0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mxqr_testkit::api::serve(
        AppState::new(config),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    for transport in ["msc4388", "msc4108"] {
        let url = format!("http://{addr}");
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_mxqr-bench"))
                .args(["rendezvous", "--url", &url, "--transport", transport])
                .args(["--flows", "400", "--concurrency", "200", "--messages", "3"])
                .arg("--require-success")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{transport}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("flows_ok         400"), "{stdout}");
        assert!(stdout.contains("errors           none"), "{stdout}");
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// `mxqr-bench introspect` for one second with `dir`'s `secret` and `token` files.
async fn introspect_for_a_second(
    url: &str,
    dir: &std::path::Path,
    concurrency: u32,
) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mxqr-bench"));
    command
        .args(["introspect", "--url", url, "--seconds", "1"])
        .args(["--concurrency", &concurrency.to_string(), "--secret-file"])
        .arg(dir.join("secret"))
        .arg("--token-file")
        .arg(dir.join("token"));
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// `mxqr-bench introspect` against an in-process server in synapse mode: a second of
/// introspections of a live token, every one answered `active`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_benchmark_runs_against_synapse_mode() {
    use mxqr_testkit::api::accounts::Grant;
    use mxqr_testkit::api::config::HomeserverMode;
    use mxqr_testkit::api::oauth::{OAuthState, SystemClock};
    use mxqr_testkit::api::synapse::{SynapseHooks, SynapseLink};

    const SECRET: &str = "bench-shared-secret-0123456789abcdef";
    let dir = std::env::temp_dir().join(format!(
        "mxqr-bench-introspect-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config {
        listen: addr,
        data_dir: dir.clone(),
        public_url: Some(format!("http://{addr}/")),
        ..Config::default()
    };
    config.homeserver.mode = HomeserverMode::Synapse;
    // Nobody listens there: the device is marked as known below, so nothing is sent.
    config.homeserver.synapse_url = Some("http://127.0.0.1:9".into());
    config.homeserver.secret = Some(SECRET.into());
    config.validate().unwrap();
    let db = mxqr_testkit::api::accounts::open(&config).await.unwrap();
    let link = std::sync::Arc::new(SynapseLink::new("http://127.0.0.1:9", SECRET.into()));
    link.set_provisioned("alice", "BENCHDEVICE", true);
    let hooks = std::sync::Arc::new(SynapseHooks::new(link.clone(), db.clone()));
    let oauth = OAuthState::new(&config, db, hooks, std::sync::Arc::new(SystemClock));
    oauth
        .db()
        .create_user("alice", None, oauth.now_ms())
        .await
        .unwrap();
    let minted = oauth.mint();
    let grant = Grant {
        localpart: "alice".into(),
        device_id: "BENCHDEVICE".into(),
        client_id: None,
        scope: "urn:matrix:client:api:* urn:matrix:client:device:BENCHDEVICE".into(),
    };
    oauth
        .db()
        .issue_session(&grant, &minted.stored, oauth.now_ms())
        .await
        .unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    std::fs::write(dir.join("token"), &minted.access_token).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mxqr_testkit::api::serve(
        AppState::new(config).with_oauth(oauth).with_synapse(link),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));

    let out = introspect_for_a_second(&format!("http://{addr}"), &dir, 4).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("errors           none"), "{stdout}");
    let ok: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("requests_ok"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(ok > 0, "{stdout}");

    // A wrong secret is every request refused, and the run fails.
    std::fs::write(dir.join("secret"), "not-the-secret").unwrap();
    let out = introspect_for_a_second(&format!("http://{addr}"), &dir, 1).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("errors[HTTP 401]"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

//! A small run of the load generator (200 concurrent flows, both transports) against an
//! in-process server, so that the benchmark keeps working between the heavy runs of
//! `bench/load-10k.sh`: every flow must complete without error.

use std::process::Command;

use mxqr_server::{AppState, Config};
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
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mxqr_server::serve(
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

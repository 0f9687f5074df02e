//! Several `mxqr serve` processes on one PostgreSQL database behind a round-robin proxy, and
//! what happens when parts fail: QR sign-in in every combination with consecutive requests on
//! different instances, long-poll wake-ups across instances, an instance killed mid-flow, the
//! only instance restarted mid-flow, PostgreSQL restarted mid-flow, and an unwritable SQLite
//! data directory at start-up.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::scale_support::{
    ConsentGate, ExistingDevice, Instance, OwnCluster, Proxy, http_client, is_root, shared_env,
    sign_in, temp_dir,
};
use mxqr_proto::Generation;
use mxqr_testkit::pg::fresh_database;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use url::Url;

const MSC4388: &str = "_matrix/client/v1/rendezvous";
const MSC4108: &str = "_matrix/client/unstable/org.matrix.msc4108/rendezvous";

/// `n` instances on a fresh database behind a fresh proxy, which is their `public_url`.
async fn cluster(n: usize, database_url: &str) -> (Proxy, Vec<Instance>) {
    let proxy = Proxy::bind().await;
    let env = shared_env(database_url);
    let instances: Vec<Instance> = (0..n)
        .map(|_| Instance::start(&temp_dir("instance"), Some(proxy.url.as_str()), &env))
        .collect();
    proxy.set_backends(instances.iter().map(|i| i.addr).collect());
    (proxy, instances)
}

fn per_instance_delta(before: &[usize], after: &[usize]) -> Vec<usize> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_combinations_over_three_instances_behind_round_robin() {
    let _heavy = mxqr_testkit::heavy().await;
    let (database_url, _) = fresh_database().await;
    let (proxy, instances) = cluster(3, &database_url).await;
    let existing = ExistingDevice::set_up(&instances[0], &proxy.url).await;

    for generation in [Generation::Msc4388, Generation::Msc4108v2024] {
        for new_shows in [true, false] {
            let before = proxy.counts();
            sign_in(&existing, generation, new_shows, None).await;
            let spread = per_instance_delta(&before, &proxy.counts());
            eprintln!("{generation:?}, new shows {new_shows}: requests per instance {spread:?}");
            // Every instance served part of this one sign-in: the rendezvous, the OAuth grant
            // and the consent pages each crossed instances.
            assert!(
                spread.iter().all(|&n| n >= 3),
                "{generation:?}/{new_shows}: {spread:?}"
            );
        }
    }

    let counts = proxy.counts();
    let total: usize = counts.iter().sum();
    eprintln!("requests per instance over all four sign-ins: {counts:?} (total {total})");
    assert!(total >= 40, "{counts:?}");
    assert!(counts.iter().all(|&n| n * 4 >= total), "{counts:?}");
    assert_eq!(proxy.failovers(), 0);
    // One connection per request (no keep-alive) and round robin: the proxy's log of
    // connections never shows the same instance twice in a row for long.
    let log = proxy.log();
    let same_in_a_row = log.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(
        same_in_a_row * 10 <= log.len(),
        "{same_in_a_row} repeats in {}",
        log.len()
    );
}

/// Creates a session of `api` on `on`; returns its URL (relative to the instance for
/// MSC4108, whose URL names the public one) and version token.
async fn create_session(http: &reqwest::Client, on: &Url, api: &str) -> (String, String) {
    if api == MSC4388 {
        let created: Value = http
            .post(on.join(MSC4388).unwrap())
            .json(&json!({ "data": "" }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            format!("{MSC4388}/{}", created["id"].as_str().unwrap()),
            created["sequence_token"].as_str().unwrap().to_owned(),
        )
    } else {
        let response = http
            .post(on.join(MSC4108).unwrap())
            .header("content-type", "text/plain")
            .body("")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let etag = response.headers()["etag"].to_str().unwrap().to_owned();
        let created: Value = response.json().await.unwrap();
        let url = Url::parse(created["url"].as_str().unwrap()).unwrap();
        (url.path().trim_start_matches('/').to_owned(), etag)
    }
}

/// A long-poll for a version newer than `token`.
fn long_poll(
    http: &reqwest::Client,
    on: &Url,
    api: &str,
    path: &str,
    token: &str,
    timeout: Duration,
) -> reqwest::RequestBuilder {
    let mut url = on.join(path).unwrap();
    let ms = timeout.as_millis().to_string();
    if api == MSC4388 {
        url.query_pairs_mut()
            .append_pair("since", token)
            .append_pair("timeout_ms", &ms);
        http.get(url)
    } else {
        url.query_pairs_mut().append_pair("timeout_ms", &ms);
        http.get(url).header("if-none-match", token)
    }
}

/// A write of `data` replacing version `token`.
fn write(
    http: &reqwest::Client,
    on: &Url,
    api: &str,
    path: &str,
    token: &str,
    data: &str,
) -> reqwest::RequestBuilder {
    let url = on.join(path).unwrap();
    if api == MSC4388 {
        http.put(url)
            .json(&json!({ "sequence_token": token, "data": data }))
    } else {
        http.put(url)
            .header("if-match", token)
            .header("content-type", "text/plain")
            .body(data.to_owned())
    }
}

/// The payload of a read, for either API.
async fn payload(api: &str, response: reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::OK);
    if api == MSC4388 {
        let body: Value = response.json().await.unwrap();
        body["data"].as_str().unwrap().to_owned()
    } else {
        response.text().await.unwrap()
    }
}

/// Long-polls on `a`, writes through `b` once the poll is surely waiting, and returns how
/// long after the write was sent the poll answered with the new payload (the write's own
/// round trip included: the notification may overtake the write's answer).
async fn cross_instance_wake(a: &Url, b: &Url, api: &str, poll_timeout: Duration) -> Duration {
    let http = http_client();
    let (path, token) = create_session(&http, a, api).await;
    let poll = long_poll(&http, a, api, &path, &token, poll_timeout).send();
    let poll = tokio::spawn(async move {
        let response = poll.await.unwrap();
        (Instant::now(), response)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "{api}: the long-poll answered early");
    let write_sent = Instant::now();
    let written = write(&http, b, api, &path, &token, "through the other instance")
        .send()
        .await
        .unwrap();
    assert!(written.status().is_success(), "{api}: {}", written.status());
    let (woke, response) = tokio::time::timeout(poll_timeout + Duration::from_secs(5), poll)
        .await
        .expect("the long-poll answers by its own timeout")
        .unwrap();
    assert_eq!(payload(api, response).await, "through the other instance");
    woke.saturating_duration_since(write_sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_on_one_instance_wakes_on_a_write_through_another() {
    let _heavy = mxqr_testkit::heavy().await;
    let (database_url, _) = fresh_database().await;
    let env = shared_env(&database_url);
    // No proxy: each request goes to the instance the test names.
    let a = Instance::start(&temp_dir("instance"), None, &env);
    let b = Instance::start(&temp_dir("instance"), None, &env);
    let timeout = Duration::from_secs(20);
    for api in [MSC4388, MSC4108] {
        let mut latencies = Vec::new();
        for _ in 0..5 {
            latencies.push(cross_instance_wake(&a.url(), &b.url(), api, timeout).await);
        }
        latencies.sort();
        eprintln!("{api}: cross-instance wake-up after the write was sent, sorted: {latencies:?}");
        // A wake-up through NOTIFY, not the poll's timeout (nor a slow re-read loop).
        assert!(latencies[4] < Duration::from_secs(2), "{latencies:?}");
    }
}

/// Waits (bounded) until the existing device opens the consent page.
async fn until_consent_page(reached: oneshot::Receiver<()>) {
    tokio::time::timeout(Duration::from_secs(30), reached)
        .await
        .expect("the existing device opens the consent page")
        .unwrap();
}

fn gate() -> (ConsentGate, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let (reached_tx, reached_rx) = oneshot::channel();
    let (proceed_tx, proceed_rx) = oneshot::channel();
    (
        ConsentGate {
            reached: reached_tx,
            proceed: proceed_rx,
        },
        reached_rx,
        proceed_tx,
    )
}

/// Waits (bounded) until some instance holds a long-poll, and returns which.
async fn instance_holding_a_long_poll(proxy: &Proxy) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(&b) = proxy.long_lived(Duration::from_millis(300)).first() {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "no long-poll open at the consent page"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_mid_flow_the_remaining_ones_finish_it() {
    let _heavy = mxqr_testkit::heavy().await;
    let (database_url, _) = fresh_database().await;
    let (proxy, mut instances) = cluster(3, &database_url).await;
    let existing = std::sync::Arc::new(ExistingDevice::set_up(&instances[0], &proxy.url).await);

    // Three instances, then two: each sign-in loses the instance holding one of its
    // long-polls while it waits for consent.
    let mut killed = Vec::new();
    for (generation, new_shows) in [
        (Generation::Msc4388, true),
        (Generation::Msc4108v2024, false),
    ] {
        let (consent_gate, reached, proceed) = gate();
        let signing_in = tokio::spawn({
            let existing = existing.clone();
            async move { sign_in(&existing, generation, new_shows, Some(consent_gate)).await }
        });
        until_consent_page(reached).await;
        let victim = instance_holding_a_long_poll(&proxy).await;
        tokio::task::block_in_place(|| instances[victim].kill());
        killed.push(victim);
        let at_kill = proxy.counts();
        let failovers = proxy.failovers();
        proceed.send(()).unwrap();
        signing_in.await.unwrap();

        let after = per_instance_delta(&at_kill, &proxy.counts());
        eprintln!(
            "{generation:?}: killed instance {victim} holding a long-poll; requests after the \
             kill per instance {after:?}, {} refused connections sent on",
            proxy.failovers() - failovers
        );
        for &k in &killed {
            assert_eq!(after[k], 0, "a dead instance answered: {after:?}");
        }
        assert!(
            after.iter().sum::<usize>() >= 10,
            "the flow went on after the kill: {after:?}"
        );
        assert!(proxy.failovers() > failovers, "the dead instance was tried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_only_instance_keeps_sessions_device_codes_and_tokens() {
    let _heavy = mxqr_testkit::heavy().await;
    let (database_url, _) = fresh_database().await;
    let env = shared_env(&database_url);
    let mut only = Instance::start(&temp_dir("instance"), None, &env);
    let base = only.url();
    let existing = std::sync::Arc::new(ExistingDevice::set_up(&only, &base).await);

    // The rendezvous session, the device code and the existing device's token all exist
    // before the restart; consent, token redemption and the secrets all come after it.
    let (consent_gate, reached, proceed) = gate();
    let signing_in = tokio::spawn({
        let existing = existing.clone();
        async move { sign_in(&existing, Generation::Msc4388, false, Some(consent_gate)).await }
    });
    until_consent_page(reached).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the long-polls are out
    let restarted = Instant::now();
    tokio::task::block_in_place(|| only.restart());
    eprintln!("kill -9 and start again took {:?}", restarted.elapsed());
    proceed.send(()).unwrap();
    let login = signing_in.await.unwrap();

    // The new device's tokens outlive another restart too.
    tokio::task::block_in_place(|| only.restart());
    let http = http_client();
    let me = mxqr_client::e2ee::whoami(&http, &base, &login.tokens.access_token)
        .await
        .unwrap();
    assert_eq!(me.device_id.as_deref(), Some(login.device_id.as_str()));
    let me = mxqr_client::e2ee::whoami(&http, &base, &existing.token)
        .await
        .unwrap();
    assert_eq!(me.user_id, existing.user_id);
}

/// Sends `request` and checks it is refused with 503 and `Retry-After` within a bound.
async fn expect_unavailable(what: &str, request: reqwest::RequestBuilder) -> Duration {
    let started = Instant::now();
    let response = request
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer while PostgreSQL is down: {e}"));
    let took = started.elapsed();
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{what} while PostgreSQL is down"
    );
    assert!(
        response.headers().contains_key("retry-after"),
        "{what}: no Retry-After"
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_flow_answers_503_then_recovers_by_itself() {
    let _heavy = mxqr_testkit::heavy().await;
    let pg = OwnCluster::start();
    let database_url = pg.fresh_database().await;
    let (proxy, instances) = cluster(2, &database_url).await;
    let existing = std::sync::Arc::new(ExistingDevice::set_up(&instances[0], &proxy.url).await);
    let (a, b) = (instances[0].url(), instances[1].url());
    let http = http_client();
    let (kept, kept_token) = create_session(&http, &a, MSC4388).await;
    let kept_token: String = write(&http, &b, MSC4388, &kept, &kept_token, "before the outage")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["sequence_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let (consent_gate, reached, proceed) = gate();
    let signing_in = tokio::spawn({
        let existing = existing.clone();
        async move {
            sign_in(
                &existing,
                Generation::Msc4108v2024,
                true,
                Some(consent_gate),
            )
            .await
        }
    });
    until_consent_page(reached).await;

    tokio::task::block_in_place(|| pg.stop());
    let token = existing.token.clone();
    let took = tokio::join!(
        expect_unavailable("rendezvous read", http.get(a.join(&kept).unwrap())),
        expect_unavailable(
            "rendezvous write",
            write(&http, &b, MSC4388, &kept, &kept_token, "during the outage"),
        ),
        expect_unavailable(
            "rendezvous creation",
            http.post(a.join(MSC4388).unwrap())
                .json(&json!({ "data": "" })),
        ),
        expect_unavailable(
            "whoami",
            http.get(b.join("_matrix/client/v3/account/whoami").unwrap())
                .bearer_auth(&token),
        ),
    );
    eprintln!("answers while PostgreSQL was down took {took:?}");

    tokio::task::block_in_place(|| pg.start_again());
    let back = Instant::now();
    for instance in [&a, &b] {
        loop {
            let answer = http
                .get(instance.join("_matrix/client/v3/account/whoami").unwrap())
                .bearer_auth(&token)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .expect("an answer, never a hang");
            if answer.status() == StatusCode::OK {
                break;
            }
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                back.elapsed() < Duration::from_secs(30),
                "no recovery 30 s after PostgreSQL came back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "both instances served again {:?} after PostgreSQL came back",
        back.elapsed()
    );

    // The session written before the outage is intact and the refused write did not land.
    let read = http.get(a.join(&kept).unwrap()).send().await.unwrap();
    assert_eq!(payload(MSC4388, read).await, "before the outage");
    // Wake-ups across instances work again (each instance's LISTEN reconnected).
    let wake = cross_instance_wake(&b, &a, MSC4388, Duration::from_secs(20)).await;
    eprintln!("cross-instance wake-up after the outage: {wake:?}");
    assert!(wake < Duration::from_secs(2), "{wake:?}");

    // The sign-in that was waiting for consent through the outage completes.
    proceed.send(()).unwrap();
    signing_in.await.unwrap();
}

/// Starts `mxqr serve` on `data_dir` (as `nobody` when we are root: root writes anyway) and
/// returns its exit code and stderr, waiting at most 15 s.
fn serve_expecting_failure(data_dir: &std::path::Path) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(env!("CARGO_BIN_EXE_mxqr"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("MXQR_CONFIG")
        .env_remove("MXQR_DATABASE_URL")
        .env_remove("MXQR_DATABASE__URL")
        .env("MXQR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if is_root() {
        command.uid(65534).gid(65534);
    }
    let mut child = command.spawn().expect("spawn mxqr serve");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mxqr serve kept running on {}", data_dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn unwritable_sqlite_data_dir_fails_start_with_one_line() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir("readonly");
    let read_only = dir.join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    let under_a_file = dir.join("a-file").join("data");
    std::fs::write(dir.join("a-file"), "not a directory").unwrap();

    for data_dir in [read_only, under_a_file] {
        let (code, stderr) = serve_expecting_failure(&data_dir);
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(matches!(code, Some(c) if c != 0), "{code:?}: {stderr}");
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].starts_with("error: "), "{stderr}");
        assert!(
            lines[0].contains(data_dir.to_str().unwrap()),
            "names the path: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

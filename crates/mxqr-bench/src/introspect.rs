//! `mxqr-bench introspect`: Synapse's side of delegated mode. Synapse asks the auth service
//! `POST /oauth2/introspect` about every access token it has not cached; this sends that
//! request, exactly as Synapse does (shared secret as bearer token, form body), from
//! `--concurrency` keep-alive connections for `--seconds`, and reports throughput, latency
//! percentiles, errors and the server's memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::{Client, header};
use serde_json::Value;

use crate::{is_loopback, memory_kib, percentile};

#[derive(clap::Args, Clone)]
pub struct IntrospectArgs {
    /// mxqr base URL in synapse mode (loopback only), e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// File holding the secret shared with Synapse (as `homeserver.secret_path`).
    #[arg(long)]
    secret_file: PathBuf,
    /// File holding a live access token to ask about (e.g. from `mxqr admin issue-token`);
    /// every answer must be `active: true`.
    #[arg(long)]
    token_file: PathBuf,
    /// Requests in flight at once (Synapse's workers each keep one connection).
    #[arg(long, default_value_t = 8)]
    concurrency: u64,
    /// How long to send for.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Process IDs of the servers, to report their memory from /proc (repeatable).
    #[arg(long)]
    server_pid: Vec<u32>,
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

fn read_trimmed(path: &PathBuf, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the {what} from {}: {e}", path.display()))?;
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Err(format!("{} holds no {what}", path.display()));
    }
    Ok(text)
}

/// One connection's requests until `deadline`.
async fn connection(
    http: Client,
    endpoint: url::Url,
    secret: String,
    body: String,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let started = Instant::now();
        let outcome = http
            .post(endpoint.clone())
            .bearer_auth(&secret)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await;
        let error = match outcome {
            Err(_) => Some("transport".to_owned()),
            Ok(response) if !response.status().is_success() => {
                Some(format!("HTTP {}", response.status().as_u16()))
            }
            Ok(response) => match response.json::<Value>().await {
                Ok(answer) if answer["active"] == true => None,
                Ok(_) => Some("inactive".to_owned()),
                Err(_) => Some("not JSON".to_owned()),
            },
        };
        match error {
            None => tally
                .latencies_us
                .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
            Some(label) => *tally.errors.entry(label).or_default() += 1,
        }
    }
    tally
}

pub async fn run(args: IntrospectArgs) -> Result<(), String> {
    let base = url::Url::parse(&args.url).map_err(|e| format!("--url: {e}"))?;
    if !is_loopback(&base) {
        return Err("--url must be a loopback address (127.0.0.0/8, ::1, localhost)".into());
    }
    let endpoint = base
        .join("oauth2/introspect")
        .map_err(|e| format!("--url: {e}"))?;
    let secret = read_trimmed(&args.secret_file, "shared secret")?;
    let token = read_trimmed(&args.token_file, "access token")?;
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", &token)
        .append_pair("token_type_hint", "access_token")
        .finish();
    let http = Client::builder()
        .pool_max_idle_per_host(usize::try_from(args.concurrency).unwrap_or(usize::MAX))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            tokio::spawn(connection(
                http.clone(),
                endpoint.clone(),
                secret.clone(),
                body.clone(),
                deadline,
            ))
        })
        .collect();
    let mut all = Tally::default();
    for worker in workers {
        let tally = worker.await.map_err(|e| format!("worker: {e}"))?;
        all.latencies_us.extend(tally.latencies_us);
        for (label, n) in tally.errors {
            *all.errors.entry(label).or_default() += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();

    println!(
        "introspect: {} connections, {} s",
        args.concurrency, args.seconds
    );
    println!("requests_ok      {}", all.latencies_us.len());
    println!(
        "requests/s       {:.1}",
        all.latencies_us.len() as f64 / elapsed
    );
    for (name, p) in [("p50", 50.0), ("p99", 99.0), ("max", 100.0)] {
        println!(
            "latency_{name}_ms   {:.3}",
            percentile(&all.latencies_us, p)
        );
    }
    if all.errors.is_empty() {
        println!("errors           none");
    }
    for (label, count) in &all.errors {
        println!("errors[{label}] {count}");
    }
    for &pid in &args.server_pid {
        match memory_kib(pid) {
            Some((peak, now)) => println!(
                "server_rss_mib   {:.1} (peak {:.1}, pid {pid})",
                now as f64 / 1024.0,
                peak as f64 / 1024.0
            ),
            None => println!("server_rss       unavailable (no /proc/{pid}/status)"),
        }
    }
    if all.latencies_us.is_empty() || !all.errors.is_empty() {
        return Err("not every introspection answered active".into());
    }
    Ok(())
}
